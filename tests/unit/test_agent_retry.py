"""What the agent retries: a lost connection, however grpc words it; not a server's refusal.

grpc.aio fails a write on a call whose connection just died with INTERNAL "Internal error
from Core" (seen on the Session stream when a replica was killed); a client stream fed by an
iterator, as an artifact's upload is, writes through the same code. That is the connection's
loss, and the call is tried again; an INTERNAL the server sent is its answer, and is not.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gaffer.agent._retry import call_with_retry


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Call:
    """Fails with the given errors in turn, then answers "done"."""

    def __init__(self, *errors: grpc.aio.AioRpcError) -> None:
        self._errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self._errors:
            raise self._errors.pop(0)
        return "done"


async def test_a_write_on_a_dead_connection_is_tried_again() -> None:
    call = _Call(_error(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert await asyncio.wait_for(call_with_retry(call, what="upload"), 10) == "done"
    assert call.calls == 2


async def test_an_internal_error_from_the_server_is_not() -> None:
    call = _Call(_error(grpc.StatusCode.INTERNAL, "the store failed"))
    with pytest.raises(grpc.RpcError) as raised:
        await call_with_retry(call, what="upload")
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert call.calls == 1


async def test_unavailable_is_tried_again() -> None:
    call = _Call(_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert await asyncio.wait_for(call_with_retry(call, what="report"), 10) == "done"
    assert call.calls == 2
