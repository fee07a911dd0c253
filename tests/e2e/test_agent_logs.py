"""The agent's log shipper against the real server: a real lease, real streams, real breaks.

Each test registers an agent and claims a job through the generated stubs, so the shipper pushes
under a lease the server really issued; what the server stored is read back through StreamLogs.
The only thing between the shipper and the server is a tap that notes what was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gaffer.agent._errors import Fenced
from gaffer.agent._logs import MAX_CHUNK, AttemptKey, LogShipper
from gaffer.agent._runner import OutputStream
from gaffer.server import RunningServer, ServerConfig, start_server
from gaffer.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from tests.helpers import wait_until_async

apb = agent_service_pb2
jpb = job_service_pb2
S = job_pb2.JobState
OUT, ERR = OutputStream.STDOUT, OutputStream.STDERR
WIRE = {OUT: job_pb2.LOG_STREAM_STDOUT, ERR: job_pb2.LOG_STREAM_STDERR}
CALL_TIMEOUT = 10.0


@dataclass
class Served:
    """The real server, in this process, on a fixed data dir; restartable on the same port."""

    data_dir: Path
    running: RunningServer | None = None
    port: int = 0

    async def start(self) -> None:
        config = ServerConfig(
            listen=f"127.0.0.1:{self.port}", data_dir=self.data_dir, shutdown_grace=0.2
        )
        self.running = await start_server(config)
        self.port = int(self.running.address.rpartition(":")[2])

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()
            self.running = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Tap:
    """Opens real PushLogs streams and notes every request written and every answer."""

    def __init__(self, stub: agent_service_pb2_grpc.AgentServiceStub) -> None:
        self._stub = stub
        self.streams = 0
        self.sent: list[apb.PushLogsRequest] = []
        self.answers: list[apb.PushLogsResponse] = []

    def open(self) -> _TappedCall:
        self.streams += 1
        return _TappedCall(self, self._stub.PushLogs())

    def sent_bytes(self) -> int:
        return sum(len(r.chunk.data) for r in self.sent)


@dataclass
class _TappedCall:
    tap: Tap
    call: Any

    async def write(self, request: apb.PushLogsRequest) -> None:
        self.tap.sent.append(request)
        await self.call.write(request)

    async def done_writing(self) -> None:
        await self.call.done_writing()

    def cancel(self) -> bool:
        return bool(self.call.cancel())

    def __await__(self) -> Generator[Any, None, apb.PushLogsResponse]:
        return self._answer().__await__()

    async def _answer(self) -> apb.PushLogsResponse:
        answer: apb.PushLogsResponse = await self.call
        self.tap.answers.append(answer)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)  # the rest of the real call (code, add_done_callback...)


@dataclass
class Lease:
    """A job claimed through the stubs and moved to RUNNING: the shipper writes under it."""

    served: Served
    channel: grpc.aio.Channel
    jobs: job_service_pb2_grpc.JobServiceStub
    agents: agent_service_pb2_grpc.AgentServiceStub
    assignment: apb.JobAssignment
    tap: Tap = field(init=False)
    shippers: list[LogShipper] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tap = Tap(self.agents)

    @property
    def key(self) -> AttemptKey:
        a = self.assignment
        return AttemptKey(a.job.id, a.attempt, a.lease_token)

    def shipper(self, **options: Any) -> LogShipper:
        shipper = LogShipper(self.key, self.tap.open, **options)
        self.shippers.append(shipper)
        return shipper

    async def stored(self) -> dict[OutputStream, bytes]:
        """What the server holds for the attempt, checking offsets run on with no gap."""
        out = {OUT: b"", ERR: b""}
        by_wire = {wire: stream for stream, wire in WIRE.items()}
        request = jpb.StreamLogsRequest(job_id=self.key.job_id, attempt=self.key.attempt)
        async for frame in self.jobs.StreamLogs(request, timeout=CALL_TIMEOUT):
            if frame.WhichOneof("frame") == "chunk":
                stream = by_wire[frame.chunk.stream]
                assert frame.chunk.offset == len(out[stream]), (
                    f"{stream} chunk at {frame.chunk.offset}, expected {len(out[stream])}"
                )
                out[stream] += frame.chunk.data
        return out

    async def complete(self) -> apb.CompleteJobResponse:
        a = self.assignment
        request = apb.CompleteJobRequest(
            job_id=a.job.id,
            attempt=a.attempt,
            lease_token=a.lease_token,
            state=S.JOB_STATE_COMPLETED,
            exit_code=0,
        )
        response: apb.CompleteJobResponse = await self.agents.CompleteJob(
            request, timeout=CALL_TIMEOUT
        )
        return response


@pytest.fixture
async def lease(tmp_path: Path) -> AsyncIterator[Lease]:
    served = Served(tmp_path / "data")
    await served.start()
    channel = grpc.aio.insecure_channel(served.address)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    agents = agent_service_pb2_grpc.AgentServiceStub(channel)
    try:
        spec = job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]))
        await jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec), timeout=CALL_TIMEOUT)
        registered = await agents.RegisterAgent(
            apb.RegisterAgentRequest(name="shipper-test"), timeout=CALL_TIMEOUT
        )
        claim = apb.ClaimJobRequest(agent_id=registered.agent_id)
        claim.wait.FromSeconds(5)
        (assignment,) = (await agents.ClaimJob(claim, timeout=CALL_TIMEOUT)).assignments
        for state in (S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING):
            update = apb.UpdateJobStatusRequest(
                job_id=assignment.job.id,
                attempt=assignment.attempt,
                lease_token=assignment.lease_token,
                state=state,
            )
            await agents.UpdateJobStatus(update, timeout=CALL_TIMEOUT)
        lease = Lease(served, channel, jobs, agents, assignment)
        yield lease
        for shipper in lease.shippers:
            shipper.abort()
    finally:
        await channel.close()
        await served.stop()


async def feed(
    shipper: LogShipper, stream: OutputStream, pieces: list[bytes], offset: int = 0
) -> bytes:
    """Writes ``pieces`` one after the other, as the runner does, from ``offset``."""
    for piece in pieces:
        await shipper.write(stream, offset, piece)
        offset += len(piece)
    return b"".join(pieces)


async def test_everything_arrives_once_and_in_its_stream(lease: Lease) -> None:
    shipper = lease.shipper()
    data = {OUT: b"", ERR: b""}
    for i in range(300):  # interleaved, so chunks of both streams alternate on the wire
        for stream in (OUT, ERR):
            piece = f"{stream.name} line {i}\n".encode()
            await shipper.write(stream, len(data[stream]), piece)
            data[stream] += piece
    data[ERR] += await feed(shipper, ERR, [b"e" * 70000, b"f" * 3], len(data[ERR]))
    await shipper.close()

    assert await lease.stored() == data
    assert shipper.sizes == {OUT: len(data[OUT]), ERR: len(data[ERR])}
    # Nothing was sent twice: the bytes on the wire are the output, once.
    assert lease.tap.sent_bytes() == len(data[OUT]) + len(data[ERR])
    assert sum(a.accepted for a in lease.tap.answers) == len(lease.tap.sent)
    assert sum(a.duplicates for a in lease.tap.answers) == 0
    last = lease.tap.answers[-1]
    assert (last.stdout_size, last.stderr_size) == (len(data[OUT]), len(data[ERR]))


async def test_large_output_goes_in_chunks_of_at_most_1_mib(lease: Lease) -> None:
    shipper = lease.shipper(ack_bytes=2 * MAX_CHUNK)
    pieces = [bytes([i % 251]) * 65536 for i in range(80)]  # 5 MiB, written 64 KiB at a time
    out = await feed(shipper, OUT, pieces)
    await shipper.close()

    assert (await lease.stored())[OUT] == out
    sizes = [len(r.chunk.data) for r in lease.tap.sent]
    assert max(sizes) <= MAX_CHUNK
    assert sum(sizes) == len(out), "nothing lost or sent twice"
    assert lease.tap.streams >= 2, "the stream is closed and reopened to trim acknowledged chunks"
    assert sum(a.duplicates for a in lease.tap.answers) == 0


async def test_output_reaches_a_follower_before_the_shipper_closes(lease: Lease) -> None:
    shipper = lease.shipper()
    await shipper.write(OUT, 0, b"no newline")
    request = jpb.StreamLogsRequest(job_id=lease.key.job_id, follow=True)
    follower = lease.jobs.StreamLogs(request, timeout=CALL_TIMEOUT)

    async def first_chunk() -> job_pb2.LogChunk:
        async for frame in follower:
            if frame.WhichOneof("frame") == "chunk":
                return frame.chunk
        raise AssertionError("the log stream ended without output")

    try:
        # The shipper batches for 20 ms; the bound is loose so a loaded machine does not flake.
        chunk = await asyncio.wait_for(first_chunk(), 5.0)
    finally:
        follower.cancel()
    assert (chunk.stream, chunk.offset, chunk.data) == (job_pb2.LOG_STREAM_STDOUT, 0, b"no newline")
    assert lease.tap.answers == [], "no stream had been closed yet"
    await shipper.close()


async def test_stream_broken_by_a_server_restart_is_resent_without_gap_or_repeat(
    lease: Lease,
) -> None:
    shipper = lease.shipper()
    before = {OUT: b"", ERR: b""}
    for i in range(20):
        for stream in (OUT, ERR):
            piece = f"{stream.name} before {i}\n".encode()
            await shipper.write(stream, len(before[stream]), piece)
            before[stream] += piece

    async def all_stored() -> bool:
        return await lease.stored() == before

    # Stored by the first server, but not acknowledged: its stream is still open.
    await wait_until_async(all_stored, what="the first part stored")
    assert lease.tap.answers == []
    sent_before_break = len(lease.tap.sent)

    data = dict(before)
    for stream in (OUT, ERR):  # possibly still in flight when the server goes
        data[stream] += await feed(shipper, stream, [b"in flight\n"], len(data[stream]))
    await lease.served.stop()  # the open PushLogs stream breaks for real
    for stream in (OUT, ERR):  # written while no server is there
        data[stream] += await feed(shipper, stream, [b"during outage\n"], len(data[stream]))
    await lease.served.start()  # same port, same data dir
    for stream in (OUT, ERR):
        data[stream] += await feed(shipper, stream, [b"after\n", b"end"], len(data[stream]))
    await shipper.close()

    assert await lease.stored() == data
    assert lease.tap.streams >= 2

    # Every chunk unacknowledged at the break was written again, and the server ignored it.
    def places(requests: list[apb.PushLogsRequest]) -> set[tuple[int, int]]:
        return {(r.chunk.stream, r.chunk.offset) for r in requests}

    first = lease.tap.sent[:sent_before_break]
    assert places(first) <= places(lease.tap.sent[sent_before_break:])
    assert sum(a.duplicates for a in lease.tap.answers) >= len(first)
    last = lease.tap.answers[-1]
    assert (last.stdout_size, last.stderr_size) == (len(data[OUT]), len(data[ERR]))


async def test_fenced_attempt_stops_shipping(lease: Lease) -> None:
    fenced = asyncio.Event()
    shipper = lease.shipper(on_fenced=fenced.set)
    await shipper.write(OUT, 0, b"mine\n")

    async def stored() -> bool:
        return (await lease.stored())[OUT] == b"mine\n"

    await wait_until_async(stored, what="the first chunk stored")
    assert (await lease.complete()).accepted  # the attempt is over: its writes are refused now

    await shipper.write(OUT, 5, b"too late\n")
    with pytest.raises(Fenced):
        await asyncio.wait_for(shipper.close(), CALL_TIMEOUT)
    assert fenced.is_set() and shipper.fenced
    sent = len(lease.tap.sent)
    await asyncio.wait_for(shipper.write(OUT, 14, b"dropped\n"), 1.0)  # returns at once
    assert len(lease.tap.sent) == sent, "nothing more is sent once fenced"
    assert (await lease.stored())[OUT] == b"mine\n"


async def test_refusal_stops_the_shipper_without_waiting_for_close(lease: Lease) -> None:
    fenced = asyncio.Event()
    shipper = lease.shipper(on_fenced=fenced.set)
    await shipper.write(OUT, 0, b"mine\n")

    async def stored() -> bool:
        return (await lease.stored())[OUT] == b"mine\n"

    await wait_until_async(stored, what="the first chunk stored")
    assert (await lease.complete()).accepted

    await shipper.write(OUT, 5, b"too late\n")
    # The server refuses the chunk at once; the shipper should learn it well within its
    # 10 s acknowledgement interval, so the agent can kill the stale attempt's process.
    await asyncio.wait_for(fenced.wait(), 3.0)
    assert shipper.fenced
