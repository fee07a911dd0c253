"""Request fields to domain values, with field violations for what cannot be converted."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from gaffer.domain import FieldViolation, InvalidArgument, Limits, check_enum_values
from gaffer.domain._validation import check_labels
from gaffer.store import JobQuery
from gaffer.v1 import job_pb2, job_service_pb2

MIN_KEEPALIVE = 0.1
MAX_KEEPALIVE = 3600.0
MAX_DURATION_SECONDS = 315_576_000_000  # the range google.protobuf.Duration defines


def duration_seconds(value: duration_pb2.Duration, field: str) -> float:
    """A Duration as seconds; INVALID_ARGUMENT when it is outside the range Duration defines."""
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds and nanos and (seconds < 0) != (nanos < 0))
    ):
        raise InvalidArgument.single(field, "is not a valid Duration")
    return seconds + nanos / 1e9


def timestamp_seconds(value: timestamp_pb2.Timestamp, field: str) -> float:
    """A Timestamp as seconds; INVALID_ARGUMENT when it is outside years 1 to 9999."""
    try:
        return value.ToNanoseconds() / 1e9
    except ValueError:
        raise InvalidArgument.single(field, "is not a valid Timestamp") from None


def job_query(flt: job_service_pb2.JobFilter, limits: Limits, field: str = "filter") -> JobQuery:
    """A JobFilter as a store query; INVALID_ARGUMENT listing every bad field."""
    violations: list[FieldViolation] = check_enum_values(
        flt.states, job_pb2.JobState, f"{field}.states"
    )
    check_labels(flt.labels, f"{field}.labels", limits, violations)
    check_labels(flt.exclude_labels, f"{field}.exclude_labels", limits, violations)
    after = before = None
    if flt.HasField("created_after"):
        after = timestamp_seconds(flt.created_after, f"{field}.created_after")
    if flt.HasField("created_before"):
        before = timestamp_seconds(flt.created_before, f"{field}.created_before")
    if after is not None and before is not None and after >= before:
        violations.append(
            FieldViolation(f"{field}.created_before", "must be later than created_after")
        )
    if len(flt.queue) > limits.max_queue_chars:
        violations.append(FieldViolation(f"{field}.queue", "is too long"))
    if violations:
        raise InvalidArgument(violations)
    return JobQuery(
        states=tuple(sorted(set(flt.states))),
        labels=tuple(sorted(flt.labels.items())),
        exclude_labels=tuple(sorted(flt.exclude_labels.items())),
        created_after=after,
        created_before=before,
        queue=flt.queue or None,
    )


def keepalive_seconds(value: duration_pb2.Duration, default: float, field: str) -> float:
    if not value.ByteSize():
        return default
    seconds = duration_seconds(value, field)
    if not MIN_KEEPALIVE <= seconds <= MAX_KEEPALIVE:
        raise InvalidArgument.single(
            field, f"must be between {MIN_KEEPALIVE} s and {MAX_KEEPALIVE:.0f} s"
        )
    return seconds


def wait_seconds(value: duration_pb2.Duration, field: str, maximum: float) -> float | None:
    """A wait/timeout Duration: None when unset, INVALID_ARGUMENT when negative or too long."""
    if not value.ByteSize():
        return None
    seconds = duration_seconds(value, field)
    if seconds < 0:
        raise InvalidArgument.single(field, "must not be negative")
    if seconds > maximum:
        raise InvalidArgument.single(field, f"must be at most {maximum:.0f} s")
    return seconds
