"""Graceful shutdown (SPEC, Operating it): on SIGTERM health goes NOT_SERVING, following
streams end with UNAVAILABLE so their clients resume elsewhere, and the process exits 0
within its grace."""

from __future__ import annotations

import signal
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gaffer.v1 import job_pb2, job_service_pb2
from tests.e2e.conftest import Api
from tests.helpers import ServerProc

jpb = job_service_pb2
GRACE = 5.0  # ServerConfig.shutdown_grace


def test_sigterm_ends_following_streams_with_unavailable_and_exits_0(
    server: ServerProc, api: Api
) -> None:
    agent = api.agent()
    job = api.submit(("sleep", "600"))
    a = agent.claim_one()
    agent.start(a)
    agent.push(a, [(job_pb2.LOG_STREAM_STDOUT, 0, b"working\n")])

    logs = api.jobs.StreamLogs(jpb.StreamLogsRequest(job_id=job.id, follow=True), timeout=60)
    events = api.jobs.StreamJobEvents(jpb.StreamJobEventsRequest(job_id=job.id), timeout=60)
    everything = api.jobs.StreamJobEvents(jpb.StreamJobEventsRequest(from_now=True), timeout=60)
    watch = health_pb2_grpc.HealthStub(api.channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=60
    )
    assert next(logs).chunk.data == b"working\n"
    assert next(events).event.state == job_pb2.JOB_STATE_PENDING
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

    server.signal(signal.SIGTERM)
    started = time.monotonic()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING

    for name, stream in (("logs", logs), ("events", events), ("all events", everything)):
        try:
            for _ in stream:
                pass  # the rest of the history, if any
            raise AssertionError(f"the {name} stream ended without an error")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (name, err)  # type: ignore[attr-defined]
            assert "shutting down" in (err.details() or ""), err.details()  # type: ignore[attr-defined]
    ended = time.monotonic() - started

    code = server.popen.wait(GRACE + 3)
    exited = time.monotonic() - started
    assert code == 0, server.output()
    print(f"\nstreams ended UNAVAILABLE {ended:.2f}s after SIGTERM; exit 0 after {exited:.2f}s")
