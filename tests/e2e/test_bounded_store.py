"""A fault in the store surfaces as UNAVAILABLE (never INTERNAL or UNKNOWN), health says
NOT_SERVING while the store cannot take writes, and the server recovers by itself.

The fault is real: another process holds SQLite's write lock (``BEGIN EXCLUSIVE``) for longer
than the server's busy timeout, as a backup tool or a stray ``sqlite3`` shell would.
"""

from __future__ import annotations

import sqlite3
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gaffer.v1 import job_service_pb2
from tests.e2e.conftest import Api, failure
from tests.helpers import ServerProc, wait_until

jpb = job_service_pb2
H = health_pb2.HealthCheckResponse


def test_a_locked_database_is_unavailable_not_internal_and_the_server_recovers(
    server: ServerProc, api: Api
) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)

    def status(service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return health.Check(request, timeout=5).status  # type: ignore[no-any-return]

    before = api.submit(("true",))
    assert status() == H.SERVING

    lock = sqlite3.connect(server.data_dir / "gaffer.db", isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        got = failure(
            lambda: api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=api.spec(("true",))), timeout=20)
        )
        took = time.monotonic() - started
        assert got.code == grpc.StatusCode.UNAVAILABLE, got
        assert got.reason == "STORE_UNAVAILABLE" and "locked" in got.message, got
        # Reads do not need the write lock: they keep answering.
        assert api.get(before.id).id == before.id
        wait_until(lambda: status() == H.NOT_SERVING, timeout=20, what="health NOT_SERVING")
        assert status("gaffer.v1.JobService") == H.NOT_SERVING
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    wait_until(lambda: status() == H.SERVING, timeout=20, what="health SERVING again")
    after = api.submit(("true",))
    assert api.get(after.id).id == after.id
    print(f"\nSubmitJob answered UNAVAILABLE after {took:.1f}s (the busy timeout)")
