"""Jobs handed to a waiting claim by the submit's transaction, against real stores.

What the API cannot show on demand: a transaction that hands a job over and then does not
commit gives the claim nothing, and the claim goes on waiting for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gaffer.core import Agents, Caller, CoreSettings, Jobs
from gaffer.domain import new_job_id
from gaffer.store import BlobStore, Notifier, Store, StoredJob
from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from tests.helpers import wait_until_async
from tests.unit.pg_support import (
    either_store_fixture,  # noqa: F401 (the store fixture)
    temporary_database,
)

S = job_pb2.JobState


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    yield from temporary_database()


def core(store: Store, settings: CoreSettings | None = None) -> tuple[Agents, Jobs]:
    notifier: Notifier = store._notifier  # type: ignore[attr-defined]
    blobs = BlobStore(store.blob_dir)
    settings = settings or CoreSettings()
    agents = Agents(store, notifier, blobs, settings)
    return agents, Jobs(store, notifier, blobs, settings, hand_off=agents.hand_off)


def spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]))


async def waiting_claim(
    agents: Agents, agent_id: str
) -> asyncio.Task[list[tuple[StoredJob, float]]]:
    claim = asyncio.create_task(agents.claim(agent_id, 4, 20.0))

    async def waiting() -> bool:
        return agents.claims_waiting() == 1

    await wait_until_async(waiting, what="the claim to wait")
    return claim


async def test_a_handoff_that_does_not_commit_gives_the_claim_nothing(store: Store) -> None:
    agents, jobs = core(store)
    agent = await agents.register("a1", {}, apb.Capacity(slots=4), ["default"])
    claim = await waiting_claim(agents, agent.id)

    lost = StoredJob(
        job_pb2.Job(id=new_job_id(), state=S.JOB_STATE_PENDING, spec=spec()), tenant="default"
    )
    lost.job.spec.queue = "default"
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.insert_job_with_event(lost, job_pb2.JobEvent(job_id=lost.job.id))
            await agents.hand_off(tx, lost, 1000.0)
            assert lost.job.state == S.JOB_STATE_CLAIMED  # handed, until the body fails
            raise RuntimeError("the submit fails after the handoff")
    await asyncio.sleep(0)  # give a wrongly woken claim its turn
    assert not claim.done()
    assert agents.claims_waiting() == 1 and agents.jobs_handed_off() == 0
    assert await store.get_job(lost.job.id) is None

    job, existing = await jobs.submit(Caller(), spec(), "", validate_only=False)
    assert not existing and job.state == S.JOB_STATE_CLAIMED
    taken = await asyncio.wait_for(claim, 10)
    assert [s.job.id for s, _ in taken] == [job.id]
    stored = await store.get_job(job.id)
    assert stored is not None and stored.job.state == S.JOB_STATE_CLAIMED
    assert stored.lease_token == taken[0][0].lease_token != ""
    assert agents.claims_waiting() == 0 and agents.jobs_handed_off() == 1


async def test_a_claim_that_was_cancelled_is_handed_nothing(store: Store) -> None:
    agents, jobs = core(store)
    agent = await agents.register("a1", {}, apb.Capacity(slots=4), ["default"])
    claim = await waiting_claim(agents, agent.id)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    assert agents.claims_waiting() == 0
    job, _ = await jobs.submit(Caller(), spec(), "", validate_only=False)
    assert job.state == S.JOB_STATE_PENDING
    assert agents.jobs_handed_off() == 0


async def test_a_drain_in_the_same_batch_keeps_the_job_from_the_waiting_claim(
    store: Store,
) -> None:
    """Each submit reads the agent in its own transaction: a drain committed before it (on
    SQLite, an earlier body of the same group commit) counts, even when an earlier submit
    (one the agent could not take) read the agent ACTIVE for the same waiting claim."""
    agents, jobs = core(store)
    agent = await agents.register("a1", {}, apb.Capacity(slots=4), ["default"])
    claim = await waiting_claim(agents, agent.id)
    picky = spec()
    picky.node_selector["gpu"] = "yes"

    async def submit(job_spec: job_pb2.JobSpec) -> job_pb2.Job:
        job, _ = await jobs.submit(Caller(), job_spec, "", validate_only=False)
        return job

    first, drained, job = await asyncio.gather(
        submit(picky), agents.drain(agent.id), submit(spec())
    )
    assert drained.state == apb.AGENT_STATE_DRAINING
    assert (first.state, job.state) == (S.JOB_STATE_PENDING, S.JOB_STATE_PENDING)
    assert agents.jobs_handed_off() == 0
    assert not claim.done()  # a draining agent's claim takes nothing and waits out its wait
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim


async def test_a_claim_records_the_agents_sign_of_life_at_most_once_a_second(
    store: Store,
) -> None:
    now = [1000.0]
    agents, jobs = core(store, CoreSettings(clock=lambda: now[0]))
    agent = await agents.register("a1", {}, apb.Capacity(slots=4), ["default"])

    async def heard() -> float:
        stored = await store.get_agent(agent.id)
        assert stored is not None
        return stored.last_heartbeat

    async def handed_off_at(t: float) -> None:
        now[0] = t
        claim = await waiting_claim(agents, agent.id)
        await jobs.submit(Caller(), spec(), "", validate_only=False)
        assert len(await asyncio.wait_for(claim, 10)) == 1

    async def claimed_pending_at(t: float) -> None:
        now[0] = t
        await jobs.submit(Caller(), spec(), "", validate_only=False)
        assert len(await agents.claim(agent.id, 4, 0.0)) == 1

    await handed_off_at(1000.5)
    assert await heard() == 1000.0  # registered half a second before: left as it was
    await handed_off_at(1001.0)
    assert await heard() == 1001.0
    await claimed_pending_at(1001.9)
    assert await heard() == 1001.0
    await claimed_pending_at(1002.0)
    assert await heard() == 1002.0
