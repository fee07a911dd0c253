"""What the async and sync clients share: options, request building and stream cursors.

Neither client does I/O here; each runs the requests built here on its own kind of channel.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from gaffer.client._convert import (
    Seconds,
    duration_to_proto,
    job_filter_to_proto,
    log_chunk_from_proto,
    log_streams_to_proto,
    order_to_proto,
    spec_to_proto,
    to_seconds,
)
from gaffer.client._models import (
    InputFile,
    JobState,
    ListOrder,
    LogChunk,
    LogStream,
    Resources,
    RetryPolicy,
)
from gaffer.v1 import job_pb2, job_service_pb2

# Longest single WaitJob call; a longer wait is several calls, so proxies never see an idle call.
WAIT_SLICE = 30.0
# Added to a WaitJob's own timeout for the call's deadline.
WAIT_GRACE = 10.0
# Most jobs one ListJobs page may hold (the contract's maximum).
MAX_PAGE_SIZE = 1000
# Most jobs one SubmitJobs call may hold (the contract's maximum).
MAX_SUBMIT_JOBS = 1000
# Chunk size of ReadArtifact.
ARTIFACT_CHUNK = 1 << 20

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class CallRetry:
    """How idempotent calls are retried, and broken streams resumed, on UNAVAILABLE.

    Attributes:
        max_attempts: Tries in all for one call (or consecutive failures of one stream).
        initial_backoff: Seconds before the second try.
        max_backoff: Cap on the delay, in seconds.
        multiplier: Growth of the delay after each try.
    """

    max_attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 3.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Seconds to sleep before each retry (jittered), ``max_attempts - 1`` of them."""
        delay = self.initial_backoff
        for _ in range(max(self.max_attempts - 1, 0)):
            yield delay * random.uniform(0.8, 1.0)
            delay = min(delay * self.multiplier, self.max_backoff)


class ClientBase:
    """Options and request builders shared by :class:`Client` and :class:`SyncClient`."""

    def __init__(self, target: str, *, timeout: float, call_retry: CallRetry | None) -> None:
        self._target = target
        self._timeout = timeout
        self._call_retry = call_retry or CallRetry()

    @property
    def target(self) -> str:
        """The server address this client talks to."""
        return self._target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"

    @staticmethod
    def _submit_request(
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        stdin: bytes | str | None,
        labels: Mapping[str, str] | None,
        queue: str | None,
        priority: int,
        timeout: Seconds | None,
        retry: int | RetryPolicy | None,
        resources: Resources | None,
        node_selector: Mapping[str, str] | None,
        inputs: Mapping[str, bytes | str] | Iterable[InputFile] | None,
        outputs: Sequence[str] | None,
        request_id: str | None,
    ) -> job_service_pb2.SubmitJobRequest:
        spec = spec_to_proto(
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
        )
        # Always a request_id, so a retried submit can never make a second job.
        return job_service_pb2.SubmitJobRequest(
            spec=spec, request_id=request_id or new_request_id()
        )

    @staticmethod
    def _function_request(
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        labels: Mapping[str, str] | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: Seconds | None = None,
        retry: int | RetryPolicy | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.SubmitJobRequest:
        """A SubmitJob request for a function job; arguments are an array or an object."""
        if args and kwargs:
            raise TypeError("a function job takes positional or keyword arguments, not both")
        values: Any = dict(kwargs) if kwargs else list(args)
        # The shared builder fills the options; setting the oneof's function clears its exec.
        spec = spec_to_proto(
            ["-"], labels=labels, queue=queue, priority=priority, timeout=timeout, retry=retry
        )
        spec.function.CopyFrom(
            job_pb2.FunctionExecutor(
                name=name, args_json=json.dumps(values, separators=(",", ":")) if values else ""
            )
        )
        return job_service_pb2.SubmitJobRequest(
            spec=spec, request_id=request_id or new_request_id()
        )

    @classmethod
    def _exec_requests(
        cls, argvs: Iterable[Sequence[str]], options: Mapping[str, Any]
    ) -> list[job_service_pb2.SubmitJobRequest]:
        """One SubmitJob request per argv, each with these options and its own request_id."""
        _check_options(options, _EXEC_OPTIONS)
        full = {**dict.fromkeys(_EXEC_OPTIONS), "priority": 0, **options}
        return [cls._submit_request(argv, **full, request_id=None) for argv in argvs]

    @classmethod
    def _function_requests(
        cls,
        name: str,
        calls: Iterable[Sequence[Any] | Mapping[str, Any]],
        options: Mapping[str, Any],
    ) -> list[job_service_pb2.SubmitJobRequest]:
        """One request per call: a sequence is positional arguments, a mapping keywords."""
        _check_options(options, _FUNCTION_OPTIONS)
        return [
            cls._function_request(name, (), call, **options)
            if isinstance(call, Mapping)
            else cls._function_request(name, call, {}, **options)
            for call in calls
        ]

    @staticmethod
    def _list_request(
        *,
        states: Iterable[JobState | str | int] | None,
        labels: Mapping[str, str] | None,
        exclude_labels: Mapping[str, str] | None,
        created_after: datetime | None,
        created_before: datetime | None,
        queue: str | None,
        order: ListOrder | str | None,
        page_size: int,
        page_token: str = "",
    ) -> job_service_pb2.ListJobsRequest:
        return job_service_pb2.ListJobsRequest(
            filter=job_filter_to_proto(
                states=states,
                labels=labels,
                exclude_labels=exclude_labels,
                created_after=created_after,
                created_before=created_before,
                queue=queue,
            ),
            order=order_to_proto(order),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )

    def _wait_slices(self, timeout: Seconds | None) -> WaitPlan:
        return WaitPlan(None if timeout is None else to_seconds(timeout))

    @staticmethod
    def _events_request(
        *,
        job_id: str | None,
        after_sequence: int,
        from_now: bool,
        states: Iterable[JobState | str | int] | None,
        labels: Mapping[str, str] | None,
        exclude_labels: Mapping[str, str] | None,
        queue: str | None,
        keepalive_interval: Seconds | None,
        follow: bool = True,
    ) -> job_service_pb2.StreamJobEventsRequest:
        request = job_service_pb2.StreamJobEventsRequest(
            job_id=job_id or "",
            filter=job_filter_to_proto(
                states=states, labels=labels, exclude_labels=exclude_labels, queue=queue
            ),
            after_sequence=after_sequence,
            from_now=from_now,
            history_only=not follow,
            batch=True,
        )
        if keepalive_interval is not None:
            request.keepalive_interval.CopyFrom(duration_to_proto(keepalive_interval))
        return request

    @staticmethod
    def _logs_request(
        job_id: str,
        *,
        follow: bool,
        attempt: int,
        stdout_offset: int,
        stderr_offset: int,
        tail_lines: int,
        streams: Iterable[LogStream | str | int] | None,
        keepalive_interval: Seconds | None,
    ) -> job_service_pb2.StreamLogsRequest:
        request = job_service_pb2.StreamLogsRequest(
            job_id=job_id,
            follow=follow,
            attempt=attempt,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
            tail_lines=tail_lines,
            streams=log_streams_to_proto(streams),  # type: ignore[arg-type]
        )
        if keepalive_interval is not None:
            request.keepalive_interval.CopyFrom(duration_to_proto(keepalive_interval))
        return request


def frame_events(frame: job_service_pb2.StreamJobEventsResponse) -> Sequence[job_pb2.JobEvent]:
    """The events a StreamJobEvents frame carries (none in a keepalive)."""
    kind = frame.WhichOneof("frame")
    if kind == "event":
        return (frame.event,)
    if kind == "batch":
        return frame.batch.events
    return ()


_EXEC_OPTIONS = frozenset(
    {"env", "stdin", "labels", "queue", "priority", "timeout", "retry", "resources",
     "node_selector", "inputs", "outputs"}
)  # fmt: skip
_FUNCTION_OPTIONS = frozenset({"labels", "queue", "priority", "timeout", "retry"})


def _check_options(options: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(unknown)}; each job gets its own request_id"
            if "request_id" in unknown
            else f"unexpected option(s) {', '.join(unknown)}"
        )


def submit_batches(
    requests: Sequence[job_service_pb2.SubmitJobRequest],
) -> Iterator[job_service_pb2.SubmitJobsRequest]:
    """The requests in SubmitJobs calls of at most MAX_SUBMIT_JOBS jobs, in order."""
    for start in range(0, len(requests), MAX_SUBMIT_JOBS):
        yield job_service_pb2.SubmitJobsRequest(jobs=requests[start : start + MAX_SUBMIT_JOBS])


def new_request_id() -> str:
    """A fresh idempotency key for SubmitJob."""
    return str(uuid.uuid4())


class WaitPlan:
    """Splits a caller's wait into WaitJob calls of at most :data:`WAIT_SLICE` seconds."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._left = timeout
        self._calls = 0

    def next_slice(self) -> float | None:
        """Seconds for the next WaitJob call, or None once the caller's timeout is used up.

        The first call always happens, so ``timeout=0`` still looks at the job once.
        """
        self._calls += 1
        if self._left is None:
            return WAIT_SLICE
        if self._left <= 0 and self._calls > 1:
            return None
        return min(max(self._left, 0.0), WAIT_SLICE)

    @staticmethod
    def pause_after(elapsed: float, asked: float) -> float:
        """A short pause when the server answered an unfinished wait early, to never spin."""
        return 0.2 if elapsed < asked / 2 else 0.0

    def spent(self, seconds: float) -> None:
        """Records time spent waiting."""
        if self._left is not None:
            self._left -= seconds

    @staticmethod
    def request(job_id: str, seconds: float) -> tuple[job_service_pb2.WaitJobRequest, float]:
        """The WaitJob request for one slice, and the call's deadline in seconds."""
        request = job_service_pb2.WaitJobRequest(job_id=job_id)
        request.timeout.CopyFrom(duration_to_proto(seconds))
        return request, seconds + WAIT_GRACE


class EventCursor:
    """Where an events stream is, so a broken one resumes with no gap and no repeat."""

    def __init__(self, request: job_service_pb2.StreamJobEventsRequest) -> None:
        self._request = request
        self.last_sequence = request.after_sequence

    def accept(self, event: job_pb2.JobEvent) -> bool:
        """Records an event; False for one already seen (never yielded twice)."""
        if event.sequence <= self.last_sequence:
            return False
        self.last_sequence = event.sequence
        return True

    def reached(self, keepalive: job_pb2.Keepalive) -> None:
        """Records the position a keepalive reports (a from_now start, or filtered events)."""
        self.last_sequence = max(self.last_sequence, keepalive.sequence)

    def request(self) -> job_service_pb2.StreamJobEventsRequest:
        """The request that continues right after the last event seen."""
        request = job_service_pb2.StreamJobEventsRequest()
        request.CopyFrom(self._request)
        if self.last_sequence > 0:
            request.after_sequence = self.last_sequence
            request.from_now = False
        return request


class LogCursor:
    """Byte offsets reached in each stream, so a broken log stream resumes exactly."""

    def __init__(self, request: job_service_pb2.StreamLogsRequest) -> None:
        self._request = request
        self.attempt = request.attempt
        self._offsets: dict[int, int] = {}

    def accept(self, chunk: job_pb2.LogChunk) -> bytes:
        """Records a chunk; returns the part of its data not yet seen (may be empty)."""
        if self.attempt and chunk.attempt and chunk.attempt != self.attempt:
            self._offsets.clear()  # a new attempt: its streams start again at 0
        if chunk.attempt:
            self.attempt = chunk.attempt
        seen = self._offsets.get(chunk.stream, chunk.offset)
        end = chunk.offset + len(chunk.data)
        if end <= seen and chunk.stream in self._offsets:
            return b""
        data = chunk.data[max(seen - chunk.offset, 0) :]
        self._offsets[chunk.stream] = end
        return data

    def chunk(self, message: job_pb2.LogChunk) -> LogChunk | None:
        """Records a chunk; its wrapper trimmed to bytes not yet seen, or None if all were."""
        data = self.accept(message)
        if not data:
            return None
        if len(data) != len(message.data):
            trimmed = job_pb2.LogChunk()
            trimmed.CopyFrom(message)
            trimmed.offset = message.offset + len(message.data) - len(data)
            trimmed.data = data
            message = trimmed
        return log_chunk_from_proto(message)

    def request(self) -> job_service_pb2.StreamLogsRequest:
        """The request that continues from the offsets reached, in the same attempt."""
        request = job_service_pb2.StreamLogsRequest()
        request.CopyFrom(self._request)
        if not self._offsets:
            return request
        if self._request.attempt:
            request.attempt = self.attempt
        else:  # still following the latest: the server moves on if a retry started meanwhile
            request.resume_attempt = self.attempt
        request.tail_lines = 0
        if job_pb2.LOG_STREAM_STDOUT in self._offsets:
            request.stdout_offset = self._offsets[job_pb2.LOG_STREAM_STDOUT]
        if job_pb2.LOG_STREAM_STDERR in self._offsets:
            request.stderr_offset = self._offsets[job_pb2.LOG_STREAM_STDERR]
        return request


def retryable(error: grpc.RpcError) -> bool:
    """True for a status worth trying again (UNAVAILABLE)."""
    code = getattr(error, "code", None)
    return callable(code) and code() in RETRYABLE


def read_request(job_id: str, name: str, offset: int) -> Any:
    """A ReadArtifact request from ``offset``, in 1 MiB chunks."""
    return job_service_pb2.ReadArtifactRequest(
        job_id=job_id, name=name, offset=offset, chunk_size=ARTIFACT_CHUNK
    )
