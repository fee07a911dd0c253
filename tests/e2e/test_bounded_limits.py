"""Bounded inputs and load: the message size limit and the concurrent-call limit answer
RESOURCE_EXHAUSTED with a clear message, and the server carries on serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gaffer.v1 import job_service_pb2
from tests.e2e.conftest import CALL_TIMEOUT, Api, duration, failure
from tests.helpers import ServerProc, wait_until

jpb = job_service_pb2
MiB = 1024 * 1024
LIMIT = 5


def test_a_request_over_the_message_limit_is_refused_and_the_server_carries_on(api: Api) -> None:
    # 17 MiB of stdin: over the server's 16 MiB message limit (and its 1 MiB stdin limit,
    # which must not even be reached: the transport refuses the message first).
    big = api.spec(("cat",))
    big.exec.stdin = b"x" * (17 * MiB)
    got = failure(lambda: api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=big), timeout=CALL_TIMEOUT))
    assert got.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in got.message and str(16 * MiB) in got.message, got.message

    job = api.submit(("echo", "still here"))
    assert api.get(job.id).id == job.id
    # Just under the limit, the message itself is accepted; the spec rules then speak.
    near = api.spec(("cat",))
    near.exec.stdin = b"x" * (15 * MiB)
    got = failure(lambda: api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=near), timeout=CALL_TIMEOUT))
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Api]:
    proc = ServerProc.launch(tmp_path / "data", "--max-concurrent-rpcs", str(LIMIT))
    client = Api.connect(proc.address)
    yield client
    client.close()
    proc.stop()


def test_calls_past_the_concurrency_limit_get_resource_exhausted_then_it_recovers(
    limited: Api,
) -> None:
    api = limited
    job = api.submit(("sleep", "60"))
    request = jpb.WaitJobRequest(job_id=job.id, timeout=duration(60))
    calls = [api.jobs.WaitJob.future(request, timeout=60) for _ in range(2 * LIMIT)]
    try:
        # LIMIT calls are held by the server; the others are refused at once.
        refused = wait_until(
            lambda: [c for c in calls if c.done()] if sum(c.done() for c in calls) >= LIMIT else [],
            timeout=CALL_TIMEOUT,
            what=f"{LIMIT} refused calls",
        )
        assert len(refused) == LIMIT
        for call in refused:
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit" in (call.details() or "").lower(), call.details()
        # Any other call is refused too while the limit is reached...
        got = failure(lambda: api.jobs.GetJob(jpb.GetJobRequest(job_id=job.id), timeout=5))
        assert got.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        stream = jpb.StreamJobEventsRequest(job_id=job.id)
        got = failure(lambda: api.jobs.StreamJobEvents(stream, timeout=5))
        assert got.code == grpc.StatusCode.RESOURCE_EXHAUSTED, got
        held = [c for c in calls if not c.done()]
        assert len(held) == LIMIT
    finally:
        for call in calls:
            call.cancel()

    # ... and served again once the held calls are gone (the server notices their cancellation).
    def served() -> bool:
        try:
            return api.get(job.id).id == job.id
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err  # type: ignore[attr-defined]
            return False

    wait_until(served, timeout=CALL_TIMEOUT, what="a GetJob served after the held calls ended")
    finished = api.jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id), timeout=CALL_TIMEOUT)
    assert finished.job.id == job.id
