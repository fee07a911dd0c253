"""The shared event tail over a real SQLite store: wire form, tenants, eviction."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gaffer.core import Caller, CoreSettings, Jobs, TailSlice
from gaffer.core._event_tail import _GROUPS, _SEND_COST, MAX_QUIET, EventTail
from gaffer.store import BlobStore, Notifier, SqliteStore
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.helpers import wait_until_async


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path, Notifier())
    await store.open()
    yield store
    await store.close()


async def append(store: SqliteStore, tenant: str, *messages: str) -> None:
    async with store.transaction(durable=False) as tx:
        for message in messages:
            event = job_pb2.JobEvent(job_id="j1", message=message, state=job_pb2.JOB_STATE_PENDING)
            await tx.append_event(tenant, event)
            tx.topics.add("events")


async def held(tail: EventTail, seq: int) -> bool:
    return tail.last >= seq


async def test_frames_decode_to_the_stored_events_one_by_one_and_batched(
    store: SqliteStore,
) -> None:
    tail = EventTail(store, store._notifier, recheck=0.05)
    await tail.ready()
    await append(store, "a", "one", "two", "three")
    await wait_until_async(lambda: held(tail, 3), what="the tail to read three events")
    got = tail.since("a", 0, 100)
    assert got is not None and got.last == 3
    singles = [jpb.StreamJobEventsResponse.FromString(f) for f in got.frames]
    assert [(f.WhichOneof("frame"), f.event.message, f.event.sequence) for f in singles] == [
        ("event", "one", 1),
        ("event", "two", 2),
        ("event", "three", 3),
    ]
    batch = jpb.StreamJobEventsResponse.FromString(got.batch_frame)
    assert batch.WhichOneof("frame") == "batch"
    assert list(batch.batch.events) == [f.event for f in singles]
    assert tail.since("a", 0, 100) is got  # followers at one cursor share the encoded slice
    assert [jpb.StreamJobEventsResponse.FromString(f).event.message
            for f in tail.since("a", 1, 1).frames] == ["two"]  # fmt: skip
    await tail.close()


async def test_a_tenant_sees_only_its_own_events(store: SqliteStore) -> None:
    tail = EventTail(store, store._notifier, recheck=0.05)
    await tail.ready()
    await append(store, "a", "a1")
    await append(store, "b", "b1")
    await append(store, "a", "a2")
    await wait_until_async(lambda: held(tail, 3), what="the tail to read three events")
    mine = tail.since("a", 0, 100)
    assert mine is not None and mine.last == 3
    assert [jpb.StreamJobEventsResponse.FromString(f).event.message for f in mine.frames] == [
        "a1",
        "a2",
    ]
    assert tail.since("b", 2, 100) is None
    await tail.close()


async def test_on_the_embedded_store_the_tail_holds_a_commits_events_when_its_caller_resumes(
    store: SqliteStore,
) -> None:
    """Read in the commit's callbacks, not by a task woken after the caller (a turn later)."""
    tail = EventTail(store, store._notifier, recheck=60.0)  # no recheck during the test
    await tail.ready()
    with tail.following() as group:
        change = tail.change(group)
        for n in (1, 3):
            await append(store, "a", *(f"e{i}" for i in range(n)))
            assert tail.last == (1 if n == 1 else 4)
        assert change.is_set()
    await tail.close()


async def test_followers_are_woken_within_max_quiet_while_no_event_comes(
    store: SqliteStore,
) -> None:
    """So that a follower can wait without a timer of its own until its keepalive is near."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    loop = asyncio.get_running_loop()
    with tail.following() as group:
        for _ in range(3):
            began = loop.time()
            await asyncio.wait_for(tail.change(group).wait(), 4 * MAX_QUIET)
            assert loop.time() - began <= MAX_QUIET + 0.05  # a slow loop only adds a little
    await tail.close()


async def test_events_after_a_tick_are_not_held_back_by_the_pace(store: SqliteStore) -> None:
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    with contextlib.ExitStack() as followers:
        groups = [followers.enter_context(tail.following()) for _ in range(1000)]
        await asyncio.wait_for(tail.change(groups[-1]).wait(), 4 * MAX_QUIET)  # a tick

        async def cascade_over() -> bool:
            return tail._cascade is None

        await wait_until_async(cascade_over, what="the tick's wake-up to reach every group")
        change = tail.change(groups[0])
        await append(store, "a", "after the tick")
        assert change.is_set()  # woken by the commit, not 1000 x _SEND_COST later
    await tail.close()


async def test_evicted_events_are_no_longer_covered(store: SqliteStore) -> None:
    await append(store, "a", "before")  # stored before the tail starts: not held
    tail = EventTail(store, store._notifier, recheck=0.05, capacity=3)
    await tail.ready()
    assert (tail.floor, tail.covers(0), tail.covers(1)) == (1, False, True)
    await append(store, "a", *(f"e{i}" for i in range(5)))
    await wait_until_async(lambda: held(tail, 6), what="the tail to read five events")
    assert tail.floor == 3 and not tail.covers(2) and tail.covers(3)
    got = tail.since("a", 3, 100)
    assert got is not None
    assert [jpb.StreamJobEventsResponse.FromString(f).event.sequence for f in got.frames] == [
        4,
        5,
        6,
    ]
    await tail.close()


async def test_with_many_followers_wake_ups_are_spaced_out(store: SqliteStore) -> None:
    tail = EventTail(store, store._notifier, recheck=0.05)
    await tail.ready()
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as followers:
        groups = [followers.enter_context(tail.following()) for _ in range(1000)]
        woken: list[float] = []  # paced at 1000 x _SEND_COST between wake-ups
        for i in range(3):
            change = tail.change(groups[0])
            await append(store, "a", f"e{i}")
            await change.wait()
            woken.append(loop.time())
    assert tail.followers == 0
    gaps = [b - a for a, b in itertools.pairwise(woken)]
    pace = 1000 * _SEND_COST
    assert all(gap >= pace - 0.001 for gap in gaps), gaps  # a slow machine only adds to it
    got = tail.since("a", 0, 100)
    assert got is not None and len(got.frames) == 3  # nothing held back, only paced
    await tail.close()


async def test_a_caught_up_follower_sends_what_came_during_its_send_at_the_next_wake_up(
    store: SqliteStore,
) -> None:
    """Not as soon as its send is done: with 1,000 followers each sending again at once, the
    sends alone kept the server's loop busy and 1,000 jobs took 57 s instead of 4."""
    jobs = Jobs(store, store._notifier, BlobStore(store.blob_dir), CoreSettings())
    tenant = Caller().tenant
    stream = jobs.events(
        Caller(), job_id=None, query=None, after_sequence=0, from_now=False, keepalive=30.0
    )
    with contextlib.ExitStack() as others:
        for _ in range(4000):  # followers besides this one: wake-ups 0.5 s apart
            others.enter_context(jobs._tail.following())
        first = asyncio.ensure_future(anext(stream))
        await wait_until_async(lambda: _following(jobs), what="the stream to follow")
        await append(store, tenant, "e1")
        got = await asyncio.wait_for(first, 10)
        assert isinstance(got, TailSlice) and got.last == 1
        # The stream is "sending" e1; e2 is committed and read meanwhile.
        await append(store, tenant, "e2")
        await wait_until_async(lambda: held(jobs._tail, 2), what="the tail to read e2")
        wakes = [jobs._tail.change(group) for group in range(_GROUPS)]
        assert not any(w.is_set() for w in wakes), "the next wake-up came already: too slow"
        got = await asyncio.wait_for(anext(stream), 10)
        assert isinstance(got, TailSlice) and got.last == 2
        assert any(w.is_set() for w in wakes)  # sent at the wake-up, not before it
    await stream.aclose()
    await jobs.close()


async def test_followers_are_woken_a_group_per_turn_of_the_loop(store: SqliteStore) -> None:
    """What else waits on the loop runs between groups: the first group's follower resumes
    before the later groups are woken."""
    tail = EventTail(store, store._notifier, recheck=0.05)
    await tail.ready()
    with contextlib.ExitStack() as followers:
        groups = sorted({followers.enter_context(tail.following()) for _ in range(4 * _GROUPS)})
        assert groups == list(range(_GROUPS))  # spread evenly
        changes = [tail.change(group) for group in groups]

        async def first_group() -> list[bool]:
            await changes[0].wait()
            return [change.is_set() for change in changes]

        seen_by_first = asyncio.ensure_future(first_group())
        await append(store, "a", "e1")
        assert (await asyncio.wait_for(seen_by_first, 10))[-1] is False
        await asyncio.wait_for(changes[-1].wait(), 10)  # the last group's turn comes
    await tail.close()


async def test_a_wake_up_asked_for_while_groups_are_woken_comes_after_them(
    store: SqliteStore,
) -> None:
    """Events read while the groups are being woken are not left to the next append: the
    groups already woken would not hear of them."""
    tail = EventTail(store, store._notifier, recheck=0.05)
    await tail.ready()
    with contextlib.ExitStack() as followers:
        group = followers.enter_context(tail.following())
        for _ in range(_GROUPS):
            followers.enter_context(tail.following())
        first = tail.change(group)
        await append(store, "a", "e1")
        await asyncio.wait_for(first.wait(), 10)
        assert tail._cascade is not None, "the groups were all woken already"
        again = tail.change(group)
        tail._appended_events()  # as the tail does when it reads e2 now
        await asyncio.wait_for(again.wait(), 10)
    await tail.close()


async def _following(jobs: Jobs) -> bool:
    return jobs._tail.followers == 4001
