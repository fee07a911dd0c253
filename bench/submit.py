"""2. Submit: acknowledged (durable) submits/s at 1, 16, 64 in flight, against a real server.

Each repetition starts a `gaffer server` on a fresh data dir with no agent (jobs stay
PENDING); the load (``python -m bench.submit load ...``) calls SubmitJob through the raw
stubs, one channel, back to back.

The floor's unary call is measured again just before each point, at the same concurrency,
and the ratios to the floor are taken from these pairs: measured minutes apart, in the floor's
own section, the ratio at 64 in flight moved with the machine (0.51 to 0.69 in three full
runs with the same submit path, the floor's own repetitions 7,355 to 10,637 calls/s in one).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench._config import Config
from bench._load import add_watch, channel, closed_loop, watch_args, watched
from bench._procs import LISTENING, Procs, emit, python
from bench._stats import summary
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "submit"


def true_spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]))


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: submit_per_s_{C}, submit_p50_ms_1 and submit_floor_calls_per_s_{C}, the floor
    beside each point (the ratios: see the runner)."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    floor = procs.start("floor-server", python("-m", "bench.floor_server"))
    floor_target = floor.wait_for(LISTENING).group(1)
    for _ in range(cfg.reps):
        server, address = procs.gaffer_server()
        for c in cfg.concurrency:
            out = procs.load(
                "floor", "unary", floor_target, "--concurrency", str(c),
                "--duration", str(cfg.duration), "--warmup", str(cfg.warmup),
                *watch_args(floor_server=floor.pid),
            )  # fmt: skip
            runs.setdefault(f"submit_floor_calls_per_s_{c}", []).append(out["calls_per_s"])
            out = procs.load(
                "submit", address, "--concurrency", str(c),
                "--duration", str(cfg.duration), "--warmup", str(cfg.warmup),
                *watch_args(gaffer_server=server.pid),
            )  # fmt: skip
            runs.setdefault(f"submit_per_s_{c}", []).append(out["calls_per_s"])
            if c == 1:
                runs.setdefault("submit_p50_ms_1", []).append(out["p50_ms"])
            cpu[f"submit_{c}"] = out["cpu"]
        procs.stop(server)
    procs.stop(floor)
    return {"figures": {k: summary(v) for k, v in runs.items()}, "cpu": cpu}


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        request = job_service_pb2.SubmitJobRequest(spec=true_spec())
        await stub.SubmitJob(request)
        return await closed_loop(
            lambda: stub.SubmitJob(request),
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            pids=watched(args),
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.submit load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_load(args)))


if __name__ == "__main__":
    main()
