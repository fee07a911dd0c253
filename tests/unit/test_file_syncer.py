"""The WAL's fsync thread: answers every caller, reports failures, stops cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gaffer.store._file_syncer import FileSyncer


async def synced(syncer: FileSyncer) -> None:
    """One sync, awaited: raises what the sync raised."""
    done = asyncio.get_running_loop().create_future()

    def on_done(error: BaseException | None) -> None:
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    syncer.start(on_done)
    await asyncio.wait_for(done, 10)


async def test_many_callers_each_get_an_answer(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x" * 4096)
    syncer = FileSyncer(path)
    try:
        await asyncio.gather(*(synced(syncer) for _ in range(50)))
    finally:
        syncer.close()


async def test_a_failure_reaches_the_caller_and_a_later_sync_retries(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    syncer = FileSyncer(path)
    try:
        with pytest.raises(FileNotFoundError):
            await synced(syncer)
        path.write_bytes(b"written later")
        await synced(syncer)
    finally:
        syncer.close()


async def test_close_stops_the_thread_and_a_new_sync_starts_it_again(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    await synced(syncer)
    thread = syncer._thread
    assert thread is not None and thread.is_alive()
    syncer.close()
    assert not thread.is_alive()
    assert syncer._fd is None
    await synced(syncer)
    syncer.close()
