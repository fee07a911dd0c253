"""The WAL's fsync helper process: answers every caller, reports failures, stops cleanly."""

from __future__ import annotations

import asyncio
import errno
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gaffer.store._file_syncer import FileSyncer
from tests.helpers import wait_until_async


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


def helper_of(syncer: FileSyncer) -> subprocess.Popen[bytes]:
    assert syncer._helper is not None
    return syncer._helper._proc


async def test_many_callers_each_get_an_answer(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x" * 4096)
    syncer = FileSyncer(path)
    try:
        await asyncio.gather(*(synced(syncer) for _ in range(50)))
    finally:
        syncer.close()


async def test_a_file_that_cannot_be_opened_fails_the_sync_and_a_later_one_retries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal"
    syncer = FileSyncer(path)
    try:
        with pytest.raises(FileNotFoundError, match=r"fsync of .*wal"):
            await synced(syncer)
        path.write_bytes(b"written later")
        await synced(syncer)
    finally:
        syncer.close()


async def test_close_stops_the_helper(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    syncer.open()
    await synced(syncer)
    helper = helper_of(syncer)
    assert helper.poll() is None
    syncer.close()
    assert helper.poll() is not None
    assert syncer._helper is None


async def test_a_failed_fsync_fails_every_later_sync(tmp_path: Path) -> None:
    """After an fsync error Linux may report the next fsync as a success with the pages
    gone: that must not answer a durable caller, even from a helper started afresh."""
    path = tmp_path / "wal"
    path.symlink_to("/dev/null")  # fsync of a character device: EINVAL
    syncer = FileSyncer(path)
    try:
        with pytest.raises(OSError, match="Invalid argument") as first:
            await synced(syncer)
        assert first.value.errno == errno.EINVAL
        path.unlink()
        path.write_bytes(b"x")  # a file a new helper could sync
        helper_of(syncer).kill()
        await wait_until_async(lambda: _ended(syncer), what="the syncer to see its helper end")
        with pytest.raises(OSError, match="Invalid argument"):
            await synced(syncer)
    finally:
        syncer.close()


async def test_a_helper_that_dies_fails_what_it_owed_and_the_next_sync_starts_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    try:
        await synced(syncer)
        first = helper_of(syncer)
        first.send_signal(signal.SIGSTOP)  # it cannot answer before it dies
        owed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        syncer.start(owed.set_result)  # asked now
        first.kill()
        error = await asyncio.wait_for(owed, 10)
        assert isinstance(error, OSError) and "stopped before answering" in str(error)
        await synced(syncer)
        assert helper_of(syncer) is not first
    finally:
        syncer.close()


async def test_a_helper_that_cannot_start_is_started_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    real_popen = subprocess.Popen
    calls = 0

    def popen_once_failing(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen_once_failing)
    syncer = FileSyncer(path)
    try:
        with pytest.raises(RuntimeError, match="cannot start the fsync helper"):
            await synced(syncer)
        await synced(syncer)
    finally:
        syncer.close()


async def test_the_helper_outlives_a_sigterm_or_sigint_sent_to_it(tmp_path: Path) -> None:
    """A server stopped with a signal its process group also gets still syncs its last
    commits on the way out."""
    path = tmp_path / "wal"
    path.write_bytes(b"x")
    syncer = FileSyncer(path)
    try:
        await synced(syncer)
        for signum in (signal.SIGTERM, signal.SIGINT):
            helper_of(syncer).send_signal(signum)
        await synced(syncer)
        assert helper_of(syncer).poll() is None
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
    syncer.close()  # waits for the helper: the sync is done, its answer queued on the loop
    await asyncio.wait_for(answered.wait(), 10)
    assert answers == [None]
    with pytest.raises(RuntimeError):
        syncer.start(on_done)


async def _ended(syncer: FileSyncer) -> bool:
    return syncer._helper is None or syncer._helper.ended


def test_the_helper_runs_on_its_own_and_answers_each_request(tmp_path: Path) -> None:
    """Started with ``python -I -S``: nothing of gaffer (nor any site package) to import."""
    from gaffer.store import _fsync_helper

    path = tmp_path / "wal"
    path.write_bytes(b"x")
    done = subprocess.run(
        [sys.executable, "-I", "-S", _fsync_helper.__file__, str(path)],
        input=b"sss",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == bytes((_fsync_helper.OK, 0)) * 3
