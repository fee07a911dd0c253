"""Load-side helpers for Gaffer: specs, bounded submission, and following every job's events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from gaffer.client._base import frame_events
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

FINISHED = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELED}
)


def exec_spec(*argv: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=list(argv)))


def function_spec(name: str = "gaffer.noop", args_json: str = "") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(function=job_pb2.FunctionExecutor(name=name, args_json=args_json))


def spec_of(kind: str) -> job_pb2.JobSpec:
    """A no-op job: ``function`` (gaffer.noop) or ``exec`` (true)."""
    return function_spec() if kind == "function" else exec_spec("true")


async def submit_many(
    stub: job_service_pb2_grpc.JobServiceStub,
    spec: job_pb2.JobSpec,
    count: int,
    in_flight: int,
    on_submitted: Callable[[str], None] | None = None,
) -> list[str]:
    """Submits ``count`` jobs, ``in_flight`` at a time; their ids in no particular order."""
    request = job_service_pb2.SubmitJobRequest(spec=spec)
    ids: list[str] = []
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await stub.SubmitJob(request)
            ids.append(response.job.id)
            if on_submitted is not None:
                on_submitted(response.job.id)

    await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))
    return ids


async def submit_batched(
    stub: job_service_pb2_grpc.JobServiceStub,
    spec: job_pb2.JobSpec,
    count: int,
    batch: int,
    in_flight: int,
) -> list[str]:
    """Submits ``count`` jobs in SubmitJobs calls of ``batch``, ``in_flight`` calls at a time."""
    item = job_service_pb2.SubmitJobRequest(spec=spec)
    sizes = [min(batch, count - start) for start in range(0, count, batch)]
    ids: list[str] = []

    async def worker() -> None:
        while sizes:
            request = job_service_pb2.SubmitJobsRequest(jobs=[item] * sizes.pop())
            response = await stub.SubmitJobs(request)
            ids.extend(r.job.id for r in response.results)

    await asyncio.gather(*(worker() for _ in range(min(in_flight, len(sizes)))))
    return ids


class Finishes:
    """Follows the events of every job from the first one and notes when each job finished."""

    def __init__(self, stub: job_service_pb2_grpc.JobServiceStub, expected: int) -> None:
        self._stub = stub
        self.expected = expected
        self.finished: dict[str, float] = {}
        self.states: dict[str, int] = {}
        self.events = 0
        self.last_arrival = 0.0
        self.all_done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        request = job_service_pb2.StreamJobEventsRequest(after_sequence=0, batch=True)
        call = self._stub.StreamJobEvents(request)
        try:
            async for frame in call:
                for event in frame_events(frame):
                    self.events += 1
                    if (
                        event.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED
                        and event.state in FINISHED
                        and event.job_id not in self.finished
                    ):
                        now = time.perf_counter()
                        self.finished[event.job_id] = now
                        self.states[event.job_id] = event.state
                        self.last_arrival = now
                        if len(self.finished) >= self.expected:
                            self.all_done.set()
                            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise
        finally:
            call.cancel()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
