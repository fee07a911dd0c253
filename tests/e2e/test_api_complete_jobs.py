"""CompleteJobs: several outcomes in one call, each taken or refused on its own."""

from __future__ import annotations

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401

S = job_pb2.JobState
OK = grpc.StatusCode.OK.value[0]


def outcome(agent: HandAgent, a: apb.JobAssignment, **fields: object) -> apb.CompleteJobRequest:
    request = apb.CompleteJobRequest(**agent.fence(a), state=S.JOB_STATE_COMPLETED, exit_code=0)
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def complete_all(
    agent: HandAgent, *outcomes: apb.CompleteJobRequest
) -> list[apb.CompleteJobResult]:
    request = apb.CompleteJobsRequest(outcomes=outcomes)
    return list(agent.api.agents.CompleteJobs(request, timeout=CALL_TIMEOUT).results)


def test_each_outcome_is_taken_or_refused_on_its_own(api: Api) -> None:
    agent = HandAgent.register(api, "batcher", ["default"], 4)
    jobs = [api.submit(["true"]) for _ in range(3)]
    by_id = {a.job.id: a for a in agent.claim(3)}
    done, failed, stale = (by_id[j.id] for j in jobs)
    results = complete_all(
        agent,
        outcome(agent, done),
        outcome(agent, failed, state=S.JOB_STATE_FAILED, exit_code=2, not_retryable=True),
        outcome(agent, stale, lease_token="not-the-token"),
        outcome(agent, done),  # a repeat in the same call is harmless
    )
    assert [r.code for r in results] == [
        OK,
        OK,
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        OK,
    ]
    assert results[0].response.accepted and results[3].response.accepted
    assert results[0].response.job.state == S.JOB_STATE_COMPLETED
    assert results[1].response.job.state == S.JOB_STATE_FAILED
    assert results[2].reason == "STALE_ATTEMPT"
    assert "not current" in results[2].message
    assert not results[2].HasField("response")
    # The refused one is untouched; the agent can still finish it with its real token.
    assert api.get(stale.job.id).state == S.JOB_STATE_CLAIMED
    (last,) = complete_all(agent, outcome(agent, stale))
    assert last.code == OK and last.response.job.state == S.JOB_STATE_COMPLETED


def test_an_invalid_outcome_is_refused_alone(api: Api) -> None:
    agent = HandAgent.register(api, "invalid-one", ["default"], 2)
    first, second = api.submit(["true"]), api.submit(["true"])
    by_id = {a.job.id: a for a in agent.claim(2)}
    results = complete_all(
        agent,
        outcome(agent, by_id[first.id], state=S.JOB_STATE_RUNNING),
        outcome(agent, by_id[second.id]),
    )
    assert results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "COMPLETED or FAILED" in results[0].message
    assert results[1].code == OK
    assert api.get(first.id).state == S.JOB_STATE_CLAIMED
    assert api.get(second.id).state == S.JOB_STATE_COMPLETED


@pytest.mark.parametrize("count", [0, 257])
def test_a_call_with_no_or_too_many_outcomes_is_invalid(api: Api, count: int) -> None:
    agent = HandAgent.register(api, f"count-{count}", ["default"], 1)
    api.submit(["true"])
    a = agent.claim_one()
    request = apb.CompleteJobsRequest(outcomes=[outcome(agent, a)] * count)
    with pytest.raises(grpc.RpcError) as raised:
        agent.api.agents.CompleteJobs(request, timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outcomes" in (raised.value.details() or "")
    assert api.get(a.job.id).state == S.JOB_STATE_CLAIMED
