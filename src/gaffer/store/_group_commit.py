"""Group commit: many short write transactions share one database transaction and one fsync.

Callers enter ``async with committer.transaction():`` as usual. A single writer task opens a
database transaction, then gives each waiting caller its turn inside it, one at a time, each
in its own SAVEPOINT (a caller that fails rolls back only its own work). When no caller is
waiting (or the batch is full) it commits once and releases every caller of the batch. Under
load, batches grow by themselves and the cost of the commit is shared; an idle store commits
each transaction on its own, as before.

A caller returns only after the commit that holds its work: durability is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Statement = Callable[[str], Awaitable[object]]


@dataclass(eq=False)
class _Ticket:
    turn: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    committed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    on_commit: Callable[[], None] | None = None
    durable: bool = True


class GroupCommitter:
    """Serialises transaction bodies on one connection and batches their commits.

    Args:
        execute: runs one SQL statement on the writer connection.
        begin: the statement that opens a write transaction (``BEGIN IMMEDIATE`` for SQLite).
        max_batch: callers per database transaction at most.
        wrap_error: turns a failure of BEGIN/COMMIT into the error callers should see.
        sync: makes a committed batch durable on disk; run after COMMIT when the batch holds
            a durable transaction (None: every COMMIT is durable by itself).
    """

    def __init__(
        self,
        execute: Statement,
        *,
        begin: str,
        max_batch: int = 512,
        wrap_error: Callable[[BaseException], BaseException],
        sync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._execute = execute
        self._begin = begin
        self._max_batch = max_batch
        self._wrap_error = wrap_error
        self._sync = sync
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._run(), name="gaffer-group-commit")

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    @contextlib.asynccontextmanager
    async def transaction(
        self, on_commit: Callable[[], None], *, durable: bool = True
    ) -> AsyncIterator[None]:
        """Runs the body inside the current batch; returns once the batch committed.

        ``on_commit`` runs after the commit that holds the body's work (not on failure); a
        ``durable`` body also waits until that commit is on disk.
        """
        if self._closed or self._writer is None:
            raise self._wrap_error(RuntimeError("the store is closed"))
        ticket = _Ticket(on_commit=on_commit, durable=durable)
        self._queue.append(ticket)
        self._wake.set()
        try:
            await ticket.turn
        except BaseException:
            if not ticket.turn.done():
                ticket.turn.cancel()  # the writer skips a ticket whose turn it cannot give
            elif not ticket.done.done():
                ticket.done.set_result(False)
            raise
        ok = False
        try:
            await self._execute("SAVEPOINT gaffer_tx")
            try:
                yield
                await self._execute("RELEASE gaffer_tx")
                ok = True
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._execute("ROLLBACK TO gaffer_tx")
                    await self._execute("RELEASE gaffer_tx")
                raise
        finally:
            if not ticket.done.done():
                ticket.done.set_result(ok)
        await asyncio.shield(ticket.committed)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._execute(self._begin)
            except Exception as exc:
                self._fail_waiting(self._wrap_error(exc))
                continue
            batch: list[_Ticket] = []
            while self._queue and len(batch) < self._max_batch:
                ticket = self._queue.popleft()
                if ticket.turn.done():  # cancelled while waiting
                    continue
                ticket.turn.set_result(None)
                if await ticket.done:
                    batch.append(ticket)
            try:
                await self._execute("COMMIT")
                if self._sync is not None and any(t.durable for t in batch):
                    await self._sync()
            except Exception as exc:
                log.error("group commit failed: %s", exc)
                with contextlib.suppress(Exception):
                    await self._execute("ROLLBACK")
                error = self._wrap_error(exc)
                for ticket in batch:
                    ticket.committed.set_exception(error)
                continue
            for ticket in batch:
                ticket.committed.set_result(None)
                if ticket.on_commit is not None:
                    ticket.on_commit()

    def _fail_waiting(self, error: BaseException) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.turn.done():
                ticket.turn.set_exception(error)
