"""Notifications disabled (issue 4, test 4): NOTIFY is a hint, not the truth.

Both replicas run with ``--no-pg-notify``: nothing is sent, nothing is listened to. A job
submitted on B must still be claimed by the agent long-polling on A, and a follower on B of a
job running on A must still see all its output and end, only later (each replica re-checks the
store on a timer). The deadlines are generous; the timings are printed.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gaffer import GafferError, JobState, SyncClient
from tests.chaos.procs import launch_agent, stop_all
from tests.e2e.pg_fixtures import (  # noqa: F401
    Replicas,
    pg_database_fixture,
    pg_url_fixture,
    replicas_fixture,
)
from tests.helpers import wait_until

DEADLINE = 30.0


@pytest.mark.timeout(120)
def test_without_notifications_jobs_are_claimed_and_followers_finish(
    replicas: Callable[..., Replicas], tmp_path: Path
) -> None:
    group = replicas(2, "--no-pg-notify")
    for proc in group.procs:
        assert "--no-pg-notify" in proc.popen.args  # type: ignore[operator]
    agent = launch_agent(group[0].address, "agent-on-a", "--slots", "4")
    try:
        with SyncClient(group[1].address) as on_b:
            claims = []
            for n in range(5):
                started = time.monotonic()
                handle = on_b.submit(["echo", f"quiet {n}"])
                job = handle.wait(timeout=DEADLINE)
                claims.append(time.monotonic() - started)
                assert job.state == JobState.COMPLETED, job
                assert [s.state for s in job.history].count(JobState.CLAIMED) == 1

            gate = tmp_path / f"gate-{uuid.uuid4().hex}"
            script = f"echo first; while [ ! -e {gate} ]; do sleep 0.02; done; echo second"
            started = time.monotonic()
            handle = on_b.submit(["sh", "-c", script])
            follower = on_b.logs(handle.id, follow=True)
            first = next(follower)
            first_at = time.monotonic() - started
            gate.touch()
            gate_at = time.monotonic()
            rest = b"".join(chunk.data for chunk in follower)
            ended = time.monotonic() - gate_at
            assert first.data + rest == b"first\nsecond\n"
            assert follower.end is not None and follower.end.state == JobState.COMPLETED
            assert first_at < DEADLINE and ended < DEADLINE
    finally:
        stop_all([agent])
    print(
        "no NOTIFY: submit-to-finish "
        + ", ".join(f"{s:.2f}s" for s in claims)
        + f"; follower's first line after {first_at:.2f}s, its end {ended:.2f}s after the gate"
    )


@pytest.mark.timeout(60)
def test_without_notifications_followers_poll_as_often_as_claims(
    replicas: Callable[..., Replicas], tmp_path: Path
) -> None:
    group = replicas(2, "--no-pg-notify")
    agent = launch_agent(group[0].address, "agent-on-a", "--slots", "1")
    try:
        with SyncClient(group[1].address) as on_b:
            gate = tmp_path / f"gate-{uuid.uuid4().hex}"
            script = f"while [ ! -e {gate} ]; do sleep 0.02; done; echo late"
            handle = on_b.submit(["sh", "-c", script])
            follower = on_b.logs(handle.id, follow=True)
            seen: list[bytes] = []

            def read() -> None:
                with contextlib.suppress(GafferError):  # the client closes under it
                    seen.extend(chunk.data for chunk in follower)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            # The follower is idle on B (nothing written yet) when the output appears on A.
            wait_until(lambda: handle.get().state == JobState.RUNNING, timeout=DEADLINE)
            gate.touch()
            reader.join(timeout=5.0)
            assert seen == [b"late\n"], "the follower took over 5 s to see the output"
    finally:
        stop_all([agent])
