"""Fixtures for the API end-to-end tests: raw generated stubs on a real `gaffer server`.

Where an agent is needed, :class:`HandAgent` drives the AgentService itself (register, claim,
update, push logs, upload, complete) over the wire, so each step happens exactly when a test says.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gaffer.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from tests.helpers import ServerProc

apb = agent_service_pb2
jpb = job_service_pb2
S = job_pb2.JobState
STDOUT = job_pb2.LOG_STREAM_STDOUT
STDERR = job_pb2.LOG_STREAM_STDERR
# A deadline on every call, so that a hung server fails a test instead of stalling the suite.
CALL_TIMEOUT = 15.0
ERROR_DOMAIN = "gaffer.dev"

_names = itertools.count(1)


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


@dataclass(frozen=True)
class Failure:
    """What a failed call carried: its code and the rich details the server attached."""

    code: grpc.StatusCode
    message: str
    reason: str | None
    domain: str | None
    fields: tuple[str, ...]

    def names(self, wanted: str) -> bool:
        """Whether a field violation names ``wanted`` (or an entry of it, ``wanted[...]``)."""
        return any(f == wanted or f.startswith(wanted + "[") for f in self.fields)


def failure(call: Callable[[], Any]) -> Failure:
    """Runs ``call`` (draining it if it returns a stream), which must fail with an RpcError."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
    err = info.value
    reason = domain = None
    fields: list[str] = []
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(error_info)
                reason, domain = error_info.reason, error_info.domain
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend(v.field for v in bad.field_violations)
    return Failure(err.code(), err.details() or "", reason, domain, tuple(fields))  # type: ignore[attr-defined]


def without_timings(job: job_pb2.Job) -> bytes:
    """A job's bytes minus what is computed at read time, for 'unchanged' comparisons."""
    copy = job_pb2.Job()
    copy.CopyFrom(job)
    copy.ClearField("timings")
    return copy.SerializeToString(deterministic=True)


@dataclass
class Api:
    """The generated stubs on one channel to the server, and a few shortcuts over them."""

    address: str
    channel: grpc.Channel
    jobs: job_service_pb2_grpc.JobServiceStub
    agents: agent_service_pb2_grpc.AgentServiceStub

    @classmethod
    def connect(cls, address: str) -> Api:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        return cls(
            address,
            channel,
            job_service_pb2_grpc.JobServiceStub(channel),
            agent_service_pb2_grpc.AgentServiceStub(channel),
        )

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def spec(
        argv: Sequence[str] = ("true",),
        *,
        labels: Mapping[str, str] | None = None,
        queue: str = "",
        **fields: Any,
    ) -> job_pb2.JobSpec:
        return job_pb2.JobSpec(
            exec=job_pb2.ExecExecutor(argv=list(argv)),
            labels=dict(labels or {}),
            queue=queue,
            **fields,
        )

    def submit(
        self,
        argv: Sequence[str] = ("true",),
        *,
        request_id: str = "",
        labels: Mapping[str, str] | None = None,
        queue: str = "",
        **fields: Any,
    ) -> job_pb2.Job:
        response = self.jobs.SubmitJob(
            jpb.SubmitJobRequest(
                spec=self.spec(argv, labels=labels, queue=queue, **fields), request_id=request_id
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.job

    def get(self, job_id: str) -> job_pb2.Job:
        return self.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT).job

    def list_pages(
        self,
        flt: jpb.JobFilter | None = None,
        *,
        order: int = jpb.LIST_ORDER_UNSPECIFIED,
        page_size: int = 1000,
        max_pages: int = 1000,
    ) -> list[list[str]]:
        """Every page of a listing, as job ids, following next_page_token to the end."""
        return [
            [job.id for job in page]
            for page in self.job_pages(flt, order=order, page_size=page_size, max_pages=max_pages)
        ]

    def job_pages(
        self,
        flt: jpb.JobFilter | None = None,
        *,
        order: int = jpb.LIST_ORDER_UNSPECIFIED,
        page_size: int = 1000,
        max_pages: int = 1000,
    ) -> list[list[job_pb2.Job]]:
        """Every page of a listing, following next_page_token to the end."""
        pages: list[list[job_pb2.Job]] = []
        token = ""
        while True:
            response = self.jobs.ListJobs(
                jpb.ListJobsRequest(filter=flt, order=order, page_size=page_size, page_token=token),  # type: ignore[arg-type]
                timeout=CALL_TIMEOUT,
            )
            pages.append(list(response.jobs))
            assert len(response.jobs) <= page_size, "a page is larger than page_size"
            token = response.next_page_token
            if not token:
                return pages
            assert len(pages) < max_pages, "the listing never ended"

    def all_jobs(self) -> list[job_pb2.Job]:
        """Every job the server holds, whole."""
        return [job for page in self.job_pages() for job in page]

    def list_ids(self, flt: jpb.JobFilter | None = None, **kwargs: Any) -> list[str]:
        return [job_id for page in self.list_pages(flt, **kwargs) for job_id in page]

    def count(self) -> int:
        """How many jobs the server holds."""
        return len(self.list_ids())

    def logs(self, job_id: str, **fields: Any) -> list[jpb.StreamLogsResponse]:
        """A whole log stream (it must end by itself)."""
        request = jpb.StreamLogsRequest(job_id=job_id, **fields)
        return list(self.jobs.StreamLogs(request, timeout=CALL_TIMEOUT))

    def agent(self, *queues: str, name: str = "", slots: int = 64) -> HandAgent:
        return HandAgent.register(self, name or f"hand-{next(_names)}", queues, slots)


def text_of(frames: Iterable[jpb.StreamLogsResponse], stream: int) -> bytes:
    """The bytes of one output stream, checking that offsets run on with no gap or overlap."""
    out = b""
    for frame in frames:
        if frame.WhichOneof("frame") == "chunk" and frame.chunk.stream == stream:
            assert frame.chunk.offset == len(out), (
                f"chunk at offset {frame.chunk.offset}, expected {len(out)}"
            )
            out += frame.chunk.data
    return out


@dataclass
class HandAgent:
    """An agent driven step by step by a test, through the real AgentService."""

    api: Api
    id: str
    name: str
    queues: tuple[str, ...]

    @classmethod
    def register(cls, api: Api, name: str, queues: Sequence[str], slots: int) -> HandAgent:
        response = api.agents.RegisterAgent(
            apb.RegisterAgentRequest(
                name=name, queues=list(queues), capacity=apb.Capacity(slots=slots)
            ),
            timeout=CALL_TIMEOUT,
        )
        return cls(api, response.agent_id, name, tuple(response.agent.queues))

    @property
    def queue(self) -> str:
        return self.queues[0]

    def claim(self, count: int = 1, *, within: float = 10.0) -> list[apb.JobAssignment]:
        """Exactly ``count`` assignments, long-polling until they are all in."""
        got: list[apb.JobAssignment] = []
        deadline = time.monotonic() + within
        while len(got) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"claimed {len(got)} of {count} jobs within {within}s"
            response = self.api.agents.ClaimJob(
                apb.ClaimJobRequest(
                    agent_id=self.id, max_jobs=count - len(got), wait=duration(min(left, 5.0))
                ),
                timeout=left + 5.0,
            )
            got.extend(response.assignments)
        assert len(got) == count, f"claimed {len(got)} jobs, wanted {count}"
        return got

    def claim_one(self) -> apb.JobAssignment:
        return self.claim(1)[0]

    @staticmethod
    def fence(a: apb.JobAssignment) -> dict[str, Any]:
        return {"job_id": a.job.id, "attempt": a.attempt, "lease_token": a.lease_token}

    def update(self, a: apb.JobAssignment, state: int, message: str = "") -> job_pb2.Job:
        return self.api.agents.UpdateJobStatus(
            apb.UpdateJobStatusRequest(**self.fence(a), state=state, message=message),  # type: ignore[arg-type]
            timeout=CALL_TIMEOUT,
        ).job

    def start(self, a: apb.JobAssignment) -> job_pb2.Job:
        self.update(a, S.JOB_STATE_VALIDATING)
        return self.update(a, S.JOB_STATE_RUNNING)

    def push(
        self, a: apb.JobAssignment, chunks: Iterable[tuple[int, int, bytes]]
    ) -> apb.PushLogsResponse:
        """One PushLogs stream with (stream, offset, data) chunks."""
        requests = [
            apb.PushLogsRequest(
                **self.fence(a),
                chunk=job_pb2.LogChunk(stream=s, offset=o, data=d, attempt=a.attempt),
            )
            for s, o, d in chunks
        ]
        return self.api.agents.PushLogs(iter(requests), timeout=CALL_TIMEOUT)

    def complete(
        self,
        a: apb.JobAssignment,
        state: int = S.JOB_STATE_COMPLETED,
        exit_code: int | None = 0,
        message: str = "",
    ) -> apb.CompleteJobResponse:
        request = apb.CompleteJobRequest(**self.fence(a), state=state, message=message)  # type: ignore[arg-type]
        if exit_code is not None:
            request.exit_code = exit_code
        return self.api.agents.CompleteJob(request, timeout=CALL_TIMEOUT)

    def finish(self, a: apb.JobAssignment, *, exit_code: int = 0) -> job_pb2.Job:
        """VALIDATING, RUNNING, then COMPLETED (exit 0) or FAILED."""
        self.start(a)
        state = S.JOB_STATE_COMPLETED if exit_code == 0 else S.JOB_STATE_FAILED
        response = self.complete(a, state, exit_code)
        assert response.accepted
        return response.job


@dataclass
class ChunkFeed:
    """A PushLogs stream kept open: chunks are sent as the test feeds them."""

    agent: HandAgent
    assignment: apb.JobAssignment
    _queue: queue.Queue[tuple[int, int, bytes] | None] = field(default_factory=queue.Queue)
    _future: Any = None

    def __post_init__(self) -> None:
        def requests() -> Iterator[apb.PushLogsRequest]:
            while True:
                item = self._queue.get(timeout=CALL_TIMEOUT)
                if item is None:
                    return
                s, o, d = item
                yield apb.PushLogsRequest(
                    **self.agent.fence(self.assignment),
                    chunk=job_pb2.LogChunk(stream=s, offset=o, data=d),
                )

        self._future = self.agent.api.agents.PushLogs.future(requests(), timeout=CALL_TIMEOUT)

    def send(self, stream: int, offset: int, data: bytes) -> None:
        self._queue.put((stream, offset, data))

    def close(self) -> apb.PushLogsResponse:
        """Ends the stream normally and returns the server's answer."""
        self._queue.put(None)
        return self._future.result(timeout=CALL_TIMEOUT)

    def break_off(self) -> None:
        """Cancels the stream mid-way, as a dropped connection would."""
        self._future.cancel()
        self._queue.put(None)


@pytest.fixture
def api(server: ServerProc) -> Iterator[Api]:
    """Stubs on a fresh server for this test."""
    client = Api.connect(server.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for a module whose tests do not depend on each other's jobs."""
    data: Path = tmp_path_factory.mktemp("shared") / "data"
    proc = ServerProc.launch(data)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_api(shared_server: ServerProc) -> Iterator[Api]:
    client = Api.connect(shared_server.address)
    yield client
    client.close()


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Starts ``target`` in a daemon thread; exceptions it raises are collected, not lost."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors
