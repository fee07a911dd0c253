"""Test helpers: real Gaffer processes on loopback port 0, and polling with a deadline."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LISTENING = re.compile(r"listening on (\S+)")
#: What a server started with ``--metrics-listen`` prints: the endpoint's address.
METRICS = re.compile(r"metrics on http://(\S+)/metrics")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Polls ``condition`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """The asyncio twin of :func:`wait_until`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def gaffer_command(*args: str) -> list[str]:
    """The CLI as a subprocess argv, run by this interpreter."""
    return [sys.executable, "-m", "gaffer", *args]


@dataclass
class Proc:
    """A real gaffer subprocess whose output is collected by a reader thread."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        proc = cls(popen)
        proc._reader = threading.Thread(target=proc._read, daemon=True)
        proc._reader.start()
        return proc

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            for line in list(self.lines):
                match = pattern.search(line)
                if match:
                    return match
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited {self.popen.returncode} before {pattern.pattern!r}:\n"
                    + self.output()
                )
            return None

        return wait_until(found, timeout=timeout, what=pattern.pattern)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL of the whole process group if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return self.popen.returncode


@dataclass
class ServerProc(Proc):
    address: str = ""
    data_dir: Path = Path()

    @classmethod
    def launch(cls, data_dir: Path, *extra: str) -> ServerProc:
        proc = cls.start(
            gaffer_command("server", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra)
        )
        assert isinstance(proc, ServerProc)
        proc.data_dir = data_dir
        proc.address = proc.wait_for_line(LISTENING).group(1)
        return proc


@dataclass
class AgentProc(Proc):
    name: str = ""

    @classmethod
    def launch(cls, server: str, name: str, *extra: str) -> AgentProc:
        proc = cls.start(gaffer_command("agent", "--server", server, "--name", name, *extra))
        assert isinstance(proc, AgentProc)
        proc.name = name
        proc.wait_for_line(re.compile(r"registered"))
        return proc


async def scrape(address: str) -> dict[str, float]:
    """A server's metrics from its Prometheus text endpoint, by name with labels."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    assert body.startswith("HTTP/1.0 200"), body
    values: dict[str, float] = {}
    for line in body.split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values
