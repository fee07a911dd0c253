"""The interceptor that guards every call on the server: undecodable requests, the one error
table for whatever a method lets out, and the gauges of calls and streams."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from gaffer.domain import InvalidArgument
from gaffer.server._errors import abort
from gaffer.server._metrics import Metrics

# grpc ships no type hints; the alias documents what the parameter is.
Ctx: TypeAlias = Any  # grpc.aio.ServicerContext

_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)


def call_budget(context: Ctx, requested: float | None, margin: float = 0.05) -> float | None:
    """The shorter of a requested wait and what the call's deadline leaves (minus a margin)."""
    remaining = context.time_remaining()
    if remaining is None:
        return requested
    left = max(0.0, remaining - margin)
    return left if requested is None else min(requested, left)


class _Undecodable:
    """What a request deserializer hands on for bytes that are not the expected message."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, answering bad bytes with an _Undecodable instead of raising.

    grpc.aio ends a call whose request cannot be parsed with UNKNOWN; this lets the call end
    with INVALID_ARGUMENT (reason MALFORMED_REQUEST) through the one error table instead.
    """
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(
                InvalidArgument.single(
                    "request", f"is not a valid message: {exc}", reason="MALFORMED_REQUEST"
                )
            )

    return deserialize


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, except that a response already in wire form (bytes, as the
    shared event tail hands out) is sent as it is."""
    if serialize is None:
        return None

    def serialize_or_pass(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serialize_or_pass


def _decoded(request: Any, streaming_in: bool) -> Any:
    """The request a method may use; raises the error of an undecodable one."""
    if streaming_in:
        return _checked(request)
    if isinstance(request, _Undecodable):
        raise request.error
    return request


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method: undecodable requests become INVALID_ARGUMENT, any error the method
    lets out goes through the error table, and ``metrics`` counts calls and open streams."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None  # UNIMPLEMENTED
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        changes: dict[str, Any] = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": _passing_bytes(handler.response_serializer),
        }
        if handler.unary_unary is not None:
            changes["unary_unary"] = self._unary(handler.unary_unary, method, streaming_in=False)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = self._unary(handler.stream_unary, method, streaming_in=True)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = self._stream(handler.unary_stream, method, streaming_in=False)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = self._stream(
                handler.stream_stream, method, streaming_in=True
            )
        return handler._replace(**changes)

    @contextlib.contextmanager
    def _counted(self, method: str, stream: bool) -> Any:
        metrics = self._metrics
        metrics.calls[method] = metrics.calls.get(method, 0) + 1
        metrics.rpcs_in_flight += 1
        metrics.open_streams += stream
        try:
            yield
        finally:
            metrics.rpcs_in_flight -= 1
            metrics.open_streams -= stream

    def _unary(
        self, behavior: Callable[..., Any], method: str, *, streaming_in: bool
    ) -> Callable[..., Any]:
        async def call(request: Any, context: Ctx) -> Any:
            with self._counted(method, stream=False):
                try:
                    return await behavior(_decoded(request, streaming_in), context)
                except _PASS_THROUGH:
                    raise
                except BaseException as exc:
                    await abort(context, exc)

        return call

    def _stream(
        self, behavior: Callable[..., Any], method: str, *, streaming_in: bool
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # Writes with context.write() and returns (the health Watch does).
            async def write_call(request: Any, context: Ctx) -> Any:
                with self._counted(method, stream=True):
                    try:
                        return await behavior(_decoded(request, streaming_in), context)
                    except _PASS_THROUGH:
                        raise
                    except BaseException as exc:
                        await abort(context, exc)

            return write_call

        async def call(request: Any, context: Ctx) -> AsyncIterator[Any]:
            # Each yield waits until grpc has sent the message, which HTTP/2 flow control holds
            # back while the reader is slow: a stream buffers at most one batch of its own, and
            # the transport at most the reader's window (tests/e2e/test_bounded_slow_reader.py).
            with self._counted(method, stream=True):
                try:
                    items_of = behavior(_decoded(request, streaming_in), context)
                    async with contextlib.aclosing(items_of) as items:
                        async for item in items:
                            yield item
                except _PASS_THROUGH:
                    raise
                except BaseException as exc:
                    await abort(context, exc)

        return call
