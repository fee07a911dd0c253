"""Group commit on the event loop: many short write transactions, one COMMIT, one fsync.

Transaction bodies run on the loop thread against a synchronous connection (an SQLite
statement on a warm page cache costs microseconds; a hop to a worker thread and back costs
more than the statement). Bodies run one at a time, each in its own SAVEPOINT (a body that
fails rolls back only its own work). Every body that finishes in the same turn of the loop
joins the open batch; the batch commits at the next turn. A durable caller also waits for the
fsync that covers its commit; fsyncs run off the loop (SQLite: in a helper process), and
commits made while one runs share the next. An idle store commits each transaction on its
own, at the next turn.

Under load a batch of durable bodies is held open a little longer (PostgreSQL's commit_delay
and commit_siblings): when a durable body opens a batch while at least ``siblings`` other
callers are still waiting on the committer, the batch commits after ``delay`` per waiting
caller (at most ``max_delay``) instead of at the next turn. gRPC hands the server one new
call per turn of the loop, so without this a busy store commits (and syncs) about once per
submit. A lone caller never waits for the delay. A non-durable body (a claim, an outcome)
joining a held batch waits with it: committing at once for each would cut the batch short.
With 5,000 jobs submitted one by one (64 in flight) while two agents ran them, the jobs ran
at 1,530/1,533 jobs/s this way against 1,403/1,457 when agents' bodies committed at once.

A body that really suspends (awaits I/O) holds the writer until it finishes: nothing else
interleaves with its statements, and the batch waits for it.

A caller returns only after the commit (and, if durable, the fsync) that holds its work.
Each caller waits on a future of its own, resolved by the commit or the sync itself: no
task or shared future stands between them, so a caller resumes at the next turn, before
the wake-ups its commit publishes (a claim answers its agent before followers hear of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

#: Starts making what is committed durable; calls back on the loop with None or the error.
StartSync = Callable[[Callable[[BaseException | None], None]], None]


@dataclass(eq=False)
class _Batch:
    #: Per caller: the future it waits on, and whether it waits for the sync too.
    waiters: list[tuple[asyncio.Future[None], bool]] = field(default_factory=list)
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    on_abort: list[Callable[[], None]] = field(default_factory=list)


class GroupCommitter:
    """Serialises transaction bodies on one connection and batches their commits and syncs.

    Args:
        execute: runs one SQL statement on the writer connection, synchronously.
        begin: the statement that opens a write transaction (``BEGIN IMMEDIATE`` for SQLite).
        wrap_error: turns a failure of BEGIN/COMMIT/sync into the error callers should see.
        sync: starts making what is committed durable on disk and calls back (on the loop)
            when done (None: every COMMIT is durable by itself).
        delay: how long a batch opened under load stays open for others to join, per other
            caller waiting on the committer (the more wait, the more are coming).
        max_delay: the longest a batch stays open.
        siblings: how many other callers waiting on the committer mean "under load".
        before_commit: writes what bodies left for the commit; runs just before COMMIT, and
            its failure fails the batch as a failed COMMIT does.
    """

    def __init__(
        self,
        execute: Callable[[str], object],
        *,
        begin: str,
        wrap_error: Callable[[BaseException], BaseException],
        sync: StartSync | None = None,
        delay: float = 0.001,
        max_delay: float = 0.005,
        siblings: int = 2,
        before_commit: Callable[[], object] | None = None,
    ) -> None:
        self._execute = execute
        self._before_commit = before_commit
        self._begin = begin
        self._wrap_error = wrap_error
        self._sync = sync
        self._delay = delay
        self._max_delay = max_delay
        self._siblings = siblings
        #: Callers inside transaction(): in a body, or waiting for its commit or sync.
        self._callers = 0
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._flusher: asyncio.Task[None] | None = None
        #: Durable callers whose commit is done and not yet covered by a sync under way.
        self._unsynced: list[asyncio.Future[None]] = []
        self._syncing = False
        #: Set once no caller is inside, when close() waits for that.
        self._drained: asyncio.Event | None = None
        self._closed = True
        #: Batches committed since start (for tests and metrics).
        self.commits = 0

    def start(self) -> None:
        """Takes transactions from now on; call it on the loop that will run them."""
        # Kept: on Python 3.11 asyncio.get_running_loop() makes a getpid() system call, and
        # calling it twice per submit took 2.4% of the server's samples (py-spy --native).
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def close(self) -> None:
        """Commits the open batch and lets the callers already inside finish (their commits
        and syncs); new ones are refused."""
        self._closed = True
        if self._batch is not None:
            async with self._lock:
                if self._batch is not None:
                    self._commit(self._batch)
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._callers:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()

    def transaction(
        self,
        on_commit: Callable[[], None],
        *,
        durable: bool = True,
        value: Any = None,
        on_success: Callable[[], None] | None = None,
        on_abort: Callable[[], None] | None = None,
    ) -> _Transaction:
        """Runs the body inside the open batch; returns once the batch committed.

        ``on_commit`` runs after the commit that holds the body's work (not on failure); a
        ``durable`` body also waits until that commit is on disk. ``on_success`` runs when
        the body ends without error (its work joins the batch). ``on_abort`` runs when the
        body's work is undone: the body failed, or the commit of its batch did (whether or
        not its caller still waits). The context gives ``value``.
        """
        if self._closed:
            raise self._wrap_error(RuntimeError("the store is closed"))
        return _Transaction(self, on_commit, durable, value, on_success, on_abort)

    async def between_batches(self, work: Callable[[], object]) -> None:
        """Runs ``work`` on the writer with no transaction open (the open batch commits
        first, without waiting for its turn or delay)."""
        async with self._lock:
            if self._batch is not None:
                self._commit(self._batch)
            work()

    def _undo_body(self) -> None:
        """Rolls back the work of the body that failed, and only that."""
        with contextlib.suppress(Exception):
            self._execute("ROLLBACK TO gaffer_tx")
            self._execute("RELEASE gaffer_tx")

    def _left(self) -> None:
        """A caller is done (committed, failed or cancelled)."""
        self._callers -= 1
        if not self._callers and self._drained is not None:
            self._drained.set()

    def _open_batch(self, durable: bool) -> _Batch:
        if self._batch is not None:
            return self._batch
        try:
            self._execute(self._begin)
        except Exception as exc:
            raise self._wrap_error(exc) from exc
        batch = self._batch = _Batch()
        loop = self._loop
        if durable and self._callers > self._siblings:  # others wait besides this caller
            delay = min(self._max_delay, self._delay * (self._callers - 1))
            loop.call_later(delay, self._flush_soon, batch)
        else:
            loop.call_soon(self._flush_soon, batch)
        return batch

    def _flush_soon(self, batch: _Batch) -> None:
        """One turn (or, under load, the delay) after the batch opened: the bodies that were
        ready meanwhile joined."""
        if batch is not self._batch:
            return  # committed already (by close)
        if self._lock.locked():  # a body is suspended inside it: commit once it is done
            self._flusher = asyncio.create_task(self._flush_after_body(batch))
        else:
            self._commit(batch)

    async def _flush_after_body(self, batch: _Batch) -> None:
        async with self._lock:
            if batch is self._batch:
                self._commit(batch)

    def _commit(self, batch: _Batch) -> None:
        self._batch = None
        try:
            if self._before_commit is not None:
                self._before_commit()
            self._execute("COMMIT")
        except Exception as exc:
            log.error("group commit failed: %s", exc)
            with contextlib.suppress(Exception):
                self._execute("ROLLBACK")
            error = self._wrap_error(exc)
            for done, _ in batch.waiters:
                _settle(done, error)
            _run_all(batch.on_abort, "after-abort")
            return
        self.commits += 1
        for done, durable in batch.waiters:
            if durable:
                self._unsynced.append(done)
            else:
                _settle(done, None)
        self._sync_next()
        _run_all(batch.on_commit, "after-commit")

    def _sync_next(self) -> None:
        """Starts one sync for every durable caller committed so far, unless one runs (those
        committed meanwhile wait for the next)."""
        if self._syncing or not self._unsynced:
            return
        assert self._sync is not None
        waiting, self._unsynced = self._unsynced, []
        self._syncing = True
        try:
            self._sync(lambda error: self._synced(waiting, error))
        except Exception as exc:  # could not even start: answer now, not never
            self._synced(waiting, exc)

    def _synced(self, waiting: list[asyncio.Future[None]], error: BaseException | None) -> None:
        self._syncing = False
        self._sync_next()
        if error is not None:
            log.error("syncing the store failed: %s", error)
            error = self._wrap_error(error)
        for done in waiting:
            _settle(done, error)


class _Transaction:
    """One body's pass through the committer (a class, not a generator: every submit pays
    for this, and two generator-based context managers cost more than the body's SQL)."""

    __slots__ = (
        "_batch", "_committer", "_durable", "_on_abort", "_on_commit", "_on_success", "_value"
    )  # fmt: skip

    def __init__(
        self,
        committer: GroupCommitter,
        on_commit: Callable[[], None],
        durable: bool,
        value: Any,
        on_success: Callable[[], None] | None,
        on_abort: Callable[[], None] | None,
    ) -> None:
        self._committer = committer
        self._on_commit = on_commit
        self._on_success = on_success
        self._on_abort = on_abort
        self._durable = durable
        self._value = value
        self._batch: _Batch | None = None

    async def __aenter__(self) -> Any:
        committer = self._committer
        committer._callers += 1
        try:
            await committer._lock.acquire()  # free at once unless a body is suspended inside
        except BaseException:
            committer._left()
            raise
        try:
            self._batch = committer._open_batch(self._durable)
            committer._execute("SAVEPOINT gaffer_tx")
        except BaseException:
            committer._lock.release()
            committer._left()
            raise
        return self._value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        committer = self._committer
        batch = self._batch
        assert batch is not None
        try:
            try:
                if exc_type is not None:
                    self._undo()
                    return
                try:
                    committer._execute("RELEASE gaffer_tx")
                except BaseException:
                    self._undo()
                    raise
                if self._on_success is not None:
                    self._on_success()
                loop = committer._loop
                done = loop.create_future()
                batch.waiters.append((done, self._durable and committer._sync is not None))
                batch.on_commit.append(self._on_commit)
                if self._on_abort is not None:
                    batch.on_abort.append(self._on_abort)
            finally:
                committer._lock.release()
            await done
        finally:
            committer._left()

    def _undo(self) -> None:
        self._committer._undo_body()
        if self._on_abort is not None:
            _run_all([self._on_abort], "after-abort")


def _run_all(callbacks: list[Callable[[], None]], what: str) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("%s callback failed", what)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    """Answers one caller (unless it stopped waiting: cancelled)."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
