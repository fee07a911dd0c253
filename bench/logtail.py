"""6. Log tail: MB/s delivered to a client following a job that writes 100 MB to stdout, and
the delay from a line's write to its arrival at the client.

The line-delay job prints ``time.time()`` on each line, with small gaps; a line's delay is the
arrival time of the chunk that completes it minus the time it carries (same machine, same
clock). Both jobs run on one agent; each repetition has a fresh server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench._config import Config
from bench._gaffer import exec_spec
from bench._load import CpuWindow, add_watch, channel, watch_args, watched
from bench._procs import Procs, emit
from bench._stats import percentile, summary
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "logtail"
#: Writes BLOCKS blocks of 10,000 lines of 99 'x' and a newline (1 MB each).
BULK = (
    "import sys\n"
    "w = sys.stdout.buffer.write\n"
    "block = (b'x' * 99 + b'\\n') * 10000\n"
    "for _ in range({blocks}):\n"
    "    w(block)\n"
)
#: Prints LINES timestamps, GAP seconds apart.
STAMPS = (
    "import time\n"
    "for _ in range({lines}):\n"
    "    print(repr(time.time()), flush=True)\n"
    "    time.sleep({gap})\n"
)
LINE_GAP = 0.002


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: log_tail_mb_per_s, log_line_delay_p{50,99}_ms."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    for _ in range(cfg.reps):
        server, address = procs.gaffer_server()
        agent = procs.gaffer_agent(address, "bench-logs", 2)
        pids = watch_args(gaffer_server=server.pid, agent=agent.pid)
        out = procs.load("logtail", address, "bulk", str(cfg.log_bytes), *pids)
        runs.setdefault("log_tail_mb_per_s", []).append(out["mb_per_s"])
        runs.setdefault("log_tail_first_to_last_mb_per_s", []).append(out["first_to_last_mb_per_s"])
        cpu["bulk"] = out["cpu"]
        out = procs.load("logtail", address, "lines", str(cfg.log_lines), *pids)
        runs.setdefault("log_line_delay_p50_ms", []).append(out["p50_ms"])
        runs.setdefault("log_line_delay_p99_ms", []).append(out["p99_ms"])
        runs.setdefault("log_line_delay_max_ms", []).append(out["max_ms"])
        cpu["lines"] = out["cpu"]
        procs.stop(agent)
        procs.stop(server)
    return {
        "figures": {k: summary(v) for k, v in runs.items()},
        "params": {"bytes": cfg.log_bytes, "lines": cfg.log_lines, "line_gap_s": LINE_GAP},
        "cpu": cpu,
    }


async def _bulk(
    stub: job_service_pb2_grpc.JobServiceStub, size: int, pids: dict[str, int]
) -> dict[str, Any]:
    script = BULK.format(blocks=size // 1_000_000)
    cpu = CpuWindow(pids)
    started = time.perf_counter()
    response = await stub.SubmitJob(
        job_service_pb2.SubmitJobRequest(spec=exec_spec(sys.executable, "-c", script))
    )
    request = job_service_pb2.StreamLogsRequest(job_id=response.job.id, follow=True)
    received = 0
    first = last = 0.0
    end = None
    async for frame in stub.StreamLogs(request):
        if frame.HasField("chunk"):
            last = time.perf_counter()
            if not received:
                first = last
            received += len(frame.chunk.data)
        elif frame.HasField("end"):
            end = frame.end
    if end is None or end.state != job_pb2.JOB_STATE_COMPLETED or received != size:
        raise SystemExit(f"log tail got {received} of {size} bytes, end: {end}")
    return {
        "mb_per_s": received / 1e6 / (last - started),
        "first_to_last_mb_per_s": received / 1e6 / (last - first),
        "seconds": last - started,
        "cpu": cpu.percent(),
    }


async def _lines(
    stub: job_service_pb2_grpc.JobServiceStub, lines: int, pids: dict[str, int]
) -> dict[str, Any]:
    script = STAMPS.format(lines=lines, gap=LINE_GAP)
    cpu = CpuWindow(pids)
    response = await stub.SubmitJob(
        job_service_pb2.SubmitJobRequest(spec=exec_spec(sys.executable, "-c", script))
    )
    request = job_service_pb2.StreamLogsRequest(job_id=response.job.id, follow=True)
    delays: list[float] = []
    partial = b""
    async for frame in stub.StreamLogs(request):
        if not frame.HasField("chunk"):
            continue
        arrived = time.time()
        *complete, partial = (partial + frame.chunk.data).split(b"\n")
        delays.extend((arrived - float(line)) * 1000 for line in complete if line)
    if len(delays) != lines:
        raise SystemExit(f"got {len(delays)} of {lines} lines")
    return {
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays),
        "cpu": cpu.percent(),
    }


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        if args.what == "bulk":
            return await _bulk(stub, args.amount, watched(args))
        return await _lines(stub, args.amount, watched(args))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logtail load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("target")
    parser.add_argument("what", choices=["bulk", "lines"])
    parser.add_argument("amount", type=int, help="bytes (bulk) or lines")
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_load(args)))


if __name__ == "__main__":
    main()
