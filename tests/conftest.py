"""Fixtures that start real Gaffer processes on loopback port 0."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import AgentProc, ServerProc

_names = itertools.count(1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    """A `gaffer server` on a fresh SQLite data dir."""
    proc = ServerProc.launch(tmp_path / "data")
    yield proc
    proc.stop()


@pytest.fixture
def start_agent(server: ServerProc) -> Iterator[Callable[..., AgentProc]]:
    """Starts `gaffer agent` processes against ``server``; all are stopped at teardown."""
    agents: list[AgentProc] = []

    def start(*extra: str, name: str | None = None) -> AgentProc:
        agent = AgentProc.launch(server.address, name or f"agent-{next(_names)}", *extra)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(start_agent: Callable[..., AgentProc]) -> AgentProc:
    """One agent with 4 slots."""
    return start_agent("--slots", "4")
