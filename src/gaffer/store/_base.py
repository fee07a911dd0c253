"""The store interface. SQL lives only behind it; SQLite and PostgreSQL implement it alike.

Writes happen in a transaction (``async with store.transaction() as tx``) that is committed
before the caller answers anyone; the topics a transaction touched are published to the
notifier only after the commit, so a woken reader always finds what woke it.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from gaffer.v1 import agent_service_pb2, job_pb2

log = logging.getLogger(__name__)


@dataclass
class StoredJob:
    """A job as stored: the public message plus what only the server sees."""

    job: job_pb2.Job
    tenant: str
    seq: int = 0
    lease_token: str = ""
    lease_expires: float = 0.0
    not_before: float = 0.0
    # When the server fails the attempt if the agent said nothing (timeout plus grace).
    deadline: float = 0.0


@dataclass
class StoredAgent:
    agent: agent_service_pb2.Agent
    last_heartbeat: float = 0.0


@dataclass(frozen=True)
class JobQuery:
    """A filter on jobs, shared by ListJobs and event streams over many jobs."""

    states: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    exclude_labels: tuple[tuple[str, str], ...] = ()
    created_after: float | None = None
    created_before: float | None = None
    queue: str | None = None


@dataclass(frozen=True)
class LogAppend:
    """What happened to one pushed chunk."""

    accepted: bool
    stdout_size: int
    stderr_size: int


@dataclass
class Topics:
    """Notification topics a transaction touched, published after it commits; and what
    waits to hear whether it committed (see Transaction.when_settled)."""

    names: set[str] = field(default_factory=set)
    settle_callbacks: list[Callable[[bool], None]] = field(default_factory=list)

    def add(self, name: str) -> None:
        self.names.add(name)

    def settle(self, committed: bool) -> None:
        """Tells the callbacks, once: the store calls it right after the commit (before the
        topics are published), or once it knows the transaction will not commit."""
        callbacks, self.settle_callbacks = self.settle_callbacks, []
        for callback in callbacks:
            try:
                callback(committed)
            except Exception:
                log.exception("a transaction's settle callback failed")


def job_topic(job_id: str) -> str:
    return f"job:{job_id}"


def logs_topic(job_id: str) -> str:
    return f"logs:{job_id}"


def queue_topic(queue: str) -> str:
    return f"queue:{queue}"


def agent_topic(agent_id: str) -> str:
    return f"agent:{agent_id}"


#: What queue_topic and agent_topic begin with: topics of work to take (claims wait on a
#: queue's, an agent's heartbeat on its own), which a commit wakes first.
WORK_TOPIC_PREFIXES = ("queue:", "agent:")


EVENTS_TOPIC = "events"


class Transaction(abc.ABC):
    """One write transaction; every method runs inside it."""

    topics: Topics

    def when_settled(self, callback: Callable[[bool], None]) -> None:
        """Calls ``callback(True)`` once this transaction committed, before anyone is woken
        by it; ``callback(False)`` once it is known not to commit (its body or its commit
        failed). Called once, on the loop."""
        self.topics.settle_callbacks.append(callback)

    @abc.abstractmethod
    async def insert_job(self, stored: StoredJob) -> StoredJob:
        """Stores a new job; returns it with a ``seq`` that names it in this transaction (on
        PostgreSQL a provisional one: jobs, like events, are numbered at commit)."""

    @abc.abstractmethod
    async def find_request(self, tenant: str, request_id: str) -> StoredJob | None:
        """The job a tenant submitted with ``request_id``, if any."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> StoredJob | None:
        """A job of any tenant, read for update."""

    async def get_jobs(self, job_ids: Sequence[str]) -> dict[str, StoredJob]:
        """Several jobs read for update, by id (those that exist), locked in id order so
        that two transactions locking some of the same jobs cannot deadlock."""
        found: dict[str, StoredJob] = {}
        for job_id in sorted(set(job_ids)):
            stored = await self.get_job(job_id)
            if stored is not None:
                found[job_id] = stored
        return found

    @abc.abstractmethod
    async def update_job(self, stored: StoredJob) -> None:
        """Writes back a job read in this transaction."""

    @abc.abstractmethod
    async def append_event(self, tenant: str, event: job_pb2.JobEvent) -> None:
        """Appends an event. Its sequence number is known once committed (read it back):
        PostgreSQL numbers events at commit, so that they commit in number order."""

    async def insert_job_with_event(self, stored: StoredJob, event: job_pb2.JobEvent) -> StoredJob:
        """insert_job, then append_event of its first event (a store may do both at once)."""
        await self.insert_job(stored)
        await self.append_event(stored.tenant, event)
        return stored

    async def write_change(self, stored: StoredJob, event: job_pb2.JobEvent) -> None:
        """Writes back a job read in this transaction and appends the event of its change
        (a store may do both in one statement)."""
        await self.update_job(stored)
        await self.append_event(stored.tenant, event)

    @abc.abstractmethod
    async def append_events(self, events: Sequence[tuple[str, job_pb2.JobEvent]]) -> None:
        """Appends (tenant, event) pairs, numbered in this order."""

    @abc.abstractmethod
    async def pending_jobs(self, queues: Sequence[str], now: float, limit: int) -> list[StoredJob]:
        """PENDING jobs of these queues that may run now, highest priority then oldest first."""

    @abc.abstractmethod
    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        """Jobs whose current attempt the agent holds."""

    @abc.abstractmethod
    async def count_held(self, agent_id: str) -> int:
        """How many jobs' current attempts the agent holds."""

    @abc.abstractmethod
    async def renew_leases(self, agent_id: str, expires: float, job_ids: Sequence[str]) -> None:
        """Extends the agent's leases on these jobs (those whose current attempt it listed as
        running: the caller checks the attempts, read in the same transaction)."""

    @abc.abstractmethod
    async def extend_leases(self, at_least: float) -> int:
        """Moves every held lease and deadline earlier than ``at_least`` to it; returns how many."""

    @abc.abstractmethod
    async def lapsed_jobs(self, now: float, limit: int) -> list[StoredJob]:
        """Jobs held under a lease that lapsed, or past their server-side deadline."""

    @abc.abstractmethod
    async def get_agent(self, agent_id: str, *, lock: bool = True) -> StoredAgent | None:
        """An agent, locked for update unless ``lock`` is False (a read of its name)."""

    @abc.abstractmethod
    async def get_agent_by_name(self, name: str) -> StoredAgent | None: ...

    @abc.abstractmethod
    async def put_agent(self, stored: StoredAgent) -> None:
        """Inserts or replaces an agent."""

    @abc.abstractmethod
    async def append_log(
        self, job_id: str, attempt: int, stream: int, offset: int, data: bytes
    ) -> LogAppend:
        """Stores a chunk unless those bytes are already stored; refuses a gap."""

    @abc.abstractmethod
    async def put_artifact(self, job_id: str, artifact: job_pb2.Artifact) -> None:
        """Records an artifact (replacing one of the same name)."""


class Store(abc.ABC):
    """Durable state of a Gaffer server."""

    #: Reads answer at once on the loop (an embedded store): what a commit wrote can be read
    #: in the commit's own callbacks (see tail_events_now).
    reads_at_once = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connects and applies migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raises StoreUnavailable when the store cannot answer."""

    @abc.abstractmethod
    def transaction(self, *, durable: bool = True) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction, committed before the context exits.

        ``durable=False`` lets the commit skip waiting for the disk (it survives a crash of
        the process, not of the machine): for agents' reports, which the lease and retry
        machinery reconciles if lost, never for what a client is told was stored.
        """

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> StoredJob | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, tenant: str, query: JobQuery, *, newest_first: bool, after_seq: int, limit: int
    ) -> list[StoredJob]:
        """A page of jobs in ``seq`` order, strictly after (or before, newest first) a cursor."""

    @abc.abstractmethod
    async def read_events(
        self,
        tenant: str,
        *,
        after_seq: int,
        limit: int,
        job_id: str | None = None,
        query: JobQuery | None = None,
    ) -> list[job_pb2.JobEvent]:
        """Events after a sequence number, oldest first."""

    @abc.abstractmethod
    async def tail_events(
        self, *, after_seq: int, limit: int
    ) -> list[tuple[str, job_pb2.JobEvent]]:
        """Events of every tenant after a sequence number, oldest first, with their tenant."""

    def tail_events_now(self, *, after_seq: int, limit: int) -> list[tuple[str, job_pb2.JobEvent]]:
        """tail_events, done before returning (only where ``reads_at_once``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read without waiting")

    @abc.abstractmethod
    async def last_event_seq(self) -> int: ...

    @abc.abstractmethod
    async def read_logs(
        self,
        job_id: str,
        attempt: int,
        offsets: dict[int, int],
        max_bytes: int,
    ) -> list[job_pb2.LogChunk]:
        """Chunks of the given streams from their offsets, in the order they were written."""

    @abc.abstractmethod
    async def log_sizes(self, job_id: str, attempt: int) -> dict[int, int]:
        """Bytes stored per stream for an attempt."""

    @abc.abstractmethod
    async def tail_offset(self, job_id: str, attempt: int, stream: int, lines: int) -> int:
        """The offset where the last ``lines`` lines of a stream start."""

    @abc.abstractmethod
    async def list_artifacts(self, job_id: str) -> list[job_pb2.Artifact]: ...

    @abc.abstractmethod
    async def list_agents(self, after_name: str, limit: int) -> list[StoredAgent]: ...

    @abc.abstractmethod
    async def get_agent(self, agent_id: str) -> StoredAgent | None: ...

    @abc.abstractmethod
    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        """Jobs whose current attempt the agent holds (a read, outside any transaction)."""

    @abc.abstractmethod
    async def any_pending(self, queues: Sequence[str], now: float) -> bool:
        """Whether a job waits in one of ``queues`` (a read, outside any transaction): a
        claim that would find nothing skips its write transaction."""

    @property
    @abc.abstractmethod
    def blob_dir(self) -> Path:
        """Where artifact bytes live, by digest."""
