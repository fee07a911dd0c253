"""`python -m tests.chaos`: one chaos run, its summary, exit status 1 if anything was wrong.

``--postgres --replicas 2`` runs it on a throwaway PostgreSQL database with two replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos.runner import ChaosConfig, run_chaos
from tests.unit.pg_support import temporary_database


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
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run on a throwaway PostgreSQL database (GAFFER_TEST_PG_URL; default: trust auth "
        "on 127.0.0.1:5432) instead of SQLite",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="servers on the database (with --postgres)"
    )
    args = parser.parse_args(argv)
    if args.replicas > 1 and not args.postgres:
        parser.error("--replicas needs --postgres (replicas share one PostgreSQL database)")
    with contextlib.ExitStack() as stack:
        database_url = ""
        if args.postgres:
            database_url = stack.enter_context(contextlib.contextmanager(temporary_database)())
        return _run(args, database_url)


def _run(args: argparse.Namespace, database_url: str) -> int:
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
        database_url=database_url,
        replicas=args.replicas,
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
