"""Processes of a benchmark: start them, watch their CPU and memory, and always stop them.

Every process is started in its own session and registered with a :class:`Procs`; leaving the
``with Procs()`` block stops all of them (TERM, then KILL of the whole group), on failure too.
Load generators are ``python -m bench.MODULE load ...`` subprocesses that print one JSON line
last: :meth:`Procs.load` runs one and returns that line parsed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a load reported nothing)."""


def python(*args: str) -> list[str]:
    """An argv running this interpreter."""
    return [sys.executable, *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Proc:
    """A subprocess whose output lines are collected by a reader thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    #: A server's data dir, removed with :meth:`Procs.stop` (unless ``keep_dir``).
    data_dir: Path | None = None
    _reader: threading.Thread | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self, last: int = 40) -> str:
        return "\n".join(self.lines[-last:])

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 30.0) -> re.Match[str]:
        """The first output line matching ``pattern``; BenchError if the process ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.popen.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise BenchError(
                        f"{self.name} exited {self.popen.returncode} before "
                        f"{regex.pattern!r}:\n{self.output()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.name}: no {regex.pattern!r} within {timeout}s:\n{self.output()}"
                    )
                self._changed.wait(min(left, 0.2))

    def wait(self, timeout: float | None = None) -> int:
        code = self.popen.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """TERM, then KILL of the whole process group if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Whatever the process left behind in its group (jobs of an agent, pool workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return self.popen.returncode

    def cpu_seconds(self) -> float:
        """User plus system CPU of the process and its waited-for children, so far."""
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """CPU seconds of ``pid`` (user + system, reaped children included) and, with ``tree``,
    of its live descendants (a Celery pool, an agent's running jobs); 0 if gone."""
    total = _own_cpu(pid)
    if tree:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                total += _own_cpu(child.pid)
    return total


def _own_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / _CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MB (2**20 bytes), 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class CpuWindow:
    """CPU share of named processes over a window: 100 means one core busy all along."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = dict(pids)
        self._start = time.monotonic()
        self._cpu = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def percent(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return {
            name: round(100 * (cpu_seconds(pid) - self._cpu[name]) / elapsed, 1)
            for name, pid in self._pids.items()
        }


class RssSampler:
    """Peak VmRSS of one process, sampled by a thread every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self.peak_mb = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, rss_mb(self._pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb(self._pid))


class Procs:
    """Starts processes and stops every one of them on exit, failure included."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []
        self._dirs: list[Path] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        # Loads and agents first, the servers they talk to last.
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()

    def stop(self, proc: Proc, *, keep_dir: bool = False) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.data_dir is not None and not keep_dir:
            shutil.rmtree(proc.data_dir, ignore_errors=True)

    def temp_dir(self, prefix: str) -> Path:
        """A fresh directory, removed on exit."""
        path = Path(tempfile.mkdtemp(prefix=f"gaffer-bench-{prefix}-"))
        self._dirs.append(path)
        return path

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**_env(), **(env or {})},
            cwd=cwd or ROOT,
            start_new_session=True,
        )
        proc = Proc(name, popen)
        self._procs.append(proc)
        proc._reader = threading.Thread(target=proc._read, daemon=True)
        proc._reader.start()
        return proc

    def gaffer_server(self, data_dir: Path | None = None, *extra: str) -> tuple[Proc, str]:
        """A `gaffer server` on 127.0.0.1:0 and a fresh data dir; (process, address)."""
        data_dir = data_dir or self.temp_dir("data")
        argv = python(
            "-m", "gaffer", "server", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)
        )
        proc = self.start("gaffer-server", [*argv, *extra])
        proc.data_dir = data_dir
        address = proc.wait_for(LISTENING).group(1)
        return proc, address

    def gaffer_agent(self, address: str, name: str, slots: int, *extra: str) -> Proc:
        argv = python(
            "-m", "gaffer", "agent", "--server", address, "--name", name, "--slots", str(slots)
        )
        proc = self.start(name, [*argv, *extra])
        proc.wait_for("registered")
        return proc

    def load(
        self,
        module: str,
        *args: str,
        timeout: float = 600.0,
        name: str = "",
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Runs ``python -m bench.MODULE load ARGS`` and returns its last line, parsed as JSON."""
        argv = python("-m", f"bench.{module}", "load", *args)
        return self.result(self.start(name or f"load:{module}", argv, env=env), timeout)

    def result(self, proc: Proc, timeout: float = 600.0) -> dict[str, Any]:
        """The JSON a load process printed last, once it exited 0."""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"{proc.name} did not finish within {timeout}s") from error
        finally:
            self.stop(proc)
        if code != 0:
            raise BenchError(f"{proc.name} exited {code}:\n{proc.output()}")
        for line in reversed(proc.lines):
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        raise BenchError(f"{proc.name} printed no result:\n{proc.output()}")


def emit(result: dict[str, Any]) -> None:
    """What a load process prints last: its result as one JSON line."""
    print(json.dumps(result), flush=True)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turns SIGTERM into SystemExit so that ``finally`` blocks (and Procs) still run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
