"""The agent's exceptions."""

from __future__ import annotations


class AgentError(Exception):
    """The agent cannot carry on, e.g. the server refused to register it."""


class Fenced(Exception):
    """The server refused a write about an attempt that is no longer ours."""
