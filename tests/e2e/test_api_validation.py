"""Bad input through the raw stubs: the right status code, rich details, and nothing stored."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import (
    CALL_TIMEOUT,
    ERROR_DOMAIN,
    STDOUT,
    Api,
    Failure,
    HandAgent,
    duration,
    failure,
    without_timings,
)

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNKNOWN_ID = "j-does-not-exist-0000"


def exec_spec(*argv: str, **fields: Any) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=list(argv)), **fields)


def expect_invalid(fail: Failure, field: str, reason: str | None = None) -> None:
    assert fail.code == INVALID, fail
    assert fail.names(field), f"no field violation names {field!r}: {fail.fields}"
    assert fail.domain == ERROR_DOMAIN, fail
    assert fail.reason, f"no ErrorInfo reason: {fail}"
    if reason is not None:
        assert fail.reason == reason, fail


@pytest.fixture
def unchanged(shared_api: Api) -> Iterator[Api]:
    """The shared server's stubs; the test must leave the number of stored jobs as it found it.

    A job is stored first, so that the store is never empty: a request wrongly accepted would
    show jobs, and an id that is not found is really unknown.
    """
    shared_api.submit(["true"], labels={"seed": "yes"})
    before = shared_api.count()
    yield shared_api
    assert shared_api.count() == before, "a rejected request stored a job"


SUBMIT_CASES: dict[str, tuple[jpb.SubmitJobRequest, str, str]] = {
    "no spec": (jpb.SubmitJobRequest(), "spec", "INVALID_SPEC"),
    "no executor": (
        jpb.SubmitJobRequest(spec=job_pb2.JobSpec(labels={"a": "b"})),
        "spec.exec",
        "INVALID_SPEC",
    ),
    "empty argv": (jpb.SubmitJobRequest(spec=exec_spec()), "spec.exec.argv", "INVALID_SPEC"),
    "argv[0] empty": (
        jpb.SubmitJobRequest(spec=exec_spec("", "x")),
        "spec.exec.argv[0]",
        "INVALID_SPEC",
    ),
    "negative timeout": (
        jpb.SubmitJobRequest(spec=exec_spec("true", timeout=duration_pb2.Duration(seconds=-1))),
        "spec.timeout",
        "INVALID_SPEC",
    ),
    "argv over 256 KiB": (
        jpb.SubmitJobRequest(spec=exec_spec("echo", *["x" * 1024] * 260)),
        "spec.exec.argv",
        "INVALID_SPEC",
    ),
    "argv over 4096 entries": (
        jpb.SubmitJobRequest(spec=exec_spec("echo", *["a"] * 4096)),
        "spec.exec.argv",
        "INVALID_SPEC",
    ),
    "env over 256 KiB": (
        jpb.SubmitJobRequest(
            spec=job_pb2.JobSpec(
                exec=job_pb2.ExecExecutor(
                    argv=["true"], env={f"VAR_{i}": "v" * 1024 for i in range(300)}
                )
            )
        ),
        "spec.exec.env",
        "INVALID_SPEC",
    ),
    "env over 1024 entries": (
        jpb.SubmitJobRequest(
            spec=job_pb2.JobSpec(
                exec=job_pb2.ExecExecutor(argv=["true"], env={f"V{i}": "" for i in range(1025)})
            )
        ),
        "spec.exec.env",
        "INVALID_SPEC",
    ),
    "65 labels": (
        jpb.SubmitJobRequest(spec=exec_spec("true", labels={f"k{i}": "v" for i in range(65)})),
        "spec.labels",
        "INVALID_SPEC",
    ),
    "bad label key": (
        jpb.SubmitJobRequest(spec=exec_spec("true", labels={"-bad key": "v"})),
        "spec.labels",
        "INVALID_SPEC",
    ),
    "invalid queue": (
        jpb.SubmitJobRequest(spec=exec_spec("true", queue="Not A Queue!")),
        "spec.queue",
        "INVALID_SPEC",
    ),
    "label value over 256 characters": (
        jpb.SubmitJobRequest(spec=exec_spec("true", labels={"k": "v" * 257})),
        "spec.labels",
        "INVALID_SPEC",
    ),
    "bad env name": (
        jpb.SubmitJobRequest(
            spec=job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"], env={"1X": "v"}))
        ),
        "spec.exec.env",
        "INVALID_SPEC",
    ),
    "stdin over 1 MiB": (
        jpb.SubmitJobRequest(
            spec=job_pb2.JobSpec(
                exec=job_pb2.ExecExecutor(argv=["cat"], stdin=b"x" * (1024 * 1024 + 1))
            )
        ),
        "spec.exec.stdin",
        "INVALID_SPEC",
    ),
    "input path escaping the work dir": (
        jpb.SubmitJobRequest(
            spec=exec_spec("true", inputs=[job_pb2.InputFile(path="../x", content=b"")])
        ),
        "spec.inputs[0].path",
        "INVALID_SPEC",
    ),
    "negative retry attempts": (
        jpb.SubmitJobRequest(
            spec=exec_spec("true", retry_policy=job_pb2.RetryPolicy(max_attempts=-1))
        ),
        "spec.retry_policy.max_attempts",
        "INVALID_SPEC",
    ),
    "too-long request_id": (
        jpb.SubmitJobRequest(spec=exec_spec("true"), request_id="r" * 129),
        "request_id",
        "",
    ),
}


@pytest.mark.parametrize("case", list(SUBMIT_CASES), ids=list(SUBMIT_CASES))
def test_submit_rejects_bad_spec_and_stores_nothing(unchanged: Api, case: str) -> None:
    request, field, reason = SUBMIT_CASES[case]
    fail = failure(lambda: unchanged.jobs.SubmitJob(request, timeout=CALL_TIMEOUT))
    expect_invalid(fail, field, reason or None)
    # The same request with validate_only is refused the same way.
    check = jpb.SubmitJobRequest()
    check.CopyFrom(request)
    check.validate_only = True
    expect_invalid(failure(lambda: unchanged.jobs.SubmitJob(check, timeout=CALL_TIMEOUT)), field)


def test_limits_are_inclusive(shared_api: Api) -> None:
    """Exactly at each limit is accepted: the limits are not off by one."""
    at_limit = [
        exec_spec("echo", *["a"] * 4095),  # 4096 entries
        exec_spec("true", labels={f"k{i}": "v" for i in range(64)}),
        exec_spec("true", labels={"k" * 63: "v" * 256}),
        exec_spec("true", queue="q" * 63),
    ]
    for spec in at_limit:
        response = shared_api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec), timeout=CALL_TIMEOUT)
        assert response.job.id and not response.existing
    long_id = shared_api.jobs.SubmitJob(
        jpb.SubmitJobRequest(spec=exec_spec("true"), request_id="r" * 128), timeout=CALL_TIMEOUT
    )
    assert long_id.job.request_id == "r" * 128


def test_submit_reports_every_problem_at_once(unchanged: Api) -> None:
    spec = exec_spec(
        "", timeout=duration_pb2.Duration(seconds=-5), queue="BAD!", labels={"-x": "y"}
    )
    fail = failure(
        lambda: unchanged.jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec), timeout=CALL_TIMEOUT)
    )
    expect_invalid(fail, "spec.exec.argv[0]", "INVALID_SPEC")
    for field in ("spec.timeout", "spec.queue", "spec.labels"):
        assert fail.names(field), fail.fields


LIST_CASES: dict[str, tuple[jpb.ListJobsRequest, str, str]] = {
    "UNSPECIFIED state": (
        jpb.ListJobsRequest(filter=jpb.JobFilter(states=[S.JOB_STATE_UNSPECIFIED])),
        "filter.states",
        "",
    ),
    "unknown state 99": (
        jpb.ListJobsRequest(filter=jpb.JobFilter(states=[S.JOB_STATE_PENDING, 99])),  # type: ignore[list-item]
        "filter.states",
        "",
    ),
    "page_size 1001": (jpb.ListJobsRequest(page_size=1001), "page_size", ""),
    "page_size -1": (jpb.ListJobsRequest(page_size=-1), "page_size", ""),
    "garbage page_token": (
        jpb.ListJobsRequest(page_token="garbage!!"),
        "page_token",
        "INVALID_PAGE_TOKEN",
    ),
    "well-formed token not issued here": (
        jpb.ListJobsRequest(page_token="eyJzIjoxLCJxIjoibm9wZSJ9"),  # {"s":1,"q":"nope"}
        "page_token",
        "INVALID_PAGE_TOKEN",
    ),
    "unknown order": (jpb.ListJobsRequest(order=7), "order", ""),  # type: ignore[arg-type]
    "created_after not before created_before": (
        jpb.ListJobsRequest(
            filter=jpb.JobFilter(
                created_after=timestamp_pb2.Timestamp(seconds=2000),
                created_before=timestamp_pb2.Timestamp(seconds=1000),
            )
        ),
        "filter.created_before",
        "",
    ),
    "bad label key in filter": (
        jpb.ListJobsRequest(filter=jpb.JobFilter(labels={"-x": "y"})),
        "filter.labels",
        "",
    ),
}


@pytest.mark.parametrize("case", list(LIST_CASES), ids=list(LIST_CASES))
def test_list_rejects_bad_request(unchanged: Api, case: str) -> None:
    request, field, reason = LIST_CASES[case]
    fail = failure(lambda: unchanged.jobs.ListJobs(request, timeout=CALL_TIMEOUT))
    expect_invalid(fail, field, reason or None)


@pytest.fixture
def two_jobs(shared_api: Api) -> list[job_pb2.Job]:
    return [shared_api.submit(["true"], labels={"tok": "x"}) for _ in range(2)]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"filter": jpb.JobFilter(queue="other")}, id="other filter"),
        pytest.param(
            {"filter": jpb.JobFilter(labels={"tok": "x"}), "order": jpb.LIST_ORDER_OLDEST_FIRST},
            id="other order",
        ),
    ],
)
def test_page_token_is_bound_to_its_query(
    shared_api: Api, two_jobs: list[job_pb2.Job], change: dict[str, Any]
) -> None:
    first = shared_api.jobs.ListJobs(
        jpb.ListJobsRequest(filter=jpb.JobFilter(labels={"tok": "x"}), page_size=1),
        timeout=CALL_TIMEOUT,
    )
    assert len(first.jobs) == 1 and first.next_page_token
    request = jpb.ListJobsRequest(page_size=1, page_token=first.next_page_token, **change)
    fail = failure(lambda: shared_api.jobs.ListJobs(request, timeout=CALL_TIMEOUT))
    expect_invalid(fail, "page_token", "INVALID_PAGE_TOKEN")


def _calls(api: Api, job_id: str) -> dict[str, Callable[[], Any]]:
    """Every JobService call that names one job."""
    j = api.jobs
    t = CALL_TIMEOUT
    return {
        "GetJob": lambda: j.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=t),
        "CancelJob": lambda: j.CancelJob(jpb.CancelJobRequest(job_id=job_id), timeout=t),
        "WaitJob": lambda: j.WaitJob(
            jpb.WaitJobRequest(job_id=job_id, timeout=duration(5)), timeout=t
        ),
        "StreamLogs": lambda: j.StreamLogs(
            jpb.StreamLogsRequest(job_id=job_id, follow=True), timeout=t
        ),
        "StreamJobEvents": lambda: j.StreamJobEvents(
            jpb.StreamJobEventsRequest(job_id=job_id), timeout=t
        ),
        "ListArtifacts": lambda: j.ListArtifacts(
            jpb.ListArtifactsRequest(job_id=job_id), timeout=t
        ),
        "ReadArtifact": lambda: j.ReadArtifact(
            jpb.ReadArtifactRequest(job_id=job_id, name="out.txt"), timeout=t
        ),
    }


ONE_JOB_CALLS = [
    "GetJob",
    "CancelJob",
    "WaitJob",
    "StreamLogs",
    "StreamJobEvents",
    "ListArtifacts",
    "ReadArtifact",
]


@pytest.mark.parametrize("method", ONE_JOB_CALLS)
def test_unknown_job_id_is_not_found(unchanged: Api, method: str) -> None:
    fail = failure(_calls(unchanged, UNKNOWN_ID)[method])
    assert fail.code == grpc.StatusCode.NOT_FOUND, fail
    assert fail.reason == "JOB_NOT_FOUND", fail
    assert fail.domain == ERROR_DOMAIN, fail


@pytest.mark.parametrize("method", [m for m in ONE_JOB_CALLS if m != "StreamJobEvents"])
def test_empty_job_id_is_invalid(unchanged: Api, method: str) -> None:
    expect_invalid(failure(_calls(unchanged, "")[method]), "job_id")


@pytest.fixture
def finished_job(shared_api: Api) -> job_pb2.Job:
    agent = shared_api.agent("fin")
    shared_api.submit(["true"], queue="fin")
    job = agent.finish(agent.claim_one())
    assert job.state == S.JOB_STATE_COMPLETED
    return job


def test_cancel_of_finished_job_fails_and_changes_nothing(
    finished_job: job_pb2.Job, unchanged: Api
) -> None:
    before = unchanged.get(finished_job.id)
    fail = failure(
        lambda: unchanged.jobs.CancelJob(
            jpb.CancelJobRequest(job_id=finished_job.id, reason="too late"), timeout=CALL_TIMEOUT
        )
    )
    assert fail.code == grpc.StatusCode.FAILED_PRECONDITION, fail
    assert fail.reason == "JOB_FINISHED", fail
    after = unchanged.get(finished_job.id)
    assert without_timings(after) == without_timings(before)
    assert after.state == S.JOB_STATE_COMPLETED and not after.canceled_by


@pytest.mark.parametrize("scope", ["one job", "all jobs"])
def test_events_cursor_past_newest_is_out_of_range(shared_api: Api, scope: str) -> None:
    job = shared_api.submit(["true"])
    stream = shared_api.jobs.StreamJobEvents(
        jpb.StreamJobEventsRequest(job_id=job.id), timeout=CALL_TIMEOUT
    )
    newest = next(stream).event.sequence  # the job's CREATED event, the newest there is
    stream.cancel()
    assert newest > 0
    request = jpb.StreamJobEventsRequest(
        job_id=job.id if scope == "one job" else "", after_sequence=newest + 1000
    )
    fail = failure(lambda: shared_api.jobs.StreamJobEvents(request, timeout=CALL_TIMEOUT))
    assert fail.code == grpc.StatusCode.OUT_OF_RANGE, fail
    assert fail.reason, fail


def test_events_negative_cursor_is_invalid(shared_api: Api) -> None:
    request = jpb.StreamJobEventsRequest(after_sequence=-1)
    expect_invalid(
        failure(lambda: shared_api.jobs.StreamJobEvents(request, timeout=CALL_TIMEOUT)),
        "after_sequence",
    )


@pytest.fixture
def retried(shared_api: Api) -> tuple[HandAgent, apb.JobAssignment, apb.JobAssignment]:
    """A job whose attempt 1 failed and whose attempt 2 is RUNNING with some output."""
    agent = shared_api.agent("retry")
    shared_api.submit(["false"], queue="retry", retry_policy=job_pb2.RetryPolicy(max_attempts=2))
    first = agent.claim_one()
    agent.start(first)
    assert agent.complete(first, S.JOB_STATE_FAILED, 1).accepted
    second = agent.claim_one()
    assert second.attempt == 2 and second.job.id == first.job.id
    agent.start(second)
    agent.push(second, [(STDOUT, 0, b"attempt two\n")])
    return agent, first, second


def _agent_writes(agent: HandAgent, fence: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    a = agent.api.agents
    t = CALL_TIMEOUT
    return {
        "UpdateJobStatus": lambda: a.UpdateJobStatus(
            apb.UpdateJobStatusRequest(**fence, state=S.JOB_STATE_UPLOADING), timeout=t
        ),
        "reject": lambda: a.UpdateJobStatus(
            apb.UpdateJobStatusRequest(**fence, state=S.JOB_STATE_VALIDATING, reject=True),
            timeout=t,
        ),
        "PushLogs": lambda: a.PushLogs(
            iter(
                [
                    apb.PushLogsRequest(
                        **fence, chunk=job_pb2.LogChunk(stream=STDOUT, offset=0, data=b"EVIL")
                    )
                ]
            ),
            timeout=t,
        ),
        "UploadArtifact": lambda: a.UploadArtifact(
            iter(
                [
                    apb.UploadArtifactRequest(
                        header=apb.ArtifactHeader(
                            **fence,
                            name="evil.txt",
                            size_bytes=4,
                            digest="sha256:" + hashlib.sha256(b"EVIL").hexdigest(),
                        )
                    ),
                    apb.UploadArtifactRequest(chunk=b"EVIL"),
                ]
            ),
            timeout=t,
        ),
        "CompleteJob": lambda: a.CompleteJob(
            apb.CompleteJobRequest(**fence, state=S.JOB_STATE_COMPLETED, exit_code=0), timeout=t
        ),
    }


WRITES = ["UpdateJobStatus", "reject", "PushLogs", "UploadArtifact", "CompleteJob"]


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("stale", ["wrong lease token", "old attempt", "future attempt"])
def test_fenced_agent_writes_are_refused_and_change_nothing(
    shared_api: Api,
    retried: tuple[HandAgent, apb.JobAssignment, apb.JobAssignment],
    stale: str,
    method: str,
) -> None:
    agent, first, second = retried
    fence = {
        "wrong lease token": {**agent.fence(second), "lease_token": "not-the-token"},
        "old attempt": agent.fence(first),
        "future attempt": {**agent.fence(second), "attempt": 3},
    }[stale]
    job_id = second.job.id
    before = shared_api.get(job_id)
    logs_before = shared_api.logs(job_id)
    assert logs_before, "attempt 2 has output"
    fail = failure(_agent_writes(agent, fence)[method])
    assert fail.code == grpc.StatusCode.FAILED_PRECONDITION, fail
    assert fail.reason, fail
    after = shared_api.get(job_id)
    assert without_timings(after) == without_timings(before)
    assert after.state == S.JOB_STATE_RUNNING and after.attempt == 2
    assert shared_api.logs(job_id) == logs_before
    assert [f for f in shared_api.logs(job_id, attempt=1) if f.HasField("chunk")] == []
    artifacts = shared_api.jobs.ListArtifacts(
        jpb.ListArtifactsRequest(job_id=job_id), timeout=CALL_TIMEOUT
    ).artifacts
    assert list(artifacts) == []


@pytest.fixture
def running(shared_api: Api) -> tuple[HandAgent, apb.JobAssignment]:
    agent = shared_api.agent("unspec")
    shared_api.submit(["true"], queue="unspec")
    assignment = agent.claim_one()
    agent.start(assignment)
    return agent, assignment


@pytest.mark.parametrize("method", ["UpdateJobStatus", "CompleteJob", "PushLogs"])
def test_unspecified_enums_from_agents_are_invalid(
    shared_api: Api, running: tuple[HandAgent, apb.JobAssignment], method: str
) -> None:
    agent, a = running
    fence = agent.fence(a)
    t = CALL_TIMEOUT
    calls: dict[str, tuple[Callable[[], Any], str]] = {
        "UpdateJobStatus": (
            lambda: agent.api.agents.UpdateJobStatus(
                apb.UpdateJobStatusRequest(**fence, state=S.JOB_STATE_UNSPECIFIED), timeout=t
            ),
            "state",
        ),
        "CompleteJob": (
            lambda: agent.api.agents.CompleteJob(
                apb.CompleteJobRequest(**fence, state=S.JOB_STATE_UNSPECIFIED, exit_code=0),
                timeout=t,
            ),
            "state",
        ),
        "PushLogs": (
            lambda: agent.api.agents.PushLogs(
                iter(
                    [
                        apb.PushLogsRequest(
                            **fence,
                            chunk=job_pb2.LogChunk(
                                stream=job_pb2.LOG_STREAM_UNSPECIFIED, offset=0, data=b"x"
                            ),
                        )
                    ]
                ),
                timeout=t,
            ),
            "chunk.stream",
        ),
    }
    before = shared_api.get(a.job.id)
    call, field = calls[method]
    expect_invalid(failure(call), field)
    after = shared_api.get(a.job.id)
    assert without_timings(after) == without_timings(before)
    assert after.state == S.JOB_STATE_RUNNING
    assert shared_api.logs(a.job.id) == []


def test_stream_logs_unspecified_stream_is_invalid(shared_api: Api) -> None:
    job = shared_api.submit(["true"])
    request = jpb.StreamLogsRequest(job_id=job.id, streams=[job_pb2.LOG_STREAM_UNSPECIFIED])
    expect_invalid(
        failure(lambda: shared_api.jobs.StreamLogs(request, timeout=CALL_TIMEOUT)), "streams"
    )


def test_too_long_job_id_is_invalid(unchanged: Api) -> None:
    fail = failure(lambda: unchanged.get("j" * 129))
    expect_invalid(fail, "job_id")


def test_cancel_with_too_long_reason_is_invalid_and_cancels_nothing(unchanged: Api) -> None:
    job = unchanged.list_ids()[0]
    before = unchanged.get(job)
    fail = failure(
        lambda: unchanged.jobs.CancelJob(
            jpb.CancelJobRequest(job_id=job, reason="x" * 1025), timeout=CALL_TIMEOUT
        )
    )
    expect_invalid(fail, "reason")
    assert without_timings(unchanged.get(job)) == without_timings(before)


AGENT_CASES: dict[str, tuple[str, Any, str, grpc.StatusCode]] = {
    "RegisterAgent without name": (
        "RegisterAgent",
        apb.RegisterAgentRequest(name=""),
        "name",
        INVALID,
    ),
    "RegisterAgent bad name": (
        "RegisterAgent",
        apb.RegisterAgentRequest(name="no spaces allowed"),
        "name",
        INVALID,
    ),
    "RegisterAgent negative slots": (
        "RegisterAgent",
        apb.RegisterAgentRequest(name="ok-name", capacity=apb.Capacity(slots=-1)),
        "capacity.slots",
        INVALID,
    ),
    "RegisterAgent bad queue": (
        "RegisterAgent",
        apb.RegisterAgentRequest(name="ok-name", queues=["Bad Queue"]),
        "queues[0]",
        INVALID,
    ),
    "ClaimJob without agent_id": ("ClaimJob", apb.ClaimJobRequest(), "agent_id", INVALID),
    "ClaimJob unknown agent": (
        "ClaimJob",
        apb.ClaimJobRequest(agent_id="a-unknown"),
        "",
        grpc.StatusCode.NOT_FOUND,
    ),
    "Heartbeat unknown agent": (
        "Heartbeat",
        apb.HeartbeatRequest(agent_id="a-unknown"),
        "",
        grpc.StatusCode.NOT_FOUND,
    ),
    "ClaimJob negative wait": (
        "ClaimJob",
        apb.ClaimJobRequest(agent_id="a-unknown", wait=duration_pb2.Duration(seconds=-1)),
        "wait",
        INVALID,
    ),
    "UpdateJobStatus attempt 0": (
        "UpdateJobStatus",
        apb.UpdateJobStatusRequest(
            job_id=UNKNOWN_ID, attempt=0, lease_token="t", state=S.JOB_STATE_RUNNING
        ),
        "attempt",
        INVALID,
    ),
    "CompleteJob without lease_token": (
        "CompleteJob",
        apb.CompleteJobRequest(job_id=UNKNOWN_ID, attempt=1, state=S.JOB_STATE_COMPLETED),
        "lease_token",
        INVALID,
    ),
    "CompleteJob unknown job": (
        "CompleteJob",
        apb.CompleteJobRequest(
            job_id=UNKNOWN_ID, attempt=1, lease_token="t", state=S.JOB_STATE_COMPLETED
        ),
        "",
        grpc.StatusCode.NOT_FOUND,
    ),
}


@pytest.mark.parametrize("case", list(AGENT_CASES), ids=list(AGENT_CASES))
def test_agent_requests_are_validated(unchanged: Api, case: str) -> None:
    method, request, field, code = AGENT_CASES[case]
    agents_before = len(
        unchanged.agents.ListAgents(
            apb.ListAgentsRequest(page_size=1000), timeout=CALL_TIMEOUT
        ).agents
    )
    fail = failure(lambda: getattr(unchanged.agents, method)(request, timeout=CALL_TIMEOUT))
    assert fail.code == code, fail
    if field:
        expect_invalid(fail, field)
    agents_after = unchanged.agents.ListAgents(
        apb.ListAgentsRequest(page_size=1000), timeout=CALL_TIMEOUT
    ).agents
    assert len(agents_after) == agents_before, "a rejected request registered an agent"
