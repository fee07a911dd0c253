"""The shared store: PostgreSQL through asyncpg, for replicas that share one database.

It behaves as SqliteStore does; where SQLite gets that for free from its single writer,
PostgreSQL needs locks, chosen so that lock waits always go job -> agent -> sequence counter
and never back (so replicas do not deadlock):

- ``tx.get_job``, ``tx.get_agent`` read ``FOR UPDATE``; ``pending_jobs`` and ``lapsed_jobs``
  read ``FOR UPDATE SKIP LOCKED`` (two replicas never claim or sweep the same job);
  ``jobs_of_agent`` is a plain read and ``renew_leases`` skips jobs another transaction holds
  (that write keeps the lease it read; the next heartbeat renews it).
- Lookups by natural key (``find_request``, ``get_agent_by_name``) first take a transaction
  advisory lock on the key, so find-then-insert is race-free across replicas; the unique
  index stays as the backstop.
- ``seq`` of jobs and events is taken at commit from the single row of ``sequences``, by
  deferred triggers (schema migration 3); until then a row has a provisional negative number
  that only its own transaction sees. Why a counter row rather than a sequence: a sequence
  hands out numbers at once but they commit in any order (A takes 10, B takes 11 and commits
  first; a follower that saw 11 and resumes after it would miss 10 forever). Updating the one
  row of ``sequences`` takes its row lock until commit, so the next writer gets its number
  only after the previous one has committed: numbers commit in order, a reader that sees
  ``n`` sees everything below it, and a rollback leaves no hole. Numbering at commit keeps
  that lock for the commit alone, not across the round trips between a transaction's first
  insert and its COMMIT; commits are asynchronous (see ``transaction``), so it is not held
  through a WAL flush either. Jobs and events share the row: a transaction never waits for
  two counters.
- Topics are sent with ``pg_notify`` after the commit and published locally, as in SQLite.

Artifacts: bytes stay on disk under ``blob_dir`` (a directory every replica mounts), because
the core streams them from a path (``BlobStore.path_of``) and artifacts may be far larger than
is comfortable in bytea rows; moving them into the database needs an async blob interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from gaffer.domain import AlreadyExists, StoreUnavailable
from gaffer.store._base import (
    JobQuery,
    LogAppend,
    Store,
    StoredAgent,
    StoredJob,
    Topics,
    Transaction,
)
from gaffer.store._log_rules import TailScan, log_append, new_bytes, trimmed_chunks
from gaffer.store._notifier import Notifier
from gaffer.store._pg_notify import CONNECTION_ERRORS, Listener, encode_payloads
from gaffer.store._postgres_schema import MIGRATIONS
from gaffer.store._rows import JOB_COLUMNS as _JOB_COLUMNS
from gaffer.store._rows import agent_from_row as _agent_from_row
from gaffer.store._rows import event_from_row, job_changes, job_row
from gaffer.store._rows import job_from_row as _job_from_row
from gaffer.v1 import job_pb2

log = logging.getLogger(__name__)

# Classes of advisory locks (the first of the two int4 keys); the second is a hash of the key.
_LOCK_MIGRATE = 0x67610001
_LOCK_REQUEST = 0x67610002
_LOCK_AGENT_NAME = 0x67610003
_LOCK_LOG = 0x67610004

_FAR = 2**62


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Turns asyncpg and socket errors into StoreUnavailable; domain errors pass through."""
    try:
        yield
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise StoreUnavailable(
            f"PostgreSQL store: {what} lost a race with another transaction ({exc}); retry",
            reason="STORE_CONFLICT",
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"PostgreSQL store is unavailable ({what}): {exc}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Releasing a connection to the pool runs no reset query (a round trip per transaction):
    our sessions keep no state between transactions (SET LOCAL only, transaction-scoped
    advisory locks, LISTEN on a connection of its own). asyncpg still rolls back a
    transaction left open, before this."""


class _Args:
    """Collects statement arguments; each call returns the next ``$n`` placeholder."""

    def __init__(self, *initial: Any) -> None:
        self.values: list[Any] = list(initial)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _label_key(key: str) -> str:
    # SQLite strips double quotes from keys in its JSON path; do the same.
    return key.replace('"', "")


def filter_sql(query: JobQuery, alias: str, arg: _Args) -> str:
    """SQL conditions (joined by AND, possibly empty) for a JobQuery; arguments go to ``arg``."""
    parts: list[str] = []
    if query.states:
        parts.append(f"{alias}.state = ANY({arg(list(query.states))}::integer[])")
    for key, value in query.labels:
        parts.append(f"{alias}.labels ->> {arg(_label_key(key))} = {arg(value)}")
    for key, value in query.exclude_labels:
        parts.append(f"({alias}.labels ->> {arg(_label_key(key))}) IS DISTINCT FROM {arg(value)}")
    if query.created_after is not None:
        parts.append(f"{alias}.created_at >= {arg(float(query.created_after))}")
    if query.created_before is not None:
        parts.append(f"{alias}.created_at < {arg(float(query.created_before))}")
    if query.queue is not None:
        parts.append(f"{alias}.queue = {arg(query.queue)}")
    return " AND ".join(parts)


# By id, not seq: a job inserted in this transaction has a provisional seq.
_UPDATE_JOBS = (
    "UPDATE jobs SET state = u.state, agent_id = u.agent_id, lease_token = u.lease_token,"
    " lease_expires = u.lease_expires, not_before = u.not_before, deadline = u.deadline,"
    " body = u.body FROM unnest($1::integer[], $2::text[], $3::text[], $4::float8[],"
    " $5::float8[], $6::float8[], $7::bytea[], $8::text[])"
    " AS u(state, agent_id, lease_token, lease_expires, not_before, deadline, body, id)"
    " WHERE jobs.id = u.id"
)
_INSERT_EVENTS = (
    "INSERT INTO events (job_id, tenant, body)"
    " SELECT e.job_id, e.tenant, e.body"
    " FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY"
    " AS e(job_id, tenant, body, n) ORDER BY e.n"
)


class _PostgresTransaction(Transaction):
    """Job updates and events are held back and written together: updates before the next
    statement (so every read sees them), events at commit (nothing reads them before). A
    transaction that changes many jobs costs two statements for them, not two per job."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.topics = Topics()
        self._updates: dict[str, tuple[Any, ...]] = {}  # job id -> (*job_changes, id)
        self._events: list[tuple[str, str, bytes]] = []  # (job id, tenant, body), in order

    async def _write_updates(self) -> None:
        if not self._updates:
            return
        rows = list(self._updates.values())
        self._updates.clear()
        with _mapped("update jobs"):
            await self._conn.execute(
                _UPDATE_JOBS, *(list(column) for column in zip(*rows, strict=True))
            )

    async def _write_events(self) -> None:
        if not self._events:
            return
        job_ids, tenants, bodies = (list(column) for column in zip(*self._events, strict=True))
        self._events.clear()
        with _mapped("insert events"):
            await self._conn.execute(_INSERT_EVENTS, job_ids, tenants, bodies)

    async def flush(self) -> None:
        """Writes whatever is held back; the store calls it before COMMIT."""
        await self._write_updates()
        await self._write_events()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._write_updates()
        with _mapped("query"):
            return list(await self._conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        await self._write_updates()
        with _mapped("query"):
            return await self._conn.fetchrow(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        await self._write_updates()
        with _mapped("statement"):
            return str(await self._conn.execute(sql, *args))

    async def _lock_key(self, lock_class: int, key: str) -> None:
        """Holds a lock on ``key`` until the transaction ends (its own statement, so that the
        next statement's snapshot sees whatever the previous holder committed)."""
        await self._execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", lock_class, key)

    async def insert_job(self, stored: StoredJob) -> StoredJob:
        return await self._insert(stored, None)

    async def insert_job_with_event(self, stored: StoredJob, event: job_pb2.JobEvent) -> StoredJob:
        return await self._insert(stored, event)

    async def _insert(self, stored: StoredJob, event: job_pb2.JobEvent | None) -> StoredJob:
        """The job's row, and its first event in the same statement when there is one."""
        args = job_row(stored)
        await self.flush()
        with _mapped("insert a job"):
            try:
                insert = (
                    "INSERT INTO jobs (id, tenant, request_id, queue, priority, state,"
                    " labels, created_at, agent_id, lease_token, lease_expires, not_before,"
                    " deadline, spec, body) VALUES ($1, $2, $3, $4, $5, $6,"
                    " $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING seq"
                )
                if event is None:
                    seq = await self._conn.fetchval(insert, *args)
                else:
                    seq = await self._conn.fetchval(
                        f"WITH j AS ({insert}), e AS (INSERT INTO events (job_id, tenant, body)"
                        " VALUES ($1, $2, $16)) SELECT seq FROM j",
                        *args,
                        event.SerializeToString(),
                    )
            except asyncpg.UniqueViolationError as exc:
                # Only when the caller skipped find_request, which locks the request id.
                what = "request_id" if exc.constraint_name == "jobs_request" else "id"
                raise AlreadyExists(
                    f"a job with this {what} already exists", reason="JOB_ALREADY_EXISTS"
                ) from exc
        stored.seq = int(seq)
        return stored

    async def find_request(self, tenant: str, request_id: str) -> StoredJob | None:
        await self._lock_key(_LOCK_REQUEST, f"{tenant}\x1f{request_id}")
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND request_id = $2",
            tenant,
            request_id,
        )
        return _job_from_row(row) if row else None

    async def get_job(self, job_id: str) -> StoredJob | None:
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE", job_id
        )
        return _job_from_row(row) if row else None

    async def get_jobs(self, job_ids: Sequence[str]) -> dict[str, StoredJob]:
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
            sorted(set(job_ids)),
        )
        return {stored.job.id: stored for stored in map(_job_from_row, rows)}

    async def update_job(self, stored: StoredJob) -> None:
        self._updates[stored.job.id] = (*job_changes(stored), stored.job.id)

    async def append_event(self, tenant: str, event: job_pb2.JobEvent) -> None:
        self._events.append((event.job_id, tenant, event.SerializeToString()))

    async def append_events(self, events: Sequence[tuple[str, job_pb2.JobEvent]]) -> None:
        self._events.extend((e.job_id, tenant, e.SerializeToString()) for tenant, e in events)

    async def pending_jobs(self, queues: Sequence[str], now: float, limit: int) -> list[StoredJob]:
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 1 AND queue = ANY($1::text[])"
            " AND not_before <= $2 ORDER BY priority DESC, seq LIMIT $3 FOR UPDATE SKIP LOCKED",
            list(queues),
            now,
            limit,
        )
        return [_job_from_row(r) for r in rows]

    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE agent_id = $1 AND state IN (2,3,4,5)"
            " ORDER BY seq",
            agent_id,
        )
        return [_job_from_row(r) for r in rows]

    async def count_held(self, agent_id: str) -> int:
        rows = await self._fetch(
            "SELECT COUNT(*) FROM jobs WHERE agent_id = $1 AND state IN (2,3,4,5)", agent_id
        )
        return int(rows[0][0])

    async def renew_leases(self, agent_id: str, expires: float, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        await self._execute(
            "UPDATE jobs SET lease_expires = $1 WHERE seq IN (SELECT seq FROM jobs"
            " WHERE agent_id = $2 AND state IN (2,3,4,5) AND id = ANY($3::text[])"
            " FOR UPDATE SKIP LOCKED)",
            expires,
            agent_id,
            list(job_ids),
        )

    async def extend_leases(self, at_least: float) -> int:
        status = await self._execute(
            "UPDATE jobs SET lease_expires = GREATEST(lease_expires, $1),"
            " deadline = CASE WHEN deadline > 0 THEN GREATEST(deadline, $1) ELSE 0 END"
            " WHERE state IN (2,3,4,5)"
            " AND (lease_expires < $1 OR (deadline > 0 AND deadline < $1))",
            at_least,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def lapsed_jobs(self, now: float, limit: int) -> list[StoredJob]:
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN (2,3,4,5) AND"
            " ((lease_expires > 0 AND lease_expires < $1) OR (deadline > 0 AND deadline < $1))"
            " ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [_job_from_row(r) for r in rows]

    async def get_agent(self, agent_id: str, *, lock: bool = True) -> StoredAgent | None:
        row = await self._fetchrow(
            "SELECT last_heartbeat, body FROM agents WHERE id = $1"
            + (" FOR UPDATE" if lock else ""),
            agent_id,
        )
        return _agent_from_row(row) if row else None

    async def get_agent_by_name(self, name: str) -> StoredAgent | None:
        await self._lock_key(_LOCK_AGENT_NAME, name)
        row = await self._fetchrow(
            "SELECT last_heartbeat, body FROM agents WHERE name = $1 FOR UPDATE", name
        )
        return _agent_from_row(row) if row else None

    async def put_agent(self, stored: StoredAgent) -> None:
        agent = stored.agent
        await self._execute(
            "INSERT INTO agents (id, name, last_heartbeat, body) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
            " last_heartbeat = excluded.last_heartbeat, body = excluded.body",
            agent.id,
            agent.name,
            stored.last_heartbeat,
            agent.SerializeToString(),
        )

    async def append_log(
        self, job_id: str, attempt: int, stream: int, offset: int, data: bytes
    ) -> LogAppend:
        # One writer per attempt at a time: sizes read here stay true until commit.
        await self._lock_key(_LOCK_LOG, f"{job_id}\x1f{attempt}")
        with _mapped("read log sizes"):
            sizes = await _log_sizes(self._conn, job_id, attempt)
        size = sizes.get(stream, 0)
        fresh = new_bytes(stream, size, offset, data)
        end = offset + len(data)
        if fresh:
            await self._execute(
                'INSERT INTO log_chunks (job_id, attempt, stream, "offset", data)'
                " VALUES ($1, $2, $3, $4, $5)",
                job_id,
                attempt,
                stream,
                size,
                fresh,
            )
            await self._execute(
                "INSERT INTO log_sizes (job_id, attempt, stream, size) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (job_id, attempt, stream) DO UPDATE SET size = excluded.size",
                job_id,
                attempt,
                stream,
                end,
            )
            sizes[stream] = end
        return log_append(sizes, accepted=bool(fresh))

    async def put_artifact(self, job_id: str, artifact: job_pb2.Artifact) -> None:
        await self._execute(
            "INSERT INTO artifacts (job_id, name, body) VALUES ($1, $2, $3)"
            " ON CONFLICT (job_id, name) DO UPDATE SET body = excluded.body",
            job_id,
            artifact.name,
            artifact.SerializeToString(),
        )


async def _log_sizes(conn: Any, job_id: str, attempt: int) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT stream, size FROM log_sizes WHERE job_id = $1 AND attempt = $2", job_id, attempt
    )
    return {int(stream): int(size) for stream, size in rows}


class PostgresStore(Store):
    """PostgreSQL at ``dsn`` (``postgresql://user@host:port/db``), shared by every replica.

    Args:
        dsn: an asyncpg connection string; extra query parameters such as
            ``?search_path=gaffer`` become server settings.
        notifier: the replica's local notifier; topics of committed transactions are published
            to it, and with ``notify`` so are those other replicas commit.
        blob_dir: where artifact bytes live; a directory every replica shares.
        notify: send and receive cross-replica wake-ups with LISTEN/NOTIFY. False (a test
            switch) sends nothing and listens to nothing; followers then rely on their timers.
        channel: the NOTIFY channel; replicas of one deployment must agree on it.
        pool_size: most connections this replica opens for its work (plus one listener).
        connect_timeout: seconds to wait for a new connection before StoreUnavailable.
    """

    def __init__(
        self,
        dsn: str,
        notifier: Notifier,
        *,
        blob_dir: Path,
        notify: bool = True,
        channel: str = "gaffer",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._notifier = notifier
        self._blob_dir = blob_dir
        self._notify = notify
        self._channel = channel
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._instance = secrets.token_hex(8)
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None

    @property
    def blob_dir(self) -> Path:
        return self._blob_dir

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection's keeper (None with ``notify=False``)."""
        return self._listener

    async def open(self) -> None:
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        with _mapped("connect"):
            pool = await asyncpg.create_pool(
                self._dsn,
                reset=_keep_session,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
            )
        try:
            await self._migrate(pool)
            if self._notify:
                listener = Listener(self._connect, self._channel, self._notifier, self._instance)
                await listener.start()
                self._listener = listener
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, timeout=self._connect_timeout)

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        """Applies missing migrations; replicas starting together take turns on a lock."""
        with _mapped("migrate"):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", _LOCK_MIGRATE)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
                )
                version = int(
                    await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                )
                if version > len(MIGRATIONS):
                    raise StoreUnavailable(
                        f"the database is at schema version {version}, newer than this server "
                        f"knows ({len(MIGRATIONS)}); upgrade gaffer"
                    )
                if version == len(MIGRATIONS):
                    return
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    log.info("applying PostgreSQL migration %d", number)
                    await conn.execute(script)
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS))

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except CONNECTION_ERRORS:
                pool.terminate()
            except BaseException:
                pool.terminate()
                raise

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        return self._pool

    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        pool = self._live_pool()
        with _mapped("read"):
            async with pool.acquire() as conn:
                return await getattr(conn, method)(sql, *args)

    async def ping(self) -> None:
        pool = self._live_pool()
        with _mapped("ping"):
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[Transaction]:
        """One database transaction per body, committed without waiting for the WAL flush.

        A transaction that writes events holds the sequence row until its commit ends; a
        commit that waited for the disk would hold it through the flush and make every
        writer queue behind each fsync. So every commit is asynchronous, and a durable
        caller then runs one write-less statement that takes a transaction id: its commit
        waits for the flush of the WAL up to its own record, which lies after ours. The
        caller is answered only after that, and PostgreSQL groups the flushes of
        concurrent callers.
        """
        pool = self._live_pool()
        with _mapped("begin"):
            conn = await pool.acquire()
        try:
            tx = _PostgresTransaction(conn)
            with _mapped("begin"):
                await conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
            try:
                yield tx
                await tx.flush()
                with _mapped("commit"):
                    await conn.execute("COMMIT")
            except BaseException:
                # Told first: a ROLLBACK cut short by cancellation must not skip it. (A COMMIT
                # cut short counts as not committed; if it did commit, a job it handed to a
                # waiting claim waits out its lease, as one whose claim answer is lost.)
                tx.topics.settle(False)
                # A dead connection has nothing to roll back (and may be detached already).
                with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
                    await conn.execute("ROLLBACK")
                raise
            tx.topics.settle(True)
            self._notifier.publish(tx.topics.names)
            topics = tx.topics.names if self._notify else set()
            # After the commit, outside the sequence row's lock. A notification is only a hint
            # (readers re-check on their own): one lost to a failure here costs a delay.
            if durable:
                with _mapped("commit (waiting for the disk)"):
                    await conn.execute(
                        "SELECT pg_current_xact_id(),"
                        " (SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p)",
                        self._channel,
                        encode_payloads(self._instance, topics),
                    )
            elif topics:
                with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
                    await conn.execute(
                        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                        self._channel,
                        encode_payloads(self._instance, topics),
                    )
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pool.release(conn)

    async def get_job(self, job_id: str) -> StoredJob | None:
        row = await self._read("fetchrow", f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return _job_from_row(row) if row else None

    async def list_jobs(
        self, tenant: str, query: JobQuery, *, newest_first: bool, after_seq: int, limit: int
    ) -> list[StoredJob]:
        if newest_first and after_seq == 0:
            after_seq = _FAR
        arg = _Args(tenant, after_seq)
        where = filter_sql(query, "jobs", arg)
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = $1"
            f" AND seq {'<' if newest_first else '>'} $2"
            + (f" AND {where}" if where else "")
            + f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT {arg(limit)}"
        )
        rows = await self._read("fetch", sql, *arg.values)
        return [_job_from_row(r) for r in rows]

    async def read_events(
        self,
        tenant: str,
        *,
        after_seq: int,
        limit: int,
        job_id: str | None = None,
        query: JobQuery | None = None,
    ) -> list[job_pb2.JobEvent]:
        if job_id is not None:
            rows = await self._read(
                "fetch",
                "SELECT seq, body FROM events WHERE job_id = $1 AND tenant = $2 AND seq > $3"
                " ORDER BY seq LIMIT $4",
                job_id,
                tenant,
                after_seq,
                limit,
            )
        else:
            arg = _Args(tenant, after_seq)
            where = filter_sql(query or JobQuery(), "j", arg)
            join = " JOIN jobs j ON j.id = e.job_id" if where else ""
            rows = await self._read(
                "fetch",
                f"SELECT e.seq, e.body FROM events e{join} WHERE e.tenant = $1 AND e.seq > $2"
                + (f" AND {where}" if where else "")
                + f" ORDER BY e.seq LIMIT {arg(limit)}",
                *arg.values,
            )
        return [event_from_row(seq, body) for seq, body in rows]

    async def tail_events(
        self, *, after_seq: int, limit: int
    ) -> list[tuple[str, job_pb2.JobEvent]]:
        rows = await self._read(
            "fetch",
            "SELECT seq, tenant, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            after_seq,
            limit,
        )
        return [(tenant, event_from_row(seq, body)) for seq, tenant, body in rows]

    async def last_event_seq(self) -> int:
        return int(await self._read("fetchval", "SELECT COALESCE(MAX(seq), 0) FROM events"))

    async def read_logs(
        self, job_id: str, attempt: int, offsets: dict[int, int], max_bytes: int
    ) -> list[job_pb2.LogChunk]:
        if not offsets:
            return []
        arg = _Args(job_id, attempt)
        conds = " OR ".join(
            f'(stream = {arg(stream)} AND "offset" + length(data) > {arg(offset)})'
            for stream, offset in offsets.items()
        )
        # Only the chunks that fit in max_bytes leave the server (length() of a bytea does not
        # load it): a reader never pulls more than about one batch into memory.
        rows = await self._read(
            "fetch",
            'SELECT stream, "offset", data FROM (SELECT id, stream, "offset", data,'
            " sum(length(data)) OVER (ORDER BY id) - length(data) AS before"
            " FROM log_chunks WHERE job_id = $1 AND attempt = $2"
            f" AND ({conds}) ORDER BY id LIMIT 256) c WHERE before < {arg(max_bytes)} ORDER BY id",
            *arg.values,
        )
        return trimmed_chunks(rows, offsets, attempt, max_bytes)

    async def log_sizes(self, job_id: str, attempt: int) -> dict[int, int]:
        pool = self._live_pool()
        with _mapped("read"):
            async with pool.acquire() as conn:
                return await _log_sizes(conn, job_id, attempt)

    async def tail_offset(self, job_id: str, attempt: int, stream: int, lines: int) -> int:
        scan = TailScan(lines)
        before = _FAR
        while True:
            rows = await self._read(
                "fetch",
                'SELECT "offset", data FROM log_chunks WHERE job_id = $1 AND attempt = $2'
                ' AND stream = $3 AND "offset" < $4 ORDER BY "offset" DESC LIMIT 64',
                job_id,
                attempt,
                stream,
                before,
            )
            if not rows:
                return 0
            for offset, data in rows:
                found = scan.feed(offset, data)
                if found is not None:
                    return found
                before = offset

    async def list_artifacts(self, job_id: str) -> list[job_pb2.Artifact]:
        rows = await self._read(
            "fetch", "SELECT body FROM artifacts WHERE job_id = $1 ORDER BY name", job_id
        )
        return [job_pb2.Artifact.FromString(body) for (body,) in rows]

    async def list_agents(self, after_name: str, limit: int) -> list[StoredAgent]:
        rows = await self._read(
            "fetch",
            "SELECT last_heartbeat, body FROM agents WHERE name > $1 ORDER BY name LIMIT $2",
            after_name,
            limit,
        )
        return [_agent_from_row(r) for r in rows]

    async def get_agent(self, agent_id: str) -> StoredAgent | None:
        row = await self._read(
            "fetchrow", "SELECT last_heartbeat, body FROM agents WHERE id = $1", agent_id
        )
        return _agent_from_row(row) if row else None

    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        rows = await self._read(
            "fetch",
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE agent_id = $1 AND state IN (2,3,4,5)"
            " ORDER BY seq",
            agent_id,
        )
        return [_job_from_row(r) for r in rows]

    async def any_pending(self, queues: Sequence[str], now: float) -> bool:
        row = await self._read(
            "fetchval",
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 1 AND queue = ANY($1::text[])"
            " AND not_before <= $2)",
            list(queues),
            now,
        )
        return bool(row)
