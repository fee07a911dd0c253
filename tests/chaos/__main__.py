"""`python -m tests.chaos`: one chaos run, its summary, exit status 1 if anything was wrong."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos.runner import ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig(jobs=500, agent_kills=12, agent_freezes=3, budget=300.0)
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--agents", type=int, default=defaults.agents)
    parser.add_argument("--slots", type=int, default=defaults.slots)
    parser.add_argument("--agent-kills", type=int, default=defaults.agent_kills)
    parser.add_argument("--agent-freezes", type=int, default=defaults.agent_freezes)
    parser.add_argument("--server-kills", type=int, default=defaults.server_kills)
    parser.add_argument("--budget", type=float, default=defaults.budget, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--same-names", action="store_true", help="restart killed agents under their old name"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        jobs=args.jobs,
        agents=args.agents,
        slots=args.slots,
        agent_kills=args.agent_kills,
        agent_freezes=args.agent_freezes,
        server_kills=args.server_kills,
        budget=args.budget,
        seed=args.seed,
        same_names=args.same_names,
    )
    root = Path(tempfile.mkdtemp(prefix="gaffer-chaos-"))
    try:
        report = run_chaos(root, config)
    finally:
        if args.keep:
            print(f"data dir kept: {root}/data")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for problem in report.problems[:50]:
        print(f"  problem: {problem}")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
