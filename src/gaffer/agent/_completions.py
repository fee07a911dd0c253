"""Outcomes of attempts that end together, sent in one CompleteJobs request.

Short jobs end in bursts (a claim hands out several; they finish in the same turn of the
loop). Each outcome waits at most that turn: the outcomes reported in it go in one request
(on the agent's session), and each caller gets its own answer or error, as if it had called
CompleteJob alone. A server without CompleteJobs (an older replica) is sent one CompleteJob
per outcome.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from gaffer.agent._session import Refused, Session
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc

_Pending = tuple[agent_service_pb2.CompleteJobRequest, "asyncio.Future[Any]"]


class OutcomeRefused(Refused):
    """The server's refusal of one outcome in a CompleteJobs call, shaped like the error a
    CompleteJob call would have raised, so callers treat both alike."""

    def __init__(self, result: agent_service_pb2.CompleteJobResult) -> None:
        super().__init__(result.code, result.message)


class Completions:
    """Batches CompleteJob requests made in the same loop turn into one CompleteJobs."""

    def __init__(
        self,
        stub: agent_service_pb2_grpc.AgentServiceStub,
        timeout: float,
        session: Session | None = None,
    ) -> None:
        self._stub = stub
        self._session = session or Session(stub)
        self._timeout = timeout
        self._pending: list[_Pending] = []
        self._batched = True  # until the server says it has no CompleteJobs
        self._calls: set[asyncio.Task[None]] = set()

    async def complete(
        self, request: agent_service_pb2.CompleteJobRequest
    ) -> agent_service_pb2.CompleteJobResponse:
        """The server's answer to this outcome; raises what a CompleteJob call would."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            # Its first step comes at the next turn, when this turn's outcomes are all in.
            task = asyncio.create_task(self._send())
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        self._pending.append((request, future))
        response: agent_service_pb2.CompleteJobResponse = await future
        return response

    async def _send(self) -> None:
        batch, self._pending = self._pending, []
        try:
            if self._batched:
                try:
                    await self._call_batched(batch)
                    return
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                        _fail(batch, error)
                        return
                    self._batched = False
            await asyncio.gather(*(self._call_single(r, f) for r, f in batch))
        except BaseException as error:
            _fail(batch, error)  # nobody waits forever, whatever went wrong
            raise

    async def _call_batched(self, batch: list[_Pending]) -> None:
        request = agent_service_pb2.CompleteJobsRequest(outcomes=[r for r, _ in batch])
        response = await self._session.complete(request, self._timeout)
        for (_, future), result in zip(batch, response.results, strict=True):
            if future.done():
                continue
            if result.code == 0:
                future.set_result(result.response)
            else:
                future.set_exception(OutcomeRefused(result))

    async def _call_single(
        self, request: agent_service_pb2.CompleteJobRequest, future: asyncio.Future[Any]
    ) -> None:
        try:
            response = await self._stub.CompleteJob(request, timeout=self._timeout)
        except grpc.RpcError as error:
            _fail([(request, future)], error)
        else:
            if not future.done():
                future.set_result(response)


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for _, future in batch:
        if future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
