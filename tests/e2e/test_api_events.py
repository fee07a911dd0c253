"""StreamJobEvents: history then live, exact resume, filters, from_now, keepalives."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, duration, failure
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
T = job_pb2.JobEventType
LIFECYCLE = [
    S.JOB_STATE_PENDING,
    S.JOB_STATE_CLAIMED,
    S.JOB_STATE_VALIDATING,
    S.JOB_STATE_RUNNING,
    S.JOB_STATE_UPLOADING,
    S.JOB_STATE_COMPLETED,
]


def open_events(api: Api, **fields: object) -> Iterator[jpb.StreamJobEventsResponse]:
    request = jpb.StreamJobEventsRequest(**fields)  # type: ignore[arg-type]
    return api.jobs.StreamJobEvents(request, timeout=CALL_TIMEOUT)  # type: ignore[no-any-return]


def next_event(stream: Iterator[jpb.StreamJobEventsResponse]) -> job_pb2.JobEvent:
    """The next event on a stream, skipping keepalive frames."""
    for frame in stream:
        if frame.WhichOneof("frame") == "event":
            return frame.event
    raise AssertionError("the stream ended before the next event")


def events_until_end(stream: Iterator[jpb.StreamJobEventsResponse]) -> list[job_pb2.JobEvent]:
    """Every event left on a stream that must end by itself (the call deadline bounds it)."""
    return [f.event for f in stream if f.WhichOneof("frame") == "event"]


def assert_increasing(events: list[job_pb2.JobEvent]) -> None:
    seqs = [e.sequence for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs


def test_follow_one_job_from_the_start_live_and_resume_from_every_cursor(api: Api) -> None:
    agent = api.agent("ev")
    job = api.submit(["true"], queue="ev")
    other = api.submit(["true"], queue="ev-other", labels={"noise": "yes"})
    stream = open_events(api, job_id=job.id)

    got = [next_event(stream)]
    assert got[0].type == T.JOB_EVENT_TYPE_CREATED and got[0].state == S.JOB_STATE_PENDING
    a = agent.claim_one()
    assert a.job.id == job.id
    got.append(next_event(stream))
    # Events of another job land in between: the sequence has gaps, the stream has none.
    api.jobs.CancelJob(jpb.CancelJobRequest(job_id=other.id), timeout=CALL_TIMEOUT)
    for state in (S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING, S.JOB_STATE_UPLOADING):
        agent.update(a, state, f"now {S.Name(state)}")
        got.append(next_event(stream))
        assert got[-1].state == state, "an event arrived late or out of order"
    api.submit(["true"], queue="ev-other")
    assert agent.complete(a, S.JOB_STATE_COMPLETED, 0).accepted
    got.append(next_event(stream))
    assert events_until_end(stream) == [], "events after the final one"

    assert [e.state for e in got] == LIFECYCLE
    assert [e.type for e in got] == [T.JOB_EVENT_TYPE_CREATED] + [
        T.JOB_EVENT_TYPE_STATE_CHANGED
    ] * 5
    assert all(e.job_id == job.id for e in got)
    assert_increasing(got)
    assert got[-1].HasField("exit_code") and got[-1].exit_code == 0
    assert all(e.attempt == 1 and e.agent_id == agent.id for e in got[1:])
    assert all(e.actor for e in got)
    assert got[2].sequence - got[1].sequence > 1, "the other job's events made no gap"
    assert got[5].sequence - got[4].sequence > 1, "the other job's events made no gap"

    # A repeated CompleteJob is harmless: accepted again, and no new event.
    repeat = agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    assert repeat.accepted and repeat.job.state == S.JOB_STATE_COMPLETED
    # One more event elsewhere, so that a cursor just past the final event is still valid.
    api.submit(["true"], queue="ev-other")
    newest = got[-1].sequence + 1

    # Resume from each cursor, and from cursors between this job's events: exactly the rest.
    cursors = {0, got[0].sequence - 1}
    for event in got:
        cursors |= {event.sequence, event.sequence + 1, event.sequence - 1}
    for k in sorted(c for c in cursors if 0 <= c <= newest):
        resumed = events_until_end(open_events(api, job_id=job.id, after_sequence=k))
        assert resumed == [e for e in got if e.sequence > k], f"after_sequence={k}"


def test_resume_mid_run_continues_live_with_no_gap_or_repeat(api: Api) -> None:
    agent = api.agent("mid")
    job = api.submit(["true"], queue="mid")
    a = agent.claim_one()
    agent.start(a)
    from_start = open_events(api, job_id=job.id)
    history = [next_event(from_start) for _ in range(4)]
    assert [e.state for e in history] == LIFECYCLE[:4]

    # Several followers, each resuming after a different event, all open while the job runs.
    followers = {}
    for k in [0] + [e.sequence for e in history]:
        follower = open_events(api, job_id=job.id, after_sequence=k)
        followers[k] = [next_event(follower) for e in history if e.sequence > k], follower
    agent.update(a, S.JOB_STATE_UPLOADING)
    agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    full = history + events_until_end(from_start)
    assert [e.state for e in full] == LIFECYCLE
    assert_increasing(full)
    for k, (seen, follower) in followers.items():
        seen += events_until_end(follower)
        assert seen == [e for e in full if e.sequence > k], f"after_sequence={k}"


def test_all_jobs_stream_with_label_filter_sees_only_matching_jobs(api: Api) -> None:
    agent = api.agent("lbl")
    only_a = open_events(api, filter=jpb.JobFilter(labels={"team": "a"}))
    a1 = api.submit(["true"], queue="lbl", labels={"team": "a"})
    b1 = api.submit(["true"], queue="lbl", labels={"team": "b"})
    a2 = api.submit(["true"], queue="lbl", labels={"team": "a", "extra": "1"})
    unlabelled = api.submit(["true"], queue="lbl")
    by_id = {x.job.id: x for x in agent.claim(4)}
    # The other jobs finish first, so a leak would show before the last event awaited below.
    agent.finish(by_id[b1.id])
    agent.finish(by_id[unlabelled.id])
    agent.finish(by_id[a1.id])
    agent.finish(by_id[a2.id])

    seen: list[job_pb2.JobEvent] = []
    while not (seen and seen[-1].job_id == a2.id and seen[-1].state == S.JOB_STATE_COMPLETED):
        seen.append(next_event(only_a))
    only_a.cancel()  # type: ignore[attr-defined]
    assert {e.job_id for e in seen} == {a1.id, a2.id}
    assert_increasing(seen)
    for job in (a1, a2):
        states = [e.state for e in seen if e.job_id == job.id]
        assert states == [s for s in LIFECYCLE if s != S.JOB_STATE_UPLOADING]

    # Resuming the filtered stream from its history, and excluding labels, are exact too.
    not_a = open_events(api, filter=jpb.JobFilter(exclude_labels={"team": "a"}))
    others: list[job_pb2.JobEvent] = []
    while len([e for e in others if e.state == S.JOB_STATE_COMPLETED]) < 2:
        others.append(next_event(not_a))
    not_a.cancel()  # type: ignore[attr-defined]
    assert {e.job_id for e in others} == {b1.id, unlabelled.id}
    k = seen[3].sequence
    resumed = open_events(api, filter=jpb.JobFilter(labels={"team": "a"}), after_sequence=k)
    rest = [next_event(resumed) for _ in range(len(seen) - 4)]
    resumed.cancel()  # type: ignore[attr-defined]
    assert rest == seen[4:]


def test_a_states_filter_selects_events_by_their_own_state(api: Api) -> None:
    """Whatever the job's state when the stream reads: live, and from history, the same."""
    agent = api.agent("st")
    running_only = jpb.JobFilter(states=[S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED])
    live = open_events(api, filter=running_only)
    ok = api.submit(["true"], queue="st")
    bad = api.submit(["false"], queue="st")
    by_id = {x.job.id: x for x in agent.claim(2)}
    agent.finish(by_id[ok.id])  # RUNNING, then COMPLETED: only its RUNNING event matches
    agent.start(by_id[bad.id])
    agent.complete(by_id[bad.id], S.JOB_STATE_FAILED, 1)

    expected = [
        (ok.id, S.JOB_STATE_RUNNING),
        (bad.id, S.JOB_STATE_RUNNING),
        (bad.id, S.JOB_STATE_FAILED),
    ]
    seen = [next_event(live) for _ in expected]
    live.cancel()  # type: ignore[attr-defined]
    assert [(e.job_id, e.state) for e in seen] == expected
    assert_increasing(seen)
    replay = open_events(api, filter=running_only, after_sequence=0)
    again = [next_event(replay) for _ in expected]
    replay.cancel()  # type: ignore[attr-defined]
    assert again == seen


def test_from_now_skips_history(api: Api) -> None:
    agent = api.agent("now")
    job = api.submit(["true"], queue="now")
    a = agent.claim_one()
    last_before = next_event(open_events(api, job_id=job.id, after_sequence=0))
    one = open_events(api, job_id=job.id, from_now=True, keepalive_interval=duration(0.2))
    every = open_events(api, from_now=True, keepalive_interval=duration(0.2))
    # A keepalive first shows both streams are open, past their start, with no history sent.
    assert next(one).WhichOneof("frame") == "keepalive"
    assert next(every).WhichOneof("frame") == "keepalive"

    agent.update(a, S.JOB_STATE_VALIDATING)
    event = next_event(one)
    assert event.state == S.JOB_STATE_VALIDATING and event.sequence > last_before.sequence
    assert next_event(every) == event
    newcomer = api.submit(["true"], queue="elsewhere")
    created = next_event(every)
    assert created.job_id == newcomer.id and created.type == T.JOB_EVENT_TYPE_CREATED
    every.cancel()  # type: ignore[attr-defined]
    agent.update(a, S.JOB_STATE_RUNNING)
    agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    assert [e.state for e in events_until_end(one)] == [
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]


def test_from_now_with_a_cursor_is_invalid(api: Api) -> None:
    job = api.submit(["true"])
    fail = failure(lambda: open_events(api, job_id=job.id, from_now=True, after_sequence=1))
    assert fail.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fail.names("from_now") or fail.names("after_sequence"), fail.fields


@pytest.mark.parametrize("scope", ["one job", "all jobs"])
def test_keepalive_frames_on_an_idle_stream(api: Api, scope: str) -> None:
    job = api.submit(["true"])  # nobody claims it: the stream goes idle after CREATED
    stream = open_events(
        api, job_id=job.id if scope == "one job" else "", keepalive_interval=duration(0.2)
    )
    first = next(stream)
    assert first.WhichOneof("frame") == "event" and first.event.job_id == job.id
    started = time.monotonic()
    frames = [next(stream) for _ in range(3)]
    elapsed = time.monotonic() - started
    stream.cancel()  # type: ignore[attr-defined]
    assert [f.WhichOneof("frame") for f in frames] == ["keepalive"] * 3
    assert all(f.keepalive.HasField("time") for f in frames)
    # Three intervals of 0.2 s: not flooded, and not held back to the 15 s default.
    assert 0.45 <= elapsed < 5.0, elapsed


@pytest.mark.parametrize("interval", [0.05, 3601.0, -1.0])
def test_keepalive_interval_out_of_bounds_is_invalid(api: Api, interval: float) -> None:
    fail = failure(lambda: open_events(api, keepalive_interval=duration(interval)))
    assert fail.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fail.names("keepalive_interval"), fail.fields


def test_cancel_of_a_running_job_reaches_a_waiting_heartbeat_and_ends_the_stream(
    api: Api,
) -> None:
    agent = api.agent("cancel")
    job = api.submit(["sleep", "60"], queue="cancel")
    a = agent.claim_one()
    agent.start(a)
    stream = open_events(api, job_id=job.id)
    assert [next_event(stream).state for _ in range(4)] == LIFECYCLE[:4]
    ref = apb.AttemptRef(job_id=job.id, attempt=a.attempt)

    def last_heartbeat() -> int:
        agents = api.agents.ListAgents(apb.ListAgentsRequest(), timeout=CALL_TIMEOUT).agents
        return next(x for x in agents if x.id == agent.id).last_heartbeat_time.ToNanoseconds()

    before = last_heartbeat()
    # The agent's heartbeat long poll is under way (the server has recorded it and is holding
    # the call) when the cancel arrives.
    heartbeat = api.agents.Heartbeat.future(
        apb.HeartbeatRequest(agent_id=agent.id, running=[ref], wait=duration(20)),
        timeout=CALL_TIMEOUT + 10,
    )
    wait_until(lambda: last_heartbeat() > before, what="the server to hold the heartbeat")
    assert heartbeat.running()
    canceled = api.jobs.CancelJob(
        jpb.CancelJobRequest(job_id=job.id, reason="enough"), timeout=CALL_TIMEOUT
    ).job
    assert canceled.state == S.JOB_STATE_RUNNING and canceled.cancel_requested
    requested = next_event(stream)
    assert requested.type == T.JOB_EVENT_TYPE_CANCEL_REQUESTED
    orders = heartbeat.result(timeout=5).cancel  # at once, not after the 20 s wait
    assert [(o.job_id, o.attempt) for o in orders] == [(job.id, a.attempt)]
    # The agent kills the process and reports; the job ends CANCELED, and the stream with it.
    assert agent.complete(a, S.JOB_STATE_FAILED, -15, "killed by SIGTERM").accepted
    final = next_event(stream)
    assert final.state == S.JOB_STATE_CANCELED and final.type == T.JOB_EVENT_TYPE_STATE_CHANGED
    assert events_until_end(stream) == []
    done = api.get(job.id)
    assert done.state == S.JOB_STATE_CANCELED and done.canceled_by and not done.cancel_requested
