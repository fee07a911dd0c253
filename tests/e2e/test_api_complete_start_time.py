"""CompleteJob.start_time: an attempt that never reported RUNNING gets it recorded first."""

from __future__ import annotations

import time

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent

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
