"""Function jobs end to end: a real server, a real `gaffer agent --functions MODULE`, the client.

The module the agent imports is written by the test (``user_tasks``), so the callables that
raise, refuse retries, block or return something odd are the test's own.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gaffer import JobState, LogStream, SyncClient
from gaffer.cli._args import EXIT_FAILED
from gaffer.client import RetryPolicy
from tests.helpers import AgentProc, ServerProc, gaffer_command, wait_until

TASKS = textwrap.dedent(
    """
    import pathlib
    import time

    from gaffer.agent import NotRetryable, function

    @function("user.boom")
    def boom(what):
        raise ValueError(f"boom: {what}")

    @function("user.refuse")
    async def refuse():
        raise NotRetryable("this input will never work")

    @function("user.odd")
    def odd():
        return {1, 2}

    @function("user.wait_for")
    def wait_for(path):
        # A plain (blocking) function: it runs in a thread, the agent's loop stays free.
        while not pathlib.Path(path).exists():
            time.sleep(0.01)
        return "gate seen"
    """
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, AgentProc]]:
    """One server and one agent that imported ``user_tasks`` (default slots with --functions)."""
    root = tmp_path_factory.mktemp("functions")
    (root / "user_tasks.py").write_text(TASKS)
    server = ServerProc.launch(root / "data")
    argv = gaffer_command(
        "agent", "--server", server.address, "--name", "fn-agent", "--functions", "user_tasks"
    )
    agent = AgentProc.start(argv, env={"PYTHONPATH": str(root)})
    assert isinstance(agent, AgentProc)
    agent.wait_for_line(re.compile("registered"))
    yield server, agent
    agent.stop()
    server.stop()


@pytest.fixture
def client(served: tuple[ServerProc, AgentProc]) -> Iterator[SyncClient]:
    with SyncClient(served[0].address) as c:
        yield c


def claims(job_history: tuple[object, ...]) -> int:
    return sum(1 for s in job_history if getattr(s, "state", None) == JobState.CLAIMED)


def test_noop_completes_without_validating(client: SyncClient) -> None:
    job = client.submit_function("gaffer.noop").wait(timeout=10)
    assert job.state == JobState.COMPLETED
    assert job.result is None and job.exit_code is None
    assert [s.state for s in job.history] == [
        JobState.PENDING,
        JobState.CLAIMED,
        JobState.RUNNING,
        JobState.COMPLETED,
    ]


def test_echo_returns_positional_and_keyword_arguments(client: SyncClient) -> None:
    positional = client.submit_function("gaffer.echo", 1, "two", [3], {"four": 4})
    keyword = client.submit_function("gaffer.echo", name="x", n=2)
    assert positional.wait(timeout=10).result == [1, "two", [3], {"four": 4}]
    job = keyword.wait(timeout=10)
    assert (job.state, job.result) == (JobState.COMPLETED, {"name": "x", "n": 2})
    assert client.get_job(job.id).result == {"name": "x", "n": 2}, "the result is stored"
    with pytest.raises(TypeError):
        client.submit_function("gaffer.echo", 1, n=2)


def test_an_exception_fails_the_job_with_its_type_and_traceback_and_is_retried(
    client: SyncClient,
) -> None:
    handle = client.submit_function_with("user.boom", ["bad"], retry=RetryPolicy(max_attempts=2))
    job = handle.wait(timeout=15)
    assert (job.state, job.message, job.exit_code) == (
        JobState.FAILED,
        "ValueError: boom: bad",
        None,
    )
    assert (job.attempt, claims(job.history)) == (2, 2), "an ordinary exception is retried"
    stderr = b"".join(c.data for c in client.logs(job.id, streams=[LogStream.STDERR]))
    assert b"Traceback (most recent call last)" in stderr
    assert b"ValueError: boom: bad" in stderr


def test_not_retryable_fails_at_once_despite_the_retry_policy(client: SyncClient) -> None:
    handle = client.submit_function_with("user.refuse", retry=RetryPolicy(max_attempts=3))
    job = handle.wait(timeout=10)
    assert (job.state, job.message) == (JobState.FAILED, "NotRetryable: this input will never work")
    assert (job.attempt, claims(job.history)) == (1, 1)


def test_an_unknown_function_fails_and_is_not_retried(client: SyncClient) -> None:
    handle = client.submit_function_with("user.missing", retry=RetryPolicy(max_attempts=3))
    job = handle.wait(timeout=10)
    assert (job.state, job.message) == (
        JobState.FAILED,
        "no function named 'user.missing' on agent fn-agent",
    )
    assert (job.attempt, claims(job.history)) == (1, 1)


def test_a_result_that_is_not_json_fails_clearly(client: SyncClient) -> None:
    job = client.submit_function("user.odd").wait(timeout=10)
    assert job.state == JobState.FAILED
    assert "not JSON-serialisable" in job.message and job.result is None


def test_a_blocking_function_does_not_hold_up_other_jobs(
    client: SyncClient, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    blocked = client.submit_function("user.wait_for", str(gate))
    wait_until(lambda: blocked.get().state == JobState.RUNNING, what="the blocking job running")
    # While a thread of the agent blocks, its loop still claims, runs and reports other jobs.
    assert client.submit_function("gaffer.echo", "free").wait(timeout=10).result == ["free"]
    assert blocked.get().state == JobState.RUNNING
    gate.touch()
    assert blocked.wait(timeout=10).result == "gate seen"


def test_a_timeout_fails_the_call(client: SyncClient) -> None:
    started = time.monotonic()
    job = client.submit_function_with("gaffer.sleep", [60], timeout=0.5).wait(timeout=10)
    assert (job.state, job.message) == (JobState.FAILED, "timeout after 0.5s")
    assert time.monotonic() - started < 5


def test_cancel_stops_a_running_function_at_once(client: SyncClient) -> None:
    handle = client.submit_function("gaffer.sleep", 60)
    wait_until(lambda: handle.get().state == JobState.RUNNING, what="the sleep running")
    started = time.monotonic()
    client.cancel(handle.id, reason="test")
    job = handle.wait(timeout=10)
    assert job.state == JobState.CANCELED
    assert time.monotonic() - started < 2


def test_cli_submits_a_function_and_prints_its_result(served: tuple[ServerProc, AgentProc]) -> None:
    server = served[0].address
    argv = ["--server", server, "submit", "--wait", "--function", "gaffer.echo", "--args"]
    done = subprocess.run(
        gaffer_command(*argv, '{"a": [1, 2]}'), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    job_id, result = done.stdout.splitlines()
    assert job_id.startswith("j_") and json.loads(result) == {"a": [1, 2]}

    argv = ["--server", server, "submit", "--wait", "--function", "user.missing"]
    failed = subprocess.run(gaffer_command(*argv), capture_output=True, text=True, timeout=30)
    assert failed.returncode == EXIT_FAILED


def test_a_quick_call_reports_running_with_its_outcome_and_a_slow_one_while_it_runs(
    client: SyncClient,
) -> None:
    quick = client.submit_function("gaffer.noop").wait(timeout=10)
    running, finished = quick.history[-2], quick.history[-1]
    assert (running.state, finished.state) == (JobState.RUNNING, JobState.COMPLETED)
    assert running.time <= finished.time
    slow = client.submit_function("gaffer.sleep", 30)
    wait_until(lambda: slow.get().state == JobState.RUNNING, what="RUNNING while it sleeps")
    slow.cancel()


def test_submit_function_many_runs_each_call_and_keeps_the_order(client: SyncClient) -> None:
    calls: list[list[int] | dict[str, int]] = [[i] for i in range(5)] + [{"n": 5}]
    handles = client.submit_function_many("gaffer.echo", calls, labels={"batch": "yes"})
    assert len({h.id for h in handles}) == 6
    jobs = [h.wait(timeout=10) for h in handles]
    assert [j.result for j in jobs] == calls
    assert all(j.spec.labels == {"batch": "yes"} for j in jobs)
    with pytest.raises(TypeError, match="request_id"):
        client.submit_function_many("gaffer.echo", [[1]], request_id="one-for-all")
    assert client.submit_function_many("gaffer.echo", []) == []
