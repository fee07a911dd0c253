"""2. Submit: acknowledged (durable) submits/s at 1, 16, 64 in flight, against a real server.

Each repetition starts a `gaffer server` on a fresh data dir with no agent (jobs stay
PENDING); the load (``python -m bench.submit load ...``) calls SubmitJob through the raw
stubs, one channel, back to back.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench._config import Config
from bench._load import add_watch, channel, closed_loop, watch_args, watched
from bench._procs import Procs, emit
from bench._stats import summary
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "submit"


def true_spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]))


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: submit_per_s_{C}, submit_p50_ms_1 (ratios to the floor: see the runner)."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    for _ in range(cfg.reps):
        server, address = procs.gaffer_server()
        for c in cfg.concurrency:
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
