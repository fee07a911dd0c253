"""The agent's next claim waits, briefly, for the first reports of the attempts it just
started, so that a job that ends at once sends its outcome before the claim goes out.

A real agent (run_agent) against a real gRPC server on loopback whose AgentService hands out
one function job at the first claim and records when each claim arrives.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from gaffer.agent import AgentConfig, run_agent
from gaffer.agent._agent import _CLAIM_AFTER_START
from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import agent_service_pb2_grpc, job_pb2


class OneJobServer(agent_service_pb2_grpc.AgentServiceServicer):
    """Gives ``spec`` to the first claim; later claims wait until the test ends."""

    def __init__(self, spec: job_pb2.JobSpec) -> None:
        self._spec = spec
        self.claims: list[float] = []
        self.answered_at = 0.0
        self.second_claim = asyncio.Event()

    async def RegisterAgent(self, request, context):  # type: ignore[no-untyped-def]
        return apb.RegisterAgentResponse(agent_id="agent-1")

    async def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)  # a long poll that outlasts the test

    async def ClaimJob(self, request, context):  # type: ignore[no-untyped-def]
        self.claims.append(time.monotonic())
        if len(self.claims) > 1:
            self.second_claim.set()
            await asyncio.sleep(3600)
        job = job_pb2.Job(id="job-1", attempt=1, spec=self._spec)
        self.answered_at = time.monotonic()
        return apb.ClaimJobResponse(
            assignments=[apb.JobAssignment(job=job, attempt=1, lease_token="t")]
        )


async def test_the_next_claim_waits_for_the_attempts_just_started(tmp_path: Path) -> None:
    # A job that reports nothing for 20 ms (RUNNING comes then): the wait runs to its cap.
    sleeper = job_pb2.FunctionExecutor(name="gaffer.sleep", args_json="[30]")
    servicer = OneJobServer(job_pb2.JobSpec(function=sleeper))
    server = grpc.aio.server()
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = AgentConfig(server=f"127.0.0.1:{port}", name="a", slots=4, work_dir=tmp_path)
    agent = asyncio.create_task(run_agent(config, on_registered=lambda agent_id: None))
    try:
        await asyncio.wait_for(servicer.second_claim.wait(), 10)
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)
        await server.stop(None)
    # Without the wait the agent claimed again at once (0.9 ms after the answer, here).
    assert servicer.claims[1] - servicer.answered_at >= _CLAIM_AFTER_START
