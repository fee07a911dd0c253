"""Functions every agent has, so benchmarks and tests need no module of their own.

- ``gaffer.noop()``: returns None at once (the cost of a function job, nothing else).
- ``gaffer.echo(*args, **kwargs)``: returns its arguments (a list, an object, or both as
  ``{"args": [...], "kwargs": {...}}``).
- ``gaffer.sleep(seconds)``: waits without blocking the agent, then returns ``seconds``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gaffer.agent._functions import FunctionRegistry

#: The built-ins; the agent adds them to its configured functions.
registry = FunctionRegistry()


@registry.register("gaffer.noop")
async def noop() -> None:
    """Does nothing."""


@registry.register("gaffer.echo")
async def echo(*args: Any, **kwargs: Any) -> Any:
    """Returns its arguments as they came."""
    if args and kwargs:
        return {"args": list(args), "kwargs": kwargs}
    return kwargs if kwargs else list(args)


@registry.register("gaffer.sleep")
async def sleep(seconds: float) -> float:
    """Sleeps ``seconds`` on the agent's loop."""
    await asyncio.sleep(float(seconds))
    return seconds
