"""PostgreSQL: end-to-end function jobs with 1 and 2 server replicas, and procrastinate.

``pg_e2e_function_jobs_per_s_1_replica``: N ``gaffer.noop`` jobs through one server on
PostgreSQL with 2 agents, measured by ``bench.e2e``'s own load (first submit to the last
finished event). ``..._2_replicas``: two servers sharing the database and the data dir, one
agent on each, submits split between them, and every job's events followed on both replicas
(a job counts as finished at the first finished event either replica delivers).
``procrastinate_jobs_per_s``: procrastinate with 2 worker processes on the same PostgreSQL
server (its own database), a no-op task; from the first ``deferred`` event to the last
``succeeded`` one, both from procrastinate's own event table. Gaffer submits in bulk (SubmitJobs
of 1,000); procrastinate runs twice, deferring in bulk (``batch_defer_async`` of 1,000) and one
job at a time (64 in flight), and ``procrastinate_jobs_per_s`` is the better of the two.

Every run has fresh databases, created here and dropped at the end, failure included. The
server is ``BENCH_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg

from bench import e2e
from bench._config import Config
from bench._gaffer import Finishes, spec_of, submit_batched
from bench._load import CpuWindow, add_watch, channel, watch_args, watched
from bench._procs import BenchError, Procs, emit, python
from bench._stats import summary
from gaffer.v1 import job_pb2, job_service_pb2_grpc

NAME = "pg"
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
PROCRASTINATE_WORKERS = 2


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG_URL}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the server; its URL. Dropped on exit (connections forced)."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_URL}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: pg_e2e_function_jobs_per_s_{1_replica,2_replicas}, procrastinate_jobs_per_s."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    for _ in range(cfg.reps):
        for replicas in (1, 2):
            out = run_gaffer(procs, cfg.n, replicas, cfg.function_slots)
            key = f"pg_e2e_function_jobs_per_s_{replicas}_replica{'s' if replicas > 1 else ''}"
            runs.setdefault(key, []).append(out["jobs_per_s"])
            cpu[f"gaffer_{replicas}"] = out["cpu"]
        best = 0.0
        for mode in ("batch", "single"):
            out = run_procrastinate(procs, cfg.n, cfg.function_slots, mode)
            runs.setdefault(f"procrastinate_jobs_per_s_{mode}", []).append(out["jobs_per_s"])
            cpu[f"procrastinate_{mode}"] = out["cpu"]
            best = max(best, out["jobs_per_s"])
        runs.setdefault("procrastinate_jobs_per_s", []).append(best)
    return {
        "figures": {k: summary(v) for k, v in runs.items()},
        "params": {
            "n": cfg.n,
            "function_slots_per_agent": cfg.function_slots,
            "procrastinate_workers": PROCRASTINATE_WORKERS,
            "procrastinate_concurrency_per_worker": cfg.function_slots,
            "submit_batch": e2e.SUBMIT_BATCH,
        },
        "cpu": cpu,
    }


def run_gaffer(procs: Procs, n: int, replicas: int, slots: int) -> dict[str, Any]:
    with fresh_database("gaffer") as url:
        data_dir = procs.temp_dir("pg-data")
        servers, addresses, agents = [], [], []
        pids: dict[str, int] = {}
        try:
            for i in range(replicas):
                server, address = procs.gaffer_server(data_dir, "--database-url", url)
                servers.append(server)
                addresses.append(address)
                pids[f"server_{i + 1}"] = server.pid
            both = ",".join(addresses)
            for i in range(2):
                # 1 replica: 2 agents on it; 2 replicas: one agent on each (listed first).
                own = addresses[i % replicas]
                listed = ",".join([own, *(a for a in addresses if a != own)])
                name = f"bench-pg-{replicas}-{i + 1}"
                agent = procs.gaffer_agent(listed if replicas > 1 else own, name, slots)
                agents.append(agent)
                pids[f"agent_{i + 1}"] = agent.pid
            if replicas == 1:
                return procs.load("e2e", addresses[0], "function", str(n), *watch_args(**pids))
            return procs.load("pg", both, str(n), *watch_args(**pids))
        finally:
            for proc in agents + servers:
                procs.stop(proc, keep_dir=True)


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    """N function jobs submitted over several replicas; finished events followed on all."""
    targets = args.targets.split(",")
    channels = [channel(t) for t in targets]
    try:
        stubs = [job_service_pb2_grpc.JobServiceStub(ch) for ch in channels]
        followers = [Finishes(stub, args.n) for stub in stubs]
        for follower in followers:
            follower.start()
        await asyncio.sleep(0.2)
        cpu = CpuWindow(watched(args))
        started = time.perf_counter()
        shares = [args.n // len(stubs) + (i < args.n % len(stubs)) for i in range(len(stubs))]
        per_target = await asyncio.gather(
            *(
                submit_batched(stub, spec_of("function"), count, e2e.SUBMIT_BATCH, 1)
                for stub, count in zip(stubs, shares, strict=True)
            )
        )
        submitted = time.perf_counter()
        ids = {i for part in per_target for i in part}
        deadline = time.monotonic() + args.timeout
        while True:
            seen: set[str] = set()
            for follower in followers:
                seen.update(follower.finished)
            if ids <= seen:
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"only {len(ids & seen)} of {args.n} jobs finished within {args.timeout}s"
                )
            await asyncio.sleep(0.005)
        window = cpu.percent()
        for follower in followers:
            follower.stop()
    finally:
        for ch in channels:
            await ch.close()
    finish: dict[str, float] = {}
    states: dict[str, int] = {}
    for follower in followers:
        for job, at in follower.finished.items():
            if job not in finish or at < finish[job]:
                finish[job] = at
                states[job] = follower.states[job]
    last = max(finish[j] for j in ids)
    failed = sum(1 for j in ids if states[j] != job_pb2.JOB_STATE_COMPLETED)
    return {
        "jobs_per_s": args.n / (last - started),
        "seconds": last - started,
        "submit_per_s": args.n / (submitted - started),
        "failed": failed,
        "cpu": window,
    }


def run_procrastinate(procs: Procs, n: int, concurrency: int, mode: str) -> dict[str, Any]:
    with fresh_database("procrastinate") as url:
        env = {"BENCH_PROCRASTINATE_DSN": url}
        cli = python("-m", "procrastinate", "--app", "bench.procrastinate_app.app")
        schema = procs.start("procrastinate-schema", [*cli, "schema", "--apply"], env=env)
        if schema.wait(60) != 0:
            raise BenchError(f"procrastinate schema failed:\n{schema.output()}")
        procs.stop(schema)
        workers = []
        try:
            for i in range(PROCRASTINATE_WORKERS):
                argv = [*cli, "worker", "--concurrency", str(concurrency), "--name", f"w{i + 1}"]
                workers.append(procs.start(f"procrastinate-worker-{i + 1}", argv, env=env))
            # Both workers are listening once each has run a job; procrastinate logs little.
            asyncio.run(_warm_up(url, len(workers)))
            pids = {f"worker_{i + 1}": w.pid for i, w in enumerate(workers)}
            argv = ["procrastinate", str(n), "--mode", mode, *watch_args(**pids)]
            return procs.load("pg", *argv, env=env)
        finally:
            for worker in workers:
                procs.stop(worker)


async def _warm_up(url: str, workers: int, timeout: float = 30.0) -> None:
    """Waits until every worker process has registered in procrastinate_workers."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM procrastinate_workers") < workers:
            if time.monotonic() > deadline:
                raise BenchError(f"{workers} procrastinate workers did not start")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _procrastinate_load(args: argparse.Namespace) -> dict[str, Any]:
    from bench.procrastinate_app import app, noop

    url = os.environ["BENCH_PROCRASTINATE_DSN"]
    cpu = CpuWindow(watched(args))
    async with app.open_async():
        t0 = time.perf_counter()
        if args.mode == "batch":
            for start in range(0, args.n, e2e.SUBMIT_BATCH):
                await noop.batch_defer_async(*[{}] * min(e2e.SUBMIT_BATCH, args.n - start))
        else:
            left = args.n

            async def defer() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await noop.defer_async()

            await asyncio.gather(*(defer() for _ in range(min(e2e.SUBMIT_IN_FLIGHT, args.n))))
        deferred = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')"
            )
            if done >= args.n:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {args.n} jobs done within {args.timeout}s")
            await asyncio.sleep(0.01)
        window = cpu.percent()
        row = await conn.fetchrow(
            "SELECT min(at) FILTER (WHERE type = 'deferred') AS first,"
            " max(at) FILTER (WHERE type IN ('succeeded', 'failed')) AS last"
            " FROM procrastinate_events"
        )
        failed = await conn.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
        )
    finally:
        await conn.close()
    seconds = (row["last"] - row["first"]).total_seconds()
    return {
        "jobs_per_s": args.n / seconds,
        "seconds": seconds,
        "defer_per_s": args.n / (deferred - t0),
        "failed": failed,
        "cpu": window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("targets", help="comma-separated server addresses, or 'procrastinate'")
    parser.add_argument(
        "--mode", choices=["batch", "single"], default="batch", help="procrastinate's defers"
    )
    parser.add_argument("n", type=int)
    parser.add_argument("--timeout", type=float, default=300.0)
    add_watch(parser)
    args = parser.parse_args()
    if args.targets == "procrastinate":
        emit(asyncio.run(_procrastinate_load(args)))
    else:
        emit(asyncio.run(_load(args)))


if __name__ == "__main__":
    main()
