"""How an agent is configured: one frozen dataclass, built by the entry point."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: PATH given to jobs when the entry point passes none; library code never reads os.environ.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_base_env() -> dict[str, str]:
    """PATH and LANG for jobs when the entry point has none to pass."""
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs to know; the CLI builds it from flags.

    Attributes:
        server: The server's address, ``"host:port"``, or several replicas of one Gaffer,
            ``"host:port,host:port"``: the agent uses one and moves to another when it goes away.
        name: The agent's name; registering the same name again is safe.
        slots: Attempts run at once.
        labels: Labels matched against a job's node selector.
        queues: Queues claimed from.
        work_dir: Where per-attempt working directories go; ``None`` means a fresh temp dir.
        claim_wait: Long-poll wait of one ClaimJob call, in seconds.
        kill_grace: Seconds between TERM and KILL on a timeout.
        cancel_grace: Seconds between TERM and KILL on a cancel (kept short: a cancel must be
            quick).
        stop_grace: Seconds running attempts get to finish once the agent is told to stop.
        rpc_timeout: Deadline of every unary call that is not a long poll, in seconds.
        keep_work_dirs: Keep each attempt's working directory after it finished (debugging).
        base_env: The minimal environment every job starts from (PATH, LANG); the job's own env,
            HOME and GAFFER_* are added on top.
        functions: Callables that ``function`` jobs may name (see :class:`FunctionRegistry`);
            the built-ins of :mod:`gaffer.agent.builtin_functions` are always there too.
    """

    server: str
    name: str
    slots: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    queues: tuple[str, ...] = ("default",)
    work_dir: Path | None = None
    claim_wait: float = 10.0
    kill_grace: float = 5.0
    cancel_grace: float = 1.0
    stop_grace: float = 5.0
    rpc_timeout: float = 10.0
    keep_work_dirs: bool = False
    base_env: Mapping[str, str] = field(default_factory=default_base_env)
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, not {self.slots}")
        if not self.name:
            raise ValueError("name must not be empty")
        if self.stop_grace < 0:
            raise ValueError(f"stop_grace must not be negative, not {self.stop_grace}")
