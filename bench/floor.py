"""1. The floor: a bare grpc.aio service, unary calls/s at 1, 16, 64 in flight, stream msgs/s.

The service (:mod:`bench.floor_server`) runs in its own process; the load runs in another
(``python -m bench.floor load ...``), one channel, calls back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._config import Config
from bench._load import CpuWindow, add_watch, channel, closed_loop, watch_args, watched
from bench._procs import LISTENING, Procs, emit, python
from bench._stats import summary
from bench.floor_server import PING, STREAM

NAME = "floor"
#: Bytes per streamed message: about the size of a job event.
STREAM_MESSAGE_BYTES = 100


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("what", choices=["unary", "stream"])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_unary(args) if args.what == "unary" else _stream(args)))


if __name__ == "__main__":
    main()
