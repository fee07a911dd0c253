"""The chaos run on PostgreSQL with 2 replicas (issue 4, test 6), bounded: 100 jobs, 3 agents
spread over both replicas (each given both addresses), agents SIGKILLed and one frozen, each
replica SIGKILLed once (and restarted); nothing lost, nothing finished twice, no late write.
``python -m tests.chaos --postgres --replicas 2`` runs the long one (500 jobs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import ChaosConfig, run_chaos
from tests.e2e.pg_fixtures import pg_database_fixture, pg_url_fixture  # noqa: F401


@pytest.mark.timeout(180)
def test_chaos_bounded_on_two_postgres_replicas(tmp_path: Path, pg_url: str) -> None:
    config = ChaosConfig(
        jobs=100,
        agents=3,
        agent_kills=4,
        agent_freezes=1,
        server_kills=2,
        database_url=pg_url,
        replicas=2,
    )
    report = run_chaos(tmp_path, config)
    print(report.summary())
    assert report.ok, "\n".join([report.summary(), *report.problems[:30]])
    assert (report.lost, report.duplicated, report.late_writes) == (0, 0, 0)
    assert report.completed == config.jobs
    assert report.server_kills == 2 and report.agent_kills == 4
    assert report.retries > 0, "the faults should have cost some attempts"
