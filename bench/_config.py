"""How big a benchmark run is: the full run (``make bench``) or ``--quick``, tuned by env."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


@dataclass(frozen=True)
class Config:
    """Sizes of every benchmark.

    Attributes:
        quick: A short run to check that everything works, not to quote.
        reps: Repetitions of each figure (median with min and max).
        duration: Seconds measured per closed-loop point (floor, submit).
        warmup: Seconds of load before a closed-loop point is measured.
        concurrency: Calls in flight for the floor and submit points.
        n: Jobs per end-to-end run of function jobs and of Celery tasks (env BENCH_N).
        exec_n: Jobs per end-to-end run of exec jobs (env BENCH_EXEC_N).
        dispatch_n: Jobs run one at a time per dispatch-latency repetition.
        function_slots: Slots of an agent running function jobs.
        exec_slots: Slots of an agent running exec jobs.
        log_bytes: Bytes the log-tail job writes.
        log_lines: Lines the line-delay job prints.
        fanout_followers: Clients following every event in the fan-out.
        fanout_jobs: Jobs run while they follow (env BENCH_FANOUT_JOBS): the issue's 1,000, so
            4,000 events reach each of the 1,000 followers (in batched frames).
        fanout_reps: Repetitions of the fan-out (the heaviest benchmark; its p99 moved by
            as much as 2x between single runs of the same code).
        disk_jobs: Finished jobs stored for the cost-per-job figure.
    """

    quick: bool
    reps: int
    duration: float
    warmup: float
    concurrency: tuple[int, ...]
    n: int
    exec_n: int
    dispatch_n: int
    function_slots: int
    exec_slots: int
    log_bytes: int
    log_lines: int
    fanout_followers: int
    fanout_jobs: int
    fanout_reps: int
    disk_jobs: int

    @classmethod
    def build(cls, quick: bool) -> Config:
        n = _env_int("BENCH_N", 500 if quick else 5000)
        return cls(
            quick=quick,
            reps=_env_int("BENCH_REPS", 1 if quick else 3),
            duration=1.0 if quick else 2.0,
            warmup=0.3 if quick else 0.5,
            concurrency=(1, 16, 64),
            n=n,
            exec_n=_env_int("BENCH_EXEC_N", min(n, 200 if quick else 500)),
            dispatch_n=_env_int("BENCH_DISPATCH_N", 100 if quick else 500),
            function_slots=_env_int("BENCH_FUNCTION_SLOTS", 16),
            exec_slots=_env_int("BENCH_EXEC_SLOTS", 8),
            log_bytes=(20 if quick else 100) * 1_000_000,
            log_lines=1000,
            fanout_followers=_env_int("BENCH_FANOUT_FOLLOWERS", 1000),
            fanout_jobs=_env_int("BENCH_FANOUT_JOBS", 1000),
            fanout_reps=_env_int("BENCH_FANOUT_REPS", 1 if quick else 3),
            disk_jobs=_env_int("BENCH_DISK_JOBS", 100 if quick else 300),
        )
