"""Decorators that put every servicer method behind the one error table."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from gaffer.server._errors import abort

Req = TypeVar("Req")
Resp = TypeVar("Resp")
# grpc ships no type hints; the alias documents what the parameter is.
Ctx: TypeAlias = Any  # grpc.aio.ServicerContext

_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)


def unary(
    method: Callable[[Any, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Any, Req, Ctx], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            await abort(context, exc)

    return wrapper


def server_stream(
    method: Callable[[Any, Req, Ctx], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Ctx], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            await abort(context, exc)

    return wrapper


def seconds(duration: Any, default: float | None) -> float | None:
    """A Duration field as seconds, or ``default`` when unset."""
    return duration.ToTimedelta().total_seconds() if duration.ByteSize() else default


def call_budget(context: Ctx, requested: float | None, margin: float = 0.05) -> float | None:
    """The shorter of a requested wait and what the call's deadline leaves (minus a margin)."""
    remaining = context.time_remaining()
    if remaining is None:
        return requested
    left = max(0.0, remaining - margin)
    return left if requested is None else min(requested, left)
