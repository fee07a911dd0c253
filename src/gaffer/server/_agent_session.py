"""AgentService.Session: an agent's claims and reports on one stream, each answered as its own
call would answer it.

A message on an open stream costs both ends about half what a new unary call does (bare
grpc.aio on loopback: a round trip of 0.22-0.26 ms against 0.52-0.55 ms), and an agent makes
three calls per job (claim, status, outcome). Each request runs in a task of its own, as
concurrent calls would (a claim waits for a job while the agent's reports go on), and its
answer goes out when ready, tagged with the request's id; a refused request gets its status
in its answer and the stream goes on. When the server shuts down the session takes no more
requests, answers those it began (waiting claims end UNAVAILABLE at once) and ends
UNAVAILABLE, so the agent opens it again, on this server once restarted or on another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from gaffer.domain import InvalidArgument, StoreUnavailable
from gaffer.server._errors import refusal
from gaffer.server._handlers import Ctx
from gaffer.server._metrics import Metrics
from gaffer.store import Notifier
from gaffer.v1 import agent_service_pb2

pb = agent_service_pb2

#: Requests one session may have in flight; past this it reads no more until some are
#: answered (HTTP/2 flow control then holds the agent back). An agent needs its slots' worth
#: of reports and one claim.
MAX_IN_FLIGHT = 1024

Call = Callable[[Any, Ctx], Awaitable[Any]]
#: For each kind of request, the AgentService method that answers it (its requests are counted
#: as that method's calls in the metrics).
METHODS = {
    "claim": "ClaimJob",
    "update_status": "UpdateJobStatus",
    "complete": "CompleteJobs",
}

_READ_DONE = object()  # the agent closed its side
_CLOSING = object()  # the server is shutting down


class _ReadFailed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class AgentSession:
    """Serves Session streams with ``servicer``'s methods (METHODS)."""

    def __init__(self, servicer: object, notifier: Notifier, metrics: Metrics) -> None:
        self._calls: dict[str, Call] = {
            kind: getattr(servicer, method) for kind, method in METHODS.items()
        }
        self._notifier = notifier
        self._metrics = metrics
        service = pb.DESCRIPTOR.services_by_name["AgentService"].full_name
        self._methods = {kind: f"/{service}/{method}" for kind, method in METHODS.items()}

    def _count(self, kind: str | None) -> None:
        method = self._methods.get(kind or "")
        if method is not None:
            calls = self._metrics.calls
            calls[method] = calls.get(method, 0) + 1

    async def serve(
        self, requests: AsyncIterator[pb.SessionRequest], context: Ctx
    ) -> AsyncIterator[pb.SessionResponse]:
        stream = _Stream(self._calls, context, self._count)
        reader = asyncio.create_task(stream.read(requests))
        watcher = asyncio.create_task(self._watch_shutdown(stream.ready))
        reading, closing = True, False
        try:
            while reading or stream.answering:
                item = await stream.ready.get()
                if isinstance(item, pb.SessionResponse):
                    stream.answering.pop(item.id, None)
                    yield item
                elif item is _CLOSING:
                    closing, reading = True, False
                    reader.cancel()
                elif item is _READ_DONE:
                    reading = False
                elif isinstance(item, _ReadFailed):
                    raise item.error
            if closing:
                raise StoreUnavailable("the server is shutting down; open the session again")
        finally:
            reader.cancel()
            watcher.cancel()
            stream.cancel_all()

    async def _watch_shutdown(self, ready: asyncio.Queue[Any]) -> None:
        await self._notifier.wait_closed()
        ready.put_nowait(_CLOSING)


class _Stream:
    """One session: its requests in flight, and what is ready to send (answers, and what
    happened to the stream)."""

    def __init__(
        self, calls: Mapping[str, Call], context: Ctx, count: Callable[[str | None], None]
    ) -> None:
        self._calls = calls
        self._context = context
        self._count = count
        self.ready: asyncio.Queue[Any] = asyncio.Queue()
        self.answering: dict[int, asyncio.Task[pb.SessionResponse]] = {}
        self._cancelled: set[int] = set()
        self._room = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def read(self, requests: AsyncIterator[pb.SessionRequest]) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("call")
                if kind == "cancel":
                    self._cancel(request.cancel)
                    continue
                self._count(kind)
                await self._room.acquire()
                task = asyncio.create_task(self._answer(request))
                self.answering[request.id] = task
                task.add_done_callback(self._answered)
        except Exception as error:  # an undecodable request, a broken stream
            self.ready.put_nowait(_ReadFailed(error))
        else:
            self.ready.put_nowait(_READ_DONE)

    def _cancel(self, request_id: int) -> None:
        task = self.answering.get(request_id)
        if task is not None and not task.done():
            self._cancelled.add(request_id)
            task.cancel()

    def cancel_all(self) -> None:
        for task in self.answering.values():
            task.cancel()

    def _answered(self, task: asyncio.Task[pb.SessionResponse]) -> None:
        self._room.release()
        if task.cancelled():
            return  # the stream is ending (a cancel request is answered by _answer)
        self.ready.put_nowait(task.result())

    async def _answer(self, request: pb.SessionRequest) -> pb.SessionResponse:
        kind = request.WhichOneof("call")
        try:
            if kind is None:
                raise InvalidArgument.single(
                    "call", "is required: one of claim, update_status, complete or cancel"
                )
            answer = await self._calls[kind](getattr(request, kind), self._context)
        except asyncio.CancelledError:
            if request.id not in self._cancelled:
                raise
            self._cancelled.discard(request.id)
            return _refused(request.id, grpc.StatusCode.CANCELLED, "cancelled by the agent")
        except Exception as error:
            return _refused(request.id, *refusal(error))
        response = pb.SessionResponse(id=request.id)
        getattr(response, kind).CopyFrom(answer)
        return response


def _refused(
    request_id: int, code: grpc.StatusCode, message: str, reason: str = ""
) -> pb.SessionResponse:
    return pb.SessionResponse(id=request_id, code=code.value[0], message=message, reason=reason)
