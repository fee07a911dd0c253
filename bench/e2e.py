"""3. End to end: N no-op jobs submitted, claimed, run and completed, with 1 and 2 agents.

Jobs/s from the first submit to the arrival of the last finished event, on a stream of all
jobs' events (StreamJobEvents from sequence 0, opened before the first submit; no polling).
``function`` jobs call the built-in ``gaffer.noop``; ``exec`` jobs run ``true``. Each run has a
fresh server. The load (``python -m bench.e2e load ...``) submits as a user with many jobs
does, and as the Celery peer does with a ``group``: in bulk, SubmitJobs calls of 1,000 (what
``Client.submit_many`` sends), one at a time. ``..._single_submits`` is the same run with one
SubmitJob per job, 64 in flight (``--single``), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._config import Config
from bench._gaffer import Finishes, spec_of, submit_batched, submit_many
from bench._load import CpuWindow, add_watch, channel, watch_args, watched
from bench._procs import Procs, emit
from bench._stats import summary
from gaffer.v1 import job_pb2, job_service_pb2_grpc

NAME = "e2e"
SUBMIT_IN_FLIGHT = 64  # SubmitJob calls at a time, with --single
SUBMIT_BATCH = 1000  # jobs per SubmitJobs call, one call at a time


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: e2e_{function,exec}_jobs_per_s_{1,2}_agents[s]."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    for _ in range(cfg.reps):
        for kind, n, slots in (
            ("function", cfg.n, cfg.function_slots),
            ("exec", cfg.exec_n, cfg.exec_slots),
        ):
            for agents in (1, 2):
                out = run_once(procs, kind, n, agents, slots)
                key = f"e2e_{kind}_jobs_per_s_{agents}_agent{'s' if agents > 1 else ''}"
                runs.setdefault(key, []).append(out["jobs_per_s"])
                runs.setdefault(f"{key}_submit_phase", []).append(out["submit_per_s"])
                cpu[f"{kind}_{agents}"] = out["cpu"]
        out = run_once(procs, "function", cfg.n, 2, cfg.function_slots, "--single")
        runs.setdefault("e2e_function_jobs_per_s_2_agents_single_submits", []).append(
            out["jobs_per_s"]
        )
        cpu["function_2_single_submits"] = out["cpu"]
    return {
        "figures": {k: summary(v) for k, v in runs.items()},
        "params": {
            "function_n": cfg.n,
            "exec_n": cfg.exec_n,
            "function_slots_per_agent": cfg.function_slots,
            "exec_slots_per_agent": cfg.exec_slots,
            "submit_batch": SUBMIT_BATCH,
            "single_submits_in_flight": SUBMIT_IN_FLIGHT,
        },
        "cpu": cpu,
    }


def run_once(
    procs: Procs, kind: str, n: int, agents: int, slots: int, *load_args: str
) -> dict[str, Any]:
    server, address = procs.gaffer_server()
    pids = {"gaffer_server": server.pid}
    started = []
    for i in range(agents):
        agent = procs.gaffer_agent(address, f"bench-{kind}-{i + 1}", slots)
        started.append(agent)
        pids[f"agent_{i + 1}"] = agent.pid
    try:
        return procs.load("e2e", address, kind, str(n), *load_args, *watch_args(**pids))
    finally:
        for agent in started:
            procs.stop(agent)
        procs.stop(server)


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        finishes = Finishes(stub, args.n)
        finishes.start()
        await asyncio.sleep(0.2)  # the stream is open; it replays from sequence 0 anyway
        cpu = CpuWindow(watched(args))
        started = time.perf_counter()
        if args.single:
            ids = await submit_many(stub, spec_of(args.kind), args.n, SUBMIT_IN_FLIGHT)
        else:
            ids = await submit_batched(stub, spec_of(args.kind), args.n, SUBMIT_BATCH, 1)
        submitted = time.perf_counter()
        done = await finishes.wait(args.timeout)
        shares = cpu.percent()
        finishes.stop()
    if not done:
        raise SystemExit(
            f"only {len(finishes.finished)} of {args.n} jobs finished within {args.timeout}s"
        )
    missing = set(ids) - set(finishes.finished)
    if missing:
        raise SystemExit(
            f"{len(missing)} submitted jobs never finished, e.g. {next(iter(missing))}"
        )
    failed = sum(1 for s in finishes.states.values() if s != job_pb2.JOB_STATE_COMPLETED)
    elapsed = finishes.last_arrival - started
    return {
        "jobs_per_s": args.n / elapsed,
        "seconds": elapsed,
        "submit_per_s": args.n / (submitted - started),
        "failed": failed,
        "events": finishes.events,
        "cpu": shares,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("target")
    parser.add_argument("kind", choices=["function", "exec"])
    parser.add_argument("n", type=int)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--single", action="store_true", help="one SubmitJob per job")
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_load(args)))


if __name__ == "__main__":
    main()
