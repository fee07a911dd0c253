"""Group commit on the event loop: many short write transactions, one COMMIT, one fsync.

Transaction bodies run on the loop thread against a synchronous connection (an SQLite
statement on a warm page cache costs microseconds; a hop to a worker thread and back costs
more than the statement). Bodies run one at a time, each in its own SAVEPOINT (a body that
fails rolls back only its own work). Every body that finishes in the same turn of the loop
joins the open batch; the batch commits at the next turn. A durable caller also waits for the
fsync that covers its commit; fsyncs run in a worker thread, and commits made while one runs
share the next. Under load, batches grow by themselves; an idle store commits each
transaction on its own.

A body that really suspends (awaits I/O) holds the writer until it finishes: nothing else
interleaves with its statements, and the batch waits for it.

A caller returns only after the commit (and, if durable, the fsync) that holds its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class _Batch:
    committed: asyncio.Future[None] = field(default_factory=_future)
    synced: asyncio.Future[None] = field(default_factory=_future)
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    durable: bool = False


class GroupCommitter:
    """Serialises transaction bodies on one connection and batches their commits and syncs.

    Args:
        execute: runs one SQL statement on the writer connection, synchronously.
        begin: the statement that opens a write transaction (``BEGIN IMMEDIATE`` for SQLite).
        wrap_error: turns a failure of BEGIN/COMMIT/sync into the error callers should see.
        sync: makes what is committed durable on disk (None: every COMMIT is durable by
            itself).
    """

    def __init__(
        self,
        execute: Callable[[str], object],
        *,
        begin: str,
        wrap_error: Callable[[BaseException], BaseException],
        sync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._execute = execute
        self._begin = begin
        self._wrap_error = wrap_error
        self._sync = sync
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._unsynced: list[_Batch] = []
        self._sync_wake = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._closed = True
        #: Batches committed since start (for tests and metrics).
        self.commits = 0

    def start(self) -> None:
        self._closed = False
        if self._sync is not None:
            self._syncer = asyncio.create_task(self._sync_loop(), name="gaffer-wal-sync")

    async def close(self) -> None:
        """Commits the open batch and syncs what waits for it, then stops."""
        self._closed = True
        if self._batch is not None:
            async with self._lock:
                if self._batch is not None:
                    self._commit(self._batch)
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._syncer is not None:
            if self._unsynced:
                await self._sync_pending()
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None

    @contextlib.asynccontextmanager
    async def transaction(
        self, on_commit: Callable[[], None], *, durable: bool = True
    ) -> AsyncIterator[None]:
        """Runs the body inside the open batch; returns once the batch committed.

        ``on_commit`` runs after the commit that holds the body's work (not on failure); a
        ``durable`` body also waits until that commit is on disk.
        """
        if self._closed:
            raise self._wrap_error(RuntimeError("the store is closed"))
        async with self._lock:  # free at once unless a body is suspended inside
            batch = self._open_batch()
            self._execute("SAVEPOINT gaffer_tx")
            try:
                yield
                self._execute("RELEASE gaffer_tx")
            except BaseException:
                with contextlib.suppress(Exception):
                    self._execute("ROLLBACK TO gaffer_tx")
                    self._execute("RELEASE gaffer_tx")
                raise
            batch.on_commit.append(on_commit)
            batch.durable = batch.durable or durable
        await asyncio.shield(batch.committed)
        if durable:
            await asyncio.shield(batch.synced)

    def _open_batch(self) -> _Batch:
        if self._batch is not None:
            return self._batch
        try:
            self._execute(self._begin)
        except Exception as exc:
            raise self._wrap_error(exc) from exc
        batch = self._batch = _Batch()
        asyncio.get_running_loop().call_soon(self._flush_soon, batch)
        return batch

    def _flush_soon(self, batch: _Batch) -> None:
        """One turn after the batch opened: the bodies that were ready in that turn joined."""
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
            self._execute("COMMIT")
        except Exception as exc:
            log.error("group commit failed: %s", exc)
            with contextlib.suppress(Exception):
                self._execute("ROLLBACK")
            error = self._wrap_error(exc)
            batch.committed.set_exception(error)
            batch.synced.set_exception(error)
            _retrieve(batch)
            return
        self.commits += 1
        batch.committed.set_result(None)
        for callback in batch.on_commit:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed")
        if self._sync is None or not batch.durable:
            batch.synced.set_result(None)
        else:
            self._unsynced.append(batch)
            self._sync_wake.set()

    async def _sync_loop(self) -> None:
        while True:
            await self._sync_wake.wait()
            self._sync_wake.clear()
            if self._unsynced:
                await self._sync_pending()

    async def _sync_pending(self) -> None:
        """One fsync for every batch committed so far (those that commit meanwhile wait)."""
        assert self._sync is not None
        waiting, self._unsynced = self._unsynced, []
        try:
            await self._sync()
        except Exception as exc:
            log.error("syncing the store failed: %s", exc)
            error = self._wrap_error(exc)
            for batch in waiting:
                batch.synced.set_exception(error)
                _retrieve(batch)
            return
        for batch in waiting:
            batch.synced.set_result(None)


def _retrieve(batch: _Batch) -> None:
    """Marks a failed batch's exceptions as seen (a batch of non-durable callers never
    awaits ``synced``)."""
    for future in (batch.committed, batch.synced):
        future.add_done_callback(lambda f: f.exception())
