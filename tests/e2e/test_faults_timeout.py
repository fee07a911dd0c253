"""Timeouts: the agent kills a job that runs past its timeout; a frozen agent's server does it.

A `sleep 60` with a 1 s timeout ends FAILED (reason: timeout) within 3 s of starting to run, and
its process is gone. With its agent frozen (SIGSTOP) the server fails the attempt by itself once
the timeout plus its grace (1 s) has passed, at the sweeper's next look (every 0.5 s); when the
agent is thawed it kills the process, and what it reports is refused.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

from gaffer.v1 import job_pb2
from tests.chaos.procs import frozen
from tests.chaos.rig import Rig, finals, status_time
from tests.e2e.conftest import HandAgent, without_timings
from tests.helpers import wait_until

S = job_pb2.JobState
SERVER_FLAGS = ("--timeout-grace", "1", "--sweep-interval", "0.5")
ONE_SECOND = duration_pb2.Duration(seconds=1)


def running_since(job: job_pb2.Job) -> float:
    return status_time(next(s for s in job.history if s.state == S.JOB_STATE_RUNNING))


def finished(rig: Rig, job_id: str) -> job_pb2.Job | None:
    job = rig.get(job_id)
    return job if finals(job) else None


def test_agent_kills_a_job_past_its_timeout(tmp_path: Path) -> None:
    with Rig(tmp_path, *SERVER_FLAGS) as rig:
        rig.agent("--slots", "1")
        submitted = time.monotonic()
        job = rig.submit(["sleep", "60"], timeout=ONE_SECOND)
        done = wait_until(lambda: finished(rig, job.id), timeout=10, what="the timeout")
        seen_after = time.monotonic() - submitted
        # The agent reported only once the process had exited: it is gone already.
        assert not rig.pids(job.id), "the timed-out process is still running"

        assert done.state == S.JOB_STATE_FAILED
        assert "timeout" in done.message, done.message
        ran_for = status_time(finals(done)[0]) - running_since(done)
        assert 1.0 <= ran_for <= 3.0, ran_for
        assert seen_after <= 5.0, seen_after
        assert len(finals(done)) == 1
        assert finals(done)[0].actor.startswith("agent:")


def test_server_fails_a_timed_out_job_whose_agent_is_frozen(tmp_path: Path) -> None:
    with Rig(tmp_path, *SERVER_FLAGS) as rig:
        agent = rig.agent("--slots", "1")
        job = rig.submit(["sleep", "60"], timeout=ONE_SECOND)
        # Freeze the agent as soon as the process is up and reported RUNNING (a run reports
        # it once it has lasted a moment), well before its 1 s timer fires.
        wait_until(
            lambda: rig.pids(job.id) and rig.get(job.id).state == S.JOB_STATE_RUNNING,
            timeout=15,
            interval=0.01,
            what="the process, RUNNING",
        )
        with frozen(agent):
            done = wait_until(lambda: finished(rig, job.id), timeout=10, what="the server")
            assert rig.pids(job.id), "nobody could have killed the process while frozen"

        assert done.state == S.JOB_STATE_FAILED
        assert "timeout" in done.message, done.message
        assert finals(done)[0].actor == "server"
        ran_for = status_time(finals(done)[0]) - running_since(done)
        # timeout 1 s + grace 1 s + at most one sweep interval 0.5 s, plus slack.
        assert 2.0 <= ran_for <= 3.2, ran_for

        # Thawed, the agent's timer fires: it kills the process and reports, and is refused.
        wait_until(lambda: not rig.pids(job.id), timeout=10, what="the agent to kill it")
        wait_until(
            lambda: re.search(
                rf"{job.id}/1: (JOB_STATE_|lease lost|no longer ours)", agent.output()
            ),
            timeout=10,
            what="the agent's late report",
        )
        after = rig.get(job.id)
        assert without_timings(after) == without_timings(done)
        assert len(finals(after)) == 1
        after = rig.get(job.id)
        assert without_timings(after) == without_timings(done)
        assert len(finals(after)) == 1


def test_late_complete_after_server_timeout_is_not_accepted(tmp_path: Path) -> None:
    with Rig(tmp_path, *SERVER_FLAGS) as rig:
        job = rig.submit(["sleep", "60"], timeout=ONE_SECOND)
        hand = HandAgent.register(rig.api, "hand", ["default"], 1)
        late = hand.claim_one()
        hand.start(late)  # RUNNING: the server's deadline is set; then the hand goes silent
        done = wait_until(lambda: finished(rig, job.id), timeout=10, what="the server")
        assert done.state == S.JOB_STATE_FAILED and finals(done)[0].actor == "server"

        # The process "finished" just after the server gave up on it: the agent says COMPLETED.
        try:
            response = hand.complete(late, S.JOB_STATE_COMPLETED, 0, "exit code 0")
            accepted = response.accepted
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            accepted = False
        assert without_timings(rig.get(job.id)) == without_timings(done)  # holds today
        assert not accepted, "the agent is told its COMPLETED was recorded; the job is FAILED"
