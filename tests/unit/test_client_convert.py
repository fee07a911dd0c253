"""Conversions between the contract's messages and the client's wrappers, and stream cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gaffer.client import InputFile, JobEventType, JobState, ListOrder, LogStream, RetryPolicy
from gaffer.client._base import CallRetry, ClientBase, EventCursor, LogCursor, WaitPlan
from gaffer.client._convert import (
    event_from_proto,
    job_filter_to_proto,
    job_from_proto,
    order_to_proto,
    spec_to_proto,
    timestamp_from_proto,
    timestamp_to_proto,
)
from gaffer.v1 import job_pb2, job_service_pb2


def test_spec_carries_every_submit_argument() -> None:
    spec = spec_to_proto(
        ["sh", "-c", "echo hi"],
        env={"A": "1"},
        stdin="in",
        labels={"team": "x"},
        queue="gpu",
        priority=5,
        timeout=1.5,
        retry=3,
        node_selector={"zone": "a"},
        inputs={"a.txt": "text", "b.bin": b"\x00\x01"},
        outputs=["*.txt"],
    )
    assert list(spec.exec.argv) == ["sh", "-c", "echo hi"]
    assert dict(spec.exec.env) == {"A": "1"}
    assert spec.exec.stdin == b"in"
    assert (spec.queue, spec.priority) == ("gpu", 5)
    assert spec.timeout.ToTimedelta() == timedelta(seconds=1.5)
    assert spec.retry_policy.max_attempts == 3
    assert dict(spec.node_selector) == {"zone": "a"}
    assert [(f.path, f.content) for f in spec.inputs] == [("a.txt", b"text"), ("b.bin", b"\0\1")]
    assert list(spec.outputs) == ["*.txt"]


def test_spec_leaves_unset_fields_unset() -> None:
    spec = spec_to_proto(["true"])
    assert not spec.HasField("timeout")
    assert not spec.HasField("retry_policy")
    assert not spec.HasField("resources")
    assert spec.queue == ""


def test_spec_accepts_timedelta_policy_and_input_files() -> None:
    spec = spec_to_proto(
        ["true"],
        timeout=timedelta(minutes=2),
        retry=RetryPolicy(max_attempts=4, initial_backoff=timedelta(seconds=1)),
        inputs=[InputFile("run.sh", b"#!/bin/sh", mode=0o755)],
    )
    assert spec.timeout.seconds == 120
    assert spec.retry_policy.initial_backoff.seconds == 1
    assert spec.inputs[0].mode == 0o755


def test_argv_as_one_string_is_refused() -> None:
    with pytest.raises(TypeError):
        spec_to_proto("echo hi")


def test_submit_request_always_has_a_request_id() -> None:
    kwargs = dict.fromkeys(
        [
            "env",
            "stdin",
            "labels",
            "queue",
            "timeout",
            "retry",
            "resources",
            "node_selector",
            "inputs",
            "outputs",
            "request_id",
        ]
    )
    first = ClientBase._submit_request(["true"], priority=0, **kwargs)  # type: ignore[arg-type]
    second = ClientBase._submit_request(["true"], priority=0, **kwargs)  # type: ignore[arg-type]
    assert first.request_id and second.request_id and first.request_id != second.request_id
    kwargs["request_id"] = "mine"
    given = ClientBase._submit_request(["true"], priority=0, **kwargs)  # type: ignore[arg-type]
    assert given.request_id == "mine"


def _job(**fields: object) -> job_pb2.Job:
    job = job_pb2.Job(id="j_1", state=job_pb2.JOB_STATE_FAILED, attempt=2, **fields)  # type: ignore[arg-type]
    job.spec.exec.argv.extend(["false"])
    job.create_time.FromDatetime(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    job.history.add(state=job_pb2.JOB_STATE_PENDING, message="submitted", actor="client:default")
    return job


def test_job_wrapper_has_python_types_and_keeps_raw() -> None:
    message = _job(exit_code=0)
    job = job_from_proto(message)
    assert job.id == "j_1"
    assert job.state is JobState.FAILED and job.is_finished
    assert job.exit_code == 0  # present and zero, not None
    assert job.argv == ("false",)
    assert job.create_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert job.finish_time is None
    assert job.spec.queue == "default"
    assert job.spec.timeout is None
    assert job.history[0].state is JobState.PENDING
    assert job.history[0].actor == "client:default"
    assert job.timings.total is None
    assert job.raw is message


def test_absent_exit_code_is_none() -> None:
    assert job_from_proto(_job()).exit_code is None


def test_unknown_enum_value_from_a_newer_server_does_not_crash() -> None:
    message = _job()
    message.state = 42  # type: ignore[assignment]
    assert job_from_proto(message).state is JobState.UNSPECIFIED


def test_event_wrapper() -> None:
    message = job_pb2.JobEvent(
        sequence=7,
        job_id="j_1",
        type=job_pb2.JOB_EVENT_TYPE_STATE_CHANGED,
        state=job_pb2.JOB_STATE_RUNNING,
        attempt=1,
    )
    event = event_from_proto(message)
    assert (event.sequence, event.type, event.state) == (
        7,
        JobEventType.STATE_CHANGED,
        JobState.RUNNING,
    )
    assert event.time is None and event.exit_code is None


def test_timestamps_round_trip_and_naive_means_local() -> None:
    aware = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert timestamp_from_proto(timestamp_to_proto(aware)) == aware
    naive = datetime(2024, 1, 2, 3, 4, 5)
    assert timestamp_from_proto(timestamp_to_proto(naive)) == naive.astimezone()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("running", JobState.RUNNING),
        ("JOB_STATE_RUNNING", None),
        ("Completed", JobState.COMPLETED),
        (6, JobState.COMPLETED),
    ],
)
def test_job_state_parse(given: str | int, expected: JobState | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            JobState.parse(given)
    else:
        assert JobState.parse(given) is expected


def test_filter_and_order() -> None:
    message = job_filter_to_proto(states=["running", JobState.PENDING], labels={"a": "b"})
    assert list(message.states) == [job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_PENDING]
    assert dict(message.labels) == {"a": "b"}
    assert not message.HasField("created_after")
    assert order_to_proto("oldest") == job_service_pb2.LIST_ORDER_OLDEST_FIRST
    assert order_to_proto(ListOrder.NEWEST_FIRST) == job_service_pb2.LIST_ORDER_NEWEST_FIRST
    assert order_to_proto(None) == job_service_pb2.LIST_ORDER_UNSPECIFIED


def _events_request(**fields: object) -> job_service_pb2.StreamJobEventsRequest:
    return job_service_pb2.StreamJobEventsRequest(job_id="j_1", **fields)  # type: ignore[arg-type]


def test_event_cursor_resumes_after_last_seen_and_drops_repeats() -> None:
    cursor = EventCursor(_events_request(from_now=True))
    assert cursor.request().from_now  # nothing seen yet: ask as the caller did
    assert cursor.accept(job_pb2.JobEvent(sequence=3))
    assert cursor.accept(job_pb2.JobEvent(sequence=5))
    assert not cursor.accept(job_pb2.JobEvent(sequence=5))
    assert not cursor.accept(job_pb2.JobEvent(sequence=4))
    request = cursor.request()
    assert (request.after_sequence, request.from_now, request.job_id) == (5, False, "j_1")


def _chunk(stream: int, offset: int, data: bytes, attempt: int = 1) -> job_pb2.LogChunk:
    return job_pb2.LogChunk(stream=stream, offset=offset, data=data, attempt=attempt)  # type: ignore[arg-type]


def test_log_cursor_resumes_from_offsets_in_the_same_attempt() -> None:
    cursor = LogCursor(job_service_pb2.StreamLogsRequest(job_id="j_1", follow=True, tail_lines=10))
    assert cursor.request().tail_lines == 10  # nothing seen yet
    out, err = job_pb2.LOG_STREAM_STDOUT, job_pb2.LOG_STREAM_STDERR
    first = cursor.chunk(_chunk(out, 100, b"hello\n", attempt=2))
    assert first is not None and first.stream is LogStream.STDOUT and first.text == "hello\n"
    cursor.chunk(_chunk(err, 0, b"oops\n", attempt=2))
    request = cursor.request()
    # Following the latest attempt: the offsets are named as attempt 2's, and the server may
    # move on to a later attempt; asked for attempt 2 itself, the resume stays on it.
    assert (request.attempt, request.resume_attempt) == (0, 2)
    assert (request.stdout_offset, request.stderr_offset) == (106, 5)
    assert request.tail_lines == 0 and request.follow
    pinned = LogCursor(job_service_pb2.StreamLogsRequest(job_id="j_1", attempt=2))
    pinned.chunk(_chunk(out, 0, b"x", attempt=2))
    assert (pinned.request().attempt, pinned.request().resume_attempt) == (2, 0)


def test_log_cursor_trims_overlap_and_drops_repeats() -> None:
    cursor = LogCursor(job_service_pb2.StreamLogsRequest(job_id="j_1"))
    out = job_pb2.LOG_STREAM_STDOUT
    cursor.chunk(_chunk(out, 0, b"abcdef"))
    assert cursor.chunk(_chunk(out, 0, b"abcdef")) is None
    overlap = cursor.chunk(_chunk(out, 4, b"efgh"))
    assert overlap is not None and (overlap.offset, overlap.data) == (6, b"gh")


def test_log_cursor_starts_over_for_a_new_attempt() -> None:
    cursor = LogCursor(job_service_pb2.StreamLogsRequest(job_id="j_1", follow=True))
    out = job_pb2.LOG_STREAM_STDOUT
    cursor.chunk(_chunk(out, 0, b"first try\n", attempt=1))
    second = cursor.chunk(_chunk(out, 0, b"second\n", attempt=2))
    assert second is not None and second.data == b"second\n"
    assert (cursor.request().attempt, cursor.request().resume_attempt) == (0, 2)


def test_wait_plan_slices_and_always_looks_once() -> None:
    plan = WaitPlan(0)
    assert plan.next_slice() == 0
    plan.spent(0.01)
    assert plan.next_slice() is None
    forever = WaitPlan(None)
    assert forever.next_slice() == forever.next_slice() == 30.0
    long = WaitPlan(75)
    assert long.next_slice() == 30.0
    long.spent(30)
    long.spent(30)
    assert long.next_slice() == 15
    request, deadline = WaitPlan.request("j_1", 15)
    assert request.timeout.seconds == 15 and deadline > 15


def test_call_retry_delays_are_capped_and_counted() -> None:
    delays = list(CallRetry(max_attempts=6, initial_backoff=0.1, max_backoff=0.5).delays())
    assert len(delays) == 5
    assert all(0 < d <= 0.5 for d in delays)
    assert delays[-1] > delays[0]


def test_gaffer_re_exports_exactly_the_clients_names() -> None:
    import gaffer
    import gaffer.client

    assert sorted(gaffer.__all__) == sorted(gaffer.client.__all__)
    assert all(getattr(gaffer, name) is getattr(gaffer.client, name) for name in gaffer.__all__)
