"""`gaffer submit --follow` as a user runs it: live output, exact lines, the job's exit code."""

from __future__ import annotations

import json
import subprocess
import uuid

from gaffer import JobState, SyncClient
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401
from tests.helpers import AgentProc, ServerProc, gaffer_command

TWENTY_LINES = "for i in $(seq 20); do echo line $i; sleep 0.1; done"


def run_cli(
    server: ServerProc, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gaffer_command("--server", server.address, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_follow_streams_live_then_exits_with_the_job(server: ServerProc, agent: AgentProc) -> None:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        gaffer_command(
            "--server",
            server.address,
            "submit",
            "--follow",
            "--label",
            f"run={marker}",
            "--",
            "sh",
            "-c",
            TWENTY_LINES,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first == "line 1\n"
    # The first line arrived while the job was still running: live, not replayed at the end.
    with SyncClient(server.address) as client:
        [job] = list(client.list_jobs(labels={"run": marker}))
        assert job.state == JobState.RUNNING, job.state
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert first + rest == "".join(f"line {i}\n" for i in range(1, 21))


def test_follow_exits_with_the_jobs_exit_code(server: ServerProc, agent: AgentProc) -> None:
    result = run_cli(
        server, "submit", "--follow", "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr


def test_submit_json_then_wait_get_and_list(server: ServerProc, agent: AgentProc) -> None:
    submitted = run_cli(server, "submit", "--json", "--label", "kind=demo", "--", "echo", "hi")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    job_id = job["id"]
    assert job["spec"]["labels"] == {"kind": "demo"}

    waited = run_cli(server, "wait", job_id, "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "JOB_STATE_COMPLETED"

    got = run_cli(server, "get", job_id, "--json")
    history = [s["state"] for s in json.loads(got.stdout)["history"]]
    assert history == [
        "JOB_STATE_PENDING",
        "JOB_STATE_CLAIMED",
        "JOB_STATE_VALIDATING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_COMPLETED",
    ]

    logs = run_cli(server, "logs", job_id)
    assert logs.stdout == "hi\n"

    table = run_cli(server, "list", "--label", "kind=demo")
    assert job_id in table.stdout and "COMPLETED" in table.stdout
    listed = json.loads(run_cli(server, "list", "--json", "--state", "completed").stdout)
    assert [j["id"] for j in listed] == [job_id]


def test_bad_input_is_a_clear_error_not_a_traceback(server: ServerProc) -> None:
    result = run_cli(server, "get", "j_does_not_exist")
    assert result.returncode == 1
    assert "not found" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(server, "submit", "--label", "bad key=x", "--", "true")
    assert result.returncode == 2
    assert "spec.labels" in result.stderr and "Traceback" not in result.stderr
