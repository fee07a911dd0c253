"""fsync of one file in a thread of its own, for the group committer.

A thread-pool hop per sync (``asyncio.to_thread``) copies the context, goes through the
executor's queue and chains two futures; on a small machine that cost the loop more than
the fsync itself. One long-lived thread that waits on a queue, keeps the file open and hands
back the result with one ``call_soon_threadsafe`` (straight to the group committer's
callback, no future or task between) does the same work for less.

A failed fsync is final: Linux may drop the pages it could not write and report the next
fsync as a success, so every later sync fails too (as PostgreSQL panics), until the store is
opened again. Failing to open the file is not: nothing was lost, the next sync tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

OnDone = Callable[[BaseException | None], None]
_STOP = None


class FileSyncer:
    """Makes what was written to ``path`` durable, one fsync at a time, off the loop."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._failed: OSError | None = None
        self._closed = False
        self._requests: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, OnDone] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def start(self, on_done: OnDone) -> None:
        """Starts an fsync covering everything written to the file so far; ``on_done`` is
        called on the running loop with None, or with the error.

        Raises:
            RuntimeError: the syncer is closed, or its thread cannot start.
        """
        if self._closed:
            raise RuntimeError("the WAL syncer is closed")
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._run, name="gaffer-fsync", daemon=True)
            thread.start()  # raises before anything is queued for a thread that is not there
            self._thread = thread
        self._requests.put((asyncio.get_running_loop(), on_done))

    def close(self) -> None:
        """Stops the thread once the syncs asked for are done, and closes the file."""
        self._closed = True
        if self._thread is not None:
            self._requests.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while (request := self._requests.get()) is not _STOP:
            loop, on_done = request
            error: BaseException | None
            try:
                error = self._sync()
            except BaseException as exc:  # whatever happens, the caller gets an answer
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(on_done, error)

    def _sync(self) -> OSError | None:
        if self._failed is not None:
            return self._failed
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
        except OSError as exc:
            return exc
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._failed = exc
            return exc
        return None
