"""fsync of one file in a thread of its own, for the group committer.

A thread-pool hop per sync (``asyncio.to_thread``) copies the context, goes through the
executor's queue and chains two futures; on a small machine that cost the loop more than
the fsync itself. One long-lived thread that waits on a queue, keeps the file open and hands
back the result with one ``call_soon_threadsafe`` (straight to the group committer's
callback, no future or task between) does the same work for less.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

_STOP = None


class FileSyncer:
    """Makes what was written to ``path`` durable, one fsync at a time, off the loop."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._requests: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, Callable[[BaseException | None], None]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, on_done: Callable[[BaseException | None], None]) -> None:
        """Starts an fsync covering everything written to the file so far; ``on_done`` is
        called on the running loop with None, or with the error."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gaffer-fsync", daemon=True)
            self._thread.start()
        self._requests.put((asyncio.get_running_loop(), on_done))

    def close(self) -> None:
        """Stops the thread once the syncs asked for are done, and closes the file."""
        if self._thread is not None:
            self._requests.put(_STOP)
            self._thread.join()
            self._thread = None
        self._forget_fd()

    def _forget_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while (request := self._requests.get()) is not _STOP:
            loop, on_done = request
            error: OSError | None = None
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDONLY)
                os.fsync(self._fd)
            except OSError as exc:
                error = exc
                self._forget_fd()  # a failed fsync may have dropped the pages: reopen
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(on_done, error)
