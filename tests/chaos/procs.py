"""Real processes and real faults: servers restarted on one port, agents, SIGKILL and SIGSTOP.

Job processes run in sessions of their own, so killing an agent leaves them orphaned; they are
found by a marker in their environment (``/proc/PID/environ``) and killed by the caller.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import AgentProc, Proc, ServerProc, gaffer_command, wait_until

#: The environment variable that marks a test's job processes.
MARKER = "GAFFER_FAULTS_RUN"
REGISTERED = re.compile(r"registered")


def new_marker() -> str:
    return uuid.uuid4().hex


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment, or {} when it is gone or not ours to read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def marked_pids(marker: str, **env: str) -> list[int]:
    """Live processes whose environment carries ``MARKER=marker`` and every ``env`` pair."""
    wanted = {MARKER: marker, **env}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        environ = environ_of(pid)
        if environ and all(environ.get(k) == v for k, v in wanted.items()) and is_alive(pid):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each process and its process group (a job's group is led by its first process)."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)


def kill_marked(marker: str, timeout: float = 10.0) -> int:
    """Kills every process marked with ``marker``; returns how many there were."""
    pids = marked_pids(marker)
    kill_pids(pids)
    wait_until(lambda: not marked_pids(marker), timeout=timeout, what="marked processes to die")
    return len(pids)


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hard_kill(proc: Proc, timeout: float = 10.0) -> None:
    """SIGKILL (after SIGCONT, in case it was frozen) and reap the process."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(timeout)
    if proc._reader is not None:
        proc._reader.join(timeout)


@dataclass
class Server:
    """A `gaffer server` that can be SIGKILLed and restarted on the same port and data dir."""

    data_dir: Path
    flags: tuple[str, ...] = ()
    port: int = 0
    proc: ServerProc | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Server:
        assert self.proc is None or self.proc.popen.poll() is not None, "already running"
        listen = ("--listen", self.address) if self.port else ()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.proc = ServerProc.launch(self.data_dir, *self.flags, *listen)
                break
            except AssertionError:
                # The port may linger for a moment after a kill; anything else fails for good.
                if not self.port or time.monotonic() > deadline:
                    raise
        self.port = int(self.proc.address.rpartition(":")[2])
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush beyond what was committed."""
        assert self.proc is not None
        hard_kill(self.proc)
        self.outputs.append(self.proc.output())

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.signal(signal.SIGCONT)
            self.proc.stop()
            self.outputs.append(self.proc.output())


def launch_agent(address: str, name: str, *extra: str, verbose: bool = True) -> AgentProc:
    """`gaffer [-v] agent`; -v logs what the agent does with its attempts (claims, fencing)."""
    argv = gaffer_command(*(["-v"] if verbose else []), "agent", "--server", address)
    proc = AgentProc.start([*argv, "--name", name, *extra])
    assert isinstance(proc, AgentProc)
    proc.name = name
    proc.wait_for_line(REGISTERED)
    return proc


@contextlib.contextmanager
def frozen(proc: Proc) -> Iterator[None]:
    """SIGSTOP for the block, SIGCONT after it (also when the block fails)."""
    proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal(signal.SIGCONT)


def stop_all(procs: Iterable[Proc]) -> None:
    """Stops processes started by a test: SIGCONT first (a frozen one cannot take SIGTERM)."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.signal(signal.SIGCONT)
            try:
                proc.stop(timeout=10)
            except subprocess.TimeoutExpired:
                hard_kill(proc)
