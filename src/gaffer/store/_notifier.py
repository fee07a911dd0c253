"""In-process wake-ups: a writer publishes topics after commit, readers wait on a subscription.

A reader subscribes *before* it reads the store and clears its flag before each read, so a
publish that lands between the read and the wait is never lost. Topics without subscribers
cost nothing. A callback (``on_publish``) runs at the publish itself, a turn of the loop
before any waiter resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

from gaffer.domain import StoreUnavailable
from gaffer.store._base import WORK_TOPIC_PREFIXES


class Subscription:
    """A flag set whenever one of its topics is published."""

    def __init__(self, notifier: Notifier, topics: tuple[str, ...]) -> None:
        self._notifier = notifier
        self.topics = topics
        self._event = asyncio.Event()

    def clear(self) -> None:
        self._event.clear()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> bool:
        """True when woken, False when ``timeout`` passed first.

        Raises:
            StoreUnavailable: the server is shutting down; the caller should resume elsewhere.
        """
        self._notifier.check_open()
        if timeout is not None and timeout <= 0:
            return self._event.is_set()
        try:
            # asyncio.timeout, not wait_for: no extra task, so a wake-up costs one turn of
            # the loop instead of two.
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._notifier.check_open()
        return True

    def close(self) -> None:
        self._notifier._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Notifier:
    """Topic -> subscriptions. Not thread-safe: use it from the event loop only."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Wakes every waiter with StoreUnavailable: used on shutdown so streams end at once."""
        self._closing.set()
        for subs in list(self._subs.values()):
            for sub in subs:
                sub.set()

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    async def wait_closed(self) -> None:
        """Returns once the notifier is closed (the server is shutting down)."""
        await self._closing.wait()

    def check_open(self) -> None:
        if self._closing.is_set():
            raise StoreUnavailable("the server is shutting down; resume from your cursor")

    def subscribe(self, *topics: str) -> Subscription:
        sub = Subscription(self, topics)
        for topic in topics:
            self._subs.setdefault(topic, set()).add(sub)
        return sub

    @contextlib.contextmanager
    def on_publish(self, topic: str, callback: Callable[[], None]) -> Iterator[None]:
        """Calls ``callback`` whenever ``topic`` is published, while inside (it must not
        raise)."""
        self._callbacks.setdefault(topic, []).append(callback)
        try:
            yield
        finally:
            callbacks = self._callbacks[topic]
            callbacks.remove(callback)
            if not callbacks:
                del self._callbacks[topic]

    def publish(self, topics: Iterable[str]) -> None:
        for topic in topics:
            for sub in self._subs.get(topic, ()):
                sub.set()
            for callback in self._callbacks.get(topic, ()):
                callback()

    def publish_committed(self, topics: Iterable[str]) -> None:
        """Publishes what a commit touched; when it wakes a claim, the rest a turn later.

        Claims wait on queue topics and agents on their own. When one of them is woken,
        streams and waits for a job's end are woken at the next turn of the loop: by then
        the claim has answered with the job the submit handed it, or run its body and joined
        a batch, which commits before the event tail reads. So the job reaches its agent
        before the sends to followers, and they get its CREATED and CLAIMED events in one
        read. Otherwise everything is woken at once.
        """
        later: list[str] = []
        woke_work = False
        for topic in topics:
            if topic.startswith(WORK_TOPIC_PREFIXES):
                woke_work |= topic in self._subs
                self.publish((topic,))
            else:
                later.append(topic)
        if not later:
            return
        if woke_work:
            asyncio.get_running_loop().call_soon(self.publish, later)
        else:
            self.publish(later)

    def subscriber_count(self) -> int:
        return len({sub for subs in self._subs.values() for sub in subs})

    def _remove(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]
