"""Rows to stored objects and back: the parts of a job and an agent row both stores share."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gaffer.store._base import StoredAgent, StoredJob
from gaffer.v1 import agent_service_pb2, job_pb2

#: The columns job_from_row reads, in its order.
JOB_COLUMNS = "seq, tenant, lease_token, lease_expires, not_before, deadline, spec, body"


def job_from_row(row: Sequence[Any]) -> StoredJob:
    """A job from its row: the spec is stored apart, written once, never rewritten."""
    seq, tenant, token, expires, not_before, deadline, spec, body = row
    job = job_pb2.Job.FromString(body)
    job.spec.ParseFromString(spec)
    return StoredJob(
        job=job,
        tenant=tenant,
        seq=seq,
        lease_token=token,
        lease_expires=expires,
        not_before=not_before,
        deadline=deadline,
    )


def body_without_spec(job: job_pb2.Job) -> bytes:
    """The job's message minus its spec (inputs can be megabytes; updates rewrite only this)."""
    copy = job_pb2.Job()
    copy.CopyFrom(job)
    copy.ClearField("spec")
    return copy.SerializeToString()


def labels_json(labels: Mapping[str, str]) -> str:
    """The labels column: a JSON object, keys sorted (most jobs have none)."""
    return json.dumps(dict(labels), sort_keys=True) if labels else "{}"


def job_row(stored: StoredJob) -> tuple[Any, ...]:
    """A new job's row, in this order: id, tenant, request_id, queue, priority, state,
    labels, created_at, agent_id, lease_token, lease_expires, not_before, deadline, spec,
    body (without the spec)."""
    job = stored.job
    return (
        job.id,
        stored.tenant,
        job.request_id or None,
        job.spec.queue,
        job.spec.priority,
        job.state,
        labels_json(job.spec.labels),
        job.create_time.seconds + job.create_time.nanos / 1e9,
        job.agent_id,
        stored.lease_token,
        stored.lease_expires,
        stored.not_before,
        stored.deadline,
        job.spec.SerializeToString(),
        body_without_spec(job),
    )


def job_changes(stored: StoredJob) -> tuple[Any, ...]:
    """What an update rewrites, in this order: state, agent_id, lease_token, lease_expires,
    not_before, deadline, body (without the spec)."""
    job = stored.job
    return (
        job.state,
        job.agent_id,
        stored.lease_token,
        stored.lease_expires,
        stored.not_before,
        stored.deadline,
        body_without_spec(job),
    )


def event_from_row(seq: int, body: bytes) -> job_pb2.JobEvent:
    """An event as stored; its sequence number is the row's, not written in the body."""
    event = job_pb2.JobEvent.FromString(body)
    event.sequence = seq
    return event


def agent_from_row(row: Sequence[Any]) -> StoredAgent:
    last_heartbeat, body = row
    return StoredAgent(
        agent=agent_service_pb2.Agent.FromString(body), last_heartbeat=last_heartbeat
    )
