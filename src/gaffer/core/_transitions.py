"""Applying a lifecycle change to a stored job: history entry, event, topics, in one place."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from gaffer.domain import is_finished
from gaffer.store import EVENTS_TOPIC, StoredJob, Transaction, job_topic
from gaffer.v1 import job_pb2


def timestamp(now: float) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(int(now * 1e9), 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


async def record_event(
    tx: Transaction,
    stored: StoredJob,
    event_type: int,
    *,
    now: float,
    message: str,
    actor: str,
    exit_code: int | None = None,
) -> job_pb2.JobEvent:
    """Appends an event about the job as it is now, and marks its topics for publishing."""
    event = state_event(
        stored, event_type, now=now, message=message, actor=actor, exit_code=exit_code
    )
    await tx.append_event(stored.tenant, event)
    _touched(tx, stored)
    return event


async def insert_submitted(tx: Transaction, stored: StoredJob, *, now: float, actor: str) -> None:
    """Stores a new job as PENDING with its CREATED event."""
    apply_state(stored, job_pb2.JOB_STATE_PENDING, now=now, message="submitted", actor=actor)
    created = state_event(
        stored, job_pb2.JOB_EVENT_TYPE_CREATED, now=now, message="submitted", actor=actor
    )
    await tx.insert_job_with_event(stored, created)
    _touched(tx, stored)


def _touched(tx: Transaction, stored: StoredJob) -> None:
    """Marks the topics of a job's new event, published once the transaction commits."""
    tx.topics.add(job_topic(stored.job.id))
    tx.topics.add(EVENTS_TOPIC)


async def record_events(tx: Transaction, events: list[tuple[StoredJob, job_pb2.JobEvent]]) -> None:
    """Appends several events in one go (each job's event built by ``state_event``)."""
    if not events:
        return
    await tx.append_events([(stored.tenant, event) for stored, event in events])
    for stored, _ in events:
        _touched(tx, stored)


def state_event(
    stored: StoredJob,
    event_type: int,
    *,
    now: float,
    message: str,
    actor: str,
    exit_code: int | None = None,
) -> job_pb2.JobEvent:
    """An event about the job as it is now (not stored yet)."""
    job = stored.job
    event = job_pb2.JobEvent(
        job_id=job.id,
        type=event_type,  # type: ignore[arg-type]
        time=timestamp(now),
        state=job.state,
        attempt=job.attempt,
        agent_id=job.agent_id,
        message=message,
        actor=actor,
    )
    if exit_code is not None:
        event.exit_code = exit_code
    return event


async def change_state(
    tx: Transaction,
    stored: StoredJob,
    state: int,
    *,
    now: float,
    message: str,
    actor: str,
    event_type: int = job_pb2.JOB_EVENT_TYPE_STATE_CHANGED,
    exit_code: int | None = None,
) -> job_pb2.JobEvent:
    """Moves the job to ``state``: appends a status, stamps times, writes it, records an event.

    ``exit_code`` is given when this change records the end of the attempt's process.
    """
    apply_state(stored, state, now=now, message=message, actor=actor, exit_code=exit_code)
    event = state_event(
        stored, event_type, now=now, message=message, actor=actor, exit_code=exit_code
    )
    await tx.write_change(stored, event)
    _touched(tx, stored)
    return event


def apply_state(
    stored: StoredJob,
    state: int,
    *,
    now: float,
    message: str,
    actor: str,
    exit_code: int | None = None,
) -> None:
    """The in-memory half of change_state (for a job not stored yet: insert it, then record
    the event)."""
    job = stored.job
    job.state = state  # type: ignore[assignment]
    job.message = message
    at = timestamp(now)
    job.update_time.CopyFrom(at)
    status = job_pb2.JobStatus(
        state=state,  # type: ignore[arg-type]
        time=at,
        message=message,
        agent_id=job.agent_id,
        attempt=job.attempt,
        actor=actor,
    )
    if exit_code is not None:
        status.exit_code = exit_code
    job.history.append(status)
    if is_finished(state):
        job.finish_time.CopyFrom(at)
        job.cancel_requested = False
        stored.lease_expires = 0.0
        stored.deadline = 0.0
