"""Another language's client from the protos alone: Node.js with @grpc/grpc-js and proto-loader."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc_tools
import pytest

from gaffer.v1 import job_pb2
from tests.e2e.conftest import Api
from tests.helpers import AgentProc, ServerProc

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "node" / "client.js"
NODE = shutil.which("node")
MODULES = [ROOT / "node_modules" / "@grpc" / name for name in ("grpc-js", "proto-loader")]
GOOGLE_PROTOS = Path(grpc_tools.__file__).parent / "_proto"


def run_node_client(address: str, env: dict[str, str]) -> dict[str, object]:
    if NODE is None:
        pytest.skip("node is not installed; the Node.js client test needs it")
    missing = [str(m) for m in MODULES if not m.is_dir()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing; `make npm` (npm install) provides them")
    done = subprocess.run(
        [NODE, str(CLIENT), address],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"node client exited {done.returncode}:\n{done.stderr}"
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


@pytest.mark.parametrize(
    "google_protos",
    [
        pytest.param({}, id="well-known types bundled with protobufjs"),
        pytest.param({"GAFFER_GOOGLE_PROTOS": str(GOOGLE_PROTOS)}, id="google protos on disk"),
    ],
)
def test_node_client_submits_follows_and_sees_completed(
    server: ServerProc, agent: AgentProc, google_protos: dict[str, str]
) -> None:
    summary = run_node_client(server.address, google_protos)
    assert summary["state"] == "JOB_STATE_COMPLETED", summary
    assert summary["exit_code"] == 0
    assert summary["stdout"] == "hello from node\n"
    assert summary["stderr"] == "oops\n"
    assert summary["offset_gaps"] == 0
    assert summary["log_end"] == {
        "state": "JOB_STATE_COMPLETED",
        "exit_code": 0,
        "stdout_size": len("hello from node\n"),
        "stderr_size": len("oops\n"),
    }
    events = summary["events"]
    assert isinstance(events, list) and events
    states = [e["state"] for e in events]
    assert states[0] == "JOB_STATE_PENDING" and events[0]["type"] == "JOB_EVENT_TYPE_CREATED"
    assert states[-1] == "JOB_STATE_COMPLETED"
    assert "JOB_STATE_RUNNING" in states
    sequences = [int(e["sequence"]) for e in events]
    assert all(a < b for a, b in itertools.pairwise(sequences)), sequences
    assert summary["history"] == states, "events and history tell the same story"

    # The Python stubs see the same job, finished by the real agent.
    api = Api.connect(server.address)
    try:
        job = api.get(str(summary["job_id"]))
    finally:
        api.close()
    assert job.state == job_pb2.JOB_STATE_COMPLETED
    assert dict(job.spec.labels) == {"client": "node"}
    assert job.agent_id
