"""A replica SIGKILLed mid-run (issue 4, test 3): its agents and followers move to the other.

Replicas A and B share one database. The agents and the followers are given both addresses,
A first, so they start on A (``pick_first``). Jobs are running and streaming output, and a
log follower and an event follower are on A, when A is SIGKILLed. Then:

- the agents' heartbeats reach B, so no lease lapses: every running job ends COMPLETED on
  attempt 1, with one CLAIMED and one final status (none lost, none doubled); their output is
  shipped to B, and jobs submitted after the kill are claimed through B;
- a job whose claim A committed but whose answer died with A is held by no agent: its lease
  lapses and it is claimed again (the jobs not yet running have a retry policy for that). Such
  an attempt never ran: every job ran exactly once (one RUNNING) and finished once.
- the followers resume on B from their cursors: the log follower's bytes equal the stored
  output exactly (nothing repeated or missing), the event follower's sequence has no gap.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gaffer import Job, JobState, SyncClient
from gaffer.client import LogChunk, LogStream
from tests.chaos.procs import launch_agent, stop_all
from tests.e2e.pg_fixtures import (  # noqa: F401
    Replicas,
    pg_database_fixture,
    pg_url_fixture,
    replicas_fixture,
)
from tests.helpers import AgentProc, wait_until

# Leases short enough that an agent which failed to move would lose its attempts in the test.
FLAGS = ("--lease-ttl", "3", "--heartbeat-interval", "0.5", "--sweep-interval", "0.5")
RUNNING_JOBS = 4
STARTED = (JobState.VALIDATING, JobState.RUNNING, JobState.UPLOADING, JobState.COMPLETED)
LINES = 400


def streaming_job(gate: Path) -> list[str]:
    """Prints 100 lines, waits for ``gate``, then prints the rest a little at a time."""
    return [
        "sh",
        "-c",
        f'i=1; while [ $i -le {LINES} ]; do echo "line $i $GAFFER_JOB_ID"; '
        f"if [ $i -eq 100 ]; then while [ ! -e {gate} ]; do sleep 0.02; done; fi; "
        "if [ $((i % 20)) -eq 0 ]; then sleep 0.05; fi; i=$((i+1)); done; echo done >&2",
    ]


def expected_stdout(job_id: str) -> bytes:
    return "".join(f"line {i} {job_id}\n" for i in range(1, LINES + 1)).encode()


def _story(job_id: str, job: Job, agents: list[AgentProc]) -> str:
    """A job's history and what the agents logged about it, for a failure to explain."""
    lines = [f"{job_id} ({job.state.name}, attempt {job.attempt}):"]
    lines += [
        f"  {s.state.name} attempt {s.attempt} by {s.actor}: {s.message}" for s in job.history
    ]
    for agent in agents:
        lines += [f"  [{agent.name}] {line}" for line in agent.lines if job_id in line]
    return "\n".join(lines)


class Follower:
    """Follows one job's logs and events in threads, through a client on several replicas."""

    def __init__(self, client: SyncClient, job_id: str) -> None:
        self.chunks: list[LogChunk] = []
        self.sequences: list[int] = []
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._logs, args=(client, job_id), daemon=True),
            threading.Thread(target=self._events, args=(client, job_id), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _logs(self, client: SyncClient, job_id: str) -> None:
        try:
            for chunk in client.logs(job_id, follow=True):
                self.chunks.append(chunk)
        except BaseException as error:
            self.errors.append(error)

    def _events(self, client: SyncClient, job_id: str) -> None:
        try:
            for event in client.events(job_id):
                self.sequences.append(event.sequence)
        except BaseException as error:
            self.errors.append(error)

    def stdout(self) -> bytes:
        out = b""
        for chunk in self.chunks:
            if chunk.stream == LogStream.STDOUT:
                assert chunk.offset == len(out), f"chunk at {chunk.offset}, expected {len(out)}"
                out += chunk.data
        return out

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a follower did not end with its job"
        assert not self.errors, self.errors


@pytest.mark.timeout(120)
def test_replica_killed_mid_run_agents_and_followers_move(
    replicas: Callable[..., Replicas], tmp_path: Path
) -> None:
    group = replicas(2, *FLAGS)
    both = group.addresses()  # A first
    agents = [launch_agent(both, f"mover-{n}", "--slots", "4") for n in range(2)]
    gate = tmp_path / f"gate-{uuid.uuid4().hex}"
    try:
        with SyncClient(group[1].address) as on_b, SyncClient(both) as follower_client:
            # Every agent's first connection is A: the agents listed on A are ours.
            running = [on_b.submit(streaming_job(gate)).id for _ in range(RUNNING_JOBS)]
            followers = {job_id: Follower(follower_client, job_id) for job_id in running}
            wait_until(
                lambda: all(
                    f.stdout().count(b"\n") >= 100 and len(f.sequences) >= 4
                    for f in followers.values()
                ),
                timeout=30,
                what="every job to print its first 100 lines to its follower",
            )
            assert all(on_b.get_job(j).state == JobState.RUNNING for j in running)
            pending = [on_b.submit(streaming_job(gate), retry=3).id for _ in range(4)]

            killed_at = time.monotonic()
            group.kill(0)
            gate.touch()
            after = [on_b.submit(["sh", "-c", f"echo after {n}"], retry=3).id for n in range(8)]

            jobs = {job_id: on_b.wait(job_id, timeout=60) for job_id in running + pending + after}
            recovered = time.monotonic() - killed_at
            for follower in followers.values():
                follower.join(timeout=30)
    finally:
        stop_all(agents)

    lost_claims = 0
    with SyncClient(group[1].address) as on_b:
        for job_id, job in jobs.items():
            states = [status.state for status in job.history]
            why = _story(job_id, job, agents)
            assert job.state == JobState.COMPLETED, why
            assert states.count(JobState.COMPLETED) == 1, why
            assert states.count(JobState.RUNNING) == 1, f"it ran more than once: {why}"
            assert states.count(JobState.CLAIMED) == job.attempt, why
            if job_id in running:
                assert job.attempt == 1, f"{job_id} was retried: a lease lapsed ({states})"
            else:
                # Earlier attempts, if any, are claims whose answer was lost with A.
                lost_claims += job.attempt - 1
                ran = {status.attempt for status in job.history if status.state in STARTED}
                assert ran <= {job.attempt}, f"{job_id}: an abandoned attempt ran ({job.history})"
            if job_id in running or job_id in pending:
                stored = b"".join(c.data for c in on_b.logs(job_id, streams=["stdout"]))
                assert stored == expected_stdout(job_id)
        for job_id, follower in followers.items():
            assert follower.stdout() == expected_stdout(job_id), "the follower lost or repeated"
            history = [e.sequence for e in on_b.events(job_id, follow=False)]
            assert follower.sequences == history, "the event follower has a gap or a repeat"
    print(
        f"A killed; {len(jobs)} jobs finished on B {recovered:.2f}s later; "
        f"claims lost with A and made again: {lost_claims}"
    )
    # Both agents were on A (their calls broke when it died) and carried on, on B.
    for agent in agents:
        print(f"--- {agent.name}\n" + "\n".join(a for a in agent.lines if "WARNING" in a))
        assert "UNAVAILABLE" in agent.output(), agent.output()
        assert agent.popen.returncode == 0, agent.output()
