"""Lifecycle rules: which states are finished, which moves an agent may make, when to retry."""

from __future__ import annotations

import random

from gaffer.v1 import job_pb2

S = job_pb2.JobState

FINISHED_STATES = frozenset({S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELED})
# States in which an agent holds the attempt under a lease.
ACTIVE_STATES = frozenset(
    {S.JOB_STATE_CLAIMED, S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING, S.JOB_STATE_UPLOADING}
)
# The moves UpdateJobStatus allows: target state -> states it may come from.
AGENT_UPDATE_STATES: dict[int, frozenset[int]] = {
    S.JOB_STATE_VALIDATING: frozenset({S.JOB_STATE_CLAIMED}),
    S.JOB_STATE_RUNNING: frozenset({S.JOB_STATE_CLAIMED, S.JOB_STATE_VALIDATING}),
    S.JOB_STATE_UPLOADING: frozenset({S.JOB_STATE_RUNNING}),
}


def is_finished(state: int) -> bool:
    return state in FINISHED_STATES


def max_attempts(policy: job_pb2.RetryPolicy) -> int:
    return max(1, policy.max_attempts)


def should_retry(
    spec: job_pb2.JobSpec, failures: int, exit_code: int | None, *, not_retryable: bool = False
) -> bool:
    """Whether a job that has now failed ``failures`` times gets another attempt."""
    policy = spec.retry_policy
    if not_retryable or failures >= max_attempts(policy):
        return False
    if exit_code is not None and policy.retryable_exit_codes:
        return exit_code in policy.retryable_exit_codes
    return True


def next_backoff(policy: job_pb2.RetryPolicy, failures: int) -> float:
    """Seconds to wait after the n-th failure: exponential, capped, with jitter."""
    initial = policy.initial_backoff.ToTimedelta().total_seconds()
    if initial <= 0:
        return 0.0
    multiplier = policy.backoff_multiplier or 2.0
    delay = initial * multiplier ** max(0, failures - 1)
    if policy.HasField("max_backoff"):
        delay = min(delay, policy.max_backoff.ToTimedelta().total_seconds())
    # Full jitter over the upper half keeps retries of many jobs from moving in lockstep.
    return delay * random.uniform(0.5, 1.0)
