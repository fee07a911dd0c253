"""Gaffer's core: the lifecycle over the store, with no gRPC in sight."""

from gaffer.core._agents import Agents, Fence, HeartbeatResult, Outcome
from gaffer.core._context import Caller, CoreSettings
from gaffer.core._event_tail import TailSlice
from gaffer.core._jobs import Jobs, LogRequest
from gaffer.core._sweeper import run_sweeper

__all__ = [
    "Agents",
    "Caller",
    "CoreSettings",
    "Fence",
    "HeartbeatResult",
    "Jobs",
    "LogRequest",
    "Outcome",
    "TailSlice",
    "run_sweeper",
]
