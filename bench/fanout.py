"""7. Fan-out: many clients follow the events of all jobs while jobs run.

Followers are grpc.aio streams (StreamJobEvents of all jobs from sequence 0, keepalive 1 s)
spread over a few channels in two load processes. Once every stream has had its first
frame, 1,000 ``function`` no-op jobs are submitted (two agents run them). Each follower
stores every frame as it arrives, with its arrival time; one stream per process decodes as
it goes, to know when the last job finished. After the run each process decodes its frames:
every sequence a stream got, and the delay of each event (its frame's arrival minus the
event's ``time``). It then reads the whole history once and checks that every stream got
exactly the stored events, in order. While frames arrive the follower processes run without
garbage collection, which would stamp the frames read after each pause late. The server's
peak RSS is sampled from /proc throughout.
``fanout_jobs_seconds`` is the span, in the server's event times, from the first event to
the last job's end: how long the jobs took while the server also fed the followers.
``fanout_server_cpu_us_per_frame`` is all of the server's CPU time over the frames it sent
(the jobs' own work included), to set beside the floor's ``floor_fanout_cpu_us_per_frame``;
``fanout_events_per_frame`` and ``fanout_frame_kb`` say what one frame carried on average.
``fanout_running_event_delay_p99_ms`` and ``fanout_other_event_delay_p99_ms`` split the
delay: a no-op call ends before it reports RUNNING, so its RUNNING event carries the time the
agent started it, and its delay includes the outcome's trip to the server and its commit;
every other event is stamped by the server as it records it.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import time
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from bench._config import Config
from bench._gaffer import FINISHED, function_spec, submit_many
from bench._load import CpuWindow, add_watch, channel, watch_args, watched
from bench._procs import BenchError, Procs, RssSampler, emit
from bench._stats import percentile, summary
from gaffer.client._base import frame_events
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "fanout"
FOLLOWER_PROCESSES = 2
CHANNELS_PER_PROCESS = 8
SUBMIT_IN_FLIGHT = 64


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: fanout_{F}_all_delivered, fanout_{F}_server_rss_mb, fanout_event_delay_p*_ms."""
    followers = cfg.fanout_followers
    runs: dict[str, list[float]] = {}
    delivered: list[bool] = []
    details: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}
    timeout = 150.0 if cfg.quick else 300.0
    for _ in range(cfg.fanout_reps):
        server, address = procs.gaffer_server()
        with RssSampler(server.pid) as rss:
            idle_rss = rss.peak_mb
            agents = [
                procs.gaffer_agent(address, f"bench-fanout-{i}", cfg.function_slots) for i in (1, 2)
            ]
            share = [followers // FOLLOWER_PROCESSES] * FOLLOWER_PROCESSES
            share[0] += followers - sum(share)
            pids = {
                "gaffer_server": server.pid,
                **{f"agent_{i}": a.pid for i, a in enumerate(agents, 1)},
            }
            loads = []
            for i, streams in enumerate(share, 1):
                proc = procs.start(
                    f"fanout-followers-{i}",
                    [
                        *_load_argv(address, "follow"),
                        "--streams", str(streams), "--jobs", str(cfg.fanout_jobs),
                        "--timeout", str(timeout), *watch_args(**pids),
                    ],
                )  # fmt: skip
                loads.append(proc)
            for proc in loads:
                proc.wait_for("followers ready", timeout=120)
            rss_before = rss.peak_mb
            submit = procs.load("fanout", "submit", address, "--jobs", str(cfg.fanout_jobs))
            results = [procs.result(proc, timeout + 60) for proc in loads]
            for agent in agents:
                procs.stop(agent)
        procs.stop(server)
        all_delivered = all(r["complete_streams"] == r["streams"] for r in results)
        delivered.append(all_delivered)
        delays = _merge([r["delay_ms"] for r in results])
        runs.setdefault(f"fanout_{followers}_server_rss_mb", []).append(rss.peak_mb)
        runs.setdefault("fanout_event_delay_p50_ms", []).append(delays["p50"])
        runs.setdefault("fanout_event_delay_p99_ms", []).append(delays["p99"])
        for kind in ("running", "other"):
            part = _merge([r[f"{kind}_delay_ms"] for r in results])
            runs.setdefault(f"fanout_{kind}_event_delay_p99_ms", []).append(part["p99"])
        runs.setdefault("fanout_jobs_seconds", []).append(max(r["jobs_seconds"] for r in results))
        seconds = max(r["seconds"] for r in results)
        frames = sum(r["frames_received"] for r in results)
        server_share = results[0]["cpu"]["gaffer-server"] / 100
        runs.setdefault("fanout_server_cpu_us_per_frame", []).append(
            server_share * seconds / max(frames, 1) * 1e6
        )
        runs.setdefault("fanout_event_msgs_per_s", []).append(
            sum(r["events_received"] for r in results) / seconds
        )
        # What one send carried: a round costs more the bigger its frames (the floor's _32kb).
        runs.setdefault("fanout_events_per_frame", []).append(
            sum(r["events_received"] for r in results) / max(frames, 1)
        )
        runs.setdefault("fanout_frame_kb", []).append(
            sum(r["bytes_received"] for r in results) / max(frames, 1) / 1024
        )
        details.append(
            {
                "server_rss_idle_mb": idle_rss,
                "server_rss_with_followers_mb": rss_before,
                "submit_per_s": submit["submit_per_s"],
                "followers": [
                    {k: v for k, v in r.items() if not k.endswith("delay_ms") and k != "cpu"}
                    for r in results
                ],
            }
        )
        cpu["followers"] = [r["cpu"] for r in results]
    if not runs:
        raise BenchError("fan-out did not run")
    figures = {k: summary(v) for k, v in runs.items()}
    figures[f"fanout_{followers}_all_delivered"] = all(delivered)
    figures["fanout_jobs"] = cfg.fanout_jobs
    figures["fanout_timed_out"] = any(r["timed_out"] for d in details for r in d["followers"])
    figures["fanout_no_gap_or_repeat"] = all(
        r["exact_prefix_streams"] == r["streams"] for d in details for r in d["followers"]
    )
    return {
        "figures": figures,
        "params": {
            "followers": followers,
            "jobs": cfg.fanout_jobs,
            "follower_processes": FOLLOWER_PROCESSES,
            "channels_per_process": CHANNELS_PER_PROCESS,
        },
        "details": details,
        "cpu": cpu,
    }


def _merge(parts: list[dict[str, float]]) -> dict[str, float]:
    """Percentiles of the followers' delays, weighted by their sample counts (approximate)."""
    total = sum(p["count"] for p in parts) or 1
    return {q: sum(p[q] * p["count"] for p in parts) / total for q in ("p50", "p99")} | {
        "max": max(p["max"] for p in parts)
    }


def _load_argv(address: str, what: str) -> list[str]:
    from bench._procs import python

    return python("-m", "bench.fanout", "load", what, address)


class _Stream:
    def __init__(self) -> None:
        #: (arrival time, raw StreamJobEventsResponse) of every frame, decoded after the run.
        self.frames: list[tuple[float, bytes]] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()

    def reached(self, target: int) -> bool:
        return bool(self.frames) and _frame_last(self.frames[-1][1]) >= target


class _Progress:
    """Counts the jobs finished, on one stream that decodes as it goes (the others only
    store their frames), and then knows the sequence every stream must reach."""

    def __init__(self, jobs: int, streams: list[_Stream]) -> None:
        self.jobs = jobs
        self.finished = 0
        self.target = 0
        self._streams = streams

    def count(self, raw: bytes) -> None:
        for event in frame_events(job_service_pb2.StreamJobEventsResponse.FromString(raw)):
            if event.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED and event.state in FINISHED:
                self.finished += 1
                if self.finished >= self.jobs:
                    self.target = event.sequence
                    for stream in self._streams:
                        if stream.reached(self.target):
                            stream.done.set()
                    return


def _frame_last(raw: bytes) -> int:
    events = frame_events(job_service_pb2.StreamJobEventsResponse.FromString(raw))
    return events[-1].sequence if events else 0


async def _follow(stream_events: Any, stream: _Stream, progress: _Progress, counting: bool) -> None:
    """Stores each frame with its arrival time. Decoding waits until the run is over, so
    that the delay measured is the server's and the network's, not the backlog of Python
    decoding 4 million events in two processes that share the server's two cores."""
    request = job_service_pb2.StreamJobEventsRequest(
        after_sequence=0, keepalive_interval=duration_pb2.Duration(seconds=1), batch=True
    )
    call = stream_events(request)
    try:
        async for raw in call:
            stream.frames.append((time.time(), raw))
            stream.ready.set()
            if counting and not progress.target:
                progress.count(raw)
            if progress.target and _frame_last(raw) >= progress.target:
                stream.done.set()
                return
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            print(f"follower stream failed: {error.code()} {error.details()}", flush=True)
    finally:
        call.cancel()


def _decode(
    stream: _Stream, running: array.array, other: array.array
) -> tuple[array.array, float, float]:
    """The stream's sequences, with each event's delay appended to ``running`` (RUNNING
    events) or ``other``, and the server times (s) of its first event and of its last job's
    finished event."""
    seqs = array.array("q")
    first = last_finished = 0.0
    for arrival, raw in stream.frames:
        for event in frame_events(job_service_pb2.StreamJobEventsResponse.FromString(raw)):
            seqs.append(event.sequence)
            at = event.time.seconds + event.time.nanos / 1e9
            changed = event.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED
            is_running = changed and event.state == job_pb2.JOB_STATE_RUNNING
            (running if is_running else other).append((arrival - at) * 1000)
            first = first or at
            if changed and event.state in FINISHED:
                last_finished = at
    return seqs, first, last_finished


async def _history(stub: job_service_pb2_grpc.JobServiceStub) -> list[int]:
    request = job_service_pb2.StreamJobEventsRequest(
        after_sequence=0, history_only=True, batch=True
    )
    return [e.sequence async for f in stub.StreamJobEvents(request) for e in frame_events(f)]


async def _followers(args: argparse.Namespace) -> dict[str, Any]:
    channels = [channel(args.target) for _ in range(CHANNELS_PER_PROCESS)]
    raw_streams = [
        ch.unary_stream(
            "/gaffer.v1.JobService/StreamJobEvents",
            request_serializer=job_service_pb2.StreamJobEventsRequest.SerializeToString,
            response_deserializer=None,
        )
        for ch in channels
    ]
    streams = [_Stream() for _ in range(args.streams)]
    progress = _Progress(args.jobs, streams)
    tasks = [
        asyncio.create_task(_follow(raw_streams[i % len(channels)], s, progress, i == 0))
        for i, s in enumerate(streams)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in streams)), 110)
        print(f"followers ready: {len(streams)}", flush=True)
        cpu = CpuWindow(watched(args))
        first = time.perf_counter()
        timed_out = False
        # No collections while frames arrive: they paused this process for up to 30 ms
        # (150-190 ms in all per run, by gc.callbacks), and every frame read after a pause
        # was stamped late by it, as if the server had sent it late.
        gc.disable()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams)), args.timeout)
        except TimeoutError:
            timed_out = True
            print("followers: timed out", flush=True)
        finally:
            gc.enable()
        seconds = time.perf_counter() - first
        shares = cpu.percent()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        truth = array.array("q", await _history(job_service_pb2_grpc.JobServiceStub(channels[0])))
    finally:
        for ch in channels:
            await ch.close()
    running = array.array("d")
    other = array.array("d")
    decoded = [_decode(s, running, other) for s in streams]
    complete = sum(1 for seqs, _, _ in decoded if seqs == truth)
    # Late is not lost: a stream cut short by the timeout got a gapless, repeat-free prefix.
    exact_prefix = sum(1 for seqs, _, _ in decoded if seqs == truth[: len(seqs)])
    return {
        "streams": len(streams),
        "complete_streams": complete,
        "exact_prefix_streams": exact_prefix,
        "timed_out": timed_out,
        "events_stored": len(truth),
        "events_received": sum(len(seqs) for seqs, _, _ in decoded),
        "frames_received": sum(len(s.frames) for s in streams),
        "bytes_received": sum(len(raw) for s in streams for _, raw in s.frames),
        "seconds": seconds,
        "jobs_seconds": max((end - start for _, start, end in decoded if start), default=0.0),
        "delay_ms": _delay_summary([*running, *other]),
        "running_delay_ms": _delay_summary(running),
        "other_delay_ms": _delay_summary(other),
        "cpu": shares,
    }


def _delay_summary(delays: Sequence[float]) -> dict[str, float]:
    return {
        "count": len(delays),
        "p50": percentile(delays, 50),
        "p99": percentile(delays, 99),
        "max": max(delays, default=float("nan")),
    }


async def _submit(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        started = time.perf_counter()
        await submit_many(stub, function_spec(), args.jobs, SUBMIT_IN_FLIGHT)
        return {"submit_per_s": args.jobs / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("what", choices=["follow", "submit"])
    parser.add_argument("target")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    add_watch(parser)
    args = parser.parse_args()
    emit(asyncio.run(_followers(args) if args.what == "follow" else _submit(args)))


if __name__ == "__main__":
    main()
