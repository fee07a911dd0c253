"""The SQLite WAL stays bounded while writes never pause (it used to grow without end)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gaffer.store import Notifier, SqliteStore
from tests.helpers import wait_until_async
from tests.unit.test_store import insert, make_job

LIMIT = 256 * 1024


async def test_the_wal_starts_over_under_steady_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data", Notifier())
    store.checkpoint_interval = 0.05
    store.wal_limit_bytes = LIMIT
    await store.open()
    wal = tmp_path / "data" / "gaffer.db-wal"
    stop = asyncio.Event()

    async def write_forever() -> None:
        while not stop.is_set():
            await insert(store, make_job(labels={"pad": "x" * 2000}))

    writers = [asyncio.create_task(write_forever()) for _ in range(8)]  # always a next commit
    try:

        async def grown() -> bool:
            return wal.stat().st_size > 2 * LIMIT

        await wait_until_async(grown, timeout=60, what="the WAL to grow past the limit")

        async def cut_back() -> bool:
            return wal.stat().st_size <= LIMIT

        # While the writes go on: a checkpoint off the loop never catches up by itself.
        await wait_until_async(cut_back, timeout=30, what="the WAL to start over, cut back")
        assert not any(w.done() for w in writers)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await store.close()
