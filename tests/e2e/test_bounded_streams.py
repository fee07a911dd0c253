"""Issue 3, test 8: 10,000 streams opened and cancelled by clients; the server notices each
cancellation within 1 s and its memory returns to where it was.

The server's own gauges say what it holds: ``gaffer_open_streams`` (server streams being
served) and ``gaffer_notifier_subscriptions`` (readers waiting on store changes), scraped from
its ``--metrics-listen`` endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from tests.e2e.conftest import Api
from tests.helpers import METRICS, ServerProc, scrape, wait_until_async

jpb = job_service_pb2
MiB = 1024 * 1024
WAVES = 10
WAVE = 1_000  # streams open at once; WAVES * WAVE = 10,000
CHANNELS = 4
NOTICE_WITHIN = 1.0
RSS_SLACK = 30 * MiB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[ServerProc]:
    proc = ServerProc.launch(tmp_path / "data", "--metrics-listen", "127.0.0.1:0")
    yield proc
    proc.stop()


async def test_10000_cancelled_streams_are_noticed_within_1s_and_memory_returns(
    metered: ServerProc,
) -> None:
    metrics = metered.wait_for_line(METRICS).group(1)
    api = Api.connect(metered.address)
    agent = api.agent()
    job = api.submit(("sleep", "600"))
    a = agent.claim_one()
    agent.start(a)
    agent.push(a, [(job_pb2.LOG_STREAM_STDOUT, 0, b"hello\n")])
    api.close()

    channels = [
        grpc.aio.insecure_channel(metered.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in channels]
    events = jpb.StreamJobEventsRequest(job_id=job.id)
    logs = jpb.StreamLogsRequest(job_id=job.id, follow=True)

    async def wave(size: int) -> float:
        """Opens ``size`` following streams, then cancels them all; returns how long the
        server took to let go of every one of them."""
        before = await scrape(metrics)
        calls = [
            stubs[i % CHANNELS].StreamJobEvents(events, timeout=120)
            if i % 2
            else stubs[i % CHANNELS].StreamLogs(logs, timeout=120)
            for i in range(size)
        ]
        # Each has its history (first event, or the log chunk), so each is open on the server.
        firsts = await asyncio.gather(*(call.read() for call in calls))
        assert all(f is not grpc.aio.EOF for f in firsts)

        seen: dict[str, float] = {}

        async def all_open() -> bool:
            seen.update(await scrape(metrics))
            return seen["gaffer_open_streams"] == before["gaffer_open_streams"] + size

        await wait_until_async(all_open, timeout=30, what=f"{size} open streams ({seen})")
        assert seen["gaffer_notifier_subscriptions"] >= size
        cancelled = time.monotonic()  # from the first cancel: a bound for every one of them
        for call in calls:
            call.cancel()

        async def all_gone() -> bool:
            now = await scrape(metrics)
            return (
                now["gaffer_open_streams"] == before["gaffer_open_streams"]
                and now["gaffer_notifier_subscriptions"] == before["gaffer_notifier_subscriptions"]
            )

        await wait_until_async(all_gone, timeout=10, interval=0.01, what="streams let go")
        return time.monotonic() - cancelled

    pid = metered.popen.pid
    cold = rss(pid)
    try:
        await wave(WAVE)  # warm-up: the first streams size grpc's and Python's pools
        warm = rss(pid)
        latencies: list[float] = []
        peaks: list[int] = []
        for _ in range(WAVES):
            latencies.append(await wave(WAVE))
            peaks.append(rss(pid))

        async def settled() -> bool:
            return rss(pid) <= warm + RSS_SLACK

        await wait_until_async(settled, timeout=10, interval=0.2, what="RSS back near warm")
        final = rss(pid)
    finally:
        for channel in channels:
            await channel.close()
    print(
        f"\n{WAVES * WAVE} streams in waves of {WAVE}: all let go within "
        f"{[round(x, 3) for x in latencies]} s of their cancel; RSS cold {cold / MiB:.0f} MiB, "
        f"warm {warm / MiB:.0f}, after waves {[p // MiB for p in peaks]}, final {final / MiB:.0f}"
    )
    assert max(latencies) < NOTICE_WITHIN
    assert final - warm <= RSS_SLACK
