"""Outcomes sent together, and the fallback for a server without CompleteJobs.

The server here stands in for an older replica: a real gRPC server on loopback whose
AgentService answers CompleteJob and refuses CompleteJobs with UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from gaffer.agent._completions import Completions
from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import agent_service_pb2_grpc, job_pb2


class OlderServer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.batched_calls = 0
        self.single: list[str] = []

    async def CompleteJobs(self, request, context):  # type: ignore[no-untyped-def]
        self.batched_calls += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    async def CompleteJob(self, request, context):  # type: ignore[no-untyped-def]
        self.single.append(request.job_id)
        if request.job_id == "refused":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "attempt superseded")
        return apb.CompleteJobResponse(accepted=True, job=job_pb2.Job(id=request.job_id))


@pytest.fixture
async def older() -> AsyncIterator[tuple[OlderServer, Completions]]:
    servicer = OlderServer()
    server = grpc.aio.server()
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, Completions(agent_service_pb2_grpc.AgentServiceStub(channel), 5.0)
    await server.stop(None)


def outcome(job_id: str) -> apb.CompleteJobRequest:
    return apb.CompleteJobRequest(job_id=job_id, attempt=1, state=job_pb2.JOB_STATE_COMPLETED)


async def test_without_complete_jobs_each_outcome_goes_alone_and_gets_its_own_answer(
    older: tuple[OlderServer, Completions],
) -> None:
    server, completions = older
    first = await asyncio.gather(
        *(completions.complete(outcome(i)) for i in ("a", "b", "refused")),
        return_exceptions=True,
    )
    assert [r.job.id for r in first[:2]] == ["a", "b"]  # type: ignore[union-attr]
    refused = first[2]
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert server.batched_calls == 1
    # Once told, the agent no longer tries CompleteJobs on this server.
    again = await asyncio.gather(*(completions.complete(outcome(i)) for i in ("c", "d")))
    assert [r.job.id for r in again] == ["c", "d"]
    assert server.batched_calls == 1
    assert sorted(server.single) == ["a", "b", "c", "d", "refused"]
