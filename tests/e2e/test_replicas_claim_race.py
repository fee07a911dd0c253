"""16 agents on 2 replicas claim from 5,000 queued jobs (issue 4, test 5): each attempt once.

The jobs are function jobs naming the built-in ``gaffer.noop`` (no process to start), so the
claims are what is measured. Both sides are checked: the server's history of every job (one
CLAIMED, attempt 1, one final status) and what the agents say they claimed (each job/attempt
by exactly one agent). Half the agents long-poll replica A and half replica B, so the claims
race across replicas on the database's row locks (``FOR UPDATE SKIP LOCKED``).

Measured on the 2-core machine: see the printed line (submit rate, drain time, claim rate).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.procs import launch_agent, stop_all
from tests.chaos.rig import claims, finals
from tests.e2e.conftest import CALL_TIMEOUT, Api
from tests.e2e.pg_fixtures import (  # noqa: F401
    Replicas,
    pg_database_fixture,
    pg_url_fixture,
    replicas_fixture,
)
from tests.helpers import AgentProc, wait_until

S = job_pb2.JobState
JOBS = 5000
AGENTS = 16
SLOTS = 16
CLAIMED = re.compile(r"claimed (\S+) attempt (\d+)$")


def completed(api: Api) -> int:
    return len(api.list_ids(jpb.JobFilter(states=[S.JOB_STATE_COMPLETED])))


@pytest.mark.timeout(240)
def test_sixteen_agents_on_two_replicas_claim_each_attempt_once(
    replicas: Callable[..., Replicas],
) -> None:
    group = replicas(2)
    apis = [Api.connect(group[0].address), Api.connect(group[1].address)]
    agents: list[AgentProc] = []
    try:
        request = jpb.SubmitJobRequest(
            spec=job_pb2.JobSpec(function=job_pb2.FunctionExecutor(name="gaffer.noop"))
        )
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            submitted = list(
                pool.map(
                    lambda n: apis[n % 2].jobs.SubmitJob(request, timeout=CALL_TIMEOUT).job.id,
                    range(JOBS),
                )
            )
        submit_seconds = time.monotonic() - started
        assert len(set(submitted)) == JOBS

        started = time.monotonic()
        with ThreadPoolExecutor(AGENTS) as pool:
            agents.extend(
                pool.map(
                    lambda i: launch_agent(
                        group[i % 2].address, f"racer-{i}", "--slots", str(SLOTS)
                    ),
                    range(AGENTS),
                )
            )
        wait_until(lambda: completed(apis[0]) == JOBS, timeout=180, interval=0.5, what="all jobs")
        drained = time.monotonic() - started

        jobs = {job.id: job for job in apis[1].all_jobs()}
        assert set(jobs) == set(submitted)
        for job in jobs.values():
            assert job.state == S.JOB_STATE_COMPLETED, job
            assert job.attempt == 1, job
            assert [c.attempt for c in claims(job)] == [1], job
            assert len(finals(job)) == 1, job
    finally:
        stop_all(agents)
        for api in apis:
            api.close()

    claimed_by: dict[tuple[str, int], list[str]] = {}
    for agent in agents:
        for line in list(agent.lines):
            match = CLAIMED.search(line)
            if match:
                claimed_by.setdefault((match.group(1), int(match.group(2))), []).append(agent.name)
    assert set(claimed_by) == {(job_id, 1) for job_id in submitted}
    twice = {k: v for k, v in claimed_by.items() if len(v) != 1}
    assert not twice, f"claimed by more than one agent: {list(twice.items())[:5]}"
    per_agent = Counter(names[0] for names in claimed_by.values())
    per_replica = Counter(int(name.rpartition("-")[2]) % 2 for name in per_agent.elements())
    assert len(per_agent) >= AGENTS // 2, per_agent
    assert min(per_replica.values()) > JOBS // 10, f"one replica did nearly all: {per_replica}"
    print(
        f"{JOBS} jobs submitted over 2 replicas in {submit_seconds:.1f}s "
        f"({JOBS / submit_seconds:.0f}/s); drained by {AGENTS} agents in {drained:.1f}s "
        f"({JOBS / drained:.0f} jobs/s, agents' start-up included); "
        f"per replica {dict(per_replica)}; shares {sorted(per_agent.values())}"
    )
