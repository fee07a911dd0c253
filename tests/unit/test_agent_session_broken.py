"""A request on a Session stream that broke fails UNAVAILABLE, so that the agent retries it.

grpc fails a write on a stream whose connection just died with INTERNAL ("Internal error
from Core"). Taken as it came, the agent failed the attempt it was reporting on: a job ran
twice when a replica was SIGKILLed (tests/e2e/test_replicas_failover.py, once in 80
runs). That write failure cannot be produced on demand with a real server, so the calls here
are stand-ins for grpc's call objects, shaped as grpc.aio's are.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from gaffer.agent._retry import call_with_retry
from gaffer.agent._session import Session
from gaffer.v1 import agent_service_pb2 as pb
from tests.helpers import wait_until_async

REPORT = pb.UpdateJobStatusRequest(job_id="j", attempt=1, lease_token="t")


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _FailingCall:
    """A Session call whose writes fail with ``error``; its reads then end with UNAVAILABLE."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error
        self._failed = asyncio.Event()

    async def write(self, request: pb.SessionRequest) -> None:
        self._failed.set()
        raise self._error

    def __aiter__(self) -> _FailingCall:
        return self

    async def __anext__(self) -> pb.SessionResponse:
        await self._failed.wait()
        raise _error(grpc.StatusCode.UNAVAILABLE, "Socket closed")

    def cancel(self) -> bool:
        return True


class _AnsweringCall:
    """A Session call of a live server: every request is answered at once."""

    def __init__(self) -> None:
        self._answers: asyncio.Queue[pb.SessionResponse] = asyncio.Queue()

    async def write(self, request: pb.SessionRequest) -> None:
        answer = pb.SessionResponse(id=request.id, update_status=pb.UpdateJobStatusResponse())
        await self._answers.put(answer)

    def __aiter__(self) -> _AnsweringCall:
        return self

    async def __anext__(self) -> pb.SessionResponse:
        return await self._answers.get()

    def cancel(self) -> bool:
        return True


class _Stub:
    """Opens the given calls in turn; UpdateJobStatus is the unary fallback."""

    def __init__(self, *calls: Any) -> None:
        self._calls = iter(calls)
        self.unary_calls = 0
        self.sessions = 0

    def Session(self) -> Any:
        self.sessions += 1
        return next(self._calls)

    async def UpdateJobStatus(self, request: Any, timeout: float) -> pb.UpdateJobStatusResponse:
        self.unary_calls += 1
        return pb.UpdateJobStatusResponse()


class _RefusedCall:
    """A Session call of a server without Session: it ends UNIMPLEMENTED before any write."""

    async def write(self, request: pb.SessionRequest) -> None:
        raise asyncio.InvalidStateError("the call has ended")

    def __aiter__(self) -> _RefusedCall:
        return self

    async def __anext__(self) -> pb.SessionResponse:
        raise _error(grpc.StatusCode.UNIMPLEMENTED, "Method not found")

    def cancel(self) -> bool:
        return True


def _dead() -> _FailingCall:
    return _FailingCall(_error(grpc.StatusCode.INTERNAL, "Internal error from Core"))


async def test_a_write_on_a_dead_connection_fails_unavailable() -> None:
    session = Session(_Stub(_dead()))  # type: ignore[arg-type]
    try:
        with pytest.raises(grpc.RpcError) as raised:
            await session.update_status(REPORT, 5.0)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Internal error from Core" in (raised.value.details() or "")
    finally:
        await session.close()


async def test_the_report_is_retried_on_a_new_stream_instead_of_failing() -> None:
    session = Session(_Stub(_dead(), _AnsweringCall()))  # type: ignore[arg-type]
    try:
        response = await asyncio.wait_for(
            call_with_retry(lambda: session.update_status(REPORT, 5.0), what="report"), 10
        )
        assert response == pb.UpdateJobStatusResponse()
    finally:
        await session.close()


async def test_a_server_without_session_still_gets_the_unary_call() -> None:
    stub = _Stub(_FailingCall(_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found")))
    session = Session(stub)  # type: ignore[arg-type]
    try:
        await session.update_status(REPORT, 5.0)
        assert session.unary and stub.unary_calls == 1
    finally:
        await session.close()


async def test_a_session_opened_early_on_a_server_without_session_turns_to_unary_calls() -> None:
    """The agent opens its session as it registers: when that stream is refused, the first
    report goes as a unary call, not on another stream bound to be refused."""
    stub = _Stub(_RefusedCall())
    session = Session(stub)  # type: ignore[arg-type]
    try:
        session.open()
        await wait_until_async(lambda: _is_unary(session), what="the refusal to be read")
        await session.update_status(REPORT, 5.0)
        assert (stub.unary_calls, stub.sessions) == (1, 1)
    finally:
        await session.close()


async def _is_unary(session: Session) -> bool:
    return session.unary
