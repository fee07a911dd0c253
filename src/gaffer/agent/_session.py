"""The agent's claims and reports, as requests on one AgentService.Session stream.

A message on an open stream costs both ends about half what a new call does, and the agent
makes three calls per job. Each request behaves as its own call would: it has a deadline, it
raises a grpc.RpcError with the status the call would have ended with (so retries and
fencing treat both alike), and cancelling it cancels it on the server (a cancelled claim
hands out nothing). The stream is opened when the agent registers (Session.open) or at the
first request, and again at the first after it broke; requests in flight when it breaks
fail UNAVAILABLE, as calls on a lost connection do, and their callers retry. A server
without Session (an older replica) gets the unary calls instead, for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gaffer.agent._retry import code_of, lost_connection
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc

pb = agent_service_pb2
_CODES = {code.value[0]: code for code in grpc.StatusCode}

T = TypeVar("T")


class Refused(grpc.RpcError):
    """A request's error status, shaped like the error its call would have raised
    (``code()``, ``details()``)."""

    def __init__(self, code: grpc.StatusCode | int, details: str) -> None:
        super().__init__(details)
        self._code = code if isinstance(code, grpc.StatusCode) else _CODES.get(code)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code or grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._details


class _Stream:
    """One opening of the stream, and the requests waiting on it for an answer."""

    __slots__ = ("call", "waiting")

    def __init__(self, call: Any) -> None:
        self.call = call  # a grpc.aio.StreamStreamCall
        self.waiting: dict[int, asyncio.Future[pb.SessionResponse]] = {}


class Session:
    """Claims and reports for one agent, over its channel's ``stub``."""

    def __init__(self, stub: agent_service_pb2_grpc.AgentServiceStub) -> None:
        self._stub = stub
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The server has no Session: unary calls from now on.
        self.unary = False

    async def claim(self, request: pb.ClaimJobRequest, timeout: float) -> pb.ClaimJobResponse:
        response: pb.ClaimJobResponse = await self._request(
            "claim", request, timeout, self._stub.ClaimJob
        )
        return response

    async def update_status(
        self, request: pb.UpdateJobStatusRequest, timeout: float
    ) -> pb.UpdateJobStatusResponse:
        response: pb.UpdateJobStatusResponse = await self._request(
            "update_status", request, timeout, self._stub.UpdateJobStatus
        )
        return response

    async def complete(
        self, request: pb.CompleteJobsRequest, timeout: float
    ) -> pb.CompleteJobsResponse:
        response: pb.CompleteJobsResponse = await self._request(
            "complete", request, timeout, self._stub.CompleteJobs
        )
        return response

    def open(self) -> None:
        """Opens the stream now, not at the first request (no-op if it is open, or if the
        server has no Session).

        Opening it is a new call, which a busy server accepts late. In `bench --only fanout`
        (timed in a scratch copy), each agent's first outcomes, sent as the stream opened,
        reached the server's handler 166-258 ms after their function call began (2 runs),
        against 12-45 ms with the stream opened at registration (4 runs); over all outcomes
        the p50 was 7-12 ms either way.
        """
        if not self.unary:
            self._open()

    async def close(self) -> None:
        """Ends the stream (requests still in flight fail CANCELLED)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _request(
        self, kind: str, request: Any, timeout: float, unary: Callable[..., Awaitable[T]]
    ) -> T:
        if not self.unary:
            try:
                response = await self._ask(kind, request, timeout)
                return getattr(response, kind)
            except grpc.RpcError as error:
                if code_of(error) != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.unary = True
        return await unary(request, timeout=timeout)

    async def _ask(self, kind: str, request: Any, timeout: float) -> pb.SessionResponse:
        stream = self._open()
        request_id = next(self._ids)
        answer: asyncio.Future[pb.SessionResponse] = asyncio.get_running_loop().create_future()
        stream.waiting[request_id] = answer
        sent = False
        try:
            async with asyncio.timeout(timeout):
                async with self._writing:
                    await _write(stream.call, pb.SessionRequest(id=request_id, **{kind: request}))
                sent = True
                response = await answer
        except TimeoutError:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            if stream.waiting.pop(request_id, None) is not None and sent:
                self._spawn(self._cancel(stream, request_id))  # no answer taken: stop it there
        if response.code:
            raise Refused(response.code, response.message)
        return response

    def _open(self) -> _Stream:
        if self._stream is None:
            self._stream = _Stream(self._stub.Session())
            self._spawn(self._read(self._stream))
        return self._stream

    async def _read(self, stream: _Stream) -> None:
        """Hands each answer to its request; when the stream ends, fails the requests that
        wait on it with the stream's error."""
        error: grpc.RpcError = Refused(grpc.StatusCode.CANCELLED, "the session was closed")
        try:
            async for response in stream.call:
                answer = stream.waiting.pop(response.id, None)
                if answer is not None and not answer.done():
                    answer.set_result(response)
            error = Refused(grpc.StatusCode.UNAVAILABLE, "the server ended the session")
        except grpc.RpcError as ended:
            error = _unanswered(ended)
            if code_of(ended) == grpc.StatusCode.UNIMPLEMENTED:
                self.unary = True  # opened before any request (see open): no Session there
        finally:
            if self._stream is stream:
                self._stream = None
            waiting, stream.waiting = stream.waiting, {}
            for answer in waiting.values():
                if not answer.done():
                    answer.set_exception(error)

    async def _cancel(self, stream: _Stream, request_id: int) -> None:
        if stream is not self._stream:
            return  # that stream is gone, and its requests with it
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            async with self._writing:
                await stream.call.write(pb.SessionRequest(cancel=request_id))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _write(call: Any, request: pb.SessionRequest) -> None:
    """Writes ``request``; a stream that already ended or broke raises UNAVAILABLE."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        raise Refused(grpc.StatusCode.UNAVAILABLE, "the session ended") from None
    except grpc.RpcError as error:
        raise _unanswered(error) from error


def _unanswered(error: grpc.RpcError) -> grpc.RpcError:
    """The error of a request whose stream broke before answering it: UNAVAILABLE, as a call
    on a lost connection fails, also when grpc words the loss as INTERNAL (seen when a
    replica was SIGKILLed in tests/e2e/test_replicas_failover.py). Any other status is the
    stream's own answer (UNIMPLEMENTED: a server without Session) and stays as it is."""
    if lost_connection(error):
        return Refused(grpc.StatusCode.UNAVAILABLE, f"the session broke: {error.details()}")
    return error
