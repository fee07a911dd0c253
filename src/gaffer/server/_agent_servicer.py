"""AgentService: thin methods that convert, call the core, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gaffer.core import Agents, Fence, Outcome
from gaffer.domain import (
    DomainError,
    InvalidArgument,
    Limits,
    check_page_size,
    require_id,
)
from gaffer.server._agent_session import AgentSession
from gaffer.server._convert import timestamp_seconds, wait_seconds
from gaffer.server._errors import refusal
from gaffer.server._handlers import Ctx, call_budget
from gaffer.server._metrics import Metrics
from gaffer.store import Notifier, StoredJob
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2

pb = agent_service_pb2
MAX_WAIT = 300.0


def _fence(job_id: str, attempt: int, lease_token: str, limits: Limits) -> Fence:
    require_id(job_id, "job_id", limits)
    if attempt <= 0:
        raise InvalidArgument.single("attempt", "must be 1 or more")
    if not lease_token:
        raise InvalidArgument.single("lease_token", "is required")
    return Fence(job_id, attempt, lease_token)


def _outcome(request: pb.CompleteJobRequest, limits: Limits) -> Outcome:
    return Outcome(
        _fence(request.job_id, request.attempt, request.lease_token, limits),
        request.state,
        request.exit_code if request.HasField("exit_code") else None,
        request.message,
        request.not_retryable,
        request.result_json,
        _passed(request),
    )


def _refusal(error: DomainError) -> pb.CompleteJobResult:
    """A refused outcome's result: the status CompleteJob would have ended with."""
    code, message, reason = refusal(error)
    return pb.CompleteJobResult(code=code.value[0], message=message, reason=reason)


def _passed(request: pb.UpdateJobStatusRequest | pb.CompleteJobRequest) -> dict[int, float]:
    """When the attempt entered the states its agent reports late (validate_time, start_time)."""
    passed: dict[int, float] = {}
    for state, field in (
        (job_pb2.JOB_STATE_VALIDATING, "validate_time"),
        (job_pb2.JOB_STATE_RUNNING, "start_time"),
    ):
        if request.HasField(field):
            passed[state] = timestamp_seconds(getattr(request, field), field)
    return passed


def _assignment(stored: StoredJob, expires: float) -> pb.JobAssignment:
    assignment = pb.JobAssignment(
        job=stored.job, attempt=stored.job.attempt, lease_token=stored.lease_token
    )
    assignment.lease_expire_time.FromNanoseconds(int(expires * 1e9))
    return assignment


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        agents: Agents,
        notifier: Notifier,
        limits: Limits,
        lease_ttl: float,
        heartbeat_interval: float,
        metrics: Metrics,
    ) -> None:
        self._agents = agents
        self._limits = limits
        self._lease_ttl = lease_ttl
        self._heartbeat_interval = heartbeat_interval
        self._session = AgentSession(self, notifier, metrics)

    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: Ctx
    ) -> pb.RegisterAgentResponse:
        agent = await self._agents.register(
            request.name, dict(request.labels), request.capacity, list(request.queues)
        )
        response = pb.RegisterAgentResponse(agent_id=agent.id, agent=agent)
        response.lease_ttl.FromMilliseconds(int(self._lease_ttl * 1000))
        response.heartbeat_interval.FromMilliseconds(int(self._heartbeat_interval * 1000))
        return response

    async def ClaimJob(self, request: pb.ClaimJobRequest, context: Ctx) -> pb.ClaimJobResponse:
        require_id(request.agent_id, "agent_id", self._limits)
        wait = call_budget(context, wait_seconds(request.wait, "wait", MAX_WAIT) or 0.0) or 0.0
        claimed = await self._agents.claim(request.agent_id, request.max_jobs, wait)
        return pb.ClaimJobResponse(assignments=[_assignment(s, exp) for s, exp in claimed])

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Ctx) -> pb.HeartbeatResponse:
        require_id(request.agent_id, "agent_id", self._limits)
        wait = call_budget(context, wait_seconds(request.wait, "wait", MAX_WAIT) or 0.0) or 0.0
        result = await self._agents.heartbeat(
            request.agent_id, list(request.running), list(request.canceling), wait
        )
        response = pb.HeartbeatResponse(
            cancel=result.cancel, lost=result.lost, draining=result.draining
        )
        response.lease_expire_time.FromNanoseconds(int(result.lease_expires * 1e9))
        return response

    async def UpdateJobStatus(
        self, request: pb.UpdateJobStatusRequest, context: Ctx
    ) -> pb.UpdateJobStatusResponse:
        fence = _fence(request.job_id, request.attempt, request.lease_token, self._limits)
        job = await self._agents.update_status(
            fence, request.state, request.message, request.reject, _passed(request)
        )
        return pb.UpdateJobStatusResponse(job=job)

    async def PushLogs(
        self, request_iterator: AsyncIterator[pb.PushLogsRequest], context: Ctx
    ) -> pb.PushLogsResponse:
        response = pb.PushLogsResponse()
        async for request in request_iterator:
            fence = _fence(request.job_id, request.attempt, request.lease_token, self._limits)
            accepted, stdout_size, stderr_size = await self._agents.push_log(fence, request.chunk)
            if accepted:
                response.accepted += 1
            else:
                response.duplicates += 1
            response.stdout_size, response.stderr_size = stdout_size, stderr_size
        return response

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Ctx
    ) -> pb.UploadArtifactResponse:
        iterator = aiter(request_iterator)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise InvalidArgument.single("header", "the stream was empty") from None
        if first.WhichOneof("part") != "header":
            raise InvalidArgument.single("header", "must be the first message")
        max_chunk = self._limits.max_artifact_chunk_bytes

        async def chunks() -> AsyncIterator[bytes]:
            async for request in iterator:
                if request.WhichOneof("part") != "chunk":
                    raise InvalidArgument.single("chunk", "only the first message is a header")
                if len(request.chunk) > max_chunk:
                    raise InvalidArgument.single("chunk", f"is over {max_chunk} bytes")
                yield request.chunk

        artifact = await self._agents.upload_artifact(first.header, chunks())
        return pb.UploadArtifactResponse(artifact=artifact)

    async def CompleteJob(
        self, request: pb.CompleteJobRequest, context: Ctx
    ) -> pb.CompleteJobResponse:
        accepted, job = await self._agents.complete(_outcome(request, self._limits))
        return pb.CompleteJobResponse(accepted=accepted, job=job)

    async def CompleteJobs(
        self, request: pb.CompleteJobsRequest, context: Ctx
    ) -> pb.CompleteJobsResponse:
        most = self._limits.max_claim_jobs
        if not 1 <= len(request.outcomes) <= most:
            raise InvalidArgument.single("outcomes", f"must hold 1 to {most} outcomes")
        results: list[pb.CompleteJobResult] = []
        outcomes: list[tuple[int, Outcome]] = []
        for i, request_outcome in enumerate(request.outcomes):
            results.append(pb.CompleteJobResult())
            try:
                outcomes.append((i, _outcome(request_outcome, self._limits)))
            except DomainError as error:
                results[i] = _refusal(error)
        # One transaction for all: on PostgreSQL a few statements instead of a few per outcome.
        recorded = await self._agents.complete_many([o for _, o in outcomes])
        for (i, _), result in zip(outcomes, recorded, strict=True):
            if isinstance(result, DomainError):
                results[i] = _refusal(result)
            else:
                accepted, job = result
                response = pb.CompleteJobResponse(accepted=accepted, job=job)
                results[i] = pb.CompleteJobResult(response=response)
        return pb.CompleteJobsResponse(results=results)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: Ctx
    ) -> AsyncIterator[pb.SessionResponse]:
        async for answer in self._session.serve(request_iterator, context):
            yield answer

    async def ReleaseJob(
        self, request: pb.ReleaseJobRequest, context: Ctx
    ) -> pb.ReleaseJobResponse:
        fence = _fence(request.job_id, request.attempt, request.lease_token, self._limits)
        return pb.ReleaseJobResponse(job=await self._agents.release(fence, request.reason))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Ctx
    ) -> pb.ListAgentsResponse:
        page_size = check_page_size(request.page_size, self._limits)
        agents = await self._agents.list_agents(request.page_token, page_size + 1)
        token = agents[page_size - 1].name if len(agents) > page_size else ""
        return pb.ListAgentsResponse(agents=agents[:page_size], next_page_token=token)

    async def DrainAgent(
        self, request: pb.DrainAgentRequest, context: Ctx
    ) -> pb.DrainAgentResponse:
        require_id(request.agent_id, "agent_id", self._limits)
        return pb.DrainAgentResponse(agent=await self._agents.drain(request.agent_id))
