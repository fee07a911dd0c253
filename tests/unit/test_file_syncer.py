"""The WAL's fsync thread: answers every caller, reports failures, stops cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gaffer.store._file_syncer import FileSyncer


async def test_many_callers_each_get_an_answer(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x" * 4096)
    syncer = FileSyncer(path)
    try:
        await asyncio.wait_for(asyncio.gather(*(syncer.sync() for _ in range(50))), 10)
    finally:
        syncer.close()


async def test_a_failure_reaches_the_caller_and_a_later_sync_retries(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    syncer = FileSyncer(path)
    try:
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(syncer.sync(), 10)
        path.write_bytes(b"written later")
        await asyncio.wait_for(syncer.sync(), 10)
    finally:
        syncer.close()


async def test_close_stops_the_thread_and_a_new_sync_starts_it_again(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    await asyncio.wait_for(syncer.sync(), 10)
    thread = syncer._thread
    assert thread is not None and thread.is_alive()
    syncer.close()
    assert not thread.is_alive()
    assert syncer._fd is None
    await asyncio.wait_for(syncer.sync(), 10)
    syncer.close()
