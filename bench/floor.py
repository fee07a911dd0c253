"""1. The floor: a bare grpc.aio service, unary calls/s at 1, 16, 64 in flight, stream msgs/s,
and how fast it can send one frame to each of many streams (the fan-out's floor).

The service (:mod:`bench.floor_server`) runs in its own process; the load runs in another
(``python -m bench.floor load ...``), one channel, calls back to back. For the fan-out floor
the load opens as many streams as the fan-out has followers, over a few channels, and the
service sends rounds of one frame to each, every round as soon as the last one is sent:
``floor_fanout_round_ms`` is the shortest time between two frames to every follower that a
server doing nothing else achieves, and ``floor_fanout_cpu_us_per_frame`` the server's CPU
per frame sent. It runs with 2 KB frames, and again with 32 KB frames (the ``_32kb``
figures): Gaffer's followers of all jobs get frames of that order under the fan-out's load
(``fanout_frame_kb``), and a round costs more the more bytes each frame carries.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc

from bench._config import Config
from bench._load import CpuWindow, add_watch, channel, closed_loop, watch_args, watched
from bench._procs import LISTENING, Procs, emit, python
from bench._stats import summary
from bench.floor_server import BROADCAST, PING, STREAM

NAME = "floor"
#: Bytes per streamed message: about the size of a job event.
STREAM_MESSAGE_BYTES = 100
#: Bytes per fan-out frame, and the suffix of its figures: a batch of about 20 events, and
#: one about the size Gaffer's fan-out sends (a few hundred events).
FANOUT_FRAMES = ((2000, ""), (32000, "_32kb"))
FANOUT_ROUNDS = 40
FANOUT_CHANNELS = 8


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: floor_unary_calls_per_s_{C}, floor_unary_p50_ms_1, floor_stream_msgs_per_s."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    server = procs.start("floor-server", python("-m", "bench.floor_server"))
    target = server.wait_for(LISTENING).group(1)
    watch = watch_args(floor_server=server.pid)
    for _ in range(cfg.reps):
        for c in cfg.concurrency:
            out = procs.load(
                "floor", "unary", target, "--concurrency", str(c),
                "--duration", str(cfg.duration), "--warmup", str(cfg.warmup), *watch,
            )  # fmt: skip
            runs.setdefault(f"floor_unary_calls_per_s_{c}", []).append(out["calls_per_s"])
            if c == 1:
                runs.setdefault("floor_unary_p50_ms_1", []).append(out["p50_ms"])
            cpu[f"unary_{c}"] = out["cpu"]
        out = procs.load("floor", "stream", target, "--duration", str(cfg.duration), *watch)
        runs.setdefault("floor_stream_msgs_per_s", []).append(out["msgs_per_s"])
        cpu["stream"] = out["cpu"]
        followers = str(cfg.fanout_followers)
        for size, suffix in FANOUT_FRAMES:
            out = procs.load(
                "floor", "fanout", target, "--streams", followers, "--frame-bytes", str(size),
                *watch,
            )  # fmt: skip
            runs.setdefault(f"floor_fanout_round_ms{suffix}", []).append(out["round_ms"])
            runs.setdefault(f"floor_fanout_cpu_us_per_frame{suffix}", []).append(
                out["cpu_us_per_frame"]
            )
            cpu[f"fanout{suffix}"] = out["cpu"]
    procs.stop(server)
    return {"figures": {k: summary(v) for k, v in runs.items()}, "cpu": cpu}


async def _unary(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        ping = ch.unary_unary(PING)
        await ping(b"")
        return await closed_loop(
            lambda: ping(b""),
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            pids=watched(args),
        )


async def _stream(args: argparse.Namespace) -> dict[str, Any]:
    """One stream of small messages; messages received per second after the first 10%."""
    async with channel(args.target) as ch:
        stream = ch.unary_stream(STREAM)
        call = stream(f"{10**9} {STREAM_MESSAGE_BYTES}".encode())
        count = 0
        started = time.perf_counter()
        cpu: CpuWindow | None = None
        measured_from = 0.0
        base = 0
        async for _ in call:
            count += 1
            if count & 1023 == 0:
                now = time.perf_counter()
                if cpu is None and now - started > min(0.5, args.duration / 5):
                    cpu, measured_from, base = CpuWindow(watched(args)), now, count
                elif cpu is not None and now - measured_from >= args.duration:
                    break
        call.cancel()
        assert cpu is not None
        elapsed = time.perf_counter() - measured_from
        return {"msgs_per_s": (count - base) / elapsed, "cpu": cpu.percent()}


async def _fanout(args: argparse.Namespace) -> dict[str, Any]:
    """``--streams`` streams get rounds of one frame each; the time per round from the first
    round's first frame to the last round's last, and the server's CPU per frame meanwhile."""
    channels = [channel(args.target) for _ in range(FANOUT_CHANNELS)]
    request = f"{args.streams} {FANOUT_ROUNDS} {args.frame_bytes}".encode()
    window: list[Any] = []  # [first arrival, CpuWindow]
    last = 0.0

    async def follow(ch: grpc.aio.Channel) -> None:
        nonlocal last
        async for _ in ch.unary_stream(BROADCAST)(request):
            last = time.perf_counter()
            if not window:
                window.extend((last, CpuWindow(watched(args))))

    try:
        await asyncio.gather(*(follow(channels[i % len(channels)]) for i in range(args.streams)))
    finally:
        for ch in channels:
            await ch.close()
    first, cpu = window
    shares = cpu.percent()
    seconds = last - first
    frames = args.streams * FANOUT_ROUNDS
    return {
        "round_ms": seconds / FANOUT_ROUNDS * 1000,
        "cpu_us_per_frame": shares["floor-server"] / 100 * seconds / frames * 1e6,
        "cpu": shares,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("what", choices=["unary", "stream", "fanout"])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--frame-bytes", type=int, default=FANOUT_FRAMES[0][0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--streams", type=int, default=1000)
    add_watch(parser)
    args = parser.parse_args()
    load = {"unary": _unary, "stream": _stream, "fanout": _fanout}[args.what]
    emit(asyncio.run(load(args)))


if __name__ == "__main__":
    main()
