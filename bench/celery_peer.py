"""4. The peer: Celery 5 on Redis (broker and result backend), a no-op task, the same N.

One worker, solo pool and prefork with 2; end to end from the first send to the last result
(a group, then ``.get()`` on it: Celery's native join on Redis). ``rtt`` measures one task at a
time (``apply_async`` then ``get``), used beside Gaffer's dispatch latency. Each run has its
own queue; Redis must be running (``make bench`` starts one when none answers).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

from bench._config import Config
from bench._procs import BenchError, Proc, Procs, emit, python
from bench._stats import summary

NAME = "celery"
POOLS = {
    "solo": ("--pool", "solo", "--concurrency", "1"),
    "prefork_2": ("--pool", "prefork", "--concurrency", "2"),
}


def redis_up() -> bool:
    import redis

    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def start_worker(procs: Procs, pool: str) -> tuple[Proc, dict[str, str]]:
    """A Celery worker on a queue of its own; (process, env for its clients)."""
    if not redis_up():
        raise BenchError("Redis is not answering on BENCH_REDIS_URL (127.0.0.1:6379 by default)")
    env = {"BENCH_CELERY_QUEUE": f"gaffer-bench-{uuid.uuid4().hex[:8]}"}
    argv = python(
        "-m", "celery", "-A", "bench.celery_app", "worker", *POOLS[pool],
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "WARNING", "--hostname", f"bench-{pool}@%h",
    )  # fmt: skip
    return procs.start(f"celery-{pool}", argv, env=env), env


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: celery_tasks_per_s_{solo,prefork_2}, celery_best_tasks_per_s."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    for _ in range(cfg.reps):
        for pool in POOLS:
            worker, env = start_worker(procs, pool)
            try:
                out = procs.load(
                    "celery_peer", "e2e", str(cfg.n), "--watch", f"celery-worker={worker.pid}",
                    env=env,
                )  # fmt: skip
            finally:
                procs.stop(worker)
            runs.setdefault(f"celery_tasks_per_s_{pool}", []).append(out["tasks_per_s"])
            cpu[pool] = out["cpu"]
    figures = {k: summary(v) for k, v in runs.items()}
    best = max(figures.values(), key=lambda s: s["median"])
    figures["celery_best_tasks_per_s"] = best
    return {"figures": figures, "params": {"n": cfg.n}, "cpu": cpu}


def _warm(noop: Any, timeout: float = 60.0) -> None:
    """Waits for the worker (and its pool) to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            noop.apply_async().get(timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def _e2e(n: int, pids: dict[str, int]) -> dict[str, Any]:
    from celery import group

    from bench._load import CpuWindow
    from bench.celery_app import noop

    _warm(noop)
    for _ in range(20):
        noop.apply_async().get(timeout=10)
    cpu = CpuWindow(pids)
    started = time.perf_counter()
    result = group(noop.s() for _ in range(n)).apply_async()
    sent = time.perf_counter()
    result.get(timeout=600)
    elapsed = time.perf_counter() - started
    shares = cpu.percent()
    result.forget()
    return {
        "tasks_per_s": n / elapsed,
        "seconds": elapsed,
        "send_per_s": n / (sent - started),
        "cpu": shares,
    }


def _rtt(n: int, pids: dict[str, int]) -> dict[str, Any]:
    from bench._load import CpuWindow
    from bench.celery_app import noop

    _warm(noop)
    for _ in range(20):
        noop.apply_async().get(timeout=10)
    cpu = CpuWindow(pids)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        noop.apply_async().get(timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    return {"samples_ms": samples, "cpu": cpu.percent()}


def main() -> None:
    from bench._load import add_watch, watched

    parser = argparse.ArgumentParser(prog="python -m bench.celery_peer load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("what", choices=["e2e", "rtt"])
    parser.add_argument("n", type=int)
    add_watch(parser)
    args = parser.parse_args()
    emit((_e2e if args.what == "e2e" else _rtt)(args.n, watched(args)))


if __name__ == "__main__":
    main()
