"""JobService: thin methods that convert, call the core, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gaffer.core import Caller, Jobs, LogRequest, TailSlice
from gaffer.domain import (
    InvalidArgument,
    Limits,
    check_enum_values,
    check_page_size,
    is_finished,
    require_id,
)
from gaffer.server._convert import job_query, keepalive_seconds, wait_seconds
from gaffer.server._handlers import Ctx, call_budget
from gaffer.server._time import now_timestamp
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

pb = job_service_pb2
MAX_WAIT = 24 * 3600.0


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: Jobs, limits: Limits, keepalive_default: float) -> None:
        self._jobs = jobs
        self._limits = limits
        self._keepalive_default = keepalive_default

    def _caller(self, context: Ctx) -> Caller:
        return Caller()  # one tenant until auth lands

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Ctx) -> pb.SubmitJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument.single("spec", "is required", reason="INVALID_SPEC")
        job, existing = await self._jobs.submit(
            self._caller(context),
            request.spec,
            request.request_id,
            validate_only=request.validate_only,
        )
        return pb.SubmitJobResponse(job=job, existing=existing)

    async def SubmitJobs(
        self, request: pb.SubmitJobsRequest, context: Ctx
    ) -> pb.SubmitJobsResponse:
        most = self._limits.max_submit_jobs
        if not 1 <= len(request.jobs) <= most:
            raise InvalidArgument.single("jobs", f"must hold 1 to {most} jobs")
        results = await self._jobs.submit_many(
            self._caller(context), request.jobs, validate_only=request.validate_only
        )
        return pb.SubmitJobsResponse(
            results=[pb.SubmitJobResponse(job=job, existing=existing) for job, existing in results]
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.GetJobResponse:
        require_id(request.job_id, "job_id", self._limits)
        return pb.GetJobResponse(job=await self._jobs.get(self._caller(context), request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        page_size = check_page_size(request.page_size, self._limits)
        violations = check_enum_values(
            [request.order], pb.ListOrder, "order", allow_unspecified=True
        )
        if violations:
            raise InvalidArgument(violations)
        query = job_query(request.filter, self._limits)
        jobs, token = await self._jobs.list_page(
            self._caller(context),
            query,
            newest_first=request.order != pb.LIST_ORDER_OLDEST_FIRST,
            page_token=request.page_token,
            query_key=request.filter.SerializeToString(deterministic=True),
            limit=page_size,
        )
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.CancelJobResponse:
        require_id(request.job_id, "job_id", self._limits)
        job = await self._jobs.cancel(self._caller(context), request.job_id, request.reason)
        return pb.CancelJobResponse(job=job)

    async def WaitJob(self, request: pb.WaitJobRequest, context: Ctx) -> pb.WaitJobResponse:
        require_id(request.job_id, "job_id", self._limits)
        timeout = wait_seconds(request.timeout, "timeout", MAX_WAIT)
        job = await self._jobs.wait(
            self._caller(context), request.job_id, call_budget(context, timeout)
        )
        return pb.WaitJobResponse(job=job, finished=is_finished(job.state))

    async def StreamJobEvents(
        self, request: pb.StreamJobEventsRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamJobEventsResponse]:
        if request.job_id:
            require_id(request.job_id, "job_id", self._limits)
        query = None if request.job_id else job_query(request.filter, self._limits)
        keepalive = keepalive_seconds(
            request.keepalive_interval, self._keepalive_default, "keepalive_interval"
        )
        async for item in self._jobs.events(
            self._caller(context),
            job_id=request.job_id or None,
            query=query,
            after_sequence=request.after_sequence,
            from_now=request.from_now,
            keepalive=keepalive,
            history_only=request.history_only,
        ):
            if isinstance(item, int):
                frame = job_pb2.Keepalive(time=now_timestamp(), sequence=item)
                yield pb.StreamJobEventsResponse(keepalive=frame)
            elif isinstance(item, TailSlice):  # encoded once for every follower
                if request.batch and len(item.frames) > 1:
                    yield item.batch_frame  # type: ignore[misc]
                else:
                    for encoded in item.frames:
                        yield encoded  # type: ignore[misc]
            elif request.batch and len(item) > 1:
                yield pb.StreamJobEventsResponse(batch=pb.JobEventBatch(events=item))
            else:
                for event in item:
                    yield pb.StreamJobEventsResponse(event=event)

    async def StreamLogs(
        self, request: pb.StreamLogsRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamLogsResponse]:
        require_id(request.job_id, "job_id", self._limits)
        violations = check_enum_values(request.streams, job_pb2.LogStream, "streams")
        if violations:
            raise InvalidArgument(violations)
        log_request = LogRequest(
            job_id=request.job_id,
            follow=request.follow,
            attempt=request.attempt,
            stdout_offset=request.stdout_offset,
            stderr_offset=request.stderr_offset,
            tail_lines=request.tail_lines,
            streams=tuple(request.streams),
            resume_attempt=request.resume_attempt,
            keepalive=keepalive_seconds(
                request.keepalive_interval, self._keepalive_default, "keepalive_interval"
            ),
        )
        async for item in self._jobs.logs(self._caller(context), log_request):
            if item is None:
                yield pb.StreamLogsResponse(keepalive=job_pb2.Keepalive(time=now_timestamp()))
            elif isinstance(item, job_pb2.LogChunk):
                yield pb.StreamLogsResponse(chunk=item)
            else:
                yield pb.StreamLogsResponse(end=item)

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Ctx
    ) -> pb.ListArtifactsResponse:
        require_id(request.job_id, "job_id", self._limits)
        artifacts = await self._jobs.artifacts(self._caller(context), request.job_id)
        return pb.ListArtifactsResponse(artifacts=artifacts)

    async def ReadArtifact(
        self, request: pb.ReadArtifactRequest, context: Ctx
    ) -> AsyncIterator[pb.ReadArtifactResponse]:
        require_id(request.job_id, "job_id", self._limits)
        async for offset, data in self._jobs.read_artifact(
            self._caller(context), request.job_id, request.name, request.offset, request.chunk_size
        ):
            yield pb.ReadArtifactResponse(offset=offset, data=data)
