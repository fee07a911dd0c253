"""Three replicas on one PostgreSQL database (issue 4, tests 1 and 2).

Replicas A, B and C share one database and one data dir. An agent is connected to A and another
to B, each with a label that jobs select, so every job's replica path is known: submitted on C,
claimed through A or B, followed on B, read back on C. Nothing here works unless claims,
wake-ups, log follows and cancels cross replicas through the database.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gaffer import JobState, SyncClient
from tests.chaos.procs import is_alive, launch_agent, stop_all
from tests.e2e.pg_fixtures import (  # noqa: F401
    Replicas,
    pg_database_fixture,
    pg_url_fixture,
    replicas_fixture,
)
from tests.helpers import AgentProc, wait_until

CLAIMED = re.compile(r"claimed (\S+) attempt (\d+)$")
FINISHED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)
JOBS = 24


def claims_by_agent(agents: list[AgentProc]) -> dict[tuple[str, int], list[str]]:
    """Which agents say they claimed each (job, attempt), from their -v logs."""
    found: dict[tuple[str, int], list[str]] = {}
    for agent in agents:
        for line in list(agent.lines):
            match = CLAIMED.search(line)
            if match:
                found.setdefault((match.group(1), int(match.group(2))), []).append(agent.name)
    return found


@pytest.mark.timeout(120)
def test_three_replicas_run_each_job_once_and_follow_across(
    replicas: Callable[..., Replicas], tmp_path: Path
) -> None:
    group = replicas(3)
    a, b, c = group[0].address, group[1].address, group[2].address
    agents = [
        launch_agent(a, "agent-on-a", "--slots", "4", "--label", "site=a"),
        launch_agent(b, "agent-on-b", "--slots", "4", "--label", "site=b"),
    ]
    try:
        with SyncClient(c) as on_c, SyncClient(b) as on_b:
            # Every job submitted on C runs once, half through A's agent, half through B's.
            started = time.monotonic()
            handles = {
                on_c.submit(
                    ["sh", "-c", f"echo job {n}"], node_selector={"site": "ab"[n % 2]}
                ).id: "ab"[n % 2]
                for n in range(JOBS)
            }
            jobs = {job_id: on_c.wait(job_id, timeout=60) for job_id in handles}
            ran = time.monotonic() - started
            for job in jobs.values():
                states = [status.state for status in job.history]
                assert job.state == JobState.COMPLETED, job
                assert states.count(JobState.CLAIMED) == 1, states
                assert sum(state in FINISHED for state in states) == 1, states
                assert job.attempt == 1
            by = claims_by_agent(agents)
            assert set(by) == {(job_id, 1) for job_id in handles}
            assert all(len(names) == 1 for names in by.values()), by
            for job_id, site in handles.items():
                assert by[(job_id, 1)] == [f"agent-on-{site}"]
            print(f"{JOBS} jobs submitted on C ran on A's and B's agents in {ran:.2f}s")
            print("claims per agent:", Counter(names[0] for names in by.values()))

            # A follower on B sees the output of a job running on A's agent, live: its first
            # line arrives while the job is RUNNING (held there by a gate the test opens).
            gate = tmp_path / f"gate-{uuid.uuid4().hex}"
            script = f"echo first; while [ ! -e {gate} ]; do sleep 0.02; done; echo second"
            handle = on_c.submit(["sh", "-c", script], node_selector={"site": "a"})
            follower = on_b.logs(handle.id, follow=True)
            first = next(follower)
            assert first.data == b"first\n"
            assert on_c.get_job(handle.id).state == JobState.RUNNING
            gate.touch()
            rest = b"".join(chunk.data for chunk in follower)
            assert first.data + rest == b"first\nsecond\n"
            assert follower.end is not None and follower.end.state == JobState.COMPLETED
            assert claims_by_agent(agents)[(handle.id, 1)] == ["agent-on-a"]

            # An artifact uploaded via A (by A's agent) reads back, whole, via C.
            payload = os.urandom(3 * 1024 * 1024 + 17)
            source = tmp_path / "payload.bin"
            source.write_bytes(payload)
            made = on_c.submit(
                ["sh", "-c", f"mkdir out && cp {source} out/payload.bin"],
                node_selector={"site": "a"},
                outputs=["out/*"],
            )
            assert made.wait(timeout=30).state == JobState.COMPLETED
            (artifact,) = on_c.artifacts(made.id)
            assert artifact.name == "out/payload.bin"
            assert artifact.read_bytes() == payload
            assert claims_by_agent(agents)[(made.id, 1)] == ["agent-on-a"]
    finally:
        stop_all(agents)


@pytest.mark.timeout(60)
def test_cancel_through_b_reaches_an_agent_on_a_at_once(
    replicas: Callable[..., Replicas],
) -> None:
    # Heartbeats every 10 s: a cancel that waited for the next one would take far over 2 s.
    group = replicas(2, "--heartbeat-interval", "10")
    agent = launch_agent(group[0].address, "agent-on-a", "--slots", "2")
    try:
        with SyncClient(group[1].address) as on_b:
            handle = on_b.submit(["sh", "-c", "echo $$; exec sleep 300"])
            pid_line = next(on_b.logs(handle.id, follow=True))
            pid = int(pid_line.text)
            assert is_alive(pid)
            wait_until(lambda: handle.get().state == JobState.RUNNING, timeout=10, what="RUNNING")

            started = time.monotonic()
            on_b.cancel(handle.id, reason="from B")
            job = handle.wait(timeout=10)
            canceled = time.monotonic() - started
            wait_until(lambda: not is_alive(pid), timeout=2.0, what="the job's process to die")
            gone = time.monotonic() - started
        print(f"cancel through B: CANCELED after {canceled:.3f}s, process gone after {gone:.3f}s")
        assert job.state == JobState.CANCELED
        assert canceled < 2.0, f"CANCELED after {canceled:.2f}s"
        assert gone < 2.0, f"process gone after {gone:.2f}s"
        assert job.canceled_by.startswith("client:")
        assert job.history[-1].actor == "agent:agent-on-a", "the agent on A did not report it"
    finally:
        stop_all([agent])
