"""What clients can do with jobs: the rules behind JobService, free of gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from gaffer.core._context import Caller, CoreSettings
from gaffer.core._event_tail import EventTail, TailSlice
from gaffer.core._transitions import change_state, insert_submitted, record_event, timestamp
from gaffer.domain import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PageCursor,
    decode_page_token,
    encode_page_token,
    fill_timings,
    is_finished,
    new_job_id,
    validate_spec,
)
from gaffer.domain._pagination import query_fingerprint
from gaffer.store import (
    EVENTS_TOPIC,
    BlobStore,
    JobQuery,
    Notifier,
    Store,
    StoredJob,
    Transaction,
    agent_topic,
    job_topic,
    logs_topic,
    queue_topic,
)
from gaffer.v1 import job_pb2, job_service_pb2

S = job_pb2.JobState
BOTH_STREAMS = (job_pb2.LOG_STREAM_STDOUT, job_pb2.LOG_STREAM_STDERR)
_EVENT_BATCH = 500
_LOG_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LogRequest:
    job_id: str
    follow: bool = False
    attempt: int = 0
    stdout_offset: int = 0
    stderr_offset: int = 0
    tail_lines: int = 0
    streams: tuple[int, ...] = ()
    keepalive: float = 15.0
    resume_attempt: int = 0


class _Keepalive:
    """When a stream with nothing to send is due a keepalive frame.

    Streams re-check the store every ``recheck`` seconds even without a wake-up (one lost
    between replicas), and send a keepalive only once ``interval`` passed with nothing sent.
    """

    def __init__(self, interval: float, recheck: float) -> None:
        self.interval = interval
        self.recheck = recheck
        self.last_sent = time.monotonic()

    def sent(self) -> None:
        self.last_sent = time.monotonic()

    def wait_for(self) -> float:
        return max(0.0, min(self.recheck, self.last_sent + self.interval - time.monotonic()))

    def due(self) -> bool:
        if time.monotonic() - self.last_sent >= self.interval:
            self.sent()
            return True
        return False


class _StoreWakeups:
    """A follower's wake-ups for new events in the store, subscribed while it reads there.

    A follower of every job that the event tail serves waits on the tail instead: subscribed,
    it would still be woken by every commit for nothing. With 1,000 such followers, setting
    their subscriptions took 7% of the server's samples (py-spy).
    """

    def __init__(self, notifier: Notifier, topic: str, *, at_once: bool) -> None:
        self._notifier = notifier
        self._topic = topic
        self._sub = notifier.subscribe(topic) if at_once else None

    def before_read(self) -> None:
        """Call before each read of the store: a commit after it wakes the next wait."""
        if self._sub is None:
            self._sub = self._notifier.subscribe(self._topic)
        self._sub.clear()

    async def wait(self, timeout: float) -> None:
        assert self._sub is not None, "wait follows a read"
        await self._sub.wait(timeout)

    def drop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def __enter__(self) -> _StoreWakeups:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.drop()


def _ends(event: job_pb2.JobEvent) -> bool:
    """Whether the event is a job's final state change."""
    return event.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED and is_finished(event.state)


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")


#: Agents.hand_off: claims a job just submitted, in its transaction, for a waiting claim.
HandOff = Callable[[Transaction, StoredJob, float], Awaitable[None]]


class Jobs:
    """Submit, read, cancel, wait for and follow jobs."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        blobs: BlobStore,
        settings: CoreSettings,
        *,
        hand_off: HandOff | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._blobs = blobs
        self._settings = settings
        self._hand_off = hand_off
        self._tail = EventTail(store, notifier, recheck=settings.recheck_interval)

    def _now(self) -> float:
        return self._settings.clock()

    async def close(self) -> None:
        await self._tail.close()

    def _present(self, stored: StoredJob) -> job_pb2.Job:
        """The job as callers see it, with timings filled in."""
        job = stored.job
        fill_timings(job, int(self._now() * 1e9))
        return job

    async def _get(self, caller: Caller, job_id: str) -> StoredJob:
        stored = await self._store.get_job(job_id)
        if stored is None or stored.tenant != caller.tenant:
            raise job_not_found(job_id)
        return stored

    async def submit(
        self, caller: Caller, spec: job_pb2.JobSpec, request_id: str, *, validate_only: bool
    ) -> tuple[job_pb2.Job, bool]:
        """Stores a job durably; returns (job, existing) where existing means a repeat."""
        now = self._now()
        job = self._new_job(spec, request_id, now)
        if validate_only:
            return job, False
        async with self._store.transaction() as tx:
            return await self._insert(tx, caller, job, now)

    async def submit_many(
        self,
        caller: Caller,
        requests: Sequence[job_service_pb2.SubmitJobRequest],
        *,
        validate_only: bool,
    ) -> list[tuple[job_pb2.Job, bool]]:
        """Stores several jobs in one transaction: all of them, or none when any is invalid.

        The InvalidArgument lists every problem of every job, each field under ``jobs[i]``.
        """
        now = self._now()
        jobs: list[job_pb2.Job] = []
        violations: list[FieldViolation] = []
        reasons: list[str] = []
        for i, request in enumerate(requests):
            problems: list[FieldViolation] = []
            if request.validate_only:
                problems.append(
                    FieldViolation("validate_only", "must be unset here; set the request's")
                )
            if not request.HasField("spec"):
                problems.append(FieldViolation("spec", "is required"))
            else:
                try:
                    jobs.append(self._new_job(request.spec, request.request_id, now))
                except InvalidArgument as error:
                    problems.extend(error.violations)
                    reasons.append(error.reason)
            violations.extend(
                FieldViolation(f"jobs[{i}].{v.field}", v.description) for v in problems
            )
        if violations:
            raise InvalidArgument(violations, reason=reasons[0] if reasons else "INVALID_SPEC")
        if validate_only:
            return [(job, False) for job in jobs]
        async with self._store.transaction() as tx:
            return [await self._insert(tx, caller, job, now) for job in jobs]

    def _new_job(self, spec: job_pb2.JobSpec, request_id: str, now: float) -> job_pb2.Job:
        """A PENDING job for a checked spec (InvalidArgument listing what is wrong)."""
        limits = self._settings.limits
        if len(request_id) > limits.max_request_id_chars:
            raise InvalidArgument.single(
                "request_id", f"is longer than {limits.max_request_id_chars} characters"
            )
        validate_spec(spec, limits)
        job = job_pb2.Job(id=new_job_id(), state=job_pb2.JOB_STATE_PENDING, request_id=request_id)
        job.spec.CopyFrom(spec)
        job.spec.queue = spec.queue or "default"
        job.create_time.CopyFrom(timestamp(now))
        return job

    async def _insert(
        self, tx: Transaction, caller: Caller, job: job_pb2.Job, now: float
    ) -> tuple[job_pb2.Job, bool]:
        """Stores a new job, or finds the first one of its request_id: (job, existing)."""
        if job.request_id:
            existing = await tx.find_request(caller.tenant, job.request_id)
            if existing is not None:
                return self._present(existing), True
        stored = StoredJob(job=job, tenant=caller.tenant)
        await insert_submitted(tx, stored, now=now, actor=caller.actor)
        tx.topics.add(queue_topic(job.spec.queue))
        if self._hand_off is not None:
            await self._hand_off(tx, stored, now)
        return self._present(stored), False

    async def get(self, caller: Caller, job_id: str) -> job_pb2.Job:
        return self._present(await self._get(caller, job_id))

    async def list_page(
        self,
        caller: Caller,
        query: JobQuery,
        *,
        newest_first: bool,
        page_token: str,
        query_key: bytes,
        limit: int,
    ) -> tuple[list[job_pb2.Job], str]:
        """A page of jobs and the token of the next page ("" on the last).

        ``query_key`` identifies the filter and order; a token is refused for any other.
        """
        fingerprint = query_fingerprint(query_key + bytes([newest_first]))
        after_seq = decode_page_token(page_token, fingerprint).after_seq if page_token else 0
        rows = await self._store.list_jobs(
            caller.tenant, query, newest_first=newest_first, after_seq=after_seq, limit=limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        token = encode_page_token(PageCursor(rows[-1].seq, fingerprint)) if more and rows else ""
        return [self._present(r) for r in rows], token

    async def cancel(self, caller: Caller, job_id: str, reason: str) -> job_pb2.Job:
        """Cancels at once when pending; asks the agent to kill it when claimed or running."""
        limits = self._settings.limits
        if len(reason) > limits.max_reason_chars:
            raise InvalidArgument.single("reason", f"is over {limits.max_reason_chars} characters")
        now = self._now()
        async with self._store.transaction() as tx:
            stored = await tx.get_job(job_id)
            if stored is None or stored.tenant != caller.tenant:
                raise job_not_found(job_id)
            job = stored.job
            message = f"canceled by {caller.actor}" + (f": {reason}" if reason else "")
            if job.state == job_pb2.JOB_STATE_CANCELED and job.canceled_by == caller.actor:
                return self._present(stored)  # a retry of a cancel whose answer was lost
            if is_finished(job.state):
                raise FailedPrecondition(
                    f"job {job_id} is already {S.Name(job.state)}; nothing to cancel",
                    reason="JOB_FINISHED",
                )
            if job.state == job_pb2.JOB_STATE_PENDING:
                job.canceled_by = caller.actor
                await change_state(
                    tx,
                    stored,
                    job_pb2.JOB_STATE_CANCELED,
                    now=now,
                    message=message,
                    actor=caller.actor,
                )
            elif not job.cancel_requested:
                job.cancel_requested = True
                job.canceled_by = caller.actor
                job.update_time.CopyFrom(timestamp(now))
                await tx.update_job(stored)
                await record_event(
                    tx,
                    stored,
                    job_pb2.JOB_EVENT_TYPE_CANCEL_REQUESTED,
                    now=now,
                    message=message,
                    actor=caller.actor,
                )
                tx.topics.add(agent_topic(job.agent_id))
        return self._present(stored)

    async def wait(self, caller: Caller, job_id: str, timeout: float | None) -> job_pb2.Job:
        """The job once finished, or as it is when ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._notifier.subscribe(job_topic(job_id)) as sub:
            while True:
                sub.clear()
                stored = await self._get(caller, job_id)
                if is_finished(stored.job.state):
                    return self._present(stored)
                recheck = self._settings.recheck_interval
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._present(stored)
                await sub.wait(recheck if remaining is None else min(remaining, recheck))

    async def events(
        self,
        caller: Caller,
        *,
        job_id: str | None,
        query: JobQuery | None,
        after_sequence: int,
        from_now: bool,
        keepalive: float,
        history_only: bool = False,
    ) -> AsyncIterator[list[job_pb2.JobEvent] | TailSlice | int]:
        """History then live events, in batches; an int is a keepalive: the sequence the
        stream reached.

        Following one job, the stream ends after the job's final event. Following every job
        (no filter), live events come from the shared EventTail instead of the store, already
        encoded (a TailSlice). A filter's states select events by the state each event
        carries (the job's state when it happened), not by the job's state now: what a
        stream sends does not depend on when it reads.
        """
        if after_sequence < 0:
            raise InvalidArgument.single("after_sequence", "must not be negative")
        if from_now and after_sequence:
            raise InvalidArgument.single(
                "from_now", "cannot be combined with after_sequence; pick one start"
            )
        shared = not job_id and not history_only and (query is None or query == JobQuery())
        states = frozenset(query.states) if query is not None else frozenset()
        job_query = replace(query, states=()) if query is not None and states else query
        topic = job_topic(job_id) if job_id else EVENTS_TOPIC
        following = self._tail.following() if shared else contextlib.nullcontext(None)
        wakeups = _StoreWakeups(self._notifier, topic, at_once=not shared)
        with wakeups, following as follower:
            if job_id:
                await self._get(caller, job_id)
            if shared:
                await self._tail.ready()
            last = await self._store.last_event_seq()
            if from_now:
                after_sequence = last
                yield after_sequence  # the position a resume must start from
            elif after_sequence > last:
                raise OutOfRange(
                    f"after_sequence {after_sequence} is past the newest event ({last}); "
                    "was the cursor issued by another server?",
                    reason="CURSOR_AHEAD",
                )
            idle = _Keepalive(keepalive, self._settings.recheck_interval)
            while True:
                if follower is not None and self._tail.covers(after_sequence):
                    wakeups.drop()
                    change = self._tail.change(follower)
                    live = self._tail.since(caller.tenant, after_sequence, _EVENT_BATCH)
                    if live is not None:
                        after_sequence = live.last
                        idle.sent()
                        yield live
                        if len(live.frames) >= _EVENT_BATCH:
                            continue  # behind: catch up at once
                    # Caught up: whatever the tail reads meanwhile goes out at its next
                    # wake-up, in one frame, not in a send of its own as soon as this one
                    # is done (paced by the tail; see EventTail._appended_events).
                    await self._tail.rest(follower, change, idle.wait_for())
                    if idle.due():
                        yield after_sequence
                    continue
                wakeups.before_read()
                finished_before_read = False
                if job_id:
                    stored = await self._get(caller, job_id)
                    finished_before_read = is_finished(stored.job.state)
                batch = await self._store.read_events(
                    caller.tenant,
                    after_seq=after_sequence,
                    limit=_EVENT_BATCH,
                    job_id=job_id,
                    query=job_query,
                )
                if batch:
                    final = next((i for i, e in enumerate(batch) if job_id and _ends(e)), None)
                    if final is not None:
                        yield batch[: final + 1]
                        return
                    after_sequence = batch[-1].sequence
                    if states:
                        batch = [e for e in batch if e.state in states]
                        if not batch:  # read on past events of other states
                            if idle.due():
                                yield after_sequence
                            continue
                    idle.sent()
                    yield batch
                    continue
                if finished_before_read or history_only:
                    return  # all stored events were sent (or the cursor was past the final one)
                await wakeups.wait(idle.wait_for())
                if idle.due():
                    yield after_sequence

    async def logs(
        self, caller: Caller, request: LogRequest
    ) -> AsyncIterator[job_pb2.LogChunk | job_service_pb2.LogEnd | None]:
        """Stored then live output; a LogEnd last once the job is finished and all was sent.

        None marks an idle interval (a keepalive is due).
        """
        for name in ("attempt", "stdout_offset", "stderr_offset", "tail_lines", "resume_attempt"):
            if getattr(request, name) < 0:
                raise InvalidArgument.single(name, "must not be negative")
        streams = request.streams or BOTH_STREAMS
        with self._notifier.subscribe(logs_topic(request.job_id), job_topic(request.job_id)) as sub:
            stored = await self._get(caller, request.job_id)
            attempt = request.attempt or request.resume_attempt or stored.job.attempt
            if max(request.attempt, request.resume_attempt) > stored.job.attempt:
                raise OutOfRange(
                    f"job {request.job_id} has no attempt "
                    f"{max(request.attempt, request.resume_attempt)} "
                    f"(latest: {stored.job.attempt})",
                    reason="NO_SUCH_ATTEMPT",
                )
            offsets: dict[int, int] = {
                job_pb2.LOG_STREAM_STDOUT: request.stdout_offset,
                job_pb2.LOG_STREAM_STDERR: request.stderr_offset,
            }
            offsets = {s: o for s, o in offsets.items() if s in streams}
            if request.tail_lines:
                for stream in offsets:
                    offsets[stream] = await self._store.tail_offset(
                        request.job_id, attempt, stream, request.tail_lines
                    )
            idle = _Keepalive(request.keepalive, self._settings.recheck_interval)
            while True:
                sub.clear()
                # The state is read before the output: a job seen finished here has all of its
                # output stored, so an empty read below means everything was sent.
                stored = await self._get(caller, request.job_id)
                job = stored.job
                chunks = await self._store.read_logs(
                    request.job_id, attempt, offsets, _LOG_BATCH_BYTES
                )
                for chunk in chunks:
                    offsets[chunk.stream] = chunk.offset + len(chunk.data)
                    idle.sent()
                    yield chunk
                if chunks:
                    continue
                if job.attempt > attempt:
                    if request.attempt == 0:
                        # A retry started: follow the new attempt from its start.
                        attempt = job.attempt
                        offsets = dict.fromkeys(offsets, 0)
                        continue
                    yield await self._log_end(job, attempt)  # that attempt is over
                    return
                if is_finished(job.state):
                    yield await self._log_end(job, attempt)
                    return
                if not request.follow:
                    return
                await sub.wait(idle.wait_for())
                if idle.due():
                    yield None

    async def _log_end(self, job: job_pb2.Job, attempt: int) -> job_service_pb2.LogEnd:
        """The end frame of an attempt: its own outcome, from the status that recorded it."""
        sizes = await self._store.log_sizes(job.id, attempt)
        end = job_service_pb2.LogEnd(
            attempt=attempt,
            stdout_size=sizes.get(job_pb2.LOG_STREAM_STDOUT, 0),
            stderr_size=sizes.get(job_pb2.LOG_STREAM_STDERR, 0),
        )
        if attempt == job.attempt:
            end.state, end.message = job.state, job.message
            last = job.history[-1] if job.history else None
            if last is not None and last.HasField("exit_code"):
                end.exit_code = last.exit_code
            return end
        # An earlier attempt: it failed (or lost its lease) and a later one superseded it.
        ended = [
            s for s in job.history if s.attempt == attempt and s.state == job_pb2.JOB_STATE_PENDING
        ]
        end.state = job_pb2.JOB_STATE_FAILED
        end.message = ended[-1].message if ended else f"attempt {attempt} was superseded"
        if ended and ended[-1].HasField("exit_code"):
            end.exit_code = ended[-1].exit_code
        return end

    async def artifacts(self, caller: Caller, job_id: str) -> list[job_pb2.Artifact]:
        await self._get(caller, job_id)
        return await self._store.list_artifacts(job_id)

    async def read_artifact(
        self, caller: Caller, job_id: str, name: str, offset: int, chunk_size: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) pieces of an artifact, from ``offset``."""
        max_chunk = self._settings.limits.max_artifact_chunk_bytes
        if not name:
            raise InvalidArgument.single("name", "is required")
        if offset < 0:
            raise InvalidArgument.single("offset", "must not be negative")
        if chunk_size < 0 or chunk_size > max_chunk:
            raise InvalidArgument.single("chunk_size", f"must be between 0 and {max_chunk}")
        chunk_size = chunk_size or max_chunk
        found = {a.name: a for a in await self.artifacts(caller, job_id)}.get(name)
        if found is None:
            raise NotFound(f"job {job_id} has no artifact {name!r}", reason="ARTIFACT_NOT_FOUND")
        if offset > found.size_bytes:
            raise OutOfRange(
                f"offset {offset} is past the end of {name!r} ({found.size_bytes} bytes)",
                reason="OFFSET_PAST_END",
            )
        with self._blobs.path_of(found.digest).open("rb") as blob:
            blob.seek(offset)
            while offset < found.size_bytes:
                data = await asyncio.to_thread(
                    blob.read, min(chunk_size, found.size_bytes - offset)
                )
                if not data:
                    break
                yield offset, data
                offset += len(data)
