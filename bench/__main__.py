"""``python -m bench [--quick] [--only NAME]``: runs the benchmarks, prints a table, writes JSON.

Every figure is the median of ``reps`` repetitions (min-max beside it); ratios are computed
from figures of this run only. Targets from issue 5 are printed with a check mark; nothing
here fails on a missed target. A benchmark that crashes is reported and the rest still run;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import celery_peer, disk, dispatch, e2e, fanout, floor, logtail, pg, submit
from bench._config import Config
from bench._procs import ROOT, BenchError, Procs, terminate_on_signals

MODULES = [floor, submit, e2e, celery_peer, dispatch, logtail, fanout, disk, pg]
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


# (key, unit, target description, check) per section; the check gets the median.
Check = Callable[[Any], bool]
TABLE: list[tuple[str, list[tuple[str, str, str, Check | None]]]] = [
    (
        "1. floor: bare grpc.aio (bytes), separate load process",
        [
            ("floor_unary_calls_per_s_1", "calls/s", "", None),
            ("floor_unary_calls_per_s_16", "calls/s", "", None),
            ("floor_unary_calls_per_s_64", "calls/s", "", None),
            ("floor_unary_p50_ms_1", "ms", "", None),
            ("floor_stream_msgs_per_s", "msgs/s", "", None),
            ("floor_fanout_round_ms", "ms", "", None),
            ("floor_fanout_cpu_us_per_frame", "us", "", None),
            ("floor_fanout_round_ms_32kb", "ms", "", None),
            ("floor_fanout_cpu_us_per_frame_32kb", "us", "", None),
        ],
    ),
    (
        "2. submit: acknowledged SubmitJob",
        [
            ("submit_per_s_1", "submits/s", "", None),
            ("submit_per_s_16", "submits/s", "", None),
            ("submit_per_s_64", "submits/s", "", None),
            ("submit_p50_ms_1", "ms", "", None),
            ("submit_floor_calls_per_s_1", "calls/s", "", None),
            ("submit_floor_calls_per_s_16", "calls/s", "", None),
            ("submit_floor_calls_per_s_64", "calls/s", "", None),
            ("submit_vs_floor_1", "x floor", "", None),
            ("submit_vs_floor_16", "x floor", "", None),
            ("submit_vs_floor_64", "x floor", ">= 0.5", lambda v: v >= 0.5),
        ],
    ),
    (
        "3./4. end to end (first submit -> last finished event) and Celery",
        [
            ("e2e_function_jobs_per_s_1_agent", "jobs/s", "", None),
            ("e2e_function_jobs_per_s_2_agents", "jobs/s", "", None),
            ("e2e_function_jobs_per_s_2_agents_submit_phase", "submits/s", "", None),
            ("e2e_function_jobs_per_s_2_agents_single_submits", "jobs/s", "", None),
            ("e2e_exec_jobs_per_s_1_agent", "jobs/s", "", None),
            ("e2e_exec_jobs_per_s_2_agents", "jobs/s", ">= 300", lambda v: v >= 300),
            ("celery_tasks_per_s_solo", "tasks/s", "", None),
            ("celery_tasks_per_s_prefork_2", "tasks/s", "", None),
            ("celery_best_tasks_per_s", "tasks/s", "", None),
            ("e2e_vs_celery", "x celery", ">= 1.5", lambda v: v >= 1.5),
        ],
    ),
    (
        "5. dispatch latency, one job at a time",
        [
            ("dispatch_exec_ack_p50_ms", "ms", "", None),
            ("dispatch_exec_claimed_p50_ms", "ms", "", None),
            ("dispatch_running_p50_ms", "ms", "<= 5", lambda v: v <= 5),
            ("dispatch_running_p99_ms", "ms", "<= 25", lambda v: v <= 25),
            ("dispatch_function_ack_p50_ms", "ms", "", None),
            ("dispatch_function_claimed_p50_ms", "ms", "", None),
            ("dispatch_function_running_p50_ms", "ms", "", None),
            ("dispatch_finished_p50_ms", "ms", "", None),
            ("dispatch_finished_p99_ms", "ms", "<= 10", lambda v: v <= 10),
            ("celery_rtt_p50_ms", "ms", "", None),
            ("celery_rtt_p99_ms", "ms", "", None),
            ("dispatch_vs_celery_rtt_p50", "x celery", "<= 1.5", lambda v: v <= 1.5),
        ],
    ),
    (
        "6. log tail",
        [
            ("log_tail_mb_per_s", "MB/s", ">= 50", lambda v: v >= 50),
            ("log_line_delay_p50_ms", "ms", "", None),
            ("log_line_delay_p99_ms", "ms", "<= 50", lambda v: v <= 50),
            ("log_line_delay_max_ms", "ms", "", None),
        ],
    ),
    (
        "7. fan-out",
        [
            ("fanout_jobs", "jobs", "", None),
            ("fanout_1000_all_delivered", "", "true", lambda v: v is True),
            ("fanout_timed_out", "", "", None),
            ("fanout_no_gap_or_repeat", "", "", None),
            ("fanout_1000_server_rss_mb", "MB", "<= 300", lambda v: v <= 300),
            ("fanout_event_delay_p50_ms", "ms", "", None),
            ("fanout_event_delay_p99_ms", "ms", "<= 100", lambda v: v <= 100),
            ("fanout_running_event_delay_p99_ms", "ms", "", None),
            ("fanout_other_event_delay_p99_ms", "ms", "", None),
            ("fanout_event_msgs_per_s", "msgs/s", "", None),
            ("fanout_jobs_seconds", "s", "", None),
            ("fanout_server_cpu_us_per_frame", "us", "", None),
            ("fanout_events_per_frame", "events", "", None),
            ("fanout_frame_kb", "KB", "", None),
        ],
    ),
    (
        "8. cost of a stored job (1 KB of logs)",
        [
            ("disk_bytes_per_job", "bytes", "", None),
            ("disk_bytes_per_job_live", "bytes", "", None),
            ("disk_allocated_bytes_per_job", "bytes", "", None),
        ],
    ),
    (
        "9. PostgreSQL: end to end with replicas, and procrastinate",
        [
            ("pg_e2e_function_jobs_per_s_1_replica", "jobs/s", "", None),
            ("pg_e2e_function_jobs_per_s_2_replicas", "jobs/s", "", None),
            ("procrastinate_jobs_per_s_batch", "jobs/s", "", None),
            ("procrastinate_jobs_per_s_single", "jobs/s", "", None),
            ("procrastinate_jobs_per_s", "jobs/s", "", None),
            ("pg_e2e_vs_procrastinate", "x procr.", ">= 2", lambda v: v >= 2),
        ],
    ),
]


def _ratio(a: Any, b: Any) -> float:
    try:
        return float(a) / float(b)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def derive(figures: dict[str, Any]) -> None:
    """Ratios, from medians of this run (submit's against the floor measured beside it)."""
    for c in (1, 16, 64):
        if f"submit_per_s_{c}" in figures and f"submit_floor_calls_per_s_{c}" in figures:
            figures[f"submit_vs_floor_{c}"] = _ratio(
                figures[f"submit_per_s_{c}"], figures[f"submit_floor_calls_per_s_{c}"]
            )
    if "e2e_function_jobs_per_s_2_agents" in figures and "celery_best_tasks_per_s" in figures:
        figures["e2e_vs_celery"] = _ratio(
            figures["e2e_function_jobs_per_s_2_agents"], figures["celery_best_tasks_per_s"]
        )
    if "pg_e2e_function_jobs_per_s_2_replicas" in figures and "procrastinate_jobs_per_s" in figures:
        figures["pg_e2e_vs_procrastinate"] = _ratio(
            figures["pg_e2e_function_jobs_per_s_2_replicas"], figures["procrastinate_jobs_per_s"]
        )
    if "dispatch_finished_p50_ms" in figures and "celery_rtt_p50_ms" in figures:
        figures["dispatch_vs_celery_rtt_p50"] = _ratio(
            figures["dispatch_finished_p50_ms"], figures["celery_rtt_p50_ms"]
        )


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: dict[str, Any], ranges: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The printed table and the target verdicts."""
    rows = [("figure", "median", "min-max", "unit", "target", "")]
    verdicts: dict[str, Any] = {}
    out: list[str] = []
    for title, items in TABLE:
        rows.append((f"-- {title}", "", "", "", "", ""))
        for key, unit, target, check in items:
            if key not in figures:
                continue
            value = figures[key]
            span = ranges.get(key)
            minmax = f"{_fmt(span['min'])}-{_fmt(span['max'])}" if span else ""
            mark = ""
            if check is not None:
                ok = False
                with_value = value is not None and not (
                    isinstance(value, float) and math.isnan(value)
                )
                if with_value:
                    ok = bool(check(value))
                mark = "✓" if ok else "✗"
                verdicts[key] = {"target": target, "ok": ok}
            rows.append((key, _fmt(value), minmax, unit, target, mark))
    widths = [max(len(r[i]) for r in rows if not r[0].startswith("--")) for i in range(6)]
    for row in rows:
        if row[0].startswith("--"):
            out.append(row[0])
            continue
        out.append(
            "  ".join(
                (
                    row[0].ljust(widths[0]),
                    row[1].rjust(widths[1]),
                    row[2].rjust(widths[2]),
                    row[3].ljust(widths[3]),
                    row[4].ljust(widths[4]),
                    row[5],
                )
            ).rstrip()
        )
    return "\n".join(out), verdicts


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        return ""


def _ensure_redis(procs: Procs) -> str:
    """Redis on 127.0.0.1:6379 for the Celery peer: the one running, or one started here."""
    if celery_peer.redis_up():
        return "already running"
    if not shutil.which("redis-server"):
        return "missing (no redis-server): Celery figures are skipped"
    server = procs.start(
        "redis-server",
        ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly",
         "no", "--dir", str(procs.temp_dir("redis"))],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not celery_peer.redis_up():
        if time.monotonic() > deadline or server.popen.poll() is not None:
            raise BenchError(f"redis-server did not start:\n{server.output()}")
        time.sleep(0.1)
    return "started by the bench"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--only",
        action="append",
        choices=[m.NAME for m in MODULES],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args()
    cfg = Config.build(args.quick)
    chosen = [m for m in MODULES if not args.only or m.NAME in args.only]

    figures: dict[str, Any] = {}
    ranges: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    errors: dict[str, str] = {}
    elapsed: dict[str, float] = {}
    started = time.monotonic()
    load_before = os.getloadavg()
    print(
        f"gaffer bench: {'quick' if cfg.quick else 'full'} run, {cfg.reps} repetition(s), "
        f"N={cfg.n} function jobs / Celery tasks, N={cfg.exec_n} exec jobs; "
        f"load average {load_before[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    with terminate_on_signals(), Procs() as shared:
        redis = _ensure_redis(shared) if celery_peer in chosen or dispatch in chosen else "-"
        for module in chosen:
            t0 = time.monotonic()
            print(f"[{time.monotonic() - started:5.0f}s] {module.NAME} ...", flush=True)
            try:
                if module in (celery_peer, dispatch) and not celery_peer.redis_up():
                    raise BenchError(f"Redis is not available ({redis})")
                with Procs() as procs:
                    result = module.run(cfg, procs)
            except (Exception, KeyboardInterrupt) as error:
                errors[module.NAME] = "".join(traceback.format_exception_only(error)).strip()
                print(f"  {module.NAME} failed: {errors[module.NAME]}", flush=True)
                if isinstance(error, KeyboardInterrupt):
                    break
                traceback.print_exc()
                continue
            finally:
                elapsed[module.NAME] = round(time.monotonic() - t0, 1)
            for key, value in result["figures"].items():
                if isinstance(value, dict):
                    figures[key] = value["median"]
                    ranges[key] = {k: value[k] for k in ("min", "max", "runs")}
                else:
                    figures[key] = value
            extra[module.NAME] = {k: v for k, v in result.items() if k != "figures"}

    derive(figures)
    text, verdicts = table(figures, ranges)
    total = time.monotonic() - started
    meta = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "quick": cfg.quick,
        "only": args.only or [],
        "config": {k: v for k, v in vars(cfg).items()},
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": load_before,
        "load_average_end": os.getloadavg(),
        "redis": redis,
        "seconds": round(total, 1),
        "seconds_per_benchmark": elapsed,
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **figures,
        "ranges": ranges,
        "targets": verdicts,
        "benchmarks": extra,
        "meta": meta,
    }
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")

    print()
    print(text)
    print()
    for name, info in extra.items():
        for label, shares in (info.get("cpu") or {}).items():
            print(f"cpu % {name}/{label}: {shares}")
    print(
        f"\nN: {cfg.n} function jobs and Celery tasks, {cfg.exec_n} exec jobs, "
        f"{cfg.dispatch_n} dispatches per kind, fan-out {cfg.fanout_followers} followers x "
        f"{cfg.fanout_jobs} jobs; {cfg.reps} repetition(s) (fan-out {cfg.fanout_reps}); "
        f"{total:.0f}s; load average {meta['load_average_end'][0]:.1f}"
    )
    print(f"wrote {args.out}")
    if errors:
        print(f"failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
