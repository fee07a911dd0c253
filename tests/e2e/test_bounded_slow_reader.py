"""Issue 3, test 7: slow readers of a job writing 50 MB cannot grow the server's memory, and a
normal reader of the same job still gets every byte.

Why it holds: a server stream's ``yield`` waits until grpc has sent the message, and HTTP/2 flow
control holds sending back while the reader does not read. A slow stream therefore pins one
read batch (1 MiB) plus what fits in its reader's window, never the job's whole output.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from gaffer.v1 import agent_service_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc
from tests.e2e.conftest import Api, HandAgent, run_in_thread
from tests.helpers import ServerProc, wait_until

apb = agent_service_pb2
jpb = job_service_pb2
MiB = 1024 * 1024
TOTAL = 50_000_000
SLOW_READERS = 3
SLOW_PACE = 1.0  # seconds between two reads of a slow reader: load generation, not a wait
# Without flow control each slow reader would hold the whole 50 MB in the server (150 MB).
RSS_BOUND = 90 * MiB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class RssSampler:
    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))
        return self.peak


@dataclass
class Reader:
    """A follower of the job's stdout on its own connection; ``pace`` > 0 makes it slow."""

    address: str
    job_id: str
    pace: float = 0.0
    data: bytearray = field(default_factory=bytearray)
    end: jpb.LogEnd | None = None
    frames: int = 0

    def run(self) -> None:
        channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 64 * MiB)]
        )
        try:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            request = jpb.StreamLogsRequest(job_id=self.job_id, follow=True)
            for frame in stub.StreamLogs(request, timeout=120):
                kind = frame.WhichOneof("frame")
                if kind == "chunk":
                    assert frame.chunk.offset == len(self.data), "a gap or an overlap"
                    self.data += frame.chunk.data
                    self.frames += 1
                elif kind == "end":
                    self.end = frame.end
                if self.pace:
                    time.sleep(self.pace)
        finally:
            channel.close()


def chunks(data: bytes, agent: HandAgent, a: apb.JobAssignment) -> Iterator[apb.PushLogsRequest]:
    for offset in range(0, len(data), MiB):
        yield apb.PushLogsRequest(
            **agent.fence(a),
            chunk=job_pb2.LogChunk(
                stream=job_pb2.LOG_STREAM_STDOUT,
                offset=offset,
                data=data[offset : offset + MiB],
                attempt=a.attempt,
            ),
        )


def test_slow_readers_of_50_mb_keep_server_memory_bounded(server: ServerProc, api: Api) -> None:
    data = random.Random(7).randbytes(TOTAL)
    agent = api.agent()
    job = api.submit(("sh", "-c", "head -c 50000000 /dev/urandom"))
    a = agent.claim_one()
    agent.start(a)
    # Warm the server's paths (a stream, a push) before the baseline.
    agent.push(a, [])
    assert not api.logs(job.id)

    baseline = rss(server.popen.pid)
    sampler = RssSampler(server.popen.pid)
    slow = [Reader(server.address, job.id, pace=SLOW_PACE) for _ in range(SLOW_READERS)]
    normal = Reader(server.address, job.id)
    threads = [run_in_thread(r.run) for r in [*slow, normal]]

    started = time.monotonic()
    pushed = api.agents.PushLogs(chunks(data, agent, a), timeout=120)
    assert pushed.accepted == -(-TOTAL // MiB) and pushed.stdout_size == TOTAL
    agent.complete(a)
    normal_thread, normal_errors = threads[-1]
    normal_thread.join(120)
    assert not normal_errors, normal_errors
    took = time.monotonic() - started

    # The normal reader got all 50 MB, byte-exact, and the end frame.
    assert normal.end is not None and normal.end.state == job_pb2.JOB_STATE_COMPLETED
    assert normal.end.stdout_size == TOTAL
    assert hashlib.sha256(normal.data).digest() == hashlib.sha256(data).digest()
    # The slow readers are far behind, and what they have is correct.
    behind = [len(r.data) for r in slow]
    for reader in slow:
        assert 0 < len(reader.data) < TOTAL, len(reader.data)
        assert reader.data == data[: len(reader.data)]
    # All 50 MB is stored now; the server keeps serving the slow readers at their pace without
    # taking on more memory (RSS is sampled throughout).
    frames = [r.frames for r in slow]
    wait_until(
        lambda: all(r.frames >= f + 2 for r, f in zip(slow, frames, strict=True)),
        timeout=30,
        what="two more frames read by each slow reader",
    )
    peak_slow = sampler.peak

    # Sped up, the slow readers get the rest, with nothing dropped or repeated.
    for reader in slow:
        reader.pace = 0.0
    for (thread, errors), reader in zip(threads[:-1], slow, strict=True):
        thread.join(60)
        assert not thread.is_alive() and not errors, errors
        assert reader.end is not None and reader.data == data
    peak = sampler.stop()
    print(
        f"\nRSS baseline {baseline / MiB:.0f} MiB, peak while slow {peak_slow / MiB:.0f} MiB, "
        f"peak overall {peak / MiB:.0f} MiB (+{(peak - baseline) / MiB:.0f}); "
        f"50 MB pushed and read in {took:.1f}s; slow readers had "
        f"{[b // MiB for b in behind]} MiB of 48 when the normal reader finished"
    )
    assert peak - baseline < RSS_BOUND, f"server RSS grew by {(peak - baseline) / MiB:.0f} MiB"
