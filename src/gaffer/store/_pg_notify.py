"""Wake-ups across replicas: topics sent with NOTIFY on commit, received on a LISTEN connection.

A payload names topics only (ids, queue names), one per line after the sending store's
instance id, and stays under PostgreSQL's 8000-byte limit by splitting into several
notifications. NOTIFY is a hint: the receiving replica publishes the topics to its local
Notifier, and readers re-check the store on their own timers in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from gaffer.domain import StoreUnavailable
from gaffer.store._notifier import Notifier

log = logging.getLogger(__name__)

# PostgreSQL refuses payloads of 8000 bytes or more; keep a margin.
MAX_PAYLOAD_BYTES = 7900

# Errors that mean "the database is not there", as opposed to a bug in a statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def encode_payloads(instance: str, topics: Iterable[str]) -> list[str]:
    """``instance`` then topics, one per line, split so that each payload fits a NOTIFY."""
    payloads: list[str] = []
    lines = [instance]
    size = len(instance.encode())
    for topic in sorted(topics):
        length = len(topic.encode()) + 1
        if size + length > MAX_PAYLOAD_BYTES and len(lines) > 1:
            payloads.append("\n".join(lines))
            lines, size = [instance], len(instance.encode())
        if size + length > MAX_PAYLOAD_BYTES:
            log.warning("topic of %d bytes is too long to notify; skipped", length)
            continue
        lines.append(topic)
        size += length
    if len(lines) > 1:
        payloads.append("\n".join(lines))
    return payloads


def decode_payload(payload: str) -> tuple[str, list[str]]:
    """The sending instance and the topics of one payload."""
    instance, _, rest = payload.partition("\n")
    return instance, [topic for topic in rest.split("\n") if topic]


class Listener:
    """One dedicated connection LISTENing on ``channel``; reconnects when it drops.

    Received topics from other instances go to the local notifier. After a reconnect every
    subscribed topic is woken once, since notifications sent while it was away are lost.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        notifier: Notifier,
        instance: str,
        *,
        check_interval: float = 10.0,
        retry_max: float = 2.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._notifier = notifier
        self._instance = instance
        self._check_interval = check_interval
        self._retry_max = retry_max
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        # How many times the connection was (re)established: lets tests wait for a reconnect.
        self.generation = 0

    @property
    def server_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self) -> None:
        """Connects and LISTENs before returning, then keeps the connection up in the background.

        Raises:
            StoreUnavailable: the first connection failed.
        """
        try:
            lost = await self._listen()
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL listener could not connect: {exc}") from exc
        self._task = asyncio.create_task(self._keep_up(lost), name="gaffer-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _listen(self) -> asyncio.Event:
        conn = await self._connect()
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.generation += 1
        self.connected.set()
        return lost

    async def _drop(self) -> None:
        self.connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except CONNECTION_ERRORS:
                conn.terminate()
            except BaseException:
                conn.terminate()
                raise

    async def _keep_up(self, lost: asyncio.Event) -> None:
        while True:
            await self._watch(lost)
            await self._drop()
            log.warning("PostgreSQL listener connection lost; reconnecting")
            delay = 0.05
            while True:
                try:
                    lost = await self._listen()
                    break
                except CONNECTION_ERRORS as exc:
                    log.warning("PostgreSQL listener cannot reconnect: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max)
            # Notifications sent while disconnected are gone: wake every local follower once.
            self._notifier.publish(list(self._notifier._subs))

    async def _watch(self, lost: asyncio.Event) -> None:
        """Returns when the connection dropped, or stopped answering a periodic check."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_interval)
            if lost.is_set() or self._conn is None:
                return
            try:
                await self._conn.fetchval("SELECT 1", timeout=self._check_interval)
            except CONNECTION_ERRORS as exc:
                log.warning("PostgreSQL listener check failed: %s", exc)
                return

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        instance, topics = decode_payload(payload)
        if instance != self._instance:
            self._notifier.publish(topics)
