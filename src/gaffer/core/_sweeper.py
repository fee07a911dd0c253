"""The background loop that ends attempts nobody reports on: lapsed leases, passed deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gaffer.core._agents import Agents
from gaffer.domain import StoreUnavailable

log = logging.getLogger(__name__)


async def run_sweeper(agents: Agents, interval: float, stop: asyncio.Event) -> None:
    """Sweeps every ``interval`` s until ``stop`` is set; store faults are logged, not fatal."""
    while not stop.is_set():
        try:
            while await agents.sweep() >= 100:
                pass  # a full batch: more may be waiting
        except StoreUnavailable as exc:
            log.warning("sweep skipped: %s", exc)
        except Exception:
            log.exception("sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
