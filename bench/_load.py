"""What load processes share: channels, a closed-loop driver, and the CPU of watched processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench._procs import CpuWindow
from bench._stats import percentile

#: Channels that do not share one connection (each gets its own subchannel pool).
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="report the CPU share of this process over the measured window",
    )


def watched(args: argparse.Namespace) -> dict[str, int]:
    pids = {"load": os.getpid()}
    for item in args.watch:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    return pids


def watch_args(**pids: int) -> list[str]:
    """``--watch NAME=PID`` arguments for a load process."""
    out: list[str] = []
    for name, pid in pids.items():
        out += ["--watch", f"{name.replace('_', '-')}={pid}"]
    return out


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """``concurrency`` workers call back to back; calls completed per second after a warm-up.

    Returns calls_per_s, latency p50/p99 in ms, errors, and the CPU share of ``pids``.
    """
    measuring = False
    stop = False
    count = 0
    errors = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal count, errors
        while not stop:
            started = time.perf_counter()
            try:
                await call()
            except grpc.RpcError:
                errors += 1
                continue
            if measuring:
                count += 1
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        measuring = True
        cpu = CpuWindow(pids)
        started = time.perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - started
        done = count
        shares = cpu.percent()
    finally:
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    if errors and not done:
        raise RuntimeError(f"every call failed ({errors} errors)")
    return {
        "calls_per_s": done / elapsed,
        "calls": done,
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu": shares,
    }
