"""The shared event tail over a real SQLite store: wire form, tenants, eviction."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gaffer.core import Agents, Caller, CoreSettings, Fence, Jobs, Outcome, TailSlice
from gaffer.core._event_tail import _GAP, _GROUPS, _ROUND_CAP, MAX_QUIET, EventTail, Follower
from gaffer.store import BlobStore, Notifier, SqliteStore
from gaffer.v1 import agent_service_pb2 as apb
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
    with tail.following() as follower:
        change = tail.change(follower)
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
    with tail.following() as follower:
        for _ in range(3):
            began = loop.time()
            resting = tail.rest(follower, tail.change(follower), math.inf)
            await asyncio.wait_for(resting, 4 * MAX_QUIET)
            assert loop.time() - began <= MAX_QUIET + 0.05  # a slow loop only adds a little
    await tail.close()


async def test_events_after_a_tick_are_not_held_back_by_the_pace(store: SqliteStore) -> None:
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    with contextlib.ExitStack() as stack:
        followers = [stack.enter_context(tail.following()) for _ in range(1000)]
        await asyncio.wait_for(tail.change(followers[-1]).wait(), 4 * MAX_QUIET)  # a tick

        async def round_over() -> bool:
            return tail._round is None

        await wait_until_async(round_over, what="the tick's wake-up to reach every group")
        change = tail.change(followers[0])
        await append(store, "a", "after the tick")
        assert change.is_set()  # woken by the commit, not a gap after the tick
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


class _Sender:
    """A follower as Jobs.events runs one: it takes the change, rests on it and, woken,
    "sends" until ``release`` is set (a send that gRPC has not finished), then rests again."""

    def __init__(self, tail: EventTail) -> None:
        self._tail = tail
        self.resting = False
        self.woken: asyncio.Queue[float] = asyncio.Queue()  # when, each time it is woken
        self.release = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        with self._tail.following() as me:
            change = self._tail.change(me)
            while True:
                self.resting = True
                await self._tail.rest(me, change, math.inf)
                self.resting = False
                change = self._tail.change(me)  # before looking, as Jobs.events does
                self.woken.put_nowait(loop.time())
                await self.release.wait()
                self.release.clear()


async def _senders(tail: EventTail, n: int) -> list[_Sender]:
    senders = [_Sender(tail) for _ in range(n)]

    async def all_resting() -> bool:
        return all(s.resting for s in senders)

    await wait_until_async(all_resting, what="the followers to wait")
    return senders


async def _stop(tail: EventTail, senders: list[_Sender]) -> None:
    for sender in senders:
        sender.task.cancel()
    await asyncio.gather(*(s.task for s in senders), return_exceptions=True)
    await tail.close()


async def _woken(senders: list[_Sender]) -> list[float]:
    return [await asyncio.wait_for(s.woken.get(), 10) for s in senders]


async def test_the_next_wake_up_waits_until_the_woken_followers_are_back_and_a_gap(
    store: SqliteStore,
) -> None:
    """Events that come while the followers woken are still sending go out together once
    they are back, after a gap that leaves the loop to the rest of the server's work."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    loop = asyncio.get_running_loop()
    senders = await _senders(tail, 4)
    await append(store, "a", "e1")
    first = min(await _woken(senders))
    await append(store, "a", "e2")
    await asyncio.sleep(0.2)  # the sends take this long (not a wait for anything)
    for sender in senders[:3]:
        sender.release.set()

    async def three_back() -> bool:
        return all(s.resting for s in senders[:3])

    await wait_until_async(three_back, what="three followers to be back")
    assert all(s.woken.empty() for s in senders), "woken again before the fourth was back"
    back = loop.time()
    senders[3].release.set()
    again = min(await _woken(senders))
    assert _GAP > 0 and again - back >= _GAP * (back - first) * 0.99
    await _stop(tail, senders)


@pytest.mark.parametrize(("gone", "followers"), [("stuck", 1), ("left", 2)])
async def test_followers_that_do_not_come_back_do_not_hold_the_others(
    store: SqliteStore, gone: str, followers: int
) -> None:
    """A slow reader among four (its send held by flow control), or two of three whose
    streams ended while they were sending: the others' next wake-up does not wait for them
    (the first: twice as long as the others took at most; the second: not at all)."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    senders = await _senders(tail, followers + (3 if gone == "stuck" else 1))
    await append(store, "a", "e1")
    first = min(await _woken(senders))
    await append(store, "a", "e2")
    if gone == "left":
        for sender in senders[:followers]:
            sender.task.cancel()
    for sender in senders[followers:]:
        sender.release.set()
    again = min(await _woken(senders[followers:]))
    assert again - first < MAX_QUIET / 2  # not at a tick
    await _stop(tail, senders)


async def test_a_round_ends_when_all_but_one_in_32_are_back(store: SqliteStore) -> None:
    """Not twice as long as half took: a few slow readers among many cost them nothing."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    senders = await _senders(tail, 64)
    await append(store, "a", "e1")
    await _woken(senders)
    await asyncio.sleep(0.2)  # the sends take this long (not a wait for anything)
    for sender in senders[2:]:  # two are left out
        sender.release.set()

    async def back() -> bool:
        return all(s.resting for s in senders[2:])

    await wait_until_async(back, what="62 followers to be back")
    assert tail._round is None  # ended with the 62nd, not 0.2 s later
    await _stop(tail, senders)


async def test_a_round_whose_followers_do_not_come_back_ends_at_the_cap(
    store: SqliteStore,
) -> None:
    """Else the followers would hear of new events only at the ticks."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    loop = asyncio.get_running_loop()
    senders = await _senders(tail, 2)
    await append(store, "a", "e1")
    await _woken(senders)  # and neither comes back
    round_ = tail._round
    assert round_ is not None

    async def round_over() -> bool:
        return tail._round is not round_

    await wait_until_async(round_over, what="the round to end")
    assert loop.time() >= round_.started + _ROUND_CAP
    await _stop(tail, senders)


async def test_during_a_long_round_the_followers_back_are_woken_within_max_quiet(
    store: SqliteStore,
) -> None:
    """They wait without a timer of their own (Jobs.events), so the tick must reach them
    while the round waits for those that do not come back (until _ROUND_CAP)."""
    tail = EventTail(store, store._notifier, recheck=60.0)
    await tail.ready()
    loop = asyncio.get_running_loop()
    senders = await _senders(tail, 3)  # two of three stay out: fewer than half are back
    await append(store, "a", "e1")
    await _woken(senders)
    senders[2].release.set()

    async def back() -> bool:
        return senders[2].resting

    await wait_until_async(back, what="the follower to be back")
    rested = loop.time()
    again = await asyncio.wait_for(senders[2].woken.get(), 10)
    assert again - rested <= MAX_QUIET + 0.05  # a slow loop only adds a little
    await _stop(tail, senders)


async def test_a_caught_up_follower_sends_what_came_during_its_send_at_the_next_wake_up(
    store: SqliteStore,
) -> None:
    """Not as soon as its send is done: with 1,000 followers each sending again at once, the
    sends alone kept the server's loop busy and 1,000 jobs took 57 s instead of 4. (Here the
    next wake-up waits for the stream itself: the only follower, it is still sending.)"""
    jobs = Jobs(store, store._notifier, BlobStore(store.blob_dir), CoreSettings())
    tenant = Caller().tenant
    stream = jobs.events(
        Caller(), job_id=None, query=None, after_sequence=0, from_now=False, keepalive=30.0
    )
    first = asyncio.ensure_future(anext(stream))
    await wait_until_async(lambda: _following(jobs), what="the stream to follow")
    await append(store, tenant, "e1")
    got = await asyncio.wait_for(first, 10)
    assert isinstance(got, TailSlice) and got.last == 1
    # The stream is "sending" e1; e2 is committed and read meanwhile.
    await append(store, tenant, "e2")
    await wait_until_async(lambda: held(jobs._tail, 2), what="the tail to read e2")
    wakes = [jobs._tail.change(Follower(group)) for group in range(_GROUPS)]
    assert not any(w.is_set() for w in wakes), "woken while its follower was still sending"
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
    with contextlib.ExitStack() as stack:
        followers = [stack.enter_context(tail.following()) for _ in range(4 * _GROUPS)]
        assert sorted({f.group for f in followers}) == list(range(_GROUPS))  # spread evenly
        changes = [tail.change(Follower(group)) for group in range(_GROUPS)]

        async def first_group() -> list[bool]:
            await changes[0].wait()
            return [change.is_set() for change in changes]

        seen_by_first = asyncio.ensure_future(first_group())
        await append(store, "a", "e1")
        assert (await asyncio.wait_for(seen_by_first, 10))[-1] is False
        await asyncio.wait_for(changes[-1].wait(), 10)  # the last group's turn comes
    await tail.close()


async def _following(jobs: Jobs) -> bool:
    return jobs._tail.followers == 1


async def test_an_outcome_is_answered_after_the_followers_its_commit_woke(
    store: SqliteStore,
) -> None:
    """The agent's answer is an acknowledgement; the followers' frames are what clients wait
    for, so they go first."""
    settings, blobs = CoreSettings(), BlobStore(store.blob_dir)
    agents = Agents(store, store._notifier, blobs, settings)
    jobs = Jobs(store, store._notifier, blobs, settings, hand_off=agents.hand_off)
    agent = await agents.register("a1", {}, apb.Capacity(slots=1), ["default"])
    spec = job_pb2.JobSpec(function=job_pb2.FunctionExecutor(name="gaffer.noop"))
    await jobs.submit(Caller(), spec, "", validate_only=False)
    [(claimed, _)] = await agents.claim(agent.id, 1, 0.0)
    before = await store.last_event_seq()
    caught_up = asyncio.Event()
    order: list[str] = []

    async def follow() -> None:
        async for item in jobs.events(
            Caller(), job_id=None, query=None, after_sequence=0, from_now=True, keepalive=30.0
        ):
            if isinstance(item, TailSlice) and item.last > before:
                order.append("follower")
                return
            caught_up.set()  # the position it starts from: it follows the tail from here

    follower = asyncio.ensure_future(follow())
    await asyncio.wait_for(caught_up.wait(), 10)
    fence = Fence(claimed.job.id, claimed.job.attempt, claimed.lease_token)
    [result] = await agents.complete_many(
        [Outcome(fence, job_pb2.JOB_STATE_COMPLETED, None, "returned", False)]
    )
    order.append("agent")
    assert not isinstance(result, Exception) and result[0]
    await asyncio.wait_for(follower, 10)
    assert order == ["follower", "agent"]
    await jobs.close()
