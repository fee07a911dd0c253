"""Health per service, server reflection, and `buf curl` through reflection with no proto files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.e2e.conftest import CALL_TIMEOUT, Api, failure

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
JOB_SERVICE = "gaffer.v1.JobService"
AGENT_SERVICE = "gaffer.v1.AgentService"


@pytest.mark.parametrize("service", ["", JOB_SERVICE, AGENT_SERVICE])
def test_health_is_serving(api: Api, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    fail = failure(
        lambda: stub.Check(
            health_pb2.HealthCheckRequest(service="gaffer.v1.Nope"), timeout=CALL_TIMEOUT
        )
    )
    assert fail.code == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_serving(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=JOB_SERVICE), timeout=CALL_TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_and_describes_both_services(api: Api) -> None:
    database = ProtoReflectionDescriptorDatabase(api.channel)
    services = set(database.get_services())
    assert {JOB_SERVICE, AGENT_SERVICE} <= services
    assert "grpc.health.v1.Health" in services
    pool = descriptor_pool.DescriptorPool(database)
    jobs = pool.FindServiceByName(JOB_SERVICE)
    assert {m.name for m in jobs.methods} >= {
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "WaitJob",
        "StreamJobEvents",
        "StreamLogs",
        "ListArtifacts",
        "ReadArtifact",
    }
    agents = pool.FindServiceByName(AGENT_SERVICE)
    assert {m.name for m in agents.methods} >= {
        "RegisterAgent",
        "ClaimJob",
        "Heartbeat",
        "UpdateJobStatus",
        "PushLogs",
        "UploadArtifact",
        "CompleteJob",
        "ListAgents",
        "DrainAgent",
    }
    # Message types resolve through reflection too, imports (Timestamp, Duration) included.
    job = pool.FindMessageTypeByName("gaffer.v1.Job")
    assert job.fields_by_name["create_time"].message_type.full_name == "google.protobuf.Timestamp"
    events = jobs.methods_by_name["StreamJobEvents"]
    assert events.server_streaming and not events.client_streaming


def _buf_curl(address: str, method: str, data: dict[str, object]) -> subprocess.CompletedProcess:
    if not BUF.exists():
        pytest.skip(f"{BUF} is missing; `make npm` (npm install) provides buf")
    return subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--data",
            json.dumps(data),
            f"http://{address}/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_buf_curl_calls_get_job_through_reflection(api: Api) -> None:
    job = api.submit(["echo", "hi from buf"], labels={"via": "buf-curl"})
    done = _buf_curl(api.address, f"{JOB_SERVICE}/GetJob", {"jobId": job.id})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["job"]["id"] == job.id
    assert printed["job"]["state"] == "JOB_STATE_PENDING"
    assert printed["job"]["spec"]["exec"]["argv"] == ["echo", "hi from buf"]
    assert printed["job"]["spec"]["labels"] == {"via": "buf-curl"}


def test_buf_curl_shows_the_error_of_an_unknown_job(api: Api) -> None:
    done = _buf_curl(api.address, f"{JOB_SERVICE}/GetJob", {"jobId": "j-unknown"})
    assert done.returncode != 0
    assert "not_found" in (done.stdout + done.stderr).lower()
