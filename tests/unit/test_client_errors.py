"""Error mapping and retries, against a scripted peer served by pytest-grpc.

The server here is not Gaffer's: it answers each RPC with a scripted rich status, so the
client's mapping of codes and details (ErrorInfo, BadRequest) and its UNAVAILABLE retries can
be checked for both the async and the sync client. pytest-grpc hosts it on a synchronous
``grpc.server`` (its fixtures ``grpc_add_to_server``, ``grpc_servicer``, ``grpc_server`` and
``grpc_addr``), which is exactly what a stand-in peer needs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gaffer import (
    CallRetry,
    Client,
    FailedPreconditionError,
    InvalidSpecError,
    JobNotFoundError,
    JobState,
    JobTimeoutError,
    RPCError,
    SyncClient,
    UnavailableError,
)
from gaffer.cli import main
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

FAST = CallRetry(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))


def _info(reason: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="gaffer.dev", metadata={"k": "v"})


class FailingJobs(job_service_pb2_grpc.JobServiceServicer):
    """Answers with rich errors; ListJobs is UNAVAILABLE ``unavailable`` times, then works."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.unavailable = 0
        self.calls: dict[str, int] = {}
        self.request_ids: list[str] = []

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("GetJob")
        context.abort_with_status(
            _status(code_pb2.NOT_FOUND, f"job {request.job_id} not found", _info("JOB_NOT_FOUND"))
        )

    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("SubmitJob")
        self.request_ids.append(request.request_id)
        if self.calls["SubmitJob"] == 1:
            context.abort_with_status(_status(code_pb2.UNAVAILABLE, "restarting"))
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="spec.exec.argv", description="must not be empty"
                ),
                error_details_pb2.BadRequest.FieldViolation(
                    field="spec.timeout", description="must not be negative"
                ),
            ]
        )
        context.abort_with_status(
            _status(code_pb2.INVALID_ARGUMENT, "invalid spec", _info("INVALID_SPEC"), bad)
        )

    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("CancelJob")
        context.abort_with_status(
            _status(code_pb2.FAILED_PRECONDITION, "job is finished", _info("JOB_FINISHED"))
        )

    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("ListJobs")
        if self.calls["ListJobs"] <= self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return job_service_pb2.ListJobsResponse()

    def WaitJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("WaitJob")
        job = job_pb2.Job(id=request.job_id, state=job_pb2.JOB_STATE_RUNNING)
        return job_service_pb2.WaitJobResponse(job=job, finished=False)

    def StreamLogs(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("StreamLogs")
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        yield  # pragma: no cover - makes this a server-streaming handler


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Any:
    return job_service_pb2_grpc.add_JobServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer() -> FailingJobs:
    return FailingJobs()


@pytest.fixture(scope="module")
def grpc_stub_cls() -> Any:
    return job_service_pb2_grpc.JobServiceStub


@pytest.fixture
def fake(grpc_server: Any, grpc_addr: str, grpc_servicer: FailingJobs) -> tuple[str, FailingJobs]:
    """The peer's address, and its servicer with fresh counters for this test."""
    grpc_servicer.reset()
    return grpc_addr, grpc_servicer


async def test_not_found_maps_to_job_not_found_with_reason(fake: tuple[str, FailingJobs]) -> None:
    address, _ = fake
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(JobNotFoundError) as caught:
            await client.get_job("j_nope")
    error = caught.value
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "JOB_NOT_FOUND" and error.metadata == {"k": "v"}
    assert "j_nope" in error.message
    assert isinstance(error.__cause__, grpc.RpcError)


async def test_invalid_spec_lists_violations_after_a_retried_submit(
    fake: tuple[str, FailingJobs],
) -> None:
    address, servicer = fake
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(InvalidSpecError) as caught:
            await client.submit(["x"])
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("spec.exec.argv", "must not be empty"),
        ("spec.timeout", "must not be negative"),
    ]
    assert "spec.timeout: must not be negative" in str(caught.value)
    # The UNAVAILABLE first try was retried with the same, generated request_id.
    assert servicer.calls["SubmitJob"] == 2
    assert servicer.request_ids[0] and servicer.request_ids[0] == servicer.request_ids[1]


async def test_cancel_of_finished_job_is_failed_precondition(
    fake: tuple[str, FailingJobs],
) -> None:
    address, _ = fake
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.cancel("j_1")
    assert caught.value.reason == "JOB_FINISHED"


async def test_unavailable_is_retried_then_succeeds(fake: tuple[str, FailingJobs]) -> None:
    address, servicer = fake
    servicer.unavailable = 2
    async with await Client.connect(address, call_retry=FAST) as client:
        assert [job async for job in client.list_jobs()] == []
    assert servicer.calls["ListJobs"] == 3


async def test_unavailable_past_the_retries_raises(fake: tuple[str, FailingJobs]) -> None:
    address, servicer = fake
    servicer.unavailable = 100
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(UnavailableError):
            await client.list_jobs_page()
    assert servicer.calls["ListJobs"] == FAST.max_attempts


async def test_stream_error_is_mapped(fake: tuple[str, FailingJobs]) -> None:
    address, _ = fake
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(RPCError) as caught:
            async for _ in client.logs("j_1"):
                pass
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED


async def test_wait_timeout_is_typed(fake: tuple[str, FailingJobs]) -> None:
    address, _ = fake
    async with await Client.connect(address, call_retry=FAST) as client:
        with pytest.raises(JobTimeoutError) as caught:
            await client.get_handle("j_1").wait(timeout=0)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.job is not None and caught.value.job.state is JobState.RUNNING


def _sync_calls(address: str) -> list[type[Exception]]:
    raised: list[type[Exception]] = []
    with SyncClient(address, call_retry=FAST) as client:
        for call in (
            lambda: client.get_job("j_1"),
            lambda: client.submit(["x"]),
            lambda: client.cancel("j_1"),
            lambda: client.wait("j_1", timeout=0),
            lambda: list(client.logs("j_1")),
        ):
            try:
                call()
            except Exception as error:
                raised.append(type(error))
    return raised


async def test_sync_client_maps_the_same_errors(fake: tuple[str, FailingJobs]) -> None:
    address, _ = fake
    raised = await asyncio.to_thread(_sync_calls, address)
    assert raised[:4] == [
        JobNotFoundError,
        InvalidSpecError,
        FailedPreconditionError,
        JobTimeoutError,
    ]
    assert issubclass(raised[4], RPCError)


async def test_cli_prints_violations_and_exits_2(
    fake: tuple[str, FailingJobs], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake
    code = await asyncio.to_thread(main, ["--server", address, "submit", "--", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "gaffer: error: invalid spec" in err
    assert "spec.exec.argv: must not be empty" in err
    assert "Traceback" not in err


async def test_cli_not_found_exits_1_without_traceback(
    fake: tuple[str, FailingJobs], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = fake
    code = await asyncio.to_thread(main, ["--server", address, "get", "j_nope"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("gaffer: error: job j_nope not found")
    assert "Traceback" not in err
