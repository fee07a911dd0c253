"""Runs one process in its own process group, streaming its output to a sink.

Independent of gRPC so that it can be tested alone: output goes to an async callback, and the
caller decides what a timeout or a kill means for the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gaffer.domain import stays_inside

logger = logging.getLogger(__name__)

READ_SIZE = 65536
# How long output readers may lag behind the process's exit before they are given up on
# (a child that escaped the process group can hold a pipe open forever).
_DRAIN_TIMEOUT = 2.0


@contextlib.contextmanager
def children_watched_with_pidfds() -> Iterator[None]:
    """While inside, asyncio learns of a child's exit from a pidfd on the running loop.

    Python 3.11's default watcher starts a thread per child and blocks the loop until that
    thread runs: the larger part of starting a short process. Python 3.12 and later use
    pidfds by themselves (and deprecate choosing a watcher); kernels before 5.3 have none.
    On leaving, the default watcher is put back (the pidfd one is bound to this loop).
    """
    usable = sys.version_info < (3, 12) and hasattr(os, "pidfd_open")
    if usable:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:
            usable = False
    if not usable:
        yield
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())


class OutputStream(enum.Enum):
    """Which pipe a piece of output came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


#: Receives (stream, byte offset in that stream, bytes) as output arrives; may apply backpressure.
OutputSink = Callable[[OutputStream, int, bytes], Awaitable[None]]


class InvalidPathError(ValueError):
    """A path in a job's spec points outside its working directory."""


@dataclass(frozen=True)
class InputFile:
    """A file written into the working directory before the run."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class RunSpec:
    """What to run: argv directly (no shell), the full environment, stdin and a time bound.

    On timeout the process group gets TERM, then KILL after ``kill_grace`` seconds.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    timeout: float | None = None
    kill_grace: float = 5.0


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    ``exit_code`` follows the shell: 128 + N when killed by signal N. ``timed_out`` is set when
    the spec's timeout ended the run, ``killed_by`` when :meth:`Process.kill` did.
    """

    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    killed_by: str | None = None


def check_relative(path: str) -> PurePosixPath:
    """Returns ``path`` if it is relative and stays inside its base, else raises."""
    if not stays_inside(path):
        raise InvalidPathError(f"path {path!r} must be relative and must not contain '..'")
    return PurePosixPath(path)


def write_inputs(workdir: Path, inputs: Iterable[InputFile]) -> None:
    """Writes the spec's input files into ``workdir``; mode 0 means 0o644.

    Raises:
        InvalidPathError: a path is absolute, contains "..", or leads through a symlink
            out of ``workdir``.
    """
    root = workdir.resolve()
    for item in inputs:
        target = root / check_relative(item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            raise InvalidPathError(f"path {item.path!r} leads outside the working directory")
        if target.is_symlink():
            target.unlink()
        target.write_bytes(item.content)
        target.chmod(item.mode or 0o644)


def resolve_outputs(workdir: Path, patterns: Iterable[str]) -> list[str]:
    """Relative names of the regular files in ``workdir`` matched by ``patterns``.

    ``**`` matches directories recursively. Matches whose real path is outside ``workdir``
    (through a symlink) are skipped, so an upload never reads what the job does not own.

    Raises:
        InvalidPathError: a pattern is absolute or contains "..".
    """
    root = workdir.resolve()
    names: set[str] = set()
    for pattern in patterns:
        check_relative(pattern)
        try:
            matches = list(root.glob(pattern))
        except ValueError as error:  # e.g. "a**": ** must be a whole component
            raise InvalidPathError(f"bad output pattern {pattern!r}: {error}") from error
        for match in matches:
            if not match.is_file() or not match.resolve().is_relative_to(root):
                continue
            names.add(match.relative_to(root).as_posix())
    return sorted(names)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Sends ``sig`` to a process group; False once the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pgid was reused by someone else's group
        return False
    return True


class Process:
    """One running process, leader of its own process group (``pgid == pid``)."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: RunSpec, sink: OutputSink) -> None:
        self._proc = proc
        self._spec = spec
        self._sink = sink
        self._killed_by: str | None = None
        self._timed_out = False
        self._wait = asyncio.create_task(proc.wait())
        self._tasks = [
            asyncio.create_task(self._pump(proc.stdout, OutputStream.STDOUT)),
            asyncio.create_task(self._pump(proc.stderr, OutputStream.STDERR)),
        ]
        self._stdin_task = asyncio.create_task(self._feed(spec.stdin))
        self._result: asyncio.Task[RunResult] = asyncio.create_task(self._supervise())

    @classmethod
    async def start(cls, spec: RunSpec, workdir: Path, sink: OutputSink) -> Process:
        """Starts ``spec.argv`` in ``workdir`` in a new session.

        Raises:
            OSError: the program could not be started (not found, not executable, ...).
        """
        if not spec.argv:
            raise ValueError("argv must not be empty")
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            cwd=workdir,
            env=dict(spec.env),
            stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        logger.debug("started pid %s: %s", proc.pid, spec.argv)
        return cls(proc, spec, sink)

    @property
    def pid(self) -> int:
        """The process id, which is also its process group id."""
        return self._proc.pid

    async def wait(self) -> RunResult:
        """Waits for the process to exit and for all its output to reach the sink."""
        return await asyncio.shield(self._result)

    async def kill(self, grace: float, reason: str) -> None:
        """TERMs the process group, then KILLs it after ``grace`` seconds (at once if 0).

        ``reason`` is kept as ``RunResult.killed_by`` unless a timeout or an earlier kill
        came first. Returns once the process has exited.
        """
        if self._killed_by is None and not self._timed_out:
            self._killed_by = reason
        await self._escalate(grace)

    async def _escalate(self, grace: float) -> None:
        if self._wait.done():
            return
        if grace > 0 and _signal_group(self.pid, signal.SIGTERM):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._wait), grace)
        if not self._wait.done():
            _signal_group(self.pid, signal.SIGKILL)
        await asyncio.shield(self._wait)

    async def _supervise(self) -> RunResult:
        try:
            await asyncio.wait_for(asyncio.shield(self._wait), self._spec.timeout)
        except TimeoutError:
            if self._killed_by is None:
                self._timed_out = True
            await self._escalate(self._spec.kill_grace)
        code = await self._wait
        # Whatever the leader left behind in its group goes with it: no process outlives a run.
        _signal_group(self.pid, signal.SIGKILL)
        await self._drain()
        sig = -code if code < 0 else None
        return RunResult(
            exit_code=128 + sig if sig is not None else code,
            signal=sig,
            timed_out=self._timed_out,
            killed_by=self._killed_by,
        )

    async def _drain(self) -> None:
        done, pending = await asyncio.wait(self._tasks, timeout=_DRAIN_TIMEOUT)
        for task in pending:
            logger.warning("pid %s: output still open after exit; giving up on it", self.pid)
            task.cancel()
        self._stdin_task.cancel()
        for task in done:
            error = task.exception()
            if error is not None:
                raise error

    async def _pump(self, reader: asyncio.StreamReader | None, stream: OutputStream) -> None:
        assert reader is not None
        offset = 0
        while data := await reader.read(READ_SIZE):
            await self._sink(stream, offset, data)
            offset += len(data)

    async def _feed(self, data: bytes) -> None:
        writer = self._proc.stdin
        if writer is None:
            return
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("pid %s closed stdin before reading all of it", self.pid)
        finally:
            writer.close()
