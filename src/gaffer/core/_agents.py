"""What agents can do: register, claim, heartbeat, report, finish. Every write is fenced."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from gaffer.core._context import CoreSettings
from gaffer.core._handoff import Handoffs, add_resources
from gaffer.core._transitions import (
    apply_state,
    change_state,
    record_event,
    record_events,
    state_event,
    timestamp,
)
from gaffer.domain import (
    ACTIVE_STATES,
    AGENT_UPDATE_STATES,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
    check_enum_values,
    is_finished,
    new_agent_id,
    new_lease_token,
    next_backoff,
    should_retry,
)
from gaffer.domain._validation import check_labels, check_relative_path, validate_name
from gaffer.store import (
    BlobStore,
    Notifier,
    Store,
    StoredAgent,
    StoredJob,
    Transaction,
    agent_topic,
    logs_topic,
    queue_topic,
)
from gaffer.v1 import agent_service_pb2 as agent_pb2
from gaffer.v1 import job_pb2

log = logging.getLogger(__name__)
S = job_pb2.JobState


@dataclass(frozen=True)
class Fence:
    """The job, attempt and lease token every agent write names."""

    job_id: str
    attempt: int
    lease_token: str


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the agent reports it (CompleteJob's fields)."""

    fence: Fence
    state: int
    exit_code: int | None
    message: str
    not_retryable: bool
    result_json: str = ""
    passed: dict[int, float] | None = None


@dataclass
class HeartbeatResult:
    cancel: list[agent_pb2.CancelOrder] = field(default_factory=list)
    lost: list[agent_pb2.AttemptRef] = field(default_factory=list)
    lease_expires: float = 0.0
    draining: bool = False


_MAX_CACHED_NAMES = 10_000
#: A claim within this many seconds of the agent's last recorded sign of life leaves it as it
#: is (see _heard_from).
_HEARD_RECENTLY = 1.0


def _agent_not_found(agent_id: str) -> NotFound:
    return NotFound(
        f"agent {agent_id!r} is not registered; register again", reason="AGENT_NOT_FOUND"
    )


def _check_fence(stored: StoredJob | None, fence: Fence) -> StoredJob:
    """``stored`` if ``fence`` names its current attempt; FAILED_PRECONDITION otherwise."""
    if stored is None:
        raise NotFound(f"job {fence.job_id!r} not found", reason="JOB_NOT_FOUND")
    job = stored.job
    if job.attempt != fence.attempt or stored.lease_token != fence.lease_token:
        raise FailedPrecondition(
            f"attempt {fence.attempt} of job {fence.job_id} is not current "
            f"(current: {job.attempt}); this write is refused",
            reason="STALE_ATTEMPT",
        )
    if job.state not in ACTIVE_STATES:
        raise FailedPrecondition(
            f"job {fence.job_id} is {S.Name(job.state)}; attempt {fence.attempt} no longer "
            "holds it",
            reason="ATTEMPT_NOT_ACTIVE",
        )
    return stored


def _fits(job: job_pb2.Job, agent: agent_pb2.Agent, used: job_pb2.Resources) -> bool:
    """Whether the job's node selector and resources fit what the agent has left."""
    for key, value in job.spec.node_selector.items():
        if agent.labels.get(key) != value:
            return False
    need, cap = job.spec.resources, agent.capacity
    if cap.cpu and used.cpu + need.cpu > cap.cpu:
        return False
    if cap.memory_bytes and used.memory_bytes + need.memory_bytes > cap.memory_bytes:
        return False
    return not (need.gpu and used.gpu + need.gpu > cap.gpu)


async def _room(
    tx: Transaction, agent_id: str, agent: agent_pb2.Agent
) -> tuple[int, job_pb2.Resources]:
    """How many more jobs the agent may hold, and the resources of those it holds."""
    cap = agent.capacity
    used = job_pb2.Resources()
    if cap.cpu or cap.memory_bytes or cap.gpu:
        held = await tx.jobs_of_agent(agent_id)
        for other in held:
            add_resources(used, other.job)
        return cap.slots - len(held), used
    return cap.slots - await tx.count_held(agent_id), used


def _take(
    stored: StoredJob,
    agent_id: str,
    agent: agent_pb2.Agent,
    *,
    now: float,
    expires: float,
    actor: str,
) -> job_pb2.JobEvent:
    """Makes the job the next attempt of the agent, leased until ``expires`` (the caller
    writes it); returns its CLAIMED event."""
    job = stored.job
    job.attempt += 1
    job.agent_id = agent_id
    job.ClearField("exit_code")
    stored.lease_token = new_lease_token()
    stored.lease_expires = expires
    stored.not_before = 0.0
    message = f"attempt {job.attempt} claimed by {agent.name}"
    apply_state(stored, job_pb2.JOB_STATE_CLAIMED, now=now, message=message, actor=actor)
    return state_event(
        stored, job_pb2.JOB_EVENT_TYPE_STATE_CHANGED, now=now, message=message, actor=actor
    )


async def _heard_from(tx: Transaction, stored_agent: StoredAgent, now: float) -> None:
    """A claim counts as a heartbeat, written only if the last one is a second old or more.

    Writing the agent's row dirtied two pages (the row's and its name index's) in the commit
    of every claim: one function job at a time, the submit's commit wrote 11 pages of the WAL
    instead of 9, about 4.5 us each. A second is nothing to the lease (15 s by default).
    """
    if now - stored_agent.last_heartbeat < _HEARD_RECENTLY:
        return
    stored_agent.last_heartbeat = now
    stored_agent.agent.last_heartbeat_time.CopyFrom(timestamp(now))
    await tx.put_agent(stored_agent)


def _clamped(job: job_pb2.Job, at: float, now: float) -> float:
    """An agent's time for a status, kept between the previous status's and now (agents'
    clocks drift; the history stays in order)."""
    previous = job.history[-1].time.ToNanoseconds() / 1e9 if job.history else 0.0
    return max(min(at, now), previous)


def _state_word(state: int) -> str:
    return S.Name(state).removeprefix("JOB_STATE_").lower()


class Agents:
    """The agent side of the lifecycle."""

    def __init__(
        self, store: Store, notifier: Notifier, blobs: BlobStore, settings: CoreSettings
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._blobs = blobs
        self._settings = settings
        # An agent id names one agent for good (registering again under a name keeps its id),
        # so its name can be remembered instead of read for every status it reports.
        self._names: dict[str, str] = {}
        self._handoffs = Handoffs()

    def _now(self) -> float:
        return self._settings.clock()

    def actor(self, agent: agent_pb2.Agent | None, agent_id: str = "") -> str:
        return f"agent:{agent.name}" if agent is not None else f"agent:{agent_id}"

    async def register(
        self,
        name: str,
        labels: dict[str, str],
        capacity: agent_pb2.Capacity,
        queues: Sequence[str],
    ) -> agent_pb2.Agent:
        """Registers an agent, or updates the one already registered under ``name``."""
        limits = self._settings.limits
        violations = validate_name(name, "name", limits)
        check_labels(labels, "labels", limits, violations)
        for name_ in ("slots", "cpu", "memory_bytes", "gpu"):
            if getattr(capacity, name_) < 0:
                violations.append(FieldViolation(f"capacity.{name_}", "must not be negative"))
        for i, queue in enumerate(queues):
            violations.extend(validate_name(queue, f"queues[{i}]", limits))
        if violations:
            raise InvalidArgument(violations, reason="INVALID_AGENT")
        now = self._now()
        async with self._store.transaction(durable=False) as tx:
            stored = await tx.get_agent_by_name(name)
            if stored is not None:
                # A process registering under a known name is a new one: whatever its
                # predecessor held is abandoned now (the sweeper retries it) rather than
                # after a lease ttl.
                for held in await tx.jobs_of_agent(stored.agent.id):
                    held.lease_expires = min(held.lease_expires, now)
                    await tx.update_job(held)
            if stored is None:
                agent = agent_pb2.Agent(id=new_agent_id(), name=name)
                agent.register_time.CopyFrom(timestamp(now))
                stored = StoredAgent(agent=agent)
            agent = stored.agent
            agent.labels.clear()
            agent.labels.update(labels)
            agent.capacity.CopyFrom(capacity)
            agent.capacity.slots = capacity.slots or 1
            del agent.queues[:]
            agent.queues.extend(queues or ["default"])
            if agent.state != agent_pb2.AGENT_STATE_DRAINING:
                agent.state = agent_pb2.AGENT_STATE_ACTIVE
            agent.last_heartbeat_time.CopyFrom(timestamp(now))
            stored.last_heartbeat = now
            await tx.put_agent(stored)
        return agent

    async def _agent(self, tx: Transaction, agent_id: str) -> StoredAgent:
        stored = await tx.get_agent(agent_id)
        if stored is None:
            raise _agent_not_found(agent_id)
        return stored

    async def claim(
        self, agent_id: str, max_jobs: int, wait: float
    ) -> list[tuple[StoredJob, float]]:
        """Up to ``max_jobs`` jobs that fit the agent, waiting up to ``wait`` s for one."""
        limits = self._settings.limits
        if max_jobs < 0 or max_jobs > limits.max_claim_jobs:
            raise InvalidArgument.single(
                "max_jobs", f"must be between 0 and {limits.max_claim_jobs}"
            )
        if wait < 0:
            raise InvalidArgument.single("wait", "must not be negative")
        stored_agent = await self._store.get_agent(agent_id)
        if stored_agent is None:
            raise _agent_not_found(agent_id)
        queues = list(stored_agent.agent.queues)
        topics = [queue_topic(q) for q in queues]
        deadline = time.monotonic() + wait
        with self._notifier.subscribe(*topics, agent_topic(agent_id)) as sub:
            while True:
                sub.clear()
                # A look without the writer first: most polls of an idle agent find nothing.
                claimed = (
                    await self._claim_once(agent_id, max_jobs or 1)
                    if await self._store.any_pending(queues, self._now())
                    else []
                )
                remaining = deadline - time.monotonic()
                if claimed or remaining <= 0:
                    return claimed
                offer = self._handoffs.open(agent_id, queues, max_jobs or 1)
                try:
                    await sub.wait(min(remaining, self._settings.recheck_interval))
                except BaseException:
                    self._handoffs.close(offer)
                    raise
                handed = await self._handoffs.taken(offer)
                if handed:
                    return handed

    async def _claim_once(self, agent_id: str, max_jobs: int) -> list[tuple[StoredJob, float]]:
        now = self._now()
        claimed: list[tuple[StoredJob, float]] = []
        async with self._store.transaction(durable=False) as tx:
            stored_agent = await self._agent(tx, agent_id)
            agent = stored_agent.agent
            if agent.state == agent_pb2.AGENT_STATE_DRAINING:
                return []
            free, used = await _room(tx, agent_id, agent)
            if free <= 0:
                return []
            want = min(max_jobs, free)
            expires = now + self._settings.lease_ttl
            actor = self.actor(agent)
            events: list[tuple[StoredJob, job_pb2.JobEvent]] = []
            candidates = self._candidates(tx, list(agent.queues), now, want)
            async for stored in candidates:
                if not _fits(stored.job, agent, used):
                    continue
                add_resources(used, stored.job)
                event = _take(stored, agent_id, agent, now=now, expires=expires, actor=actor)
                await tx.update_job(stored)
                events.append((stored, event))
                claimed.append((stored, expires))
                if len(claimed) >= want:
                    await candidates.aclose()
                    break
            if claimed:
                await _heard_from(tx, stored_agent, now)
                await record_events(tx, events)
        return claimed

    def claims_waiting(self) -> int:
        return self._handoffs.waiting

    def jobs_handed_off(self) -> int:
        return self._handoffs.handed

    async def hand_off(self, tx: Transaction, stored: StoredJob, now: float) -> None:
        """Claims a job just submitted in ``tx`` for a claim waiting on its queue, if one
        can take it (see _handoff); otherwise leaves it PENDING, for the next claim."""
        job = stored.job
        if stored.not_before > now:
            return
        for offer in self._handoffs.candidates(job.spec.queue):
            if not offer.wants_more():
                continue
            # Read in every transaction, not kept: a drain committed before this one counts.
            stored_agent = await tx.get_agent(offer.agent_id)
            draining = agent_pb2.AGENT_STATE_DRAINING
            if stored_agent is None or stored_agent.agent.state == draining:
                continue
            agent = stored_agent.agent
            if offer.room is None:  # what the agent holds: read once, then counted here
                room, used = await _room(tx, offer.agent_id, agent)
                if offer.room is None:  # (a PostgreSQL transaction may have read it meanwhile)
                    offer.room, offer.used = room, used
            if not offer.wants_more():
                continue  # closed or filled while this transaction read
            if offer.room <= 0 or not _fits(job, agent, offer.used):
                continue
            expires = now + self._settings.lease_ttl
            jobs = self._handoffs.hold(offer, tx)
            first = not jobs
            jobs.append((stored, expires))
            offer.room -= 1
            add_resources(offer.used, job)
            event = _take(
                stored, offer.agent_id, agent, now=now, expires=expires, actor=self.actor(agent)
            )
            await tx.update_job(stored)
            await record_events(tx, [(stored, event)])
            if first:
                await _heard_from(tx, stored_agent, now)
            return

    async def _candidates(
        self, tx: Transaction, queues: list[str], now: float, want: int
    ) -> AsyncGenerator[StoredJob, None]:
        """Pending jobs to try, in order: first just as many as wanted (usually they all fit);
        only if the caller asks for more, a wider look past them."""
        first = await tx.pending_jobs(queues, now, want)
        for stored in first:
            yield stored
        if len(first) < want:
            return
        seen = {s.job.id for s in first}
        for stored in await tx.pending_jobs(queues, now, want * 4 + 16):
            if stored.job.id not in seen:
                yield stored

    async def heartbeat(
        self,
        agent_id: str,
        running: Sequence[agent_pb2.AttemptRef],
        canceling: Sequence[agent_pb2.AttemptRef],
        wait: float,
    ) -> HeartbeatResult:
        """Renews leases; answers at once with cancel orders, or when ``wait`` passes."""
        if wait < 0:
            raise InvalidArgument.single("wait", "must not be negative")
        already = {(ref.job_id, ref.attempt) for ref in canceling}
        with self._notifier.subscribe(agent_topic(agent_id)) as sub:
            now = self._now()
            result = HeartbeatResult(lease_expires=now + self._settings.lease_ttl)
            async with self._store.transaction(durable=False) as tx:
                stored_agent = await self._agent(tx, agent_id)
                agent = stored_agent.agent
                stored_agent.last_heartbeat = now
                agent.last_heartbeat_time.CopyFrom(timestamp(now))
                if agent.state == agent_pb2.AGENT_STATE_OFFLINE:
                    agent.state = agent_pb2.AGENT_STATE_ACTIVE
                await tx.put_agent(stored_agent)
                held = await tx.jobs_of_agent(agent_id)
                held_refs = {(s.job.id, s.job.attempt) for s in held}
                # Only the attempts the agent says it runs: a predecessor's (the agent restarted
                # under the same name) or a claim whose answer was lost must lapse, not live
                # on, even when the agent still runs an older attempt of the same job.
                listed = {(r.job_id, r.attempt) for r in running}
                await tx.renew_leases(
                    agent_id, result.lease_expires, sorted(j for j, _ in held_refs & listed)
                )
            result.lost = [
                r
                for r in running
                if (r.job_id, r.attempt) not in held_refs
                and not await self._ended_by(r, self.actor(agent))
            ]
            result.draining = agent.state == agent_pb2.AGENT_STATE_DRAINING
            deadline = time.monotonic() + wait
            while True:
                result.cancel = [
                    agent_pb2.CancelOrder(
                        job_id=s.job.id,
                        attempt=s.job.attempt,
                        reason=f"canceled by {s.job.canceled_by}",
                    )
                    for s in held
                    if s.job.cancel_requested and (s.job.id, s.job.attempt) not in already
                ]
                remaining = deadline - time.monotonic()
                if result.cancel or result.lost or remaining <= 0:
                    return result
                await sub.wait(min(remaining, self._settings.recheck_interval))
                sub.clear()  # before the re-read, so a publish during it is not lost
                # Re-read: a job claimed during this poll may be the one being cancelled.
                held = await self._store.jobs_of_agent(agent_id)
                current = await self._store.get_agent(agent_id)
                if current is None:
                    raise _agent_not_found(agent_id)
                result.draining = current.agent.state == agent_pb2.AGENT_STATE_DRAINING
                if result.draining:
                    return result

    async def _ended_by(self, ref: agent_pb2.AttemptRef, actor: str) -> bool:
        """Whether the attempt ended with its agent's own report: one the agent listed as
        running while its CompleteJob was on the way is not lost (the agent knows), and must
        not cut the long poll short at every job a busy agent finishes."""
        stored = await self._store.get_job(ref.job_id)
        if stored is None or stored.job.attempt != ref.attempt or not stored.job.history:
            return False
        last = stored.job.history[-1]  # its outcome, or the retry or hand-back it asked for
        return (
            stored.job.state not in ACTIVE_STATES
            and last.actor == actor
            and last.attempt == ref.attempt
        )

    async def _fenced(self, tx: Transaction, fence: Fence) -> StoredJob:
        """The job if ``fence`` names its current attempt; FAILED_PRECONDITION otherwise."""
        if not fence.job_id:
            raise InvalidArgument.single("job_id", "is required")
        return _check_fence(await tx.get_job(fence.job_id), fence)

    async def update_status(
        self,
        fence: Fence,
        state: int,
        message: str,
        reject: bool,
        passed: dict[int, float] | None = None,
    ) -> job_pb2.Job:
        """VALIDATING -> RUNNING -> UPLOADING, or a rejection back to the queue.

        ``passed`` maps VALIDATING and RUNNING to when the attempt entered them, for states
        it did not report (see ``_catch_up``); the reported state's own time, if given there.
        """
        limits = self._settings.limits
        if len(message) > limits.max_reason_chars:
            raise InvalidArgument.single("message", f"is over {limits.max_reason_chars} characters")
        if not reject and state not in AGENT_UPDATE_STATES:
            raise InvalidArgument.single(
                "state", "must be VALIDATING, RUNNING or UPLOADING", reason="INVALID_STATE"
            )
        now = self._now()
        async with self._store.transaction(durable=False) as tx:
            stored = await self._fenced(tx, fence)
            job = stored.job
            actor = await self._agent_actor(tx, job.agent_id)
            if reject:
                if job.state not in (job_pb2.JOB_STATE_CLAIMED, job_pb2.JOB_STATE_VALIDATING):
                    raise FailedPrecondition(
                        f"job {job.id} is {S.Name(job.state)}; only a job being validated can "
                        "be rejected",
                        reason="CANNOT_REJECT",
                    )
                if job.cancel_requested:  # the cancel wins: the job must not run elsewhere
                    await self._cancel_now(tx, stored, now=now, actor=actor)
                    return job
                job.rejections += 1
                why = f"rejected by {actor}: {message or 'no reason given'}"
                if job.rejections >= limits.max_rejections:
                    await change_state(
                        tx,
                        stored,
                        job_pb2.JOB_STATE_FAILED,
                        now=now,
                        message=f"{why} (rejected {job.rejections} times; no agent can run it)",
                        actor=actor,
                    )
                    return job
                await self._requeue(tx, stored, now=now, message=why, actor=actor)
                return job
            if job.state == state:
                return job  # a repeat is harmless
            passed = passed or {}
            caught_up = self._catch_up(stored, passed, now=now, actor=actor, until=state)
            if job.state not in AGENT_UPDATE_STATES[state]:
                raise FailedPrecondition(
                    f"job {job.id} is {S.Name(job.state)}; it cannot move to {S.Name(state)}",
                    reason="INVALID_TRANSITION",
                )
            at = _clamped(job, passed[state], now) if state in passed else now
            self._entering(stored, state, at)
            await record_events(tx, caught_up)
            await change_state(
                tx, stored, state, now=at, message=message or _state_word(state), actor=actor
            )
        return job

    def _entering(self, stored: StoredJob, state: int, at: float) -> None:
        """What entering ``state`` at ``at`` sets besides the status: RUNNING starts the
        server's clock on the job's timeout."""
        if state == job_pb2.JOB_STATE_RUNNING and stored.job.spec.HasField("timeout"):
            timeout = stored.job.spec.timeout.ToTimedelta().total_seconds()
            stored.deadline = at + timeout + self._settings.timeout_grace

    def _catch_up(
        self, stored: StoredJob, passed: dict[int, float], *, now: float, actor: str, until: int
    ) -> list[tuple[StoredJob, job_pb2.JobEvent]]:
        """Applies the statuses an attempt went through without reporting them (VALIDATING,
        then RUNNING, those before ``until``) at the times its agent gives; their events, to
        record before the reported change's.

        A short run reports them with its next report instead of one call each: the history
        is the same, with the agent's times, and the server is spared a write per status.
        """
        events: list[tuple[StoredJob, job_pb2.JobEvent]] = []
        changed = job_pb2.JOB_EVENT_TYPE_STATE_CHANGED
        for state in (job_pb2.JOB_STATE_VALIDATING, job_pb2.JOB_STATE_RUNNING):
            if state == until:
                break
            if state not in passed or stored.job.state not in AGENT_UPDATE_STATES[state]:
                continue
            at = _clamped(stored.job, passed[state], now)
            word = _state_word(state)
            self._entering(stored, state, at)
            apply_state(stored, state, now=at, message=word, actor=actor)
            events.append((stored, state_event(stored, changed, now=at, message=word, actor=actor)))
        return events

    async def push_log(self, fence: Fence, chunk: job_pb2.LogChunk) -> tuple[bool, int, int]:
        """Stores one chunk unless already stored; (accepted, stdout_size, stderr_size)."""
        limits = self._settings.limits
        violations = check_enum_values([chunk.stream], job_pb2.LogStream, "chunk.stream")
        if violations:
            raise InvalidArgument(violations)
        if chunk.offset < 0:
            raise InvalidArgument.single("chunk.offset", "must not be negative")
        if len(chunk.data) > limits.max_log_chunk_bytes:
            raise InvalidArgument.single(
                "chunk.data", f"is over {limits.max_log_chunk_bytes} bytes"
            )
        async with self._store.transaction(durable=False) as tx:
            await self._fenced(tx, fence)
            result = await tx.append_log(
                fence.job_id, fence.attempt, chunk.stream, chunk.offset, chunk.data
            )
            if result.accepted:
                tx.topics.add(logs_topic(fence.job_id))
        return result.accepted, result.stdout_size, result.stderr_size

    async def upload_artifact(
        self, header: agent_pb2.ArtifactHeader, chunks: AsyncIterator[bytes]
    ) -> job_pb2.Artifact:
        """Stores an artifact's bytes (digest checked), then records it for the attempt."""
        limits = self._settings.limits
        fence = Fence(header.job_id, header.attempt, header.lease_token)
        violations: list[FieldViolation] = []
        check_relative_path(header.name, "header.name", limits, violations)
        if header.size_bytes < 0 or header.size_bytes > limits.max_artifact_bytes:
            violations.append(
                FieldViolation(
                    "header.size_bytes", f"must be between 0 and {limits.max_artifact_bytes}"
                )
            )
        if not header.digest.startswith("sha256:") or len(header.digest) != 71:
            violations.append(
                FieldViolation("header.digest", 'must be "sha256:" followed by 64 hex digits')
            )
        if violations:
            raise InvalidArgument(violations, reason="INVALID_ARTIFACT")
        async with self._store.transaction(durable=False) as tx:
            await self._fenced(tx, fence)
        digest, size = await self._blobs.put(
            chunks,
            expected_size=header.size_bytes,
            expected_digest=header.digest,
            max_bytes=limits.max_artifact_bytes,
        )
        artifact = job_pb2.Artifact(
            name=header.name,
            digest=digest,
            size_bytes=size,
            attempt=header.attempt,
            create_time=timestamp(self._now()),
        )
        async with self._store.transaction(durable=False) as tx:
            await self._fenced(tx, fence)
            await tx.put_artifact(header.job_id, artifact)
        return artifact

    async def complete(self, outcome: Outcome) -> tuple[bool, job_pb2.Job]:
        """Records the attempt's outcome exactly once; a repeat answers accepted again.

        ``outcome.passed`` maps VALIDATING and RUNNING to when an attempt that did not report
        them entered them: they are recorded at those times first (``_catch_up``).
        """
        (result,) = await self.complete_many([outcome])
        if isinstance(result, DomainError):
            raise result
        return result

    async def complete_many(
        self, outcomes: Sequence[Outcome]
    ) -> list[tuple[bool, job_pb2.Job] | DomainError]:
        """Records several outcomes in one transaction, each taken or refused on its own:
        its result is what :meth:`complete` would return, or the error it would raise.

        A job named twice waits for another transaction, so each sees the one before it.
        """
        results: list[tuple[bool, job_pb2.Job] | DomainError | None] = [None] * len(outcomes)
        todo: list[int] = []
        for i, outcome in enumerate(outcomes):
            try:
                self._check_outcome(outcome)
                todo.append(i)
            except DomainError as error:
                results[i] = error
        while todo:
            now = self._now()
            this_round: list[int] = []
            later: list[int] = []
            named: set[str] = set()
            for i in todo:
                job_id = outcomes[i].fence.job_id
                (later if job_id in named else this_round).append(i)
                named.add(job_id)
            async with self._store.transaction(durable=False) as tx:
                jobs = await tx.get_jobs([outcomes[i].fence.job_id for i in this_round])
                for i in this_round:
                    outcome = outcomes[i]
                    try:
                        stored = jobs.get(outcome.fence.job_id)
                        results[i] = await self._record_outcome(tx, stored, outcome, now)
                    except StoreUnavailable:
                        raise  # the transaction is lost: so is every outcome in it
                    except DomainError as error:  # raised before this outcome wrote anything
                        results[i] = error
            todo = later
        # The followers this commit woke send first, then the agent hears back: its answer
        # is only an acknowledgement, their frames are what clients wait for. Resuming first,
        # the call built and sent its answer before them (one function job at a time, traced:
        # 50-100 us between the commit and the frame with the finished events).
        await asyncio.sleep(0)
        return [r for r in results if r is not None]

    def _check_outcome(self, outcome: Outcome) -> None:
        limits = self._settings.limits
        if outcome.state not in (job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED):
            raise InvalidArgument.single("state", "must be COMPLETED or FAILED")
        if len(outcome.message) > limits.max_reason_chars:
            raise InvalidArgument.single("message", f"is over {limits.max_reason_chars} characters")
        if len(outcome.result_json.encode()) > limits.max_stdin_bytes:
            raise InvalidArgument.single("result_json", f"is over {limits.max_stdin_bytes} bytes")

    async def _record_outcome(
        self, tx: Transaction, stored: StoredJob | None, outcome: Outcome, now: float
    ) -> tuple[bool, job_pb2.Job]:
        """One outcome's writes; every refusal is raised before the first of them."""
        fence, state, exit_code = outcome.fence, outcome.state, outcome.exit_code
        if (
            stored is not None
            and stored.job.attempt == fence.attempt
            and stored.lease_token == fence.lease_token
            and (is_finished(stored.job.state) or stored.job.state == job_pb2.JOB_STATE_PENDING)
        ):
            if stored.job.history and stored.job.history[-1].actor == "server":
                # The server ended this attempt (timeout, lapsed lease): the agent's word
                # came too late and is not the recorded outcome.
                raise FailedPrecondition(
                    f"attempt {fence.attempt} of job {fence.job_id} was already ended by "
                    f"the server: {stored.job.history[-1].message}",
                    reason="ATTEMPT_NOT_ACTIVE",
                )
            # A repeat: this attempt's outcome (or its failure, with a retry queued) is the
            # recorded one.
            return True, stored.job
        stored = _check_fence(stored, fence)
        job = stored.job
        actor = await self._agent_actor(tx, job.agent_id)
        if outcome.passed:
            await record_events(
                tx, self._catch_up(stored, outcome.passed, now=now, actor=actor, until=state)
            )
        if exit_code is not None:
            job.exit_code = exit_code
        else:
            job.ClearField("exit_code")
        job.result_json = outcome.result_json
        if job.cancel_requested:
            await self._cancel_now(tx, stored, now=now, actor=actor, exit_code=exit_code)
        elif state == job_pb2.JOB_STATE_COMPLETED:
            await change_state(
                tx,
                stored,
                job_pb2.JOB_STATE_COMPLETED,
                now=now,
                message=outcome.message or "completed",
                actor=actor,
                exit_code=exit_code,
            )
        else:
            await self._fail_or_retry(
                tx,
                stored,
                now=now,
                message=outcome.message or "failed",
                actor=actor,
                exit_code=exit_code,
                not_retryable=outcome.not_retryable,
            )
        return True, job

    async def release(self, fence: Fence, reason: str) -> job_pb2.Job:
        """Hands an attempt back: queued again at once, not counted as the job's failure."""
        limits = self._settings.limits
        if len(reason) > limits.max_reason_chars:
            raise InvalidArgument.single("reason", f"is over {limits.max_reason_chars} characters")
        now = self._now()
        async with self._store.transaction(durable=False) as tx:
            stored = await self._fenced(tx, fence)
            job = stored.job
            actor = await self._agent_actor(tx, job.agent_id)
            stored.lease_expires = 0.0
            stored.deadline = 0.0
            stored.not_before = 0.0
            if job.cancel_requested:
                await self._cancel_now(tx, stored, now=now, actor=actor)
                return job
            message = f"attempt {job.attempt} released by {actor}" + (
                f": {reason}" if reason else ""
            )
            await self._requeue(tx, stored, now=now, message=message, actor=actor)
        return job

    async def _agent_actor(self, tx: Transaction, agent_id: str) -> str:
        """How the history names an agent. Read in the transaction but not locked: on
        PostgreSQL, locking the agent row after the job row would invert the lock order that
        heartbeats and registrations use (and a read on another connection could wait for a
        pool connection this transaction holds)."""
        name = self._names.get(agent_id)
        if name is None:
            stored = await tx.get_agent(agent_id, lock=False) if agent_id else None
            if stored is None:
                return self.actor(None, agent_id)
            if len(self._names) >= _MAX_CACHED_NAMES:
                self._names.clear()
            name = self._names[agent_id] = stored.agent.name
        return f"agent:{name}"

    async def _cancel_now(
        self,
        tx: Transaction,
        stored: StoredJob,
        *,
        now: float,
        actor: str,
        note: str = "",
        exit_code: int | None = None,
    ) -> None:
        """Ends a job whose cancel was requested, once its attempt is over."""
        await change_state(
            tx,
            stored,
            job_pb2.JOB_STATE_CANCELED,
            now=now,
            message=f"canceled by {stored.job.canceled_by}{note}",
            actor=actor,
            exit_code=exit_code,
        )

    async def _requeue(
        self, tx: Transaction, stored: StoredJob, *, now: float, message: str, actor: str
    ) -> None:
        """Back to PENDING at once, as if never claimed: the attempt is not the job's failure.

        The lease token is cleared, so nothing more from that attempt is accepted.
        """
        stored.lease_expires = 0.0
        stored.deadline = 0.0
        stored.not_before = 0.0
        await change_state(
            tx, stored, job_pb2.JOB_STATE_PENDING, now=now, message=message, actor=actor
        )
        stored.job.agent_id = ""
        stored.lease_token = ""
        await tx.update_job(stored)
        tx.topics.add(queue_topic(stored.job.spec.queue))

    async def _fail_or_retry(
        self,
        tx: Transaction,
        stored: StoredJob,
        *,
        now: float,
        message: str,
        actor: str,
        exit_code: int | None,
        not_retryable: bool = False,
    ) -> None:
        job = stored.job
        job.failures += 1
        if should_retry(job.spec, job.failures, exit_code, not_retryable=not_retryable):
            delay = next_backoff(job.spec.retry_policy, job.failures)
            # The token is kept so that a repeated CompleteJob of this attempt stays harmless.
            stored.lease_expires = 0.0
            stored.deadline = 0.0
            stored.not_before = now + delay
            await change_state(
                tx,
                stored,
                job_pb2.JOB_STATE_PENDING,
                now=now,
                message=f"attempt {job.attempt} failed ({message}); retrying"
                + (f" in {delay:.1f}s" if delay else ""),
                actor=actor,
                exit_code=exit_code,
            )
            job.agent_id = ""  # after the status, which names the agent that failed
            await tx.update_job(stored)
            tx.topics.add(queue_topic(job.spec.queue))
        else:
            await change_state(
                tx,
                stored,
                job_pb2.JOB_STATE_FAILED,
                now=now,
                message=message,
                actor=actor,
                exit_code=exit_code,
            )

    async def list_agents(self, after_name: str, limit: int) -> list[agent_pb2.Agent]:
        """Agents by name, with their running attempts; silent ones shown OFFLINE."""
        now = self._now()
        agents = []
        for stored in await self._store.list_agents(after_name, limit):
            agent = stored.agent
            if (
                agent.state == agent_pb2.AGENT_STATE_ACTIVE
                and now - stored.last_heartbeat > self._settings.lease_ttl
            ):
                agent.state = agent_pb2.AGENT_STATE_OFFLINE
            held = await self._store.jobs_of_agent(agent.id)
            agent.running.extend(
                agent_pb2.AttemptRef(job_id=s.job.id, attempt=s.job.attempt) for s in held
            )
            agents.append(agent)
        return agents

    async def drain(self, agent_id: str) -> agent_pb2.Agent:
        async with self._store.transaction() as tx:
            stored = await self._agent(tx, agent_id)
            stored.agent.state = agent_pb2.AGENT_STATE_DRAINING
            await tx.put_agent(stored)
            tx.topics.add(agent_topic(agent_id))
        return stored.agent

    async def recover(self) -> int:
        """At start-up: gives every held lease (and deadline) at least one ttl from now.

        A server that was down longer than a lease must not fail attempts whose agents kept
        running and are about to reconnect; those that really died lapse one ttl later.
        """
        async with self._store.transaction(durable=False) as tx:
            return await tx.extend_leases(self._now() + self._settings.lease_ttl)

    async def sweep(self) -> int:
        """Ends or requeues attempts whose lease lapsed or whose deadline passed."""
        now = self._now()
        count = 0
        async with self._store.transaction(durable=False) as tx:
            for stored in await tx.lapsed_jobs(now, 100):
                job = stored.job
                count += 1
                agent_id = job.agent_id
                if stored.deadline and stored.deadline < now:
                    timeout = job.spec.timeout.ToTimedelta().total_seconds()
                    reason = f"timeout after {timeout:g}s (the agent did not report it)"
                    await self._fail_or_retry(
                        tx, stored, now=now, message=reason, actor="server", exit_code=None
                    )
                else:
                    await record_event(
                        tx,
                        stored,
                        job_pb2.JOB_EVENT_TYPE_LEASE_LOST,
                        now=now,
                        message=f"lease of attempt {job.attempt} lapsed",
                        actor="server",
                    )
                    if job.cancel_requested:
                        await self._cancel_now(
                            tx, stored, now=now, actor="server", note=" (its agent went silent)"
                        )
                    elif job.state == job_pb2.JOB_STATE_CLAIMED:
                        # Never started (the claim's answer may have died with a replica):
                        # queued again like a hand-back, not counted against the retries.
                        await self._requeue(
                            tx,
                            stored,
                            now=now,
                            message=f"attempt {job.attempt} was claimed but never started; "
                            "queued again",
                            actor="server",
                        )
                    else:
                        await self._fail_or_retry(
                            tx,
                            stored,
                            now=now,
                            message=f"lease of attempt {job.attempt} lapsed",
                            actor="server",
                            exit_code=None,
                        )
                if agent_id:
                    tx.topics.add(agent_topic(agent_id))
        if count:
            log.info("sweeper ended or requeued %d lapsed attempts", count)
        return count
