"""Claim race: 16 agent processes drain 2,000 queued jobs; every attempt is claimed once.

Both sides are checked: the server's history of each job (one CLAIMED, attempt 1, COMPLETED)
and what the agents themselves say they claimed (each job/attempt by exactly one agent).
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.rig import Rig, claims, finals
from tests.e2e.conftest import CALL_TIMEOUT
from tests.helpers import wait_until

S = job_pb2.JobState
JOBS = 2000
AGENTS = 16
SLOTS = 4
CLAIMED = re.compile(r"claimed (\S+) attempt (\d+)$")


def noop_spec(rig: Rig) -> job_pb2.JobSpec:
    """A job that does nothing: the built-in function ``gaffer.noop`` where agents have the
    function executor (no process to start, so the claims are what is measured), else ``true``.
    """
    if importlib.util.find_spec("gaffer.agent.builtin_functions") is not None:
        return job_pb2.JobSpec(function=job_pb2.FunctionExecutor(name="gaffer.noop"))
    return rig.spec(["true"])


def completed_count(rig: Rig) -> int:
    flt = jpb.JobFilter(states=[S.JOB_STATE_COMPLETED])
    return len(rig.api.list_ids(flt))


@pytest.mark.timeout(180)
def test_sixteen_agents_claim_each_attempt_once(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        spec = noop_spec(rig)
        request = jpb.SubmitJobRequest(spec=spec)
        with ThreadPoolExecutor(8) as pool:
            submitted = list(
                pool.map(
                    lambda _: rig.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT).job.id,
                    range(JOBS),
                )
            )
        assert len(set(submitted)) == JOBS

        started = time.monotonic()
        with ThreadPoolExecutor(AGENTS) as pool:
            list(
                pool.map(
                    lambda i: rig.agent("--slots", str(SLOTS), name=f"racer-{i}"), range(AGENTS)
                )
            )
        wait_until(lambda: completed_count(rig) == JOBS, timeout=120, interval=0.5, what="all jobs")
        drained = time.monotonic() - started

        jobs = {job.id: job for job in rig.api.all_jobs()}
        assert set(jobs) == set(submitted)
        for job in jobs.values():
            assert job.state == S.JOB_STATE_COMPLETED, job
            assert job.attempt == 1, job
            assert [c.attempt for c in claims(job)] == [1], job
            assert len(finals(job)) == 1, job

        claimed_by: dict[tuple[str, int], list[str]] = {}
        for agent in rig.agents:
            for line in list(agent.lines):
                match = CLAIMED.search(line)
                if match:
                    key = (match.group(1), int(match.group(2)))
                    claimed_by.setdefault(key, []).append(agent.name)
        assert set(claimed_by) == {(job_id, 1) for job_id in submitted}
        twice = {k: v for k, v in claimed_by.items() if len(v) != 1}
        assert not twice, f"claimed by more than one agent: {list(twice.items())[:5]}"
        per_agent = Counter(names[0] for names in claimed_by.values())
        # A race needs racers: most agents got a share (not one agent draining the queue alone).
        assert len(per_agent) >= AGENTS // 2, per_agent
        shares = sorted(per_agent.values())
        print(f"{JOBS} jobs drained by {AGENTS} agents in {drained:.1f}s; shares {shares}")
