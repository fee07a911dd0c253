"""The recent events of every job, read from the store once and shared by all followers.

A thousand clients following every job would otherwise each read each new event from the
store. The tail reads what was committed after the last event it holds and keeps the newest
``capacity`` events in memory; followers whose cursor it covers take their events from here
and wait on it. It holds every event after ``floor`` with no gap, because it reads in
sequence order after what it has, as followers reading the store do.

On a shared database a task reads, woken by the notifier (commits of this replica and, by
LISTEN, of the others) and every ``recheck`` seconds in case a wake-up was lost. On the
embedded store, whose reads answer at once, the tail reads in the callbacks of the commit
that wrote the events (Notifier.on_publish), so followers wake at the next turn of the loop
with the callers the commit answered, not a turn after a task of its own has read; the task
then only rechecks. One function job at a time (`bench --only dispatch`), commit to the
follower's frame took 0.15-0.20 ms this way against 0.25-0.28 ms.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from gaffer.domain import StoreUnavailable
from gaffer.store import EVENTS_TOPIC, Notifier, Store, Subscription
from gaffer.v1 import job_pb2

log = logging.getLogger(__name__)

_READ_BATCH = 1000
# How wake-ups are paced (see EventTail._appended_events): after a round's followers are
# back, the next round waits _GAP times as long as the round took, so that the rest of the
# server's work (commits, the jobs' calls) keeps a share of the loop however fast the
# machine is. A round is over once all but 1/_STRAGGLERS of the followers it woke are back
# (a slow reader's send may be held back by flow control for long), once it has lasted
# twice as long as half of them took to be back, or at the first tick _ROUND_CAP after it
# began. `bench --only fanout` (1,000 followers, 1,000 jobs), alternating, 6 runs each: a
# gap of 0.15 gave the events' delay p99 96-133 ms (median 108) with the jobs taking
# 4.3-5.6 s; 0.25 gave 102-246 ms (median 130) and 2.9-3.4 s; 0.4 (3 runs) 113-161 ms and
# 2.1-2.2 s.
_GAP = 0.15
_STRAGGLERS = 32
_ROUND_CAP = 0.5
# Followers are woken one group per turn of the loop, so that what else waits on the loop
# (commits, the tail's reads, the jobs' calls) runs between groups, not after all of them.
# `bench --only fanout`, alternating, 7 pairs, with the earlier fixed pace: with 8 groups
# the events' delay p99 was 69-103 ms (median 76), with 16 groups 85-120 ms (median 104);
# the jobs took as long. With rounds, 3 runs each: 8 groups 107-181 ms, 16 groups 106-134
# ms, 32 groups 112-180 ms: no difference the noise lets through.
_GROUPS = 8
# While followers are inside, they are woken at least this often, events or not (a ticker
# looks every half of it): a follower whose next keepalive or recheck is further off waits
# for a wake-up alone, without a timer of its own. With 1,000 followers, a timer per wait
# cost the loop 9.7 us per follower per wake-up against 3.7 us without (the followers'
# Python only, no gRPC sends).
MAX_QUIET = 0.5
# Wire tags (field number << 3 | length-delimited): StreamJobEventsResponse.event and
# JobEventBatch.events are both field 1, StreamJobEventsResponse.batch is field 3.
_EVENT_TAG = b"\x0a"
_BATCH_TAG = b"\x1a"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


@dataclass(eq=False)
class _Round:
    """One wake-up of the followers: from its first group woken until the followers it woke
    are back waiting (all but a few, or for twice as long as half took; or _ROUND_CAP)."""

    started: float
    paced: bool  # a tick's round does not space out the next one
    woken: int = 0
    back: int = 0
    late: bool = False  # half are back: the others have as long again
    capped: bool = False


@dataclass(eq=False)
class Follower:
    """One follower of the tail (from EventTail.following)."""

    group: int
    #: The round that woke it, until it waits again.
    woken_by: _Round | None = None


@dataclass
class TailSlice:
    """Events for one follower, already in wire form (encoded once, shared by followers).

    ``frames`` are StreamJobEventsResponse messages of one event each; ``batch_frame`` is
    one StreamJobEventsResponse carrying them all (the same bytes are a JobEventBatch's
    ``events`` entries, so it is their concatenation under one more tag).
    """

    frames: list[bytes]
    last: int
    _batch: bytes | None = None

    @property
    def batch_frame(self) -> bytes:
        if self._batch is None:
            self._batch = _field(_BATCH_TAG, b"".join(self.frames))
        return self._batch


class EventTail:
    def __init__(
        self, store: Store, notifier: Notifier, *, recheck: float, capacity: int = 20_000
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._recheck = recheck
        self._capacity = capacity
        self._seqs: deque[int] = deque()
        self._events: deque[tuple[str, bytes]] = deque()
        # Followers of a tenant at the same cursor get the same slice (reset on append).
        self._slices: dict[tuple[str, int, int], TailSlice] = {}
        #: Every event with a sequence above this is held (or not yet read).
        self.floor = 0
        self._groups = [asyncio.Event() for _ in range(_GROUPS)]
        self._members = [0] * _GROUPS
        self._resting = [0] * _GROUPS  # followers waiting on each group's event
        self._cascade: int | None = None  # the next group to wake, while waking
        self._round: _Round | None = None  # the wake-up whose followers are still sending
        self._wake_again = False  # events came during a round
        self._next_wake = 0.0  # the earliest a paced wake-up may begin
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._closed = False
        self._last_wake = 0.0
        self._pending_wake: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def ready(self) -> None:
        """Starts the reader on first use and waits until it knows where it begins."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="gaffer-event-tail")
        await asyncio.shield(self._started)

    async def close(self) -> None:
        self._closed = True
        for timer in (self._ticker, self._pending_wake):
            if timer is not None:
                timer.cancel()
        self._ticker = None
        self._wake_followers()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def last(self) -> int:
        return self._seqs[-1] if self._seqs else self.floor

    def covers(self, after_seq: int) -> bool:
        return after_seq >= self.floor

    def since(self, tenant: str, after_seq: int, limit: int) -> TailSlice | None:
        """The tenant's held events after ``after_seq`` (which ``covers``), oldest first."""
        key = (tenant, after_seq, limit)
        found = self._slices.get(key)
        if found is not None:
            return found
        start = bisect.bisect_right(self._seqs, after_seq)
        frames: list[bytes] = []
        last = after_seq
        for i in range(start, len(self._events)):
            owner, frame = self._events[i]
            if owner == tenant:
                frames.append(frame)
                last = self._seqs[i]
                if len(frames) >= limit:
                    break
        if not frames:
            return None
        found = self._slices[key] = TailSlice(frames, last)
        return found

    def change(self, follower: Follower) -> asyncio.Event:
        """Set when events are appended, for ``follower``'s group (take it before looking,
        then wait on it with ``rest``)."""
        if self._closed:
            raise StoreUnavailable("the server is shutting down; resume from your cursor")
        return self._groups[follower.group]

    async def rest(self, follower: Follower, change: asyncio.Event, within: float) -> None:
        """Waits until ``change`` is set, or ``within`` seconds at most. A wait of MAX_QUIET
        or more takes no timer of its own: the tail wakes its followers that often anyway.
        Waiting again tells the tail that the follower is done with the round that woke it."""
        self._back(follower)
        if change.is_set():
            return
        group = follower.group
        self._resting[group] += 1
        try:
            if within >= MAX_QUIET:
                await change.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await change.wait()
        finally:
            self._resting[group] -= 1
        if change.is_set():
            follower.woken_by = self._round

    @property
    def followers(self) -> int:
        return sum(self._members)

    @contextlib.contextmanager
    def following(self) -> Iterator[Follower]:
        """Counts a follower while inside, in the group with fewest members."""
        follower = Follower(min(range(_GROUPS), key=self._members.__getitem__))
        self._members[follower.group] += 1
        if self._ticker is None and not self._closed:
            self._ticker = asyncio.get_running_loop().call_later(MAX_QUIET / 2, self._tick)
        try:
            yield follower
        finally:
            self._members[follower.group] -= 1
            self._back(follower)  # gone while sending: no longer awaited

    def _appended_events(self) -> None:
        """Wakes the followers, as often as the server can serve them and do the rest.

        A wake-up costs every follower one message (21-44 us of the loop each in the bench's
        floor, by frame size and machine), so the next one waits until the followers woken
        are back and then _GAP times as long as they took: events that arrive meanwhile go
        out together (a follower that is caught up sends again only at the next wake-up, see
        Jobs.events), and the loop keeps time for submits and agents between wake-ups.
        Measured here with 1,000 followers: woken at every event, a submit took 60 ms and
        submits ran at 21/s; when each follower sent again as soon as its last send was done,
        1,000 jobs took 57 s. With a fixed pace of 45 us per follower instead of rounds, the
        wake-ups came faster than the followers' sends on a slower day: in 7 runs 1,000 jobs
        took 5.8-42 s, with the event delay's p99 at 138 ms to 2.4 s.

        A wake-up goes through the groups one turn of the loop each (see _GROUPS).
        """
        if self._round is not None:
            self._wake_again = True
            return
        if self._pending_wake is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_wake:
            self._wake_followers()
        else:
            self._pending_wake = loop.call_at(self._next_wake, self._wake_followers)

    def _tick(self) -> None:
        """Wakes the followers if nothing did for half of MAX_QUIET (so never more than all
        of it passes without a wake-up); runs while any follow. Not paced: with nothing new
        a follower sends nothing (or a keepalive), and the first events after a quiet spell
        go out at once. During a long round it wakes those already back, and it ends the
        round once _ROUND_CAP has passed (no timer of its own for the cap)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        round_ = self._round
        if round_ is not None and now - round_.started >= _ROUND_CAP:
            round_.capped = True
            self._round_may_end()
        if (
            self._pending_wake is None
            and self._cascade is None
            and now - self._last_wake >= MAX_QUIET / 2
        ):
            if self._round is None:
                self._wake_followers(paced=False)
            else:
                self._last_wake = now
                self._wake_all()
        self._ticker = None
        if self.followers and not self._closed:
            self._ticker = loop.call_later(MAX_QUIET / 2, self._tick)

    def _wake_followers(self, paced: bool = True) -> None:
        self._pending_wake = None
        loop = asyncio.get_running_loop()
        self._last_wake = loop.time()
        if self._closed:
            self._wake_all()
        elif self._round is None:
            self._round = _Round(self._last_wake, paced)
            self._cascade = 0
            self._wake_next_group()

    def _wake_next_group(self) -> None:
        assert self._cascade is not None
        group = self._cascade
        while group < _GROUPS and not self._members[group]:
            group += 1
        if group < _GROUPS:
            self._wake(group)
            self._cascade = group + 1
            asyncio.get_running_loop().call_soon(self._wake_next_group)
            return
        self._cascade = None
        self._round_may_end()

    def _wake(self, group: int) -> None:
        if self._round is not None:
            self._round.woken += self._resting[group]
        event, self._groups[group] = self._groups[group], asyncio.Event()
        event.set()

    def _wake_all(self) -> None:
        for group in range(_GROUPS):
            self._wake(group)

    def _back(self, follower: Follower) -> None:
        round_, follower.woken_by = follower.woken_by, None
        if round_ is not None:
            round_.back += 1
            if round_ is self._round:
                self._round_may_end()

    def _round_may_end(self) -> None:
        round_ = self._round
        if round_ is None or self._cascade is not None:
            return
        if round_.capped or round_.back >= round_.woken - round_.woken // _STRAGGLERS:
            self._end_round(round_)
        elif not round_.late and round_.back * 2 >= round_.woken:
            # Half are back: the rest get as long again. Among a few followers one slow
            # reader is more than 1/_STRAGGLERS of them, and would hold every round.
            round_.late = True
            loop = asyncio.get_running_loop()
            loop.call_later(loop.time() - round_.started, self._end_late, round_)

    def _end_late(self, round_: _Round) -> None:
        if round_ is self._round:
            round_.capped = True
            self._round_may_end()

    def _end_round(self, round_: _Round) -> None:
        """Ends the round; the next paced wake-up waits _GAP times as long as it took."""
        self._round = None
        now = asyncio.get_running_loop().time()
        if round_.paced:
            self._next_wake = now + (now - round_.started) * _GAP
        if self._wake_again:
            self._wake_again = False
            self._appended_events()

    async def _run(self) -> None:
        assert self._started is not None
        watching: contextlib.AbstractContextManager[Subscription | None]
        if self._store.reads_at_once:
            watching = self._notifier.on_publish(EVENTS_TOPIC, self._read_committed)
        else:
            watching = self._notifier.subscribe(EVENTS_TOPIC)
        with watching as sub:  # None: the commits' callbacks read
            while True:
                try:
                    if not self._started.done():
                        self.floor = await self._store.last_event_seq()
                        self._started.set_result(None)
                    if sub is None:
                        self._read_now()
                        await self._recheck_pause()
                    else:
                        sub.clear()
                        await self._read_new()
                        await sub.wait(self._recheck)
                except StoreUnavailable as exc:
                    if self._notifier.closed:
                        self._closed = True
                        self._wake_followers()
                        if not self._started.done():
                            self._started.set_exception(exc)
                        return
                    log.warning("event tail cannot read the store (retrying): %s", exc)
                    await asyncio.sleep(self._recheck)
                except Exception:
                    log.exception("event tail failed; retrying")
                    await asyncio.sleep(self._recheck)

    async def _recheck_pause(self) -> None:
        """Waits ``recheck`` seconds, or until the server shuts down (then raises)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._recheck):
                await self._notifier.wait_closed()
        self._notifier.check_open()

    def _read_committed(self) -> None:
        """Reads at a commit of this server that wrote events (on the embedded store)."""
        started = self._started
        if self._closed or started is None or not started.done() or started.exception():
            return  # the task reads once it knows where to start
        try:
            self._read_now()
        except StoreUnavailable as exc:
            log.warning("event tail cannot read the store (read again later): %s", exc)
        except Exception:
            log.exception("event tail failed to read; read again later")

    def _read_now(self) -> None:
        while self._append(self._store.tail_events_now(after_seq=self.last, limit=_READ_BATCH)):
            pass

    async def _read_new(self) -> None:
        while self._append(await self._store.tail_events(after_seq=self.last, limit=_READ_BATCH)):
            pass

    def _append(self, rows: list[tuple[str, job_pb2.JobEvent]]) -> bool:
        """Holds the events read and wakes the followers; True if there may be more."""
        if not rows:
            return False
        for tenant, event in rows:
            self._seqs.append(event.sequence)
            self._events.append((tenant, _field(_EVENT_TAG, event.SerializeToString())))
        self._slices.clear()
        while len(self._seqs) > self._capacity:
            self.floor = self._seqs.popleft()
            self._events.popleft()
        self._appended_events()
        return len(rows) == _READ_BATCH
