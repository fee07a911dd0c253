"""Who is calling, and the settings the core runs with."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gaffer.domain import Limits


@dataclass(frozen=True)
class Caller:
    """The principal behind a call: its tenant, and how the history names it."""

    tenant: str = "default"
    actor: str = "client:default"


@dataclass(frozen=True)
class CoreSettings:
    lease_ttl: float = 15.0
    heartbeat_interval: float = 5.0
    # The server fails an attempt this long after its timeout if the agent said nothing.
    timeout_grace: float = 1.0
    # How often the sweeper looks for lapsed leases and deadlines.
    sweep_interval: float = 0.5
    # Long polls (claim, heartbeat, wait) re-check the store this often even when no wake-up
    # came: for jobs whose retry backoff ended, and for wake-ups another replica's lost.
    recheck_interval: float = 1.0
    keepalive_default: float = 15.0
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.time
