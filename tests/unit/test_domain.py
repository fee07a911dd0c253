"""Validation, lifecycle rules, page tokens and timings: pure logic, no server."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from gaffer.domain import (
    InvalidArgument,
    Limits,
    PageCursor,
    decode_page_token,
    encode_page_token,
    fill_timings,
    next_backoff,
    should_retry,
    validate_spec,
)
from gaffer.v1 import job_pb2

LIMITS = Limits()


def spec(**exec_fields: object) -> job_pb2.JobSpec:
    result = job_pb2.JobSpec()
    result.exec.argv.extend(exec_fields.pop("argv", ["true"]))  # type: ignore[arg-type]
    return result


def violations(s: job_pb2.JobSpec) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as err:
        validate_spec(s, LIMITS)
    return {v.field: v.description for v in err.value.violations}


def test_a_plain_spec_is_valid() -> None:
    validate_spec(spec(), LIMITS)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.ClearField("exec"), "spec.exec"),
        (lambda s: s.exec.ClearField("argv"), "spec.exec.argv"),
        (lambda s: s.exec.argv.__setitem__(0, ""), "spec.exec.argv[0]"),
        (lambda s: s.exec.argv.extend(["x" * 1024] * 300), "spec.exec.argv"),
        (lambda s: s.exec.argv.extend(["a"] * 5000), "spec.exec.argv"),
        (lambda s: s.exec.env.update({"1BAD": "x"}), "spec.exec.env['1BAD']"),
        (lambda s: s.exec.env.update({f"K{i}": "v" for i in range(1100)}), "spec.exec.env"),
        (lambda s: s.labels.update({f"k{i}": "v" for i in range(65)}), "spec.labels"),
        (lambda s: s.labels.update({"bad key": "v"}), "spec.labels['bad key']"),
        (lambda s: s.labels.update({"k": "v" * 300}), "spec.labels['k']"),
        (lambda s: setattr(s, "queue", "Bad Queue"), "spec.queue"),
        (lambda s: setattr(s, "priority", 5000), "spec.priority"),
        (lambda s: s.timeout.FromSeconds(-1), "spec.timeout"),
        (lambda s: s.timeout.FromSeconds(0) or s.SetInParent(), "spec.timeout"),
        (lambda s: setattr(s.retry_policy, "max_attempts", -1), "spec.retry_policy.max_attempts"),
        (lambda s: setattr(s.resources, "cpu", -1.0), "spec.resources.cpu"),
        (lambda s: s.inputs.add(path="../etc/passwd"), "spec.inputs[0].path"),
        (lambda s: s.inputs.add(path="/abs"), "spec.inputs[0].path"),
        (lambda s: s.outputs.append("../*"), "spec.outputs[0]"),
    ],
)
def test_each_problem_names_its_field(mutate: object, field: str) -> None:
    s = spec()
    mutate(s)  # type: ignore[operator]
    if field == "spec.timeout" and not s.HasField("timeout"):
        s.timeout.SetInParent()
    assert field in violations(s)


def test_every_problem_is_reported_at_once() -> None:
    s = spec(argv=[])
    s.timeout.FromSeconds(-5)
    s.labels["bad key"] = "x"
    assert {"spec.exec.argv", "spec.timeout", "spec.labels['bad key']"} <= set(violations(s))


def test_page_token_round_trips_and_is_bound_to_its_query() -> None:
    token = encode_page_token(PageCursor(42, "abc"))
    assert decode_page_token(token, "abc").after_seq == 42
    with pytest.raises(InvalidArgument) as err:
        decode_page_token(token, "other")
    assert err.value.violations[0].field == "page_token"
    for garbage in ("garbage!!", "", "eyJ4IjoxfQ", "%%%"):
        with pytest.raises(InvalidArgument):
            decode_page_token(garbage, "abc")


def test_retry_policy() -> None:
    s = spec()
    assert not should_retry(s, 1, 1)  # no policy: one attempt
    s.retry_policy.max_attempts = 3
    assert should_retry(s, 1, 1) and should_retry(s, 2, 1) and not should_retry(s, 3, 1)
    assert not should_retry(s, 1, 1, not_retryable=True)
    s.retry_policy.retryable_exit_codes.append(75)
    assert should_retry(s, 1, 75) and not should_retry(s, 1, 1)
    assert should_retry(s, 1, None)  # a lost lease has no exit code: retried


def test_backoff_grows_is_capped_and_jittered() -> None:
    random.seed(1)
    policy = job_pb2.RetryPolicy()
    assert next_backoff(policy, 1) == 0.0
    policy.initial_backoff.FromSeconds(1)
    policy.max_backoff.FromSeconds(5)
    delays = [next_backoff(policy, n) for n in range(1, 6)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(d <= 5.0 for d in delays)


def test_timings_follow_the_latest_attempt() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    job = job_pb2.Job()
    for state, seconds in [
        (job_pb2.JOB_STATE_PENDING, 0),
        (job_pb2.JOB_STATE_CLAIMED, 2),
        (job_pb2.JOB_STATE_PENDING, 3),  # retried
        (job_pb2.JOB_STATE_CLAIMED, 7),
        (job_pb2.JOB_STATE_RUNNING, 8),
        (job_pb2.JOB_STATE_UPLOADING, 18),
        (job_pb2.JOB_STATE_COMPLETED, 20),
    ]:
        job.history.add(state=state).time.FromDatetime(t0 + timedelta(seconds=seconds))
    job.finish_time.FromDatetime(t0 + timedelta(seconds=20))
    fill_timings(job, int((t0 + timedelta(seconds=99)).timestamp()) * 1_000_000_000)
    timings = job.timings
    assert timings.queued.seconds == 4
    assert timings.validating.seconds == 1
    assert timings.running.seconds == 10
    assert timings.uploading.seconds == 2
    assert timings.total.seconds == 20


def test_timings_of_a_job_still_queued_and_of_a_clock_behind_the_servers() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    job = job_pb2.Job()
    job.history.add(state=job_pb2.JOB_STATE_PENDING).time.FromDatetime(t0)
    fill_timings(job, int(t0.timestamp()) * 1_000_000_000 + 2_250_000_000)
    assert (job.timings.queued.seconds, job.timings.queued.nanos) == (2, 250_000_000)
    assert job.timings.total == job.timings.queued
    assert not job.timings.HasField("running")
    # An agent whose clock is 4.5 s behind says it claimed the job before it was queued:
    # the duration is negative, both of its parts of the same sign, as Duration requires.
    job.history.add(state=job_pb2.JOB_STATE_CLAIMED).time.FromDatetime(t0 - timedelta(seconds=4.5))
    fill_timings(job, int(t0.timestamp()) * 1_000_000_000)
    assert (job.timings.queued.seconds, job.timings.queued.nanos) == (-4, -500_000_000)


def test_the_domain_loads_without_grpc() -> None:
    """The rules never import grpc, not even through the package's re-exports."""
    import subprocess
    import sys

    code = "import sys, gaffer.domain; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_ids_spell_creation_millis_then_randomness_in_crockford_base32() -> None:
    """26 digits: 10 of milliseconds since the epoch, then 16 of random bits, most significant
    first, so that ids sort by creation time."""
    import time

    from gaffer.domain import _ids

    def spelt(value: int, width: int) -> str:
        digits = []
        for _ in range(width):
            value, digit = divmod(value, 32)
            digits.append("0123456789abcdefghjkmnpqrstvwxyz"[digit])
        return "".join(reversed(digits))

    before = time.time_ns() // 1_000_000
    ids = [_ids.new_job_id() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    assert all(i.startswith("j_") and len(i) == 28 for i in ids)
    assert spelt(before, 10) <= min(i[2:12] for i in ids)
    assert max(i[2:12] for i in ids) <= spelt(after, 10)
    assert len(set(ids)) == len(ids)
    state = _ids._random.getstate()
    expected = spelt(_ids._random.getrandbits(80), 16)
    _ids._random.setstate(state)
    assert _ids.new_agent_id()[12:] == expected
