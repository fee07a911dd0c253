"""An agent whose attempts end together reports their outcomes in one CompleteJobs call.

Counted by the server itself (``gaffer_rpcs_total`` on its metrics endpoint): a real agent
runs jobs handed out together, and each job still ends once, with its whole history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gaffer import JobState, SyncClient
from tests.helpers import METRICS, AgentProc, ServerProc, scrape

JOBS = 48
SLOTS = 16
COMPLETE = '/gaffer.v1.AgentService/CompleteJob"}'
COMPLETE_MANY = '/gaffer.v1.AgentService/CompleteJobs"}'


def calls(metrics: dict[str, float], suffix: str) -> float:
    return sum(v for k, v in metrics.items() if k.endswith(suffix))


def test_outcomes_that_come_together_go_in_one_call(tmp_path: Path) -> None:
    server = ServerProc.launch(tmp_path / "data", "--metrics-listen", "127.0.0.1:0")
    agent = None
    try:
        metrics_at = server.wait_for_line(METRICS).group(1)
        with SyncClient(server.address) as client:
            # Queued before the agent starts, so that its claims hand out SLOTS at a time.
            handles = [client.submit_function("gaffer.noop") for _ in range(JOBS)]
            agent = AgentProc.launch(server.address, "batching", "--slots", str(SLOTS))
            jobs = [client.wait(h.id, timeout=30) for h in handles]
        assert {job.state for job in jobs} == {JobState.COMPLETED}
        for job in jobs:
            assert [s.state for s in job.history][-2:] == [JobState.RUNNING, JobState.COMPLETED]
        counted = asyncio.run(scrape(metrics_at))
        single, batched = calls(counted, COMPLETE), calls(counted, COMPLETE_MANY)
        assert batched >= 1, counted
        assert single + batched <= JOBS / 2, counted
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
