"""5. Dispatch latency: an idle server, one agent waiting, one job at a time.

``exec`` jobs (``true``): submit -> RUNNING seen by a client following all jobs' events (the
stream is opened before the submit); ``function`` jobs (``gaffer.noop``): submit -> finished
seen. The next job is submitted once the previous one finished. Celery's single round trip
(``apply_async`` -> ``get``, solo worker) is measured beside it, in the same repetition.

Both systems run through the whole repetition, and their loads take turns in blocks: the
machine's speed drifts over seconds to minutes, and measured one after the other the ratio
of the two p50s moved with it (1.35 to 1.58 in six single repetitions of the same code, with
Gaffer's p50 at 1.52 to 2.22 ms and Celery's at 1.06 to 1.45 ms). Each side's figures are
percentiles of all its blocks' samples together.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc

from bench import celery_peer
from bench._config import Config
from bench._gaffer import FINISHED, spec_of
from bench._load import CpuWindow, add_watch, channel, watch_args, watched
from bench._procs import Procs, emit
from bench._stats import percentile, summary
from gaffer.client._base import frame_events
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "dispatch"
WARMUP_JOBS = 10
#: Turns each side takes per repetition (each turn runs dispatch_n / BLOCKS jobs per kind).
BLOCKS = 4


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: dispatch_{running,finished}_p{50,99}_ms, celery_rtt_p{50,99}_ms."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, Any] = {}
    per_block = str(max(1, cfg.dispatch_n // BLOCKS))
    for _ in range(cfg.reps):
        server, address = procs.gaffer_server()
        agent = procs.gaffer_agent(address, "bench-dispatch", cfg.function_slots)
        worker, env = celery_peer.start_worker(procs, "solo")
        gaffer: dict[str, dict[str, list[float]]] = {}
        celery: list[float] = []
        try:
            for _ in range(BLOCKS):
                out = procs.load(
                    "dispatch", address, per_block,
                    *watch_args(gaffer_server=server.pid, agent=agent.pid),
                )  # fmt: skip
                for kind, phases in out["samples"].items():
                    for phase, values in phases.items():
                        gaffer.setdefault(kind, {}).setdefault(phase, []).extend(values)
                cpu["gaffer"] = out["cpu"]  # the last block's shares (as for Celery's)
                out = procs.load(
                    "celery_peer", "rtt", per_block, "--watch", f"celery-worker={worker.pid}",
                    env=env,
                )  # fmt: skip
                celery.extend(out["samples_ms"])
                cpu["celery"] = out["cpu"]
        finally:
            procs.stop(worker)
            procs.stop(agent)
            procs.stop(server)
        figures = _figures(gaffer)
        figures["celery_rtt_p50_ms"] = percentile(celery, 50)
        figures["celery_rtt_p99_ms"] = percentile(celery, 99)
        for key, value in figures.items():
            runs.setdefault(key, []).append(value)
    return {
        "figures": {k: summary(v) for k, v in runs.items()},
        "params": {"jobs_per_kind": cfg.dispatch_n, "blocks": BLOCKS},
        "cpu": cpu,
    }


def _figures(samples: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    figures = {
        "dispatch_running_p50_ms": percentile(samples["exec"]["running"], 50),
        "dispatch_running_p99_ms": percentile(samples["exec"]["running"], 99),
        "dispatch_finished_p50_ms": percentile(samples["function"]["finished"], 50),
        "dispatch_finished_p99_ms": percentile(samples["function"]["finished"], 99),
    }
    for kind, phases in samples.items():
        for phase, values in phases.items():
            figures[f"dispatch_{kind}_{phase}_p50_ms"] = percentile(values, 50)
    return figures


class _Follower:
    """All jobs' events; per job, when each state was first seen (perf_counter)."""

    def __init__(self, stub: job_service_pb2_grpc.JobServiceStub) -> None:
        self._stub = stub
        self.seen: dict[str, dict[int, float]] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[float]] = {}
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        request = job_service_pb2.StreamJobEventsRequest(after_sequence=0, batch=True)
        call = self._stub.StreamJobEvents(request)
        try:
            async for frame in call:
                now = time.perf_counter()
                for event in frame_events(frame):
                    if event.type != job_pb2.JOB_EVENT_TYPE_STATE_CHANGED:
                        continue
                    state = job_pb2.JOB_STATE_COMPLETED if event.state in FINISHED else event.state
                    states = self.seen.setdefault(event.job_id, {})
                    states.setdefault(state, now)
                    waiter = self._waiters.pop((event.job_id, state), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise
        finally:
            call.cancel()

    async def wait(self, job_id: str, state: int, timeout: float = 30.0) -> float:
        """When ``state`` (COMPLETED for any finished state) was seen for ``job_id``."""
        at = self.seen.get(job_id, {}).get(state)
        if at is not None:
            return at
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[(job_id, state)] = waiter
        return await asyncio.wait_for(waiter, timeout)

    def stop(self) -> None:
        self._task.cancel()


async def _one(
    stub: job_service_pb2_grpc.JobServiceStub, follower: _Follower, kind: str
) -> dict[str, float]:
    """Runs one job; ms from just before the submit to its ack and to each state seen."""
    request = job_service_pb2.SubmitJobRequest(spec=spec_of(kind))
    started = time.perf_counter()
    response = await stub.SubmitJob(request)
    acked = time.perf_counter()
    job_id = response.job.id
    finished = await follower.wait(job_id, job_pb2.JOB_STATE_COMPLETED)
    seen = follower.seen[job_id]
    out = {"ack": acked - started, "finished": finished - started}
    for state, name in (
        (job_pb2.JOB_STATE_CLAIMED, "claimed"),
        (job_pb2.JOB_STATE_RUNNING, "running"),
    ):
        if state in seen:
            out[name] = seen[state] - started
    return {k: v * 1000 for k, v in out.items()}


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        follower = _Follower(stub)
        for kind in ("exec", "function"):
            for _ in range(WARMUP_JOBS):
                await _one(stub, follower, kind)
        cpu = CpuWindow(watched(args))
        samples: dict[str, dict[str, list[float]]] = {}
        for kind in ("exec", "function"):
            per_kind = samples.setdefault(kind, {})
            for _ in range(args.n):
                for phase, ms in (await _one(stub, follower, kind)).items():
                    per_kind.setdefault(phase, []).append(ms)
        follower.stop()
    return {"samples": samples, "cpu": cpu.percent()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("target")
    parser.add_argument("n", type=int)
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_load(args)))


if __name__ == "__main__":
    main()
