"""The embedded store: SQLite in WAL mode, one writer at a time, on the event loop's thread.

Statements run synchronously on the loop: on a warm page cache one costs a few microseconds,
less than a hop to a worker thread and back. Write transactions run one after another on the
writer connection, grouped by a GroupCommitter so that concurrent ones share a
``BEGIN IMMEDIATE`` ... ``COMMIT`` and one fsync, which runs in a helper process. New jobs
(and their first events) are inserted in bulk just before the COMMIT rather than one by one
in their bodies: two statements per batch instead of two per submit.
Point reads use a second connection and never wait for writers (WAL); reads that may scan
many rows (listing jobs, events filtered by job fields) go through aiosqlite on a third,
whose thread also runs the checkpoints (so a commit does not stall the loop on the disk).
Only a WAL past ``wal_limit_bytes`` has the writer finish a checkpoint, between two batches
(a short stall: what came during the last pass, and a sync): under writes that never pause,
that is the only way the WAL can start over instead of growing for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite

from gaffer.domain import StoreUnavailable
from gaffer.store._base import (
    JobQuery,
    LogAppend,
    Store,
    StoredAgent,
    StoredJob,
    Topics,
    Transaction,
)
from gaffer.store._file_syncer import FileSyncer
from gaffer.store._group_commit import GroupCommitter
from gaffer.store._log_rules import TailScan, log_append, new_bytes, trimmed_chunks
from gaffer.store._notifier import Notifier
from gaffer.store._rows import JOB_COLUMNS as _JOB_COLUMNS
from gaffer.store._rows import agent_from_row as _agent_from_row
from gaffer.store._rows import event_from_row, job_changes, job_row
from gaffer.store._rows import job_from_row as _job_from_row
from gaffer.store._sqlite_schema import MIGRATIONS
from gaffer.v1 import job_pb2

log = logging.getLogger(__name__)


def _label_path(key: str) -> str:
    return '$."' + key.replace('"', "") + '"'


def filter_sql(query: JobQuery, alias: str = "jobs") -> tuple[str, list[Any]]:
    """SQL conditions (joined by AND, possibly empty) and parameters for a JobQuery."""
    parts: list[str] = []
    params: list[Any] = []
    if query.states:
        parts.append(f"{alias}.state IN ({','.join('?' * len(query.states))})")
        params.extend(query.states)
    for key, value in query.labels:
        parts.append(f"json_extract({alias}.labels, ?) = ?")
        params.extend([_label_path(key), value])
    for key, value in query.exclude_labels:
        parts.append(f"IFNULL(json_extract({alias}.labels, ?) != ?, 1)")
        params.extend([_label_path(key), value])
    if query.created_after is not None:
        parts.append(f"{alias}.created_at >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        parts.append(f"{alias}.created_at < ?")
        params.append(query.created_before)
    if query.queue is not None:
        parts.append(f"{alias}.queue = ?")
        params.append(query.queue)
    return " AND ".join(parts), params


_INSERT_JOB = (
    "INSERT INTO jobs (id, tenant, request_id, queue, priority, state, labels, created_at,"
    " agent_id, lease_token, lease_expires, not_before, deadline, spec, body)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_EVENT = "INSERT INTO events (job_id, tenant, body) VALUES (?, ?, ?)"


@dataclass
class _NewRows:
    """Rows of new jobs and their first events, inserted in bulk just before a COMMIT: per
    submit, two statements less on the loop. ``requests`` finds the jobs among them that
    carry a request_id, for a later submit of the same batch with the same one."""

    jobs: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[str, str, bytes]] = field(default_factory=list)
    requests: dict[tuple[str, str], StoredJob] = field(default_factory=dict)
    #: Job id -> its row's index in ``jobs`` (a transaction's own rows only, see replace).
    index: dict[str, int] = field(default_factory=dict)

    def add(self, stored: StoredJob, event: job_pb2.JobEvent) -> None:
        self.index[stored.job.id] = len(self.jobs)
        self.jobs.append(job_row(stored))
        self.events.append((event.job_id, stored.tenant, event.SerializeToString()))
        if stored.job.request_id:
            self.requests[(stored.tenant, stored.job.request_id)] = stored

    def replace(self, stored: StoredJob) -> bool:
        """Rewrites the row of a job added here; False if it was not."""
        i = self.index.get(stored.job.id)
        if i is None:
            return False
        self.jobs[i] = job_row(stored)
        return True

    def extend(self, other: _NewRows) -> None:
        self.jobs += other.jobs
        self.events += other.events
        self.requests.update(other.requests)

    def write(self, conn: sqlite3.Connection) -> None:
        jobs, events, self.jobs, self.events = self.jobs, self.events, [], []
        self.requests = {}
        if jobs:
            conn.executemany(_INSERT_JOB, jobs)
            conn.executemany(_INSERT_EVENT, events)


class _SqliteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection, batch_rows: _NewRows) -> None:
        self._conn = conn
        self.topics = Topics()
        #: New jobs this body deferred to the commit (kept only if the body succeeds).
        self.new_rows = _NewRows()
        #: Those of the bodies before it in the batch.
        self._batch_rows = batch_rows

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return _fetchone(self._conn, sql, params)

    async def insert_job(self, stored: StoredJob) -> StoredJob:
        cursor = self._conn.execute(_INSERT_JOB, job_row(stored))
        stored.seq = cursor.lastrowid or 0
        return stored

    async def insert_job_with_event(self, stored: StoredJob, event: job_pb2.JobEvent) -> StoredJob:
        """Written at commit, with the other new jobs of the batch in one statement (its
        ``seq`` stays 0: nothing reads or updates a job before the commit that makes its id
        known, but find_request finds it by its request_id meanwhile)."""
        self.new_rows.add(stored, event)
        return stored

    async def find_request(self, tenant: str, request_id: str) -> StoredJob | None:
        key = (tenant, request_id)
        pending = self.new_rows.requests.get(key) or self._batch_rows.requests.get(key)
        if pending is not None:  # a copy, as a read would give
            job = job_pb2.Job()
            job.CopyFrom(pending.job)
            return replace(pending, job=job)
        row = self._one(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND request_id = ?",
            (tenant, request_id),
        )
        return _job_from_row(row) if row else None

    async def get_job(self, job_id: str) -> StoredJob | None:
        row = self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(row) if row else None

    async def update_job(self, stored: StoredJob) -> None:
        if not stored.seq:
            if self.new_rows.replace(stored):  # inserted by this transaction: at its commit
                return
            raise ValueError(f"job {stored.job.id} is not written yet (it is, at commit)")
        self._conn.execute(
            "UPDATE jobs SET state = ?, agent_id = ?, lease_token = ?, lease_expires = ?,"
            " not_before = ?, deadline = ?, body = ? WHERE seq = ?",
            (*job_changes(stored), stored.seq),
        )

    async def append_event(self, tenant: str, event: job_pb2.JobEvent) -> None:
        row = (event.job_id, tenant, event.SerializeToString())
        if self.new_rows.events:  # after this transaction's deferred ones, in order
            self.new_rows.events.append(row)
        else:
            self._conn.execute(_INSERT_EVENT, row)

    async def append_events(self, events: Sequence[tuple[str, job_pb2.JobEvent]]) -> None:
        rows = [(event.job_id, tenant, event.SerializeToString()) for tenant, event in events]
        if self.new_rows.events:
            self.new_rows.events.extend(rows)
        else:
            self._conn.executemany(_INSERT_EVENT, rows)

    async def pending_jobs(self, queues: Sequence[str], now: float, limit: int) -> list[StoredJob]:
        rows = _fetchall(
            self._conn,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 1"
            f" AND queue IN ({','.join('?' * len(queues))}) AND not_before <= ?"
            " ORDER BY priority DESC, seq LIMIT ?",
            (*queues, now, limit),
        )
        return [_job_from_row(r) for r in rows]

    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        rows = _fetchall(
            self._conn,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE agent_id = ? AND state IN (2,3,4,5)",
            (agent_id,),
        )
        return [_job_from_row(r) for r in rows]

    async def count_held(self, agent_id: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND state IN (2,3,4,5)", (agent_id,)
        )
        return int(row[0])

    async def renew_leases(self, agent_id: str, expires: float, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        self._conn.execute(
            "UPDATE jobs SET lease_expires = ? WHERE agent_id = ? AND state IN (2,3,4,5)"
            f" AND id IN ({','.join('?' * len(job_ids))})",
            (expires, agent_id, *job_ids),
        )

    async def extend_leases(self, at_least: float) -> int:
        cursor = self._conn.execute(
            "UPDATE jobs SET lease_expires = MAX(lease_expires, ?),"
            " deadline = CASE WHEN deadline > 0 THEN MAX(deadline, ?) ELSE 0 END"
            " WHERE state IN (2,3,4,5) AND (lease_expires < ? OR (deadline > 0 AND deadline < ?))",
            (at_least, at_least, at_least, at_least),
        )
        return int(cursor.rowcount)

    async def lapsed_jobs(self, now: float, limit: int) -> list[StoredJob]:
        rows = _fetchall(
            self._conn,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN (2,3,4,5) AND"
            " ((lease_expires > 0 AND lease_expires < ?) OR (deadline > 0 AND deadline < ?))"
            " LIMIT ?",
            (now, now, limit),
        )
        return [_job_from_row(r) for r in rows]

    async def get_agent(self, agent_id: str, *, lock: bool = True) -> StoredAgent | None:
        row = self._one("SELECT last_heartbeat, body FROM agents WHERE id = ?", (agent_id,))
        return _agent_from_row(row) if row else None

    async def get_agent_by_name(self, name: str) -> StoredAgent | None:
        row = self._one("SELECT last_heartbeat, body FROM agents WHERE name = ?", (name,))
        return _agent_from_row(row) if row else None

    async def put_agent(self, stored: StoredAgent) -> None:
        agent = stored.agent
        self._conn.execute(
            "INSERT INTO agents (id, name, last_heartbeat, body) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
            " last_heartbeat = excluded.last_heartbeat, body = excluded.body",
            (agent.id, agent.name, stored.last_heartbeat, agent.SerializeToString()),
        )

    async def append_log(
        self, job_id: str, attempt: int, stream: int, offset: int, data: bytes
    ) -> LogAppend:
        sizes = _log_sizes(self._conn, job_id, attempt)
        size = sizes.get(stream, 0)
        fresh = new_bytes(stream, size, offset, data)
        end = offset + len(data)
        if fresh:
            self._conn.execute(
                "INSERT INTO log_chunks (job_id, attempt, stream, offset, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, attempt, stream, size, fresh),
            )
            self._conn.execute(
                "INSERT INTO log_sizes (job_id, attempt, stream, size) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, attempt, stream) DO UPDATE SET size = excluded.size",
                (job_id, attempt, stream, end),
            )
            sizes[stream] = end
        return log_append(sizes, accepted=bool(fresh))

    async def put_artifact(self, job_id: str, artifact: job_pb2.Artifact) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO artifacts (job_id, name, body) VALUES (?, ?, ?)",
            (job_id, artifact.name, artifact.SerializeToString()),
        )


def _unavailable(exc: BaseException) -> BaseException:
    return StoreUnavailable(f"SQLite store is unavailable: {exc}")


def _log_sizes(conn: sqlite3.Connection, job_id: str, attempt: int) -> dict[int, int]:
    rows = _fetchall(
        conn,
        "SELECT stream, size FROM log_sizes WHERE job_id = ? AND attempt = ?",
        (job_id, attempt),
    )
    return {stream: size for stream, size in rows}


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    return conn.execute(sql, params).fetchone()


#: Checkpoint passes off the loop, at most, before the writer finishes one past the limit.
_CATCH_UP_PASSES = 10
#: New WAL frames during a pass small enough for the writer to copy on the loop (1 MiB).
_WRITER_CHECKPOINT_FRAMES = 256


class SqliteStore(Store):
    """SQLite under ``data_dir``: ``gaffer.db`` plus ``blobs/`` for artifact bytes."""

    reads_at_once = True

    #: Seconds between checkpoints (moving the WAL's pages into the database file).
    checkpoint_interval = 1.0
    #: Bytes the WAL file is cut back to when it starts over; past this, the writer finishes
    #: the checkpoint itself so that the WAL can start over.
    wal_limit_bytes = 64 * 1024 * 1024

    def __init__(self, data_dir: Path, notifier: Notifier, *, synchronous: str = "NORMAL") -> None:
        self._data_dir = data_dir
        self._notifier = notifier
        self._synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._scanner: aiosqlite.Connection | None = None
        self._committer: GroupCommitter | None = None
        self._wal_syncer: FileSyncer | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._new_rows = _NewRows()
        self._page_size = 4096

    @property
    def blob_dir(self) -> Path:
        return self._data_dir / "blobs"

    def _connect(self, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._data_dir / "gaffer.db", isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(exist_ok=True)
        try:
            # The writer runs on the loop: it must not sit in a busy wait (only another
            # process writing this file could make it wait at all).
            self._writer = self._connect(busy_timeout_ms=200)
            self._migrate(self._writer)
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._writer.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
            self._page_size = _fetchone(self._writer, "PRAGMA page_size")[0]
            self._reader = self._connect(busy_timeout_ms=200)
            self._scanner = await aiosqlite.connect(
                self._data_dir / "gaffer.db", isolation_level=None
            )
            await self._scanner.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error as exc:
            await self.close()
            raise _unavailable(exc) from exc
        # With synchronous=FULL every COMMIT reaches the disk by itself; with NORMAL (WAL: a
        # commit survives a process crash at once, a machine crash once synced) the committer
        # syncs the WAL once for the batches committed while the previous sync ran.
        if self._synchronous.upper() not in ("FULL", "EXTRA"):
            self._wal_syncer = FileSyncer(self._data_dir / "gaffer.db-wal")
            try:
                self._wal_syncer.open()
            except RuntimeError as exc:
                await self.close()
                raise _unavailable(exc) from exc
        sync = self._wal_syncer.start if self._wal_syncer is not None else None
        writer = self._writer
        self._committer = GroupCommitter(
            writer.execute,
            begin="BEGIN IMMEDIATE",
            wrap_error=_unavailable,
            sync=sync,
            before_commit=lambda: self._new_rows.write(writer),
        )
        self._committer.start()
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="gaffer-checkpoint")

    async def _checkpoint_loop(self) -> None:
        assert self._committer is not None
        done = self._committer.commits
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            if self._committer.commits == done:
                continue
            done = self._committer.commits
            try:
                await self._checkpoint()
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint failed (retried later): %s", exc)

    async def _checkpoint(self) -> None:
        """Moves the WAL's pages into the database file, off the loop.

        The WAL starts over (and is cut back to ``wal_limit_bytes``) at the first write after
        a checkpoint that left nothing behind; under steady writes a pass off the loop never
        does (commits land while it copies), and the WAL grew by about 12 KB per submit for
        as long as submits kept coming. So a WAL past the limit gets more passes, until one
        finds little new since the last, and then the writer finishes between two batches:
        on the loop it copies only what came during that last pass (and syncs the files).
        """
        frames = await self._background_checkpoint()
        if frames * self._page_size <= self.wal_limit_bytes:
            return
        for _ in range(_CATCH_UP_PASSES):
            before, frames = frames, await self._background_checkpoint()
            if frames - before <= _WRITER_CHECKPOINT_FRAMES:
                break
        writer, committer = self._writer, self._committer
        if writer is not None and committer is not None:
            await committer.between_batches(
                lambda: writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            )

    async def _background_checkpoint(self) -> int:
        """One PASSIVE checkpoint on the scanner's thread; the WAL's frames when it began."""
        rows = await self._scan.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        _, frames, _ = next(iter(rows))
        return int(frames)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            rows = _fetchall(conn, "SELECT version FROM schema_version")
            version = rows[0][0] if rows else 0
            if version > len(MIGRATIONS):
                raise StoreUnavailable(
                    f"the database is at schema version {version}, newer than this server "
                    f"knows ({len(MIGRATIONS)}); upgrade gaffer"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                log.info("applying SQLite migration %d", number)
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._committer is not None:
            await self._committer.close()
            self._committer = None
        if self._wal_syncer is not None:
            self._wal_syncer.close()
            self._wal_syncer = None
        if self._scanner is not None:
            await self._scanner.close()
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = self._scanner = None

    @property
    def _r(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        return self._reader

    @property
    def _scan(self) -> aiosqlite.Connection:
        if self._scanner is None:
            raise StoreUnavailable("the store is closed")
        return self._scanner

    async def ping(self) -> None:
        try:
            self._r.execute("SELECT 1").fetchall()
        except (sqlite3.Error, ValueError) as exc:
            raise StoreUnavailable(f"SQLite store is unavailable: {exc}") from exc

    def transaction(self, *, durable: bool = True) -> AbstractAsyncContextManager[Transaction]:
        if self._writer is None or self._committer is None:
            raise StoreUnavailable("the store is closed")
        tx = _SqliteTransaction(self._writer, self._new_rows)
        topics = tx.topics
        return self._committer.transaction(
            lambda: self._committed(topics),
            durable=durable,
            value=tx,
            on_success=lambda: self._new_rows.extend(tx.new_rows),
            on_abort=lambda: topics.settle(False),
        )

    def _committed(self, topics: Topics) -> None:
        if topics.settle_callbacks:
            topics.settle(True)
        self._notifier.publish_committed(topics.names)

    async def any_pending(self, queues: Sequence[str], now: float) -> bool:
        row = _fetchone(
            self._r,
            f"SELECT 1 FROM jobs WHERE state = 1 AND queue IN ({','.join('?' * len(queues))})"
            " AND not_before <= ? LIMIT 1",
            (*queues, now),
        )
        return row is not None

    async def get_job(self, job_id: str) -> StoredJob | None:
        row = _fetchone(self._r, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(row) if row else None

    async def list_jobs(
        self, tenant: str, query: JobQuery, *, newest_first: bool, after_seq: int, limit: int
    ) -> list[StoredJob]:
        where, params = filter_sql(query)
        cursor_cond = "seq < ?" if newest_first else "seq > ?"
        if newest_first and after_seq == 0:
            after_seq = 2**62
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND {cursor_cond}"
            + (f" AND {where}" if where else "")
            + f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        )
        rows = await self._scan.execute_fetchall(sql, (tenant, after_seq, *params, limit))
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
        rows: Iterable[Any]
        if job_id is not None:
            rows = _fetchall(
                self._r,
                "SELECT seq, body FROM events WHERE job_id = ? AND tenant = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (job_id, tenant, after_seq, limit),
            )
        else:
            where, params = filter_sql(query or JobQuery(), "j")
            if where:  # a join that may scan: off the loop
                rows = await self._scan.execute_fetchall(
                    "SELECT e.seq, e.body FROM events e JOIN jobs j ON j.id = e.job_id"
                    f" WHERE e.tenant = ? AND e.seq > ? AND {where} ORDER BY e.seq LIMIT ?",
                    (tenant, after_seq, *params, limit),
                )
            else:
                rows = _fetchall(
                    self._r,
                    "SELECT seq, body FROM events WHERE tenant = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (tenant, after_seq, limit),
                )
        return [event_from_row(seq, body) for seq, body in rows]

    async def tail_events(
        self, *, after_seq: int, limit: int
    ) -> list[tuple[str, job_pb2.JobEvent]]:
        return self.tail_events_now(after_seq=after_seq, limit=limit)

    def tail_events_now(self, *, after_seq: int, limit: int) -> list[tuple[str, job_pb2.JobEvent]]:
        rows = _fetchall(
            self._r,
            "SELECT seq, tenant, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [(tenant, event_from_row(seq, body)) for seq, tenant, body in rows]

    async def last_event_seq(self) -> int:
        return int(_fetchone(self._r, "SELECT IFNULL(MAX(seq), 0) FROM events")[0])

    async def read_logs(
        self, job_id: str, attempt: int, offsets: dict[int, int], max_bytes: int
    ) -> list[job_pb2.LogChunk]:
        if not offsets:
            return []
        conds = " OR ".join("(stream = ? AND offset + length(data) > ?)" for _ in offsets)
        params: list[Any] = [job_id, attempt]
        for stream, offset in offsets.items():
            params.extend([stream, offset])
        # Sizes first (length() of a blob does not load it), then only the blobs that fit in
        # max_bytes: a reader never pulls more than about one batch into memory.
        sizes = _fetchall(
            self._r,
            "SELECT rowid, length(data) FROM log_chunks WHERE job_id = ? AND attempt = ?"
            f" AND ({conds}) ORDER BY rowid LIMIT 256",
            params,
        )
        wanted: list[int] = []
        budget = 0
        for rowid, length in sizes:
            wanted.append(rowid)
            budget += length
            if budget >= max_bytes:
                break
        if not wanted:
            return []
        found = {
            row[0]: row[1:]
            for row in _fetchall(
                self._r,
                "SELECT rowid, stream, offset, data FROM log_chunks"
                f" WHERE rowid IN ({','.join('?' * len(wanted))})",
                wanted,
            )
        }
        rows = [found[rowid] for rowid in wanted if rowid in found]
        return trimmed_chunks(rows, offsets, attempt, max_bytes)

    async def log_sizes(self, job_id: str, attempt: int) -> dict[int, int]:
        return _log_sizes(self._r, job_id, attempt)

    async def tail_offset(self, job_id: str, attempt: int, stream: int, lines: int) -> int:
        scan = TailScan(lines)
        before = 2**62
        while True:
            rows = _fetchall(
                self._r,
                "SELECT offset, data FROM log_chunks WHERE job_id = ? AND attempt = ?"
                " AND stream = ? AND offset < ? ORDER BY offset DESC LIMIT 64",
                (job_id, attempt, stream, before),
            )
            if not rows:
                return 0
            for offset, data in rows:
                found = scan.feed(offset, data)
                if found is not None:
                    return found
                before = offset

    async def list_artifacts(self, job_id: str) -> list[job_pb2.Artifact]:
        rows = _fetchall(
            self._r, "SELECT body FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,)
        )
        return [job_pb2.Artifact.FromString(body) for (body,) in rows]

    async def list_agents(self, after_name: str, limit: int) -> list[StoredAgent]:
        rows = _fetchall(
            self._r,
            "SELECT last_heartbeat, body FROM agents WHERE name > ? ORDER BY name LIMIT ?",
            (after_name, limit),
        )
        return [_agent_from_row(r) for r in rows]

    async def get_agent(self, agent_id: str) -> StoredAgent | None:
        row = _fetchone(
            self._r, "SELECT last_heartbeat, body FROM agents WHERE id = ?", (agent_id,)
        )
        return _agent_from_row(row) if row else None

    async def jobs_of_agent(self, agent_id: str) -> list[StoredJob]:
        rows = _fetchall(
            self._r,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE agent_id = ? AND state IN (2,3,4,5)"
            " ORDER BY seq",
            (agent_id,),
        )
        return [_job_from_row(r) for r in rows]
