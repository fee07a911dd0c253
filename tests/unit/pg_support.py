"""A throwaway PostgreSQL database for store tests: one per session, a fresh schema per test.

The server at ``GAFFER_TEST_PG_URL`` (default: trust auth on 127.0.0.1:5432) must let the
user create databases. When it cannot be reached the PostgreSQL tests are skipped, unless
``GAFFER_TEST_PG_REQUIRED=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from gaffer.store import Notifier, PostgresStore, SqliteStore, Store

T = TypeVar("T")

ADMIN_URL = os.environ.get("GAFFER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` to the end on a loop of its own (callable from inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def temporary_database() -> Iterator[str]:
    """Creates ``gaffer_test_<random>``, yields its URL and drops it, even after a failure."""
    name = f"gaffer_test_{secrets.token_hex(4)}"
    try:
        _run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}"
        if os.environ.get("GAFFER_TEST_PG_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield _database_url(name)
    finally:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def fresh_schema(database_url: str) -> str:
    """A new empty schema in the test database; returns a DSN whose search_path is that schema."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return f"{database_url}?search_path={schema}"


def new_schema(database_url: str) -> str:
    """:func:`fresh_schema` for synchronous callers (end-to-end fixtures)."""
    return _run(fresh_schema(database_url))


def fetch(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of one query, for synchronous callers (checks made after a run)."""

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return _run(go())


@pytest.fixture(name="store", params=["sqlite", "postgres"])
async def either_store_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    """A fresh SQLite store, or a PostgreSQL one on a fresh schema of the module's
    ``pg_database`` fixture (import this as ``either_store_fixture``: it is ``store``)."""
    notifier = Notifier()
    impl: Store
    if request.param == "postgres":
        dsn = await fresh_schema(request.getfixturevalue("pg_database"))
        impl = PostgresStore(dsn, notifier, blob_dir=tmp_path / "blobs")
    else:
        impl = SqliteStore(tmp_path / "data", notifier)
    await impl.open()
    yield impl
    await impl.close()
