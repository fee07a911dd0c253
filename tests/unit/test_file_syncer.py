"""The WAL's fsync thread: answers every caller, reports failures, stops cleanly."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
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


async def test_close_stops_the_thread_and_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    await synced(syncer)
    thread = syncer._thread
    assert thread is not None and thread.is_alive()
    syncer.close()
    assert not thread.is_alive()
    assert syncer._fd is None


async def test_a_failed_fsync_fails_every_later_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an fsync error Linux may report the next fsync as a success with the pages
    gone: that must not answer a durable caller."""
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    real_fsync = os.fsync
    calls = 0

    def fsync_failing_once(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_once)
    syncer = FileSyncer(path)
    try:
        for _ in range(2):
            with pytest.raises(OSError, match="I/O error"):
                await synced(syncer)
    finally:
        syncer.close()


async def test_a_thread_that_cannot_start_is_started_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    real_start = threading.Thread.start
    calls = 0

    def start_once_failing(thread: threading.Thread) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_failing)
    syncer = FileSyncer(path)
    try:
        with pytest.raises(RuntimeError):
            await synced(syncer)
        await synced(syncer)
    finally:
        syncer.close()


async def test_close_lets_a_sync_under_way_answer_and_refuses_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    answers: list[BaseException | None] = []
    answered = asyncio.Event()

    def on_done(error: BaseException | None) -> None:
        answers.append(error)
        answered.set()

    syncer.start(on_done)
    syncer.close()  # waits for the thread: the sync is done, its answer queued on the loop
    await asyncio.wait_for(answered.wait(), 10)
    assert answers == [None]
    with pytest.raises(RuntimeError):
        syncer.start(on_done)
