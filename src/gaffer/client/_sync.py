"""The blocking client, :class:`SyncClient`, on a plain ``grpc`` channel."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc

from gaffer.client._base import (
    MAX_PAGE_SIZE,
    CallRetry,
    ClientBase,
    EventCursor,
    LogCursor,
    frame_events,
    read_request,
    retryable,
    submit_batches,
)
from gaffer.client._convert import (
    Seconds,
    agent_from_proto,
    artifact_from_proto,
    event_from_proto,
    job_from_proto,
    log_end_from_proto,
)
from gaffer.client._errors import JobTimeoutError, map_rpc_error
from gaffer.client._handle import SyncArtifact, SyncJobHandle, SyncLogIterator
from gaffer.client._models import (
    Agent,
    InputFile,
    Job,
    JobEvent,
    JobPage,
    JobState,
    ListOrder,
    LogChunk,
    LogEnd,
    LogStream,
    Resources,
    RetryPolicy,
)
from gaffer.client._target import CHANNEL_OPTIONS, channel_target
from gaffer.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

__all__ = ["SyncClient"]

log = logging.getLogger(__name__)
R = TypeVar("R")


class SyncClient(ClientBase):
    """A blocking client of a Gaffer server, on a plain (non-asyncio) gRPC channel.

    The same calls as :class:`Client`, with the same retries, deadlines and stream resumes.
    Use it as ``with SyncClient(target) as client:`` or call :meth:`close`.
    """

    def __init__(
        self, target: str, *, timeout: float = 30.0, call_retry: CallRetry | None = None
    ) -> None:
        """Opens a client to the server at ``target``; the channel connects lazily.

        Args:
            target: ``host:port`` of the server, or several (``"a:1,b:2"``, replicas of one
                Gaffer): the channel uses one and moves to another when it goes away.
            timeout: Deadline in seconds of each unary call.
            call_retry: How calls are retried on UNAVAILABLE; a sensible default if None.

        Raises:
            ValueError: ``target`` is not a valid address list (see :func:`channel_target`).
        """
        super().__init__(target, timeout=timeout, call_retry=call_retry)
        self._channel = grpc.insecure_channel(channel_target(target), options=CHANNEL_OPTIONS)
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._agents = agent_service_pb2_grpc.AgentServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel; open streams end."""
        self._channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., R],
        name: str,
        request: Any,
        *,
        deadline: float | None = None,
        idempotent: bool = True,
    ) -> R:
        delays = self._call_retry.delays() if idempotent else iter(())
        while True:
            try:
                return method(request, timeout=deadline or self._timeout)
            except grpc.RpcError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise map_rpc_error(error, method=name) from error
                log.debug("%s unavailable, retrying in %.2fs", name, delay)
                time.sleep(delay)

    def submit(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        labels: Mapping[str, str] | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: Seconds | None = None,
        retry: int | RetryPolicy | None = None,
        resources: Resources | None = None,
        node_selector: Mapping[str, str] | None = None,
        inputs: Mapping[str, bytes | str] | Iterable[InputFile] | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> SyncJobHandle:
        """Submits an exec job.

        Args:
            argv: The program and its arguments (no shell unless argv asks for one).
            env: Environment variables for the process.
            stdin: Bytes (or text, UTF-8) written to its standard input.
            labels: Labels to filter jobs by.
            queue: The queue agents claim from; None means "default".
            priority: Higher runs first within a queue.
            timeout: Bound on one attempt's run, seconds or a timedelta.
            retry: Attempts in all (an int) or a :class:`RetryPolicy`.
            resources: What the job needs from its agent.
            node_selector: Labels the agent must carry.
            inputs: Files written into the working directory: path to content.
            outputs: Globs of files uploaded as artifacts after the run.
            request_id: Idempotency key; one is generated when None, so retries are safe.

        Returns:
            A handle on the job (the first one made for a repeated ``request_id``).

        Raises:
            InvalidSpecError: The server refused the spec; see ``violations``.
            RPCError: Any other failure.
        """
        request = self._submit_request(
            argv,
            env=env,
            stdin=stdin,
            labels=labels,
            queue=queue,
            priority=priority,
            timeout=timeout,
            retry=retry,
            resources=resources,
            node_selector=node_selector,
            inputs=inputs,
            outputs=outputs,
            request_id=request_id,
        )
        response = self._call(self._jobs.SubmitJob, "SubmitJob", request)
        job = job_from_proto(response.job)
        return SyncJobHandle(self, job.id, job=job, existing=response.existing)

    def submit_function(self, name: str, /, *args: Any, **kwargs: Any) -> SyncJobHandle:
        """Submits a function job: calls ``name`` on an agent with these arguments (as JSON).

        Like a Celery task's ``delay``; for labels, queue, retries or a timeout use
        :meth:`submit_function_with`. Read what it returned from ``Job.result``.

        Args:
            name: The name the callable was registered under on the agent.
            *args: Positional arguments, JSON-serialisable.
            **kwargs: Keyword arguments, JSON-serialisable (not together with ``args``).

        Returns:
            A handle on the job.

        Raises:
            TypeError: both positional and keyword arguments were given.
            InvalidSpecError: The server refused the spec; see ``violations``.
        """
        return self.submit_function_with(name, args, kwargs)

    def submit_function_with(
        self,
        name: str,
        /,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: Seconds | None = None,
        retry: int | RetryPolicy | None = None,
        request_id: str | None = None,
    ) -> SyncJobHandle:
        """Submits a function job with job options (like a Celery task's ``apply_async``).

        Args:
            name: The name the callable was registered under on the agent.
            args: Positional arguments, JSON-serialisable.
            kwargs: Keyword arguments, JSON-serialisable (not together with ``args``).
            labels: Labels to filter jobs by.
            queue: The queue agents claim from; None means "default".
            priority: Higher runs first within a queue.
            timeout: Bound on one attempt's run, seconds or a timedelta.
            retry: Attempts in all (an int) or a :class:`RetryPolicy`.
            request_id: Idempotency key; one is generated when None, so retries are safe.

        Returns:
            A handle on the job.

        Raises:
            TypeError: both positional and keyword arguments were given.
            InvalidSpecError: The server refused the spec; see ``violations``.
        """
        request = self._function_request(
            name,
            args,
            kwargs or {},
            labels=labels,
            queue=queue,
            priority=priority,
            timeout=timeout,
            retry=retry,
            request_id=request_id,
        )
        response = self._call(self._jobs.SubmitJob, "SubmitJob", request)
        job = job_from_proto(response.job)
        return SyncJobHandle(self, job.id, job=job, existing=response.existing)

    def submit_many(self, argvs: Iterable[Sequence[str]], **options: Any) -> list[SyncJobHandle]:
        """Submits one exec job per argv, all with the same options, in few SubmitJobs calls.

        Each call carries up to 1,000 jobs and is stored whole or not at all; every job gets
        its own request_id, so a retried call makes no second job.

        Args:
            argvs: One argv per job.
            **options: Any option of :meth:`submit` but ``request_id``, for every job.

        Returns:
            A handle per job, in the order of ``argvs``.

        Raises:
            TypeError: An option :meth:`submit` does not take, or ``request_id``.
            InvalidSpecError: A spec was refused; ``violations`` name ``jobs[i]`` within the
                refused call, which stored nothing (jobs of earlier calls stay stored).
        """
        return self._submit_all(self._exec_requests(argvs, options))

    def submit_function_many(
        self, name: str, calls: Iterable[Sequence[Any] | Mapping[str, Any]], **options: Any
    ) -> list[SyncJobHandle]:
        """Submits one function job per call of ``name``, like a Celery group.

        Args:
            name: The name the callable was registered under on the agent.
            calls: Each call's arguments: a sequence (positional) or a mapping (keywords).
            **options: ``labels``, ``queue``, ``priority``, ``timeout`` or ``retry``.

        Returns:
            A handle per job, in the order of ``calls``.

        Raises:
            TypeError: Another option.
            InvalidSpecError: As for :meth:`submit_many`.
        """
        return self._submit_all(self._function_requests(name, calls, options))

    def _submit_all(
        self, requests: Sequence[job_service_pb2.SubmitJobRequest]
    ) -> list[SyncJobHandle]:
        handles: list[SyncJobHandle] = []
        for batch in submit_batches(requests):
            response = self._call(self._jobs.SubmitJobs, "SubmitJobs", batch)
            for result in response.results:
                job = job_from_proto(result.job)
                handles.append(SyncJobHandle(self, job.id, job=job, existing=result.existing))
        return handles

    def submit_and_wait(
        self, argv: Sequence[str], *, wait_timeout: Seconds | None = None, **kwargs: Any
    ) -> Job:
        """Submits a job and waits for it to finish.

        Args:
            argv: As for :meth:`submit`.
            wait_timeout: How long to wait for the job; None waits as long as it takes.
            **kwargs: Any other argument of :meth:`submit`.

        Returns:
            The finished job.

        Raises:
            JobTimeoutError: The job was not finished within ``wait_timeout``.
        """
        handle = self.submit(argv, **kwargs)
        return handle.wait(timeout=wait_timeout)

    def get_handle(self, job_id: str) -> SyncJobHandle:
        """A handle on an existing job, without calling the server."""
        return SyncJobHandle(self, job_id)

    def get_job(self, job_id: str) -> Job:
        """The job with its status history.

        Raises:
            JobNotFoundError: No such job for this caller.
        """
        request = job_service_pb2.GetJobRequest(job_id=job_id)
        response = self._call(self._jobs.GetJob, "GetJob", request)
        return job_from_proto(response.job)

    def list_jobs_page(
        self,
        *,
        states: Iterable[JobState | str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        exclude_labels: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        queue: str | None = None,
        order: ListOrder | str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """One page of jobs; pass its ``next_page_token`` back, with the same filter, for more.

        Args:
            states: Jobs in any of these states (members or names like ``"running"``).
            labels: Labels the jobs must carry.
            exclude_labels: Labels the jobs must not carry.
            created_after: Jobs created at or after this time.
            created_before: Jobs created before this time.
            queue: Jobs of this queue.
            order: ``"newest"`` (the default) or ``"oldest"`` first.
            page_size: Jobs per page; 0 means the server's default (50).
            page_token: From the previous page.

        Returns:
            The page.
        """
        request = self._list_request(
            states=states,
            labels=labels,
            exclude_labels=exclude_labels,
            created_after=created_after,
            created_before=created_before,
            queue=queue,
            order=order,
            page_size=page_size,
            page_token=page_token,
        )
        response = self._call(self._jobs.ListJobs, "ListJobs", request)
        return JobPage([job_from_proto(j) for j in response.jobs], response.next_page_token)

    def list_jobs(
        self,
        *,
        states: Iterable[JobState | str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        exclude_labels: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        queue: str | None = None,
        order: ListOrder | str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """Every matching job, fetching pages as iteration goes on.

        Args:
            limit: Stop after this many jobs; None for all.
            (others): As for :meth:`list_jobs_page`.

        Returns:
            An iterator of jobs.
        """
        if limit is not None and not page_size:
            page_size = min(max(limit, 1), MAX_PAGE_SIZE)
        token, count = "", 0
        while True:
            page = self.list_jobs_page(
                states=states,
                labels=labels,
                exclude_labels=exclude_labels,
                created_after=created_after,
                created_before=created_before,
                queue=queue,
                order=order,
                page_size=page_size,
                page_token=token,
            )
            for job in page.jobs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield job
            token = page.next_page_token
            if not token or (limit is not None and count >= limit):
                return

    def cancel(self, job_id: str, *, reason: str = "") -> Job:
        """Cancels a job: a pending one ends CANCELED at once, a running one is killed.

        Returns:
            The job after the cancel: CANCELED, or still running with ``cancel_requested``.

        Raises:
            FailedPreconditionError: The job was already finished.
            JobNotFoundError: No such job.
        """
        request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        response = self._call(self._jobs.CancelJob, "CancelJob", request)
        return job_from_proto(response.job)

    def wait(self, job_id: str, *, timeout: Seconds | None = None) -> Job:
        """Waits for a job to finish.

        Args:
            job_id: The job.
            timeout: Seconds (or a timedelta) to wait; None waits as long as it takes.

        Returns:
            The finished job.

        Raises:
            JobTimeoutError: Not finished within ``timeout`` (``.job`` holds it as it was).
            JobNotFoundError: No such job.
        """
        plan = self._wait_slices(timeout)
        job: Job | None = None
        while (seconds := plan.next_slice()) is not None:
            request, deadline = plan.request(job_id, seconds)
            started = time.monotonic()
            response = self._call(self._jobs.WaitJob, "WaitJob", request, deadline=deadline)
            job = job_from_proto(response.job)
            if response.finished or job.is_finished:
                return job
            pause = plan.pause_after(time.monotonic() - started, seconds)
            if pause:
                time.sleep(pause)
            plan.spent(time.monotonic() - started)
        raise JobTimeoutError(job_id, plan.timeout, job)

    def events(
        self,
        job_id: str | None = None,
        *,
        after_sequence: int = 0,
        from_now: bool = False,
        states: Iterable[JobState | str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        exclude_labels: Mapping[str, str] | None = None,
        queue: str | None = None,
        keepalive_interval: Seconds | None = None,
        follow: bool = True,
    ) -> Iterator[JobEvent]:
        """Events, history first then live; for one job the iteration ends after its last.

        Keepalive frames are swallowed; a stream broken by UNAVAILABLE is resumed after the
        last sequence seen, so no event is missed or repeated.

        Args:
            job_id: Follow this job; None follows every job matching the filter.
            after_sequence: Start right after this sequence (exclusive).
            from_now: Skip history and start with new events.
            states, labels, exclude_labels, queue: With no ``job_id``: which jobs.
            keepalive_interval: How often the server sends keepalives on an idle stream.
            follow: Keep the stream open for live events; False ends after the stored
                ones.

        Returns:
            An iterator of events.

        Raises:
            JobNotFoundError: No such job.
        """
        cursor = EventCursor(
            self._events_request(
                job_id=job_id,
                after_sequence=after_sequence,
                from_now=from_now,
                states=states,
                labels=labels,
                exclude_labels=exclude_labels,
                queue=queue,
                keepalive_interval=keepalive_interval,
                follow=follow,
            )
        )
        delays = self._call_retry.delays()
        while True:
            call = self._jobs.StreamJobEvents(cursor.request())
            try:
                for frame in call:
                    if frame.WhichOneof("frame") == "keepalive":
                        cursor.reached(frame.keepalive)
                        continue
                    delays = self._call_retry.delays()
                    for event in frame_events(frame):
                        if cursor.accept(event):
                            yield event_from_proto(event)
                return
            except grpc.RpcError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise map_rpc_error(error, method="StreamJobEvents") from error
                log.debug("event stream broken, resuming after %d", cursor.last_sequence)
                time.sleep(delay)
            finally:
                call.cancel()

    def logs(
        self,
        job_id: str,
        *,
        follow: bool = False,
        attempt: int = 0,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        tail_lines: int = 0,
        streams: Iterable[LogStream | str | int] | None = None,
        keepalive_interval: Seconds | None = None,
    ) -> SyncLogIterator:
        """A job's output as :class:`LogChunk` s; the final :class:`LogEnd` lands in ``.end``.

        A stream broken by UNAVAILABLE resumes from the offsets reached, in the same attempt,
        so no byte is dropped or repeated.

        Args:
            job_id: The job.
            follow: Keep going with live output until the job is finished.
            attempt: Which attempt; 0 means the latest.
            stdout_offset: Start stdout at this byte.
            stderr_offset: Start stderr at this byte.
            tail_lines: Start at the last N lines of each stream instead.
            streams: Only these streams (``"stdout"``, ``"stderr"``); None means both.
            keepalive_interval: How often the server sends keepalives on an idle stream.

        Returns:
            An iterator of chunks (``for chunk in client.logs(...)``).
        """
        request = self._logs_request(
            job_id,
            follow=follow,
            attempt=attempt,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
            tail_lines=tail_lines,
            streams=streams,
            keepalive_interval=keepalive_interval,
        )
        return SyncLogIterator(self._log_frames(request))

    def _log_frames(self, request: Any) -> Iterator[LogChunk | LogEnd]:
        cursor = LogCursor(request)
        delays = self._call_retry.delays()
        while True:
            call = self._jobs.StreamLogs(cursor.request())
            try:
                for frame in call:
                    kind = frame.WhichOneof("frame")
                    if kind == "chunk":
                        delays = self._call_retry.delays()
                        chunk = cursor.chunk(frame.chunk)
                        if chunk is not None:
                            yield chunk
                    elif kind == "end":
                        yield log_end_from_proto(frame.end)
                return
            except grpc.RpcError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise map_rpc_error(error, method="StreamLogs") from error
                log.debug("log stream broken, resuming at attempt %d", cursor.attempt)
                time.sleep(delay)
            finally:
                call.cancel()

    def artifacts(self, job_id: str) -> list[SyncArtifact]:
        """A job's artifacts, each readable with ``read_bytes()`` and friends.

        Raises:
            JobNotFoundError: No such job.
        """
        request = job_service_pb2.ListArtifactsRequest(job_id=job_id)
        response = self._call(self._jobs.ListArtifacts, "ListArtifacts", request)
        return [SyncArtifact(self, artifact_from_proto(job_id, a)) for a in response.artifacts]

    def _read_artifact(self, job_id: str, name: str, offset: int = 0) -> Iterator[bytes]:
        delays = self._call_retry.delays()
        while True:
            call = self._jobs.ReadArtifact(read_request(job_id, name, offset))
            try:
                for frame in call:
                    data = frame.data[max(offset - frame.offset, 0) :]
                    if data:
                        delays = self._call_retry.delays()
                        offset += len(data)
                        yield data
                return
            except grpc.RpcError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise map_rpc_error(error, method="ReadArtifact") from error
                time.sleep(delay)
            finally:
                call.cancel()

    def agents(self) -> list[Agent]:
        """Every registered agent with its capacity and running attempts."""
        agents: list[Agent] = []
        token = ""
        while True:
            request = agent_service_pb2.ListAgentsRequest(page_token=token)
            response = self._call(self._agents.ListAgents, "ListAgents", request)
            agents.extend(agent_from_proto(a) for a in response.agents)
            token = response.next_page_token
            if not token:
                return agents
