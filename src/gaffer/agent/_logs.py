"""Ships an attempt's output to the server over PushLogs, losing and repeating nothing.

Output is batched for a few milliseconds (never waiting for a newline) and written to one
client stream. PushLogs answers only when the stream is closed, so that answer is the
acknowledgement: chunks written since the last one are kept, and the stream is closed and
reopened every few MiB or seconds to trim them. When the stream breaks, a new one is opened and
every unacknowledged chunk is sent again, with its original offset; the server ignores chunks it
already stored, by (stream, offset). A server that restarts is waited for with backoff, for as
long as it takes.

A stream the server ends early with FAILED_PRECONDITION or NOT_FOUND means the attempt is no
longer ours: the shipper notices at once (not at its next acknowledgement), drops what it holds,
sends nothing more and calls ``on_fenced`` so the process is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from gaffer.agent._errors import Fenced
from gaffer.agent._retry import Backoff, describe, is_fenced
from gaffer.agent._runner import OutputStream
from gaffer.v1 import agent_service_pb2, job_pb2

logger = logging.getLogger(__name__)

MAX_CHUNK = 1024 * 1024

_STREAMS = {
    OutputStream.STDOUT: job_pb2.LOG_STREAM_STDOUT,
    OutputStream.STDERR: job_pb2.LOG_STREAM_STDERR,
}


class PushLogsCall(Protocol):
    """What the shipper needs of a grpc.aio stream-unary call."""

    async def write(self, request: agent_service_pb2.PushLogsRequest) -> None: ...

    async def done_writing(self) -> None: ...

    def cancel(self) -> bool: ...

    def __await__(self) -> Generator[Any, None, agent_service_pb2.PushLogsResponse]: ...


#: Opens a new PushLogs stream.
OpenStream = Callable[[], PushLogsCall]


@dataclass(frozen=True)
class AttemptKey:
    """What names an attempt in every write about it."""

    job_id: str
    attempt: int
    lease_token: str


@dataclass
class _Chunk:
    stream: OutputStream
    offset: int
    data: bytearray

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class LogShipper:
    """Batches output chunks and pushes them, resending what was not acknowledged.

    Feed it with :meth:`write` (an :data:`~gaffer.agent._runner.OutputSink`), then
    :meth:`close` to flush everything and wait for the server's acknowledgement.
    """

    def __init__(
        self,
        key: AttemptKey,
        open_stream: OpenStream,
        *,
        flush_interval: float = 0.02,
        batch_bytes: int = 256 * 1024,
        ack_bytes: int = 4 * 1024 * 1024,
        ack_interval: float = 10.0,
        max_pending: int = 16 * 1024 * 1024,
        ack_timeout: float = 30.0,
        on_fenced: Callable[[], object] | None = None,
    ) -> None:
        self._key = key
        self._open = open_stream
        self._flush_interval = flush_interval
        self._batch_bytes = batch_bytes
        self._ack_bytes = ack_bytes
        self._ack_interval = ack_interval
        self._max_pending = max_pending
        self._ack_timeout = ack_timeout
        self._on_fenced = on_fenced
        self._pending: list[_Chunk] = []
        self._pending_bytes = 0
        self._unacked: list[agent_service_pb2.PushLogsRequest] = []
        self._unacked_bytes = 0
        self._call: PushLogsCall | None = None
        self._call_opened = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._watchers: set[asyncio.Task[None]] = set()
        self.fenced = False
        self.sizes = {OutputStream.STDOUT: 0, OutputStream.STDERR: 0}
        self._task = asyncio.create_task(self._run())

    async def write(self, stream: OutputStream, offset: int, data: bytes) -> None:
        """Queues output; waits while too much is pending (backpressure on the process)."""
        if self.fenced or not data:
            return
        last = self._pending[-1] if self._pending else None
        if (
            last
            and last.stream is stream
            and last.end == offset
            and (len(last.data) + len(data) <= MAX_CHUNK)
        ):
            last.data += data
        else:
            self._pending.append(_Chunk(stream, offset, bytearray(data)))
        self._pending_bytes += len(data)
        self.sizes[stream] = max(self.sizes[stream], offset + len(data))
        self._wake.set()
        if self._pending_bytes >= self._max_pending:
            self._room.clear()
            await self._room.wait()

    async def close(self) -> None:
        """Sends everything still pending and waits until the server acknowledged it.

        Raises:
            Fenced: the attempt is no longer ours.
        """
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)
        if self.fenced:
            raise Fenced("log push refused: the attempt is no longer ours")

    def abort(self) -> None:
        """Drops everything at once (the attempt was lost)."""
        self.fenced = True
        self._task.cancel()
        if self._call is not None:
            self._call.cancel()
        self._room.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wait_for_work()
                if self.fenced:
                    raise Fenced("the attempt is no longer ours")
                if self._pending and not self._closing:
                    await self._batch_window()
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                self._room.set()
                for chunk in batch:
                    await self._send(chunk)
                    if self._unacked_bytes >= self._ack_bytes:
                        await self._acknowledge()
                if self._unacked and (
                    self._closing or time.monotonic() - self._call_opened >= self._ack_interval
                ):
                    await self._acknowledge()
                if self._closing and not self._pending and not self._unacked:
                    return
        except Fenced:
            self._refused()

    def _refused(self) -> None:
        """The server refused our output: stop sending and tell the attempt, once."""
        if self.fenced:
            return
        logger.info("attempt %s/%s: logs refused, no longer ours", *self._ids())
        self.fenced = True
        self._pending, self._pending_bytes = [], 0
        self._room.set()
        self._wake.set()
        if self._on_fenced is not None:
            self._on_fenced()

    def _watch(self, call: PushLogsCall) -> None:
        """Notices at once when the server ends ``call`` because the attempt is not ours."""
        add_done_callback = getattr(call, "add_done_callback", None)
        code = getattr(call, "code", None)
        if add_done_callback is None or code is None:
            return  # not a grpc.aio call (a test double): noticed at the next acknowledgement

        async def check() -> None:
            status = await code()
            if status in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                self._refused()

        def done(_: object) -> None:
            task = asyncio.ensure_future(check())
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

        add_done_callback(done)

    async def _wait_for_work(self) -> None:
        if self._pending or self._closing:
            return
        timeout = None
        if self._unacked:
            timeout = max(0.0, self._call_opened + self._ack_interval - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _batch_window(self) -> None:
        deadline = time.monotonic() + self._flush_interval
        while self._pending_bytes < self._batch_bytes and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _send(self, chunk: _Chunk) -> None:
        request = agent_service_pb2.PushLogsRequest(
            job_id=self._key.job_id,
            attempt=self._key.attempt,
            lease_token=self._key.lease_token,
            chunk=job_pb2.LogChunk(
                stream=_STREAMS[chunk.stream],
                offset=chunk.offset,
                data=bytes(chunk.data),
                attempt=self._key.attempt,
            ),
        )
        self._unacked.append(request)
        self._unacked_bytes += len(chunk.data)
        try:
            await self._stream().write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            await self._recover(error)

    async def _acknowledge(self) -> None:
        """Closes the stream and awaits its answer; retries with a new stream on failure."""
        while self._unacked:
            call = self._stream()
            try:
                await call.done_writing()
                response = await asyncio.wait_for(_response(call), self._ack_timeout)
            except (grpc.RpcError, asyncio.InvalidStateError, TimeoutError) as error:
                await self._recover(error)
                continue
            logger.debug(
                "attempt %s/%s: %s chunks acknowledged (%s duplicates)",
                *self._ids(),
                response.accepted,
                response.duplicates,
            )
            self._call = None
            self._unacked.clear()
            self._unacked_bytes = 0

    async def _recover(self, error: BaseException) -> None:
        """Opens a new stream and resends every unacknowledged chunk, with backoff."""
        backoff = Backoff()
        while True:
            if self.fenced or is_fenced(error):
                raise Fenced(str(error)) from error
            logger.info(
                "attempt %s/%s: log stream broke (%s); reopening", *self._ids(), describe(error)
            )
            if self._call is not None:
                self._call.cancel()
            self._call = None
            await backoff.sleep()
            if self.fenced:
                raise Fenced("the attempt is no longer ours")
            try:
                call = self._stream()
                for request in list(self._unacked):
                    await call.write(request)
                return
            except (grpc.RpcError, asyncio.InvalidStateError) as again:
                error = again

    def _stream(self) -> PushLogsCall:
        if self._call is None:
            self._call = self._open()
            self._call_opened = time.monotonic()
            self._watch(self._call)
        return self._call

    def _ids(self) -> tuple[str, int]:
        return self._key.job_id, self._key.attempt


async def _response(call: PushLogsCall) -> agent_service_pb2.PushLogsResponse:
    return await call
