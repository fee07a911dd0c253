"""Conversions between the contract's messages and the client's Python types.

Pure functions, no I/O: the one place that knows both the ``_pb2`` types and the wrappers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from gaffer.client._models import (
    Agent,
    AgentState,
    ArtifactInfo,
    Capacity,
    InputFile,
    Job,
    JobEvent,
    JobEventType,
    JobSpec,
    JobState,
    JobStatus,
    JobTimings,
    ListOrder,
    LogChunk,
    LogEnd,
    LogStream,
    Resources,
    RetryPolicy,
)
from gaffer.v1 import agent_service_pb2, job_pb2, job_service_pb2

Seconds = float | int | timedelta


def to_timedelta(value: Seconds) -> timedelta:
    """Seconds (float) or a timedelta, as a timedelta."""
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def to_seconds(value: Seconds) -> float:
    """Seconds (float) or a timedelta, as float seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def duration_to_proto(value: Seconds) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` for seconds or a timedelta."""
    message = duration_pb2.Duration()
    message.FromTimedelta(to_timedelta(value))
    return message


def duration_from_proto(
    message: duration_pb2.Duration, *, present: bool = True
) -> timedelta | None:
    """A timedelta, or None when the field is unset."""
    return message.ToTimedelta() if present else None


def timestamp_to_proto(value: datetime) -> timestamp_pb2.Timestamp:
    """A ``google.protobuf.Timestamp``; naive datetimes are taken as local time."""
    if value.tzinfo is None:
        value = value.astimezone()
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def timestamp_from_proto(message: timestamp_pb2.Timestamp) -> datetime | None:
    """An aware UTC datetime, or None for an unset (zero) timestamp."""
    if message.seconds == 0 and message.nanos == 0:
        return None
    return message.ToDatetime(tzinfo=UTC)


def _text_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def retry_to_proto(retry: int | RetryPolicy | None) -> job_pb2.RetryPolicy | None:
    """A retry policy from a number of attempts or a :class:`RetryPolicy`."""
    if retry is None:
        return None
    if isinstance(retry, int):
        retry = RetryPolicy(max_attempts=retry)
    message = job_pb2.RetryPolicy(
        max_attempts=retry.max_attempts,
        backoff_multiplier=retry.backoff_multiplier,
        retryable_exit_codes=list(retry.retryable_exit_codes),
    )
    if retry.initial_backoff is not None:
        message.initial_backoff.CopyFrom(duration_to_proto(retry.initial_backoff))
    if retry.max_backoff is not None:
        message.max_backoff.CopyFrom(duration_to_proto(retry.max_backoff))
    return message


def spec_to_proto(
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
) -> job_pb2.JobSpec:
    """Builds a ``JobSpec`` for an exec job from :meth:`Client.submit`'s arguments."""
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of strings, not one string")
    spec = job_pb2.JobSpec(
        exec=job_pb2.ExecExecutor(
            argv=list(argv),
            env=dict(env or {}),
            stdin=_text_bytes(stdin) if stdin is not None else b"",
        ),
        labels=dict(labels or {}),
        queue=queue or "",
        priority=priority,
        node_selector=dict(node_selector or {}),
        outputs=list(outputs or ()),
    )
    if timeout is not None:
        spec.timeout.CopyFrom(duration_to_proto(timeout))
    retry_message = retry_to_proto(retry)
    if retry_message is not None:
        spec.retry_policy.CopyFrom(retry_message)
    if resources is not None:
        spec.resources.CopyFrom(
            job_pb2.Resources(
                cpu=resources.cpu, memory_bytes=resources.memory_bytes, gpu=resources.gpu
            )
        )
    if isinstance(inputs, Mapping):
        files: Iterable[InputFile] = (
            InputFile(path, _text_bytes(content)) for path, content in inputs.items()
        )
    else:
        files = inputs or ()
    for file in files:
        spec.inputs.append(job_pb2.InputFile(path=file.path, content=file.content, mode=file.mode))
    return spec


def spec_from_proto(message: job_pb2.JobSpec) -> JobSpec:
    """The :class:`JobSpec` view of a spec message."""
    retry = message.retry_policy
    return JobSpec(
        argv=tuple(message.exec.argv),
        env=dict(message.exec.env),
        stdin=message.exec.stdin,
        labels=dict(message.labels),
        queue=message.queue or "default",
        priority=message.priority,
        timeout=duration_from_proto(message.timeout, present=message.HasField("timeout")),
        retry=RetryPolicy(
            max_attempts=retry.max_attempts or 1,
            initial_backoff=duration_from_proto(
                retry.initial_backoff, present=retry.HasField("initial_backoff")
            ),
            max_backoff=duration_from_proto(
                retry.max_backoff, present=retry.HasField("max_backoff")
            ),
            backoff_multiplier=retry.backoff_multiplier,
            retryable_exit_codes=tuple(retry.retryable_exit_codes),
        ),
        resources=Resources(
            cpu=message.resources.cpu,
            memory_bytes=message.resources.memory_bytes,
            gpu=message.resources.gpu,
        ),
        node_selector=dict(message.node_selector),
        inputs=tuple(InputFile(f.path, f.content, f.mode) for f in message.inputs),
        outputs=tuple(message.outputs),
        raw=message,
    )


def _enum(cls: type[JobState], value: int) -> JobState:
    try:
        return cls(value)
    except ValueError:  # a newer server's value: keep going with UNSPECIFIED
        return cls(0)


def job_from_proto(message: job_pb2.Job) -> Job:
    """The :class:`Job` view of a job message."""
    timings = message.timings
    return Job(
        id=message.id,
        state=_enum(JobState, message.state),
        spec=spec_from_proto(message.spec),
        history=tuple(
            JobStatus(
                state=_enum(JobState, s.state),
                time=timestamp_from_proto(s.time),
                message=s.message,
                agent_id=s.agent_id,
                attempt=s.attempt,
                actor=s.actor,
                raw=s,
            )
            for s in message.history
        ),
        create_time=timestamp_from_proto(message.create_time),
        update_time=timestamp_from_proto(message.update_time),
        finish_time=timestamp_from_proto(message.finish_time),
        attempt=message.attempt,
        agent_id=message.agent_id,
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        message=message.message,
        cancel_requested=message.cancel_requested,
        canceled_by=message.canceled_by,
        request_id=message.request_id,
        timings=JobTimings(
            **{
                name: duration_from_proto(getattr(timings, name), present=timings.HasField(name))
                for name in ("queued", "validating", "running", "uploading", "total")
            }
        ),
        raw=message,
    )


def event_from_proto(message: job_pb2.JobEvent) -> JobEvent:
    """The :class:`JobEvent` view of an event message."""
    try:
        event_type = JobEventType(message.type)
    except ValueError:
        event_type = JobEventType.UNSPECIFIED
    return JobEvent(
        sequence=message.sequence,
        job_id=message.job_id,
        type=event_type,
        time=timestamp_from_proto(message.time),
        state=_enum(JobState, message.state),
        attempt=message.attempt,
        agent_id=message.agent_id,
        message=message.message,
        actor=message.actor,
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        raw=message,
    )


def log_chunk_from_proto(message: job_pb2.LogChunk) -> LogChunk:
    """The :class:`LogChunk` view of a chunk message."""
    try:
        stream = LogStream(message.stream)
    except ValueError:
        stream = LogStream.UNSPECIFIED
    return LogChunk(
        stream=stream,
        offset=message.offset,
        data=message.data,
        attempt=message.attempt,
        raw=message,
    )


def log_end_from_proto(message: job_service_pb2.LogEnd) -> LogEnd:
    """The :class:`LogEnd` view of the final log frame."""
    return LogEnd(
        state=_enum(JobState, message.state),
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        message=message.message,
        attempt=message.attempt,
        stdout_size=message.stdout_size,
        stderr_size=message.stderr_size,
        raw=message,
    )


def artifact_from_proto(job_id: str, message: job_pb2.Artifact) -> ArtifactInfo:
    """The :class:`ArtifactInfo` view of an artifact of ``job_id``."""
    return ArtifactInfo(
        job_id=job_id,
        name=message.name,
        digest=message.digest,
        size_bytes=message.size_bytes,
        attempt=message.attempt,
        create_time=timestamp_from_proto(message.create_time),
        raw=message,
    )


def agent_from_proto(message: agent_service_pb2.Agent) -> Agent:
    """The :class:`Agent` view of an agent message."""
    try:
        state = AgentState(message.state)
    except ValueError:
        state = AgentState.UNSPECIFIED
    return Agent(
        id=message.id,
        name=message.name,
        labels=dict(message.labels),
        capacity=Capacity(
            slots=message.capacity.slots or 1,
            cpu=message.capacity.cpu,
            memory_bytes=message.capacity.memory_bytes,
            gpu=message.capacity.gpu,
        ),
        queues=tuple(message.queues),
        state=state,
        running=tuple((r.job_id, r.attempt) for r in message.running),
        last_heartbeat_time=timestamp_from_proto(message.last_heartbeat_time),
        register_time=timestamp_from_proto(message.register_time),
        raw=message,
    )


def job_filter_to_proto(
    *,
    states: Iterable[JobState | str | int] | None = None,
    labels: Mapping[str, str] | None = None,
    exclude_labels: Mapping[str, str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    queue: str | None = None,
) -> job_service_pb2.JobFilter:
    """A ``JobFilter``; states may be given by name (``"running"``)."""
    message = job_service_pb2.JobFilter(
        states=[int(JobState.parse(s)) for s in states or ()],  # type: ignore[misc]
        labels=dict(labels or {}),
        exclude_labels=dict(exclude_labels or {}),
        queue=queue or "",
    )
    if created_after is not None:
        message.created_after.CopyFrom(timestamp_to_proto(created_after))
    if created_before is not None:
        message.created_before.CopyFrom(timestamp_to_proto(created_before))
    return message


def order_to_proto(order: ListOrder | str | int | None) -> int:
    """A ``ListOrder`` value; also accepts ``"newest"`` and ``"oldest"``."""
    if order is None:
        return int(ListOrder.UNSPECIFIED)
    if isinstance(order, str) and order.lower() in ("newest", "oldest"):
        order = f"{order}_first"
    return int(ListOrder.parse(order))


def log_streams_to_proto(streams: Iterable[LogStream | str | int] | None) -> list[int]:
    """Log stream values; also accepts ``"stdout"`` and ``"stderr"``."""
    return [int(LogStream.parse(s)) for s in streams or ()]
