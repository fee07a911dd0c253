"""The chaos run, bounded: 150 jobs, 3 agents, agents SIGKILLed (and one frozen), the server
SIGKILLed twice; nothing lost, nothing finished twice, no late write. `make chaos` runs 500.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import ChaosConfig, run_chaos


@pytest.mark.timeout(180)
def test_chaos_bounded(tmp_path: Path) -> None:
    config = ChaosConfig(jobs=150, agents=3, agent_kills=5, agent_freezes=1, server_kills=2)
    report = run_chaos(tmp_path, config)
    print(report.summary())
    assert report.ok, "\n".join([report.summary(), *report.problems[:30]])
    assert (report.lost, report.duplicated, report.late_writes) == (0, 0, 0)
    assert report.completed == config.jobs
    assert report.server_kills == 2 and report.agent_kills == 5
    assert report.retries > 0, "the faults should have cost some attempts"
