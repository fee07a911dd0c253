"""validate_time and start_time: statuses an attempt did not report (a short run reports them
with its next report) are recorded at the agent's times, in order, before the reported one."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401

S = job_pb2.JobState


def complete_with_start(agent: HandAgent, a: apb.JobAssignment, start: float) -> job_pb2.Job:
    request = apb.CompleteJobRequest(**agent.fence(a), state=S.JOB_STATE_COMPLETED)
    request.start_time.FromNanoseconds(int(start * 1e9))
    response = agent.api.agents.CompleteJob(request, timeout=CALL_TIMEOUT)
    assert response.accepted
    return response.job


def states(job: job_pb2.Job) -> list[int]:
    return [s.state for s in job.history]


def test_running_is_recorded_at_the_start_time_before_the_outcome(api: Api) -> None:
    agent = HandAgent.register(api, "starter", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    before = time.time()
    job = complete_with_start(agent, a, before)
    assert states(job) == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]
    running = job.history[2]
    assert abs(running.time.ToNanoseconds() / 1e9 - before) < 0.001
    request = jpb.StreamJobEventsRequest(job_id=job.id, history_only=True)
    events = [f.event for f in api.jobs.StreamJobEvents(request, timeout=CALL_TIMEOUT)]
    assert [e.state for e in events if e.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED][-2:] == [
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]


def test_a_start_time_out_of_range_is_kept_between_the_claim_and_now(api: Api) -> None:
    agent = HandAgent.register(api, "skewed", ["default"], 2)
    api.submit(["true"])
    api.submit(["true"])
    early, late = agent.claim(2)
    for a, start in ((early, 1.0), (late, time.time() + 3600)):
        job = complete_with_start(agent, a, start)
        claimed, running, completed = (s.time.ToNanoseconds() for s in job.history[1:])
        assert claimed <= running <= completed


def test_a_start_time_after_running_was_reported_changes_nothing(api: Api) -> None:
    agent = HandAgent.register(api, "reported", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    agent.start(a)
    job = complete_with_start(agent, a, time.time())
    assert states(job).count(S.JOB_STATE_RUNNING) == 1


def test_an_invalid_start_time_is_refused_and_changes_nothing(api: Api) -> None:
    agent = HandAgent.register(api, "invalid", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    request = apb.CompleteJobRequest(**agent.fence(a), state=S.JOB_STATE_COMPLETED)
    request.start_time.seconds = 10**12  # past year 9999
    with pytest.raises(grpc.RpcError) as raised:
        agent.api.agents.CompleteJob(request, timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_time" in (raised.value.details() or "")
    assert api.get(a.job.id).state == S.JOB_STATE_CLAIMED


def fenced(agent: HandAgent, a: apb.JobAssignment, request: Any) -> Any:
    for key, value in agent.fence(a).items():
        setattr(request, key, value)
    return request


def set_time(field: Any, at: float) -> None:
    field.FromNanoseconds(int(at * 1e9))


def times_after_claim(a: apb.JobAssignment) -> tuple[float, float]:
    """Two times between the claim and now (a time outside them would be kept inside)."""
    claimed = a.job.history[-1].time.ToNanoseconds() / 1e9
    while time.time() < claimed + 0.003:  # the clock must pass them; no event to wait on
        pass
    return claimed + 0.001, claimed + 0.002


def claimed_late(api: Api, name: str, request: Any) -> tuple[HandAgent, Any, float, float]:
    """A claimed attempt and ``request`` for it, carrying a validate_time and a start_time
    between the claim and now (also returned)."""
    agent = HandAgent.register(api, name, ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    validated, started = times_after_claim(a)
    request = fenced(agent, a, request)
    set_time(request.validate_time, validated)
    set_time(request.start_time, started)
    return agent, request, validated, started


def test_complete_records_validating_and_running_at_their_times(api: Api) -> None:
    agent, request, validated, started = claimed_late(
        api, "folded", apb.CompleteJobRequest(state=S.JOB_STATE_COMPLETED)
    )
    job = agent.api.agents.CompleteJob(request, timeout=CALL_TIMEOUT).job
    assert states(job) == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_VALIDATING,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]
    times = [s.time.ToNanoseconds() / 1e9 for s in job.history]
    assert abs(times[2] - validated) < 0.001 and abs(times[3] - started) < 0.001
    assert times == sorted(times)
    request = jpb.StreamJobEventsRequest(job_id=job.id, history_only=True)
    events = [f.event for f in api.jobs.StreamJobEvents(request, timeout=CALL_TIMEOUT)]
    changes = [e.state for e in events if e.type == job_pb2.JOB_EVENT_TYPE_STATE_CHANGED]
    assert changes[-3:] == [S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING, S.JOB_STATE_COMPLETED]


def test_a_running_report_catches_up_validating_and_takes_its_start_time(api: Api) -> None:
    agent, request, validated, started = claimed_late(
        api, "late-running", apb.UpdateJobStatusRequest(state=S.JOB_STATE_RUNNING)
    )
    job = agent.api.agents.UpdateJobStatus(request, timeout=CALL_TIMEOUT).job
    assert states(job)[-3:] == [S.JOB_STATE_CLAIMED, S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING]
    assert abs(job.history[-2].time.ToNanoseconds() / 1e9 - validated) < 0.001
    assert abs(job.history[-1].time.ToNanoseconds() / 1e9 - started) < 0.001
    assert job.state == S.JOB_STATE_RUNNING


def test_an_uploading_report_catches_up_both(api: Api) -> None:
    agent, request, _, _ = claimed_late(
        api, "late-upload", apb.UpdateJobStatusRequest(state=S.JOB_STATE_UPLOADING)
    )
    job = agent.api.agents.UpdateJobStatus(request, timeout=CALL_TIMEOUT).job
    assert states(job)[-4:] == [
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_VALIDATING,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_UPLOADING,
    ]


def test_uploading_without_running_is_refused_and_changes_nothing(api: Api) -> None:
    agent = HandAgent.register(api, "no-running", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    request = fenced(agent, a, apb.UpdateJobStatusRequest(state=S.JOB_STATE_UPLOADING))
    set_time(request.validate_time, time.time())  # VALIDATING alone does not lead to UPLOADING
    with pytest.raises(grpc.RpcError) as raised:
        agent.api.agents.UpdateJobStatus(request, timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    job = api.get(a.job.id)
    assert states(job)[-1] == S.JOB_STATE_CLAIMED


@pytest.mark.parametrize("rpc", ["UpdateJobStatus", "CompleteJob"])
def test_an_invalid_validate_time_is_refused_and_changes_nothing(api: Api, rpc: str) -> None:
    agent = HandAgent.register(api, f"bad-{rpc.lower()}", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    request = fenced(
        agent,
        a,
        apb.UpdateJobStatusRequest(state=S.JOB_STATE_RUNNING)
        if rpc == "UpdateJobStatus"
        else apb.CompleteJobRequest(state=S.JOB_STATE_COMPLETED),
    )
    request.validate_time.seconds = -(10**12)  # before year 1
    with pytest.raises(grpc.RpcError) as raised:
        getattr(agent.api.agents, rpc)(request, timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validate_time" in (raised.value.details() or "")
    assert states(api.get(a.job.id))[-1] == S.JOB_STATE_CLAIMED
