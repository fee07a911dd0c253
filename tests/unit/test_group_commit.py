"""Group commit over a real SQLite connection: batching, isolation of failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from gaffer.store._group_commit import GroupCommitter
from tests.helpers import wait_until_async


class Unavailable(Exception):
    pass


Db = tuple[aiosqlite.Connection, list[str], GroupCommitter]


@pytest.fixture
async def db(
    tmp_path: Path,
) -> AsyncIterator[tuple[aiosqlite.Connection, list[str], GroupCommitter]]:
    conn = await aiosqlite.connect(tmp_path / "t.db", isolation_level=None)
    await conn.execute("CREATE TABLE t (v INTEGER UNIQUE)")
    statements: list[str] = []

    async def execute(sql: str) -> None:
        statements.append(sql)
        await conn.execute(sql)

    committer = GroupCommitter(execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    yield conn, statements, committer
    await committer.close()
    await conn.close()


async def _queued(committer: GroupCommitter) -> bool:
    return len(committer._queue) == 1


async def values(conn: aiosqlite.Connection) -> list[int]:
    return [v for (v,) in await conn.execute_fetchall("SELECT v FROM t ORDER BY v")]


async def test_concurrent_transactions_share_commits(db: Db) -> None:
    conn, statements, committer = db
    published: list[int] = []

    async def write(i: int) -> None:
        async with committer.transaction(lambda: published.append(i)):
            await conn.execute("INSERT INTO t VALUES (?)", (i,))

    await asyncio.gather(*(write(i) for i in range(100)))
    assert await values(conn) == list(range(100))
    assert sorted(published) == list(range(100))
    commits = statements.count("COMMIT")
    assert 1 <= commits < 100  # grouped: fewer commits than transactions


async def test_a_failing_body_rolls_back_only_itself(db: Db) -> None:
    conn, _, committer = db
    published: list[int] = []

    async def write(i: int) -> None:
        async with committer.transaction(lambda: published.append(i)):
            await conn.execute("INSERT INTO t VALUES (?)", (i,))
            if i % 3 == 0:
                raise ValueError(i)

    results = await asyncio.gather(*(write(i) for i in range(12)), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, ValueError)]
    assert failed == [0, 3, 6, 9]
    assert await values(conn) == [i for i in range(12) if i % 3]
    assert sorted(published) == [i for i in range(12) if i % 3]


async def test_a_caller_cancelled_while_waiting_writes_nothing(db: Db) -> None:
    conn, _, committer = db
    inside = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> None:
        async with committer.transaction(lambda: None):
            await conn.execute("INSERT INTO t VALUES (1)")
            inside.set()
            await release.wait()

    async def queued() -> None:
        async with committer.transaction(lambda: None):
            await conn.execute("INSERT INTO t VALUES (2)")

    first = asyncio.create_task(slow())
    await inside.wait()
    second = asyncio.create_task(queued())
    await wait_until_async(lambda: _queued(committer), what="the second caller to queue")
    second.cancel()
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    async with committer.transaction(lambda: None):
        await conn.execute("INSERT INTO t VALUES (3)")
    assert await values(conn) == [1, 3]


async def test_a_failed_commit_reaches_every_caller(tmp_path: Path) -> None:
    conn = await aiosqlite.connect(tmp_path / "t.db", isolation_level=None)
    await conn.execute("CREATE TABLE t (v INTEGER)")

    async def execute(sql: str) -> None:
        if sql == "COMMIT":
            raise OSError("disk full")
        await conn.execute(sql)

    committer = GroupCommitter(execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    try:
        with pytest.raises(Unavailable):
            async with committer.transaction(lambda: None):
                await conn.execute("INSERT INTO t VALUES (1)")
        assert await values(conn) == []
    finally:
        await committer.close()
        await conn.close()


async def test_only_batches_holding_a_durable_transaction_are_synced(tmp_path: Path) -> None:
    conn = await aiosqlite.connect(tmp_path / "t.db", isolation_level=None)
    await conn.execute("CREATE TABLE t (v INTEGER)")
    syncs: list[int] = []

    async def execute(sql: str) -> None:
        await conn.execute(sql)

    async def sync() -> None:
        syncs.append(len(await values(conn)))

    committer = GroupCommitter(execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable, sync=sync)
    committer.start()
    try:
        async with committer.transaction(lambda: None, durable=False):
            await conn.execute("INSERT INTO t VALUES (1)")
        assert syncs == []
        async with committer.transaction(lambda: None):
            await conn.execute("INSERT INTO t VALUES (2)")
        assert syncs == [2]  # synced after the commit that holds it, before the caller returns
    finally:
        await committer.close()
        await conn.close()
