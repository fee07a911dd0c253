"""Cancel orders and hand-backs through the real AgentService: who wins, and what is fenced."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent, duration, failure
from tests.helpers import ServerProc, wait_until

S = job_pb2.JobState


def heartbeat(
    agent: HandAgent, *running: apb.JobAssignment, wait: float = 0.0
) -> apb.HeartbeatResponse:
    return agent.api.agents.Heartbeat(
        apb.HeartbeatRequest(
            agent_id=agent.id,
            running=[apb.AttemptRef(job_id=a.job.id, attempt=a.attempt) for a in running],
            wait=duration(wait),
        ),
        timeout=CALL_TIMEOUT,
    )


def release(agent: HandAgent, a: apb.JobAssignment, reason: str = "") -> job_pb2.Job:
    return agent.api.agents.ReleaseJob(
        apb.ReleaseJobRequest(**agent.fence(a), reason=reason), timeout=CALL_TIMEOUT
    ).job


def test_a_cancel_during_validation_wins_over_a_rejection(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue)
    a = agent.claim_one()
    agent.update(a, S.JOB_STATE_VALIDATING)
    api.jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id), timeout=CALL_TIMEOUT)
    agent.api.agents.UpdateJobStatus(
        apb.UpdateJobStatusRequest(**agent.fence(a), reject=True, message="cannot run it"),
        timeout=CALL_TIMEOUT,
    )
    after = api.get(job.id)
    assert after.state == S.JOB_STATE_CANCELED
    assert after.canceled_by.startswith("client:")
    # It is not handed to anyone else.
    other = api.agent(agent.queue)
    claimed = api.agents.ClaimJob(apb.ClaimJobRequest(agent_id=other.id), timeout=CALL_TIMEOUT)
    assert list(claimed.assignments) == []


def test_cancel_orders_are_redelivered_until_the_attempt_ends(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue)
    a = agent.claim_one()
    agent.start(a)
    api.jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id, reason="stop"), timeout=CALL_TIMEOUT)
    # An agent that lost the first answer (a reconnect) is told again.
    for _ in range(2):
        orders = heartbeat(agent, a, wait=5.0).cancel
        assert [(o.job_id, o.attempt) for o in orders] == [(job.id, a.attempt)]
    # Once it says it is cancelling, the long poll waits instead of repeating the order.
    canceling = agent.api.agents.Heartbeat(
        apb.HeartbeatRequest(
            agent_id=agent.id,
            running=[apb.AttemptRef(job_id=job.id, attempt=a.attempt)],
            canceling=[apb.AttemptRef(job_id=job.id, attempt=a.attempt)],
            wait=duration(0.3),
        ),
        timeout=CALL_TIMEOUT,
    )
    assert list(canceling.cancel) == []
    agent.complete(a, S.JOB_STATE_FAILED, exit_code=143, message="killed")
    done = api.get(job.id)
    assert done.state == S.JOB_STATE_CANCELED and done.exit_code == 143
    assert list(heartbeat(agent).cancel) == []


def test_a_released_attempt_is_queued_at_once_and_fenced(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue, retry_policy=job_pb2.RetryPolicy(max_attempts=1))
    a = agent.claim_one()
    agent.start(a)
    released = release(agent, a, "agent shutting down")
    assert released.state == S.JOB_STATE_PENDING
    assert released.history[-1].message.endswith("agent shutting down")
    assert released.history[-1].attempt == 1
    # Nothing more from the released attempt counts.
    refused = failure(lambda: agent.complete(a))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    # Another agent gets it at once as attempt 2; a release is not a failure of the job.
    b = api.agent(agent.queue).claim_one()
    assert (b.job.id, b.attempt) == (job.id, 2)


def test_releasing_a_cancelled_attempt_ends_the_job(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue)
    a = agent.claim_one()
    agent.start(a)
    api.jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id), timeout=CALL_TIMEOUT)
    assert release(agent, a).state == S.JOB_STATE_CANCELED


def test_a_claim_never_started_is_queued_again_without_using_up_the_retries(
    tmp_path: Path,
) -> None:
    """A claim whose answer was lost (the agent never heard of it) must not fail the job."""
    server = ServerProc.launch(tmp_path / "data", "--lease-ttl", "1", "--sweep-interval", "0.2")
    try:
        api = Api.connect(server.address)
        agent = api.agent()
        job = api.submit(queue=agent.queue, retry_policy=job_pb2.RetryPolicy(max_attempts=1))
        agent.claim_one()  # ...and never a word about it again

        def requeued() -> job_pb2.Job | None:
            current = api.get(job.id)
            return current if current.state == S.JOB_STATE_PENDING else None

        back = wait_until(requeued, timeout=10, what="the unstarted claim requeued")
        assert "never started" in back.history[-1].message
        b = api.agent(agent.queue).claim_one()
        assert (b.job.id, b.attempt) == (job.id, 2)
        api.agents.UpdateJobStatus(
            apb.UpdateJobStatusRequest(
                job_id=job.id, attempt=2, lease_token=b.lease_token, state=S.JOB_STATE_RUNNING
            ),
            timeout=CALL_TIMEOUT,
        )
        api.close()
    finally:
        server.stop()


def test_a_heartbeat_renews_only_the_attempts_it_lists(tmp_path: Path) -> None:
    """An agent still running attempt 1 that never heard it was given attempt 2 of the same
    job (the claim's answer was lost) keeps only attempt 1 in its heartbeats: attempt 2 must
    lapse however often it beats, and an attempt it does list must live on."""
    ttl = 1.0
    server = ServerProc.launch(
        tmp_path / "data", "--lease-ttl", str(ttl), "--sweep-interval", "0.2"
    )
    try:
        api = Api.connect(server.address)
        agent = api.agent()
        job = api.submit(queue=agent.queue, retry_policy=job_pb2.RetryPolicy(max_attempts=3))
        first = agent.claim_one()
        agent.start(first)

        def pending() -> job_pb2.Job | None:
            current = api.get(job.id)
            return current if current.state == S.JOB_STATE_PENDING else None

        wait_until(pending, what="attempt 1's lease lapsed")
        second = agent.claim_one()
        assert (second.job.id, second.attempt) == (job.id, 2)

        def lapsed_while_beating() -> job_pb2.Job | None:
            lost = heartbeat(agent, first).lost
            assert [(r.job_id, r.attempt) for r in lost] == [(job.id, 1)]
            return pending()

        wait_until(lapsed_while_beating, what="attempt 2 lapsed while attempt 1 was listed")
        third = agent.claim_one()
        assert third.attempt == 3
        held_until = time.monotonic() + 2.5 * ttl
        while time.monotonic() < held_until:
            assert [r.attempt for r in heartbeat(agent, first, third).lost] == [1]
            assert api.get(job.id).state == S.JOB_STATE_CLAIMED
            time.sleep(0.1)  # the pace of an agent's heartbeats, not a wait for an event
        api.close()
    finally:
        server.stop()


def test_rejections_and_hand_backs_do_not_use_up_the_retries(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue, retry_policy=job_pb2.RetryPolicy(max_attempts=2))
    a = agent.claim_one()
    assert a.job.id == job.id
    agent.update(a, S.JOB_STATE_VALIDATING)
    api.agents.UpdateJobStatus(
        apb.UpdateJobStatusRequest(**agent.fence(a), reject=True, message="no gpu"),
        timeout=CALL_TIMEOUT,
    )
    b = agent.claim_one()
    agent.start(b)
    release(agent, b)
    c = agent.claim_one()
    agent.start(c)
    failed = agent.complete(c, S.JOB_STATE_FAILED, exit_code=1).job
    # Attempt 3 was the first real failure: with two attempts allowed, it is retried.
    assert failed.state == S.JOB_STATE_PENDING
    assert (failed.failures, failed.rejections) == (1, 1)
    d = agent.claim_one()
    agent.start(d)
    final = agent.complete(d, S.JOB_STATE_FAILED, exit_code=1).job
    assert final.state == S.JOB_STATE_FAILED and final.failures == 2


def test_a_job_every_agent_rejects_fails_instead_of_cycling(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue)
    for _ in range(20):
        a = agent.claim_one()
        api.agents.UpdateJobStatus(
            apb.UpdateJobStatusRequest(**agent.fence(a), reject=True, message="cannot"),
            timeout=CALL_TIMEOUT,
        )
    final = api.get(job.id)
    assert final.state == S.JOB_STATE_FAILED
    assert final.rejections == 20 and "no agent can run it" in final.message


def test_an_attempt_its_agent_just_finished_is_not_reported_lost(api: Api) -> None:
    agent = api.agent("default", name="finisher")
    other = api.agent("default", name="other")
    api.submit(["true"])
    api.submit(["true"])
    mine, theirs = agent.claim_one(), other.claim_one()
    agent.finish(mine)
    # Listed as running by a poll built while its CompleteJob was on the way: the agent knows
    # it ended, so the poll is not cut short for it.
    response = heartbeat(agent, mine, wait=0.3)
    assert list(response.lost) == []
    # An attempt the agent never ended itself is lost, and says so at once.
    other.complete(theirs)
    response = heartbeat(agent, theirs, wait=5.0)
    assert [(r.job_id, r.attempt) for r in response.lost] == [(theirs.job.id, theirs.attempt)]
