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
            for _ in range(4):  # several transactions per turn: there is always a next one
                await insert(store, make_job(labels={"pad": "x" * 2000}))
            await asyncio.sleep(0)

    writer = asyncio.create_task(write_forever())
    try:

        async def grown() -> bool:
            return wal.stat().st_size > 4 * LIMIT

        await wait_until_async(grown, timeout=60, what="the WAL to grow past the limit")

        async def cut_back() -> bool:
            return wal.stat().st_size <= LIMIT

        # While the writes go on: a checkpoint off the loop never catches up by itself.
        await wait_until_async(cut_back, timeout=30, what="the WAL to start over, cut back")
        assert not writer.done()
    finally:
        stop.set()
        await writer
        await store.close()
