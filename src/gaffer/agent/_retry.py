"""Retrying calls: backoff, and what a gRPC error means for the agent."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from gaffer.agent._errors import Fenced

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Codes after which the same call may simply be tried again (the server is away, restarting,
#: busy, or lost a race); every agent write is idempotent, so a repeat is safe.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
#: What grpc.aio's client reports when a write on a call whose connection just died fails
#: (cygrpc.InternalError, as INTERNAL): the connection's loss, not the server's answer. Seen
#: on the Session stream when a replica was killed; a client stream fed by an iterator (an
#: artifact's upload) writes through the same code, and its call then ends with it.
_DEAD_CONNECTION = "Internal error from Core"


def code_of(error: BaseException) -> grpc.StatusCode | None:
    """The status code of a gRPC error, or None for anything else."""
    if isinstance(error, grpc.RpcError):
        code = error.code()
        return code if isinstance(code, grpc.StatusCode) else None
    return None


def describe(error: BaseException) -> str:
    """A short one-line account of an error, for logs (an AioRpcError's repr spans lines)."""
    code = code_of(error)
    if code is None:
        return repr(error)
    details = error.details() if hasattr(error, "details") else ""
    return f"{code.name}: {details}" if details else code.name


def lost_connection(error: BaseException) -> bool:
    """Whether grpc's client failed a write because the connection had died (see
    _DEAD_CONNECTION); the call then ends INTERNAL although the server said nothing."""
    return (
        code_of(error) == grpc.StatusCode.INTERNAL
        and isinstance(error, grpc.RpcError)
        and error.details() == _DEAD_CONNECTION
    )


def is_transient(error: BaseException) -> bool:
    """Whether the same call may simply be tried again (see TRANSIENT)."""
    return code_of(error) in TRANSIENT or lost_connection(error)


def is_fenced(error: BaseException) -> bool:
    """FAILED_PRECONDITION (stale attempt) or NOT_FOUND (job unknown, e.g. a fresh store)."""
    return code_of(error) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class Backoff:
    """Exponential backoff with full jitter; ``reset()`` after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> None:
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._next = initial

    def reset(self) -> None:
        self._next = self._initial

    def delay(self) -> float:
        """The next delay (grows each call)."""
        current = self._next
        self._next = min(self._maximum, self._next * self._factor)
        return random.uniform(current / 2, current)

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay())


async def call_with_retry(
    call: Callable[[], Awaitable[T]], *, what: str, give_up_after: float | None = None
) -> T:
    """Runs a unary write until the server answers, retrying transient errors with backoff.

    By default it never gives up on a transient error: a server that restarts keeps the
    attempt's lease for one ttl, so the write is still wanted when it comes back (and if it
    is not, the server says so: Fenced). Each try has its own deadline, set by ``call``.

    Raises:
        Fenced: the server says the attempt is no longer ours (FAILED_PRECONDITION, NOT_FOUND).
        grpc.RpcError: any other error, or a transient one lasting over ``give_up_after`` s.
    """
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    backoff = Backoff()
    while True:
        try:
            return await call()
        except grpc.RpcError as error:
            if is_fenced(error):
                raise Fenced(f"{what}: {error.details()}") from error
            if not is_transient(error) or (deadline is not None and loop.time() > deadline):
                raise
            logger.info("%s failed (%s); retrying", what, describe(error))
        await backoff.sleep()
