"""A Session stream reads at most MAX_IN_FLIGHT requests ahead of its answers.

Past that it stops reading (HTTP/2 flow control then holds the agent back), so an agent that
floods its session cannot make the server hold unbounded work; one answer lets one more in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gaffer.server._agent_session import MAX_IN_FLIGHT, _Stream
from gaffer.v1 import agent_service_pb2 as pb
from tests.helpers import wait_until_async

EXTRA = 10


class _Claims:
    """Claims that wait until the test answers them, counting those begun."""

    def __init__(self) -> None:
        self.begun = 0
        self.answers: dict[int, asyncio.Future[pb.ClaimJobResponse]] = {}

    async def claim(self, request: pb.ClaimJobRequest, context: Any) -> pb.ClaimJobResponse:
        answer = asyncio.get_running_loop().create_future()
        self.answers[request.max_jobs] = answer  # max_jobs carries the request id here
        self.begun += 1
        return await answer


async def test_a_full_session_reads_no_further_until_a_request_is_answered() -> None:
    claims = _Claims()
    stream = _Stream({"claim": claims.claim}, None, lambda kind: None)
    pulled = 0

    async def requests() -> AsyncIterator[pb.SessionRequest]:
        nonlocal pulled
        for request_id in range(1, MAX_IN_FLIGHT + EXTRA + 1):
            pulled += 1
            yield pb.SessionRequest(id=request_id, claim=pb.ClaimJobRequest(max_jobs=request_id))

    reader = asyncio.create_task(stream.read(requests()))
    try:
        await wait_until_async(lambda: _true(claims.begun >= MAX_IN_FLIGHT), what="full")
        for _ in range(20):  # give the reader every chance to read on
            await asyncio.sleep(0)
        # One more was read and waits for room; none after it.
        assert (pulled, claims.begun) == (MAX_IN_FLIGHT + 1, MAX_IN_FLIGHT)

        claims.answers[1].set_result(pb.ClaimJobResponse())
        answered = await asyncio.wait_for(stream.ready.get(), 10)
        assert answered.id == 1 and answered.HasField("claim")
        await wait_until_async(lambda: _true(claims.begun > MAX_IN_FLIGHT), what="one more")
        for _ in range(20):
            await asyncio.sleep(0)
        assert (pulled, claims.begun) == (MAX_IN_FLIGHT + 2, MAX_IN_FLIGHT + 1)
    finally:
        reader.cancel()
        stream.cancel_all()
        await asyncio.gather(reader, *stream.answering.values(), return_exceptions=True)


async def _true(value: bool) -> bool:
    return value
