"""An agent killed with SIGKILL mid-job: its attempt is retried elsewhere once the lease lapses.

The server runs with a 2 s lease and 0.5 s heartbeats (``FAST_LEASES``); the sweeper looks every
0.5 s, so a retry is due within ttl + one sweep of the agent's last heartbeat.
"""

from __future__ import annotations

import time
from pathlib import Path

from gaffer.v1 import job_pb2
from tests.chaos.procs import is_alive, kill_pids
from tests.chaos.rig import FAST_LEASES, Rig, claims, finals
from tests.e2e.conftest import without_timings
from tests.helpers import wait_until

S = job_pb2.JobState
LEASE_TTL = 2.0
HEARTBEAT = 0.5
# Attempt 1 sleeps 30 s (it is the one whose agent dies); attempt 2 finishes at once.
SLEEPS_ON_FIRST = (
    "sh",
    "-c",
    'echo "attempt $GAFFER_ATTEMPT"; [ "$GAFFER_ATTEMPT" -ge 2 ] || exec sleep 30',
)
RETRY_ONCE = job_pb2.RetryPolicy(max_attempts=2)


def running(rig: Rig, job_id: str, attempt: int) -> bool:
    """The server says RUNNING for ``attempt`` and its process is up."""
    job = rig.get(job_id)
    return (
        job.state == S.JOB_STATE_RUNNING
        and job.attempt == attempt
        and bool(rig.pids(job_id, attempt))
    )


def finished(rig: Rig, job_id: str) -> job_pb2.Job | None:
    job = rig.get(job_id)
    return job if job.state in (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED) else None


def test_killed_agent_job_is_retried_on_another_agent(tmp_path: Path) -> None:
    with Rig(tmp_path, *FAST_LEASES) as rig:
        doomed = rig.agent("--slots", "1", name="doomed")
        job = rig.submit(SLEEPS_ON_FIRST, retry_policy=RETRY_ONCE)
        wait_until(lambda: running(rig, job.id, 1), timeout=15, what="attempt 1 running")
        doomed_id = rig.get(job.id).agent_id
        # The survivor is up and long-polling before the kill: the retry waits on the lease only.
        rig.agent("--slots", "1", name="survivor")
        [orphan] = rig.pids(job.id, 1)

        killed_at = time.monotonic()
        rig.kill_agent(doomed)
        wait_until(lambda: rig.get(job.id).attempt == 2, timeout=LEASE_TTL + 10, what="attempt 2")
        retried_after = time.monotonic() - killed_at
        done = wait_until(lambda: finished(rig, job.id), timeout=15, what="attempt 2 to finish")

        # A lapsed lease, not an early guess: no sooner than ttl minus one heartbeat interval,
        # and no later than ttl + one sweep (plus slack for a loaded machine).
        assert LEASE_TTL - HEARTBEAT - 0.2 <= retried_after <= LEASE_TTL + 3.0, retried_after
        assert done.state == S.JOB_STATE_COMPLETED, done.message
        assert done.attempt == 2
        assert done.agent_id != doomed_id
        assert [(c.attempt, c.agent_id == doomed_id) for c in claims(done)] == [
            (1, True),
            (2, False),
        ]
        assert any("lease of attempt 1 lapsed" in s.message for s in done.history)
        assert len(finals(done)) == 1, [S.Name(s.state) for s in done.history]
        assert rig.stdout(done.id) == b"attempt 2\n"
        assert rig.stdout(done.id, attempt=1) == b"attempt 1\n"

        # The dead agent's process outlived it (it runs in a session of its own): clean it up.
        assert is_alive(orphan), "attempt 1's process should outlive its SIGKILLed agent"
        kill_pids([orphan])
        wait_until(lambda: not is_alive(orphan), timeout=5, what="the orphan to die")
        assert without_timings(rig.get(job.id)) == without_timings(done)


def test_agent_restarted_under_same_name_does_not_keep_dead_attempts_alive(
    tmp_path: Path,
) -> None:
    with Rig(tmp_path, *FAST_LEASES) as rig:
        first = rig.agent("--slots", "1", name="worker")
        job = rig.submit(SLEEPS_ON_FIRST, retry_policy=RETRY_ONCE)
        wait_until(lambda: running(rig, job.id, 1), timeout=15, what="attempt 1 running")
        [orphan] = rig.pids(job.id, 1)
        rig.kill_agent(first)
        kill_pids([orphan])
        # The same host comes back: `gaffer agent` names itself after the host by default.
        rig.agent("--slots", "1", name="worker")
        done = wait_until(lambda: finished(rig, job.id), timeout=LEASE_TTL + 4, what="a retry")
        assert done.state == S.JOB_STATE_COMPLETED
        assert [c.attempt for c in claims(done)] == [1, 2]
