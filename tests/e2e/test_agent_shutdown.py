"""The agent process under SIGTERM and across a server restart, with real processes only.

- SIGTERM: the agent claims nothing more, lets running jobs finish within --stop-grace, then
  kills the rest and hands them back (ReleaseJob): they are queued again at once, not after a
  lease lapses, and another agent runs them as the next attempt. The agent exits 0.
- Server SIGKILL and restart (same port, same data dir): the running job is not killed, its
  output reaches the server exactly once, and it completes as attempt 1.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gaffer import JobState, SyncClient
from tests.e2e.test_cancel import processes_with
from tests.helpers import LISTENING, AgentProc, Proc, ServerProc, gaffer_command, wait_until


def launch_agent(server: str, name: str, *extra: str) -> AgentProc:
    """`gaffer -v agent`: INFO logs, so a test can see when the agent starts stopping."""
    argv = gaffer_command("-v", "agent", "--server", server, "--name", name, *extra)
    agent = AgentProc.start(argv)
    assert isinstance(agent, AgentProc)
    agent.name = name
    agent.wait_for_line(re.compile("registered"))
    return agent


@pytest.fixture
def agents(server: ServerProc) -> Iterator[Callable[..., AgentProc]]:
    started: list[AgentProc] = []

    def start(name: str, *extra: str) -> AgentProc:
        agent = launch_agent(server.address, name, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def unique_sleep() -> str:
    """A sleep duration no other process on the machine uses, to find ours in /proc."""
    return f"60.{uuid.uuid4().int % 10**6:06d}"


def test_sigterm_hands_a_running_job_back_at_once_and_another_agent_runs_it(
    server: ServerProc, agents: Callable[..., AgentProc]
) -> None:
    marker = unique_sleep()
    first = agents("first", "--stop-grace", "1")
    with SyncClient(server.address) as client:
        # Attempt 1 sleeps until it is killed; attempt 2 finishes at once.
        script = f'[ "$GAFFER_ATTEMPT" = 1 ] && exec sleep {marker}; echo attempt $GAFFER_ATTEMPT'
        handle = client.submit(["sh", "-c", script])
        wait_until(lambda: handle.get().state == JobState.RUNNING, what="attempt 1 running")
        wait_until(lambda: processes_with(marker), what="the sleep started")

        started = time.monotonic()
        first.signal(signal.SIGTERM)
        job = wait_until(
            lambda: (j := handle.get()).state == JobState.PENDING and j,
            timeout=5,
            what="the job queued again",
        )
        requeued_after = time.monotonic() - started
        assert first.popen.wait(timeout=5) == 0, first.output()

        # Queued again by the agent's word (grace 1 s + TERM/KILL), long before a 15 s lease.
        assert requeued_after < 4, f"{requeued_after:.1f}s"
        last = job.history[-1]
        assert last.state == JobState.PENDING and last.attempt == 1
        assert "released" in last.message and "agent shutting down" in last.message, last.message
        assert JobState.FAILED not in [s.state for s in job.history]
        assert not processes_with(marker), "the killed job's process outlived the agent"

        second = agents("second")
        done = handle.wait(timeout=15)
    assert (done.state, done.attempt, done.exit_code) == (JobState.COMPLETED, 2, 0)
    assert done.agent_id != job.history[1].agent_id
    assert [s.attempt for s in done.history if s.state == JobState.CLAIMED] == [1, 2]
    assert second.popen.poll() is None


def test_sigterm_lets_a_short_job_finish_and_claims_nothing_more(
    server: ServerProc, agents: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = agents("stopper", "--stop-grace", "20", "--slots", "2")
    gate = tmp_path / "gate"
    with SyncClient(server.address) as client:
        short = client.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done; echo ok"])
        wait_until(lambda: short.get().state == JobState.RUNNING, what="the short job running")

        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        agent.wait_for_line(re.compile(r"stopping: 1 attempts running"))
        later = client.submit(["true"])  # a free slot, but the agent is stopping
        gate.touch()
        job = short.wait(timeout=15)
        assert agent.popen.wait(timeout=10) == 0, agent.output()
        elapsed = time.monotonic() - started

        assert (job.state, job.attempt, job.exit_code) == (JobState.COMPLETED, 1, 0)
        assert b"".join(c.data for c in client.logs(job.id)) == b"ok\n"
        assert elapsed < 10, f"the agent waited {elapsed:.1f}s, not just for the job"
        pending = later.get()
        assert pending.state == JobState.PENDING
        assert [s.state for s in pending.history] == [JobState.PENDING], "claimed while stopping"


def test_server_killed_and_restarted_mid_job_loses_and_repeats_no_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server: Proc = ServerProc.launch(data)
    assert isinstance(server, ServerProc)
    address = server.address
    agent = launch_agent(address, "survivor")
    try:
        with SyncClient(address) as client:
            script = "for i in $(seq 30); do echo line $i; sleep 0.1; done"
            handle = client.submit(["sh", "-c", script])
            wait_until(
                lambda: b"line 1\n" in b"".join(c.data for c in client.logs(handle.id)),
                what="the first line stored",
            )
            server.popen.kill()
            server.popen.wait(timeout=10)
            server = Proc.start(
                gaffer_command("server", "--listen", address, "--data-dir", str(data))
            )
            server.wait_for_line(LISTENING)

            job = handle.wait(timeout=30)
            stdout = b"".join(c.data for c in client.logs(job.id))
        assert (job.state, job.attempt, job.exit_code) == (JobState.COMPLETED, 1, 0), job.message
        assert stdout == b"".join(f"line {i}\n".encode() for i in range(1, 31))
        assert [s.state for s in job.history].count(JobState.CLAIMED) == 1
        assert agent.popen.poll() is None, "the agent carried on"
        assert any("heartbeat failed" in line or "broke" in line for line in agent.lines), (
            "the agent never noticed the server was gone"
        )
    finally:
        agent.stop()
        server.stop()
