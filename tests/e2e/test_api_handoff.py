"""A job submitted while an agent's claim waits goes to that claim in the submit's own commit.

Through the real API, on both stores: the submit answers with the job CLAIMED, the claim
answers with it and a working lease, and its events are CREATED then CLAIMED. A claim gets
no more than it asked for, nor what its agent cannot take; a batch fills it in order.
``gaffer_claims_waiting`` on the metrics endpoint says when a claim waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent, duration
from tests.e2e.pg_fixtures import STORES, pg_database_fixture  # noqa: F401
from tests.helpers import METRICS, ServerProc, scrape, wait_until
from tests.unit.pg_support import new_schema

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
CLAIM_WAIT = 20.0


@dataclass
class Served:
    api: Api
    metrics_at: str

    def metric(self, name: str) -> float:
        return asyncio.run(scrape(self.metrics_at))[name]

    def claim_waiting(self, agent: HandAgent, max_jobs: int = 4) -> grpc.Future:
        """A ClaimJob long poll, once the server has it waiting."""
        before = self.metric("gaffer_claims_waiting")
        call = agent.api.agents.ClaimJob.future(
            apb.ClaimJobRequest(agent_id=agent.id, max_jobs=max_jobs, wait=duration(CLAIM_WAIT)),
            timeout=CLAIM_WAIT + 10,
        )
        wait_until(
            lambda: self.metric("gaffer_claims_waiting") == before + 1,
            what="the claim to wait on the server",
        )
        return call


@pytest.fixture(params=STORES)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    flags = ["--metrics-listen", "127.0.0.1:0"]
    if request.param == "postgres":
        flags += ["--database-url", new_schema(request.getfixturevalue("pg_database"))]
    proc = ServerProc.launch(tmp_path / "data", *flags)
    metrics_at = proc.wait_for_line(METRICS).group(1)
    api = Api.connect(proc.address)
    yield Served(api, metrics_at)
    api.close()
    proc.stop()


def events_until_claimed(api: Api, job_id: str) -> list[job_pb2.JobEvent]:
    """The job's events from its history, up to its CLAIMED one."""
    stream = api.jobs.StreamJobEvents(
        jpb.StreamJobEventsRequest(job_id=job_id, after_sequence=0), timeout=CALL_TIMEOUT
    )
    events: list[job_pb2.JobEvent] = []
    try:
        for frame in stream:
            if frame.HasField("event"):
                events.append(frame.event)
            if events and events[-1].state == S.JOB_STATE_CLAIMED:
                break
    finally:
        stream.cancel()
    return events


def test_a_job_submitted_while_a_claim_waits_goes_to_that_claim(served: Served) -> None:
    api = served.api
    agent = api.agent("handoff")
    claim = served.claim_waiting(agent)
    job = api.submit(queue="handoff")
    assert job.state == S.JOB_STATE_CLAIMED and job.agent_id == agent.id and job.attempt == 1
    (assignment,) = claim.result(timeout=CALL_TIMEOUT).assignments
    assert assignment.job.id == job.id and assignment.attempt == 1 and assignment.lease_token
    assert served.metric("gaffer_jobs_handed_off_total") == 1
    assert served.metric("gaffer_claims_waiting") == 0

    events = events_until_claimed(api, job.id)
    assert [(e.type, e.state) for e in events] == [
        (job_pb2.JOB_EVENT_TYPE_CREATED, S.JOB_STATE_PENDING),
        (job_pb2.JOB_EVENT_TYPE_STATE_CHANGED, S.JOB_STATE_CLAIMED),
    ]
    assert events[0].sequence < events[1].sequence
    assert events[1].actor == f"agent:{agent.name}"
    # The lease is the agent's as with any claim: its reports are taken.
    agent.update(assignment, S.JOB_STATE_RUNNING)
    agent.complete(assignment)
    done = api.get(job.id)
    assert done.state == S.JOB_STATE_COMPLETED
    assert [h.state for h in done.history] == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]


def test_a_batch_fills_a_waiting_claim_up_to_what_it_asked_for(served: Served) -> None:
    api = served.api
    agent = api.agent("handoff")
    claim = served.claim_waiting(agent, max_jobs=2)
    items = [jpb.SubmitJobRequest(spec=api.spec(queue="handoff")) for _ in range(3)]
    results = api.jobs.SubmitJobs(jpb.SubmitJobsRequest(jobs=items), timeout=CALL_TIMEOUT).results
    assert [r.job.state for r in results] == [
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_PENDING,
    ]
    handed = [a.job.id for a in claim.result(timeout=CALL_TIMEOUT).assignments]
    assert handed == [results[0].job.id, results[1].job.id]
    assert api.get(results[2].job.id).state == S.JOB_STATE_PENDING
    assert [a.job.id for a in agent.claim(1)] == [results[2].job.id]


def test_a_waiting_claim_gets_only_what_its_agent_can_take(served: Served) -> None:
    api = served.api
    # Full: its one slot holds a job already.
    full = api.agent("full", slots=1)
    api.submit(queue="full")
    full.claim_one()
    full_claim = served.claim_waiting(full)
    # Lacking the label the job's node selector asks for.
    plain = api.agent("picky")
    plain_claim = served.claim_waiting(plain)
    # Waiting on another queue.
    elsewhere = api.agent("elsewhere")
    elsewhere_claim = served.claim_waiting(elsewhere)

    for job in (
        api.submit(queue="full"),
        api.submit(queue="picky", node_selector={"gpu": "yes"}),
        api.submit(queue="nobody-waits-here"),
    ):
        assert job.state == S.JOB_STATE_PENDING, job
        assert api.get(job.id).state == S.JOB_STATE_PENDING
    assert served.metric("gaffer_jobs_handed_off_total") == 0
    claims = (full_claim, plain_claim, elsewhere_claim)
    assert not any(call.done() for call in claims)
    # A claim woken by a submit on its queue looks, finds nothing it may take, and waits again
    # (on PostgreSQL the wake-up may come after the submit's answer): it is counted once back.
    wait_until(
        lambda: served.metric("gaffer_claims_waiting") == 3,
        what="the three claims to wait again",
    )
    assert not any(call.done() for call in claims)
    for call in claims:
        call.cancel()


def test_a_claim_that_went_away_is_handed_nothing(served: Served) -> None:
    api = served.api
    agent = api.agent("handoff")
    claim = served.claim_waiting(agent)
    claim.cancel()
    wait_until(lambda: served.metric("gaffer_claims_waiting") == 0, what="the claim to go")
    job = api.submit(queue="handoff")
    assert job.state == S.JOB_STATE_PENDING
    assert served.metric("gaffer_jobs_handed_off_total") == 0
    assert [a.job.id for a in agent.claim(1)] == [job.id]
