"""Cancelling a running job kills its whole process group and ends it CANCELED, fast."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from gaffer import JobState, SyncClient
from tests.helpers import AgentProc, ServerProc, wait_until


def processes_with(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_cancel_running_sleep_kills_it_within_two_seconds(
    server: ServerProc, agent: AgentProc
) -> None:
    # A unique duration tells our sleep apart from any other on the machine; the shell parent
    # and the sleep child must both die (the whole process group).
    duration = f"60.{uuid.uuid4().int % 10**6:06d}"
    with SyncClient(server.address) as client:
        handle = client.submit(["sh", "-c", f"sleep {duration}; echo never"])
        wait_until(lambda: handle.get().state == JobState.RUNNING, timeout=15, what="RUNNING")
        wait_until(lambda: processes_with(duration), timeout=5, what="the sleep to start")

        started = time.monotonic()
        client.cancel(handle.id, reason="test")
        job = handle.wait(timeout=10)
        elapsed = time.monotonic() - started

    assert job.state == JobState.CANCELED
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert job.canceled_by.startswith("client:")
    assert [s.state for s in job.history][-1] == JobState.CANCELED
    assert not processes_with(duration), "the cancelled process outlived its job"
    assert os.path.exists("/proc/self")  # /proc is readable, so the check above means something


def test_cancel_pending_job_is_immediate(server: ServerProc) -> None:
    with SyncClient(server.address) as client:  # no agent: the job stays PENDING
        handle = client.submit(["true"])
        job = client.cancel(handle.id)
        assert job.state == JobState.CANCELED
        assert job.history[-1].message.startswith("canceled by client:")
