"""The agent's log shipper against a fake PushLogs stream that breaks on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import grpc
import pytest

from gaffer.agent._errors import Fenced
from gaffer.agent._logs import MAX_CHUNK, AttemptKey, LogShipper
from gaffer.agent._runner import OutputStream
from gaffer.v1 import agent_service_pb2, job_pb2
from tests.helpers import wait_until_async

KEY = AttemptKey("job-1", 2, "lease-x")
OUT, ERR = OutputStream.STDOUT, OutputStream.STDERR


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


class FakeServer:
    """Stores chunks by (stream, offset) like the real server, ignoring repeats.

    ``break_after_writes`` makes the next stream fail after that many writes, losing them
    (as if they never left the agent); ``fail_with`` fails every write with that code.
    """

    def __init__(self) -> None:
        self.stored: dict[tuple[int, int], bytes] = {}
        self.requests: list[agent_service_pb2.PushLogsRequest] = []
        self.duplicates = 0
        self.streams = 0
        self.break_after_writes: int | None = None
        self.break_on_close = False
        self.fail_with: grpc.StatusCode | None = None

    def open(self) -> FakeCall:
        self.streams += 1
        call = FakeCall(self, self.break_after_writes, self.break_on_close)
        self.break_after_writes = None
        self.break_on_close = False
        return call

    def commit(self, request: agent_service_pb2.PushLogsRequest) -> None:
        chunk = request.chunk
        assert (request.job_id, request.attempt, request.lease_token) == ("job-1", 2, "lease-x")
        assert chunk.attempt == 2 and len(chunk.data) <= MAX_CHUNK
        key = (chunk.stream, chunk.offset)
        if key in self.stored:
            assert self.stored[key] == chunk.data, "a resend must repeat the same chunk"
            self.duplicates += 1
        else:
            self.stored[key] = chunk.data

    def output(self, stream: int) -> bytes:
        data = b""
        for (kind, offset), chunk in sorted(self.stored.items()):
            if kind == stream:
                assert offset == len(data), "no gap and no overlap"
                data += chunk
        return data


class FakeCall:
    def __init__(self, server: FakeServer, break_after: int | None, break_on_close: bool) -> None:
        self._server = server
        self._break_after = break_after
        self._break_on_close = break_on_close
        self._held: list[agent_service_pb2.PushLogsRequest] = []
        self._broken = False
        self._closed = False

    async def write(self, request: agent_service_pb2.PushLogsRequest) -> None:
        if self._server.fail_with is not None:
            raise FakeRpcError(self._server.fail_with)
        if self._broken or (self._break_after is not None and len(self._held) >= self._break_after):
            self._broken = True
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        self._server.requests.append(request)
        self._held.append(request)
        if self._break_after is None:
            self._server.commit(request)  # a healthy stream stores chunks as they arrive

    async def done_writing(self) -> None:
        self._closed = True

    def cancel(self) -> bool:
        self._broken = True
        return True

    async def _answer(self) -> agent_service_pb2.PushLogsResponse:
        if self._broken or self._break_on_close:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        if self._break_after is not None:
            for request in self._held:
                self._server.commit(request)
        return agent_service_pb2.PushLogsResponse(accepted=len(self._held))

    def __await__(self) -> Generator[Any, None, agent_service_pb2.PushLogsResponse]:
        return self._answer().__await__()


async def feed(shipper: LogShipper, stream: OutputStream, pieces: list[bytes]) -> bytes:
    offset = 0
    for piece in pieces:
        await shipper.write(stream, offset, piece)
        offset += len(piece)
    return b"".join(pieces)


async def test_everything_arrives_once_by_stream() -> None:
    server = FakeServer()
    shipper = LogShipper(KEY, server.open)
    out = await feed(shipper, OUT, [f"line {i}\n".encode() for i in range(500)])
    err = await feed(shipper, ERR, [b"e" * 70000, b"f" * 3])
    await shipper.close()

    assert server.output(job_pb2.LOG_STREAM_STDOUT) == out
    assert server.output(job_pb2.LOG_STREAM_STDERR) == err
    assert server.duplicates == 0
    assert shipper.sizes == {OUT: len(out), ERR: len(err)}


async def test_large_output_split_into_chunks_of_at_most_1_mib() -> None:
    server = FakeServer()
    shipper = LogShipper(KEY, server.open, ack_bytes=2 * MAX_CHUNK)
    out = await feed(shipper, OUT, [bytes([i % 251]) * 65536 for i in range(80)])
    await shipper.close()

    assert server.output(job_pb2.LOG_STREAM_STDOUT) == out
    assert server.streams >= 2, "the stream is closed and reopened to trim acknowledged chunks"


async def test_output_is_sent_at_once_without_close() -> None:
    server = FakeServer()
    shipper = LogShipper(KEY, server.open)
    await shipper.write(OUT, 0, b"no newline")

    async def sent() -> bool:
        return server.output(job_pb2.LOG_STREAM_STDOUT) == b"no newline"

    # Sent after the 20 ms batch window; the bound is loose so a loaded machine does not flake.
    await wait_until_async(sent, timeout=2.0, interval=0.005, what="chunk sent before close")
    await shipper.close()


async def test_broken_stream_resends_what_was_not_acknowledged() -> None:
    server = FakeServer()
    server.break_after_writes = 3  # the first stream swallows three chunks, then breaks
    shipper = LogShipper(KEY, server.open)
    data = {OUT: b"", ERR: b""}
    for i in range(20):  # alternating streams: every piece is a chunk of its own
        stream = OUT if i % 2 else ERR
        piece = f"{stream.value} {i}\n".encode()
        await shipper.write(stream, len(data[stream]), piece)
        data[stream] += piece
    await shipper.close()

    assert server.output(job_pb2.LOG_STREAM_STDOUT) == data[OUT]
    assert server.output(job_pb2.LOG_STREAM_STDERR) == data[ERR]
    assert server.streams == 2


async def test_failed_acknowledgement_resends_on_a_new_stream() -> None:
    server = FakeServer()
    server.break_on_close = True
    shipper = LogShipper(KEY, server.open)
    out = await feed(shipper, OUT, [b"a" * 1000, b"b" * 1000])
    await shipper.close()

    assert server.output(job_pb2.LOG_STREAM_STDOUT) == out
    assert server.duplicates >= 1, "chunks stored before the break were sent again, and ignored"
    assert server.streams == 2


async def test_fenced_attempt_stops_shipping() -> None:
    server = FakeServer()
    server.fail_with = grpc.StatusCode.FAILED_PRECONDITION
    fenced = asyncio.Event()
    shipper = LogShipper(KEY, server.open, on_fenced=fenced.set)
    await shipper.write(OUT, 0, b"hello")
    await asyncio.wait_for(fenced.wait(), 5)
    await shipper.write(OUT, 5, b"ignored")  # returns at once, dropped

    with pytest.raises(Fenced):
        await shipper.close()
    assert shipper.fenced
