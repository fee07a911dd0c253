"""Commands that run Gaffer itself (server, agent, dev) and look at it (agents)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gaffer.cli._args import UsageError, duration, key_value, pairs_to_dict, positive_int
from gaffer.cli._format import agents_table, to_json
from gaffer.client import Client, GafferError


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers server, agent, dev and agents."""
    p = sub.add_parser("server", help="run the server on the embedded store")
    _server_options(p)
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address")
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql://... : share one PostgreSQL among replicas (env GAFFER_DATABASE_URL); "
        "default: the embedded SQLite store in --data-dir",
    )
    p.add_argument(
        "--pg-notify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LISTEN/NOTIFY wake-ups across replicas (--no-pg-notify: a test switch)",
    )
    p.add_argument("--lease-ttl", type=duration, default=15.0, metavar="T", help="default 15s")
    p.add_argument(
        "--heartbeat-interval", type=duration, default=5.0, metavar="T", help="default 5s"
    )
    p.add_argument(
        "--sweep-interval", type=duration, default=0.5, metavar="T", help="default 500ms"
    )
    p.add_argument(
        "--timeout-grace",
        type=duration,
        default=1.0,
        metavar="T",
        help="past a job's timeout before the server fails it (default 1s)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=20_000,
        metavar="N",
        help="calls served at once, streams included; more get RESOURCE_EXHAUSTED "
        "(default 20000, 0: no limit)",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    p.set_defaults(main=server)

    p = sub.add_parser("agent", parents=[common], help="run an agent that claims and runs jobs")
    p.add_argument("--name", default=socket.gethostname(), help="default: the host name")
    p.add_argument(
        "--slots",
        type=positive_int,
        default=1,
        action=_ExplicitSlots,
        help=f"jobs at once (default 1, or {FUNCTION_SLOTS} with --functions: function jobs "
        "mostly wait on RPCs, so an agent runs many at once)",
    )
    p.add_argument("--label", "-l", type=key_value, action="append", metavar="K=V")
    p.add_argument("--queue", "-q", action="append", metavar="Q", help="default: default")
    p.add_argument("--work-dir", type=Path, metavar="DIR", help="default: a temp dir")
    _agent_options(p, stop_grace=30.0)
    p.set_defaults(main=agent)

    p = sub.add_parser("dev", help="run a server and one local agent in one process")
    _server_options(p)
    p.add_argument("--slots", type=positive_int, default=4, help="agent slots (default 4)")
    _agent_options(p, stop_grace=5.0)
    p.set_defaults(main=dev)

    p = sub.add_parser("agents", parents=[common], help="list agents")
    p.add_argument("--json", action="store_true", help="print the agents as JSON")
    p.set_defaults(run=agents)


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--data-dir", type=Path, default=Path(".gaffer"), metavar="DIR")


#: Default slots of an agent given --functions.
FUNCTION_SLOTS = 16


class _ExplicitSlots(argparse.Action):
    """Stores --slots and notes it was given, so --functions can raise only the default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.slots_given = True


def agent_slots(args: argparse.Namespace) -> int:
    """--slots, or :data:`FUNCTION_SLOTS` when --functions is given without --slots."""
    if args.functions and not getattr(args, "slots_given", False):
        return FUNCTION_SLOTS
    return int(args.slots)


def _agent_options(p: argparse.ArgumentParser, *, stop_grace: float) -> None:
    p.add_argument(
        "--stop-grace",
        type=duration,
        default=stop_grace,
        metavar="S",
        help="on SIGTERM, how long running jobs may finish before they are killed and handed "
        f"back to the server (default {stop_grace:g}s)",
    )
    p.add_argument(
        "--functions",
        action="append",
        metavar="MODULE",
        help="import MODULE, whose @gaffer.agent.function callables function jobs may call "
        "(repeatable; gaffer.noop, gaffer.echo and gaffer.sleep are always there)",
    )


def _functions(args: argparse.Namespace) -> dict[str, Callable[..., Any]]:
    """What the --functions modules registered; a module that fails to import is a usage error."""
    from gaffer.agent import load_function_modules

    # Like `python -m`, the current directory is importable: `gaffer agent --functions mytasks`
    # finds ./mytasks.py whether gaffer was started as a script or a module.
    if args.functions and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return load_function_modules(args.functions or ())
    except ImportError as error:
        raise UsageError(f"--functions: cannot import {error.name or error}: {error}") from error


def _serving(address: str) -> None:
    """Once the server listens: the collector tuned for it, then the line callers wait for."""
    _tune_gc()
    _print_listening(address)


def _tune_gc() -> None:
    """Keeps the garbage collector off the server's loop (`gaffer server` owns its process).

    What is alive once the server listens (modules, descriptors: some 30,000 objects) is
    frozen, so that full collections no longer walk it, and the youngest generation is
    collected every 10,000 allocations instead of 700 (most of a call's objects are freed by
    their reference counts first). `bench --only fanout` (1,000 followers, 1,000 jobs), the
    server's collections over the run, by gc.callbacks: 25 ms in all and 9 ms at the
    longest, against 210-280 ms and 21 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _print_listening(address: str) -> None:
    print(f"gaffer server listening on {address}", flush=True)


def _print_metrics(address: str) -> None:
    print(f"gaffer metrics on http://{address}/metrics", flush=True)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def server(args: argparse.Namespace) -> int:
    """``gaffer server``: serves until SIGTERM or SIGINT."""
    from gaffer.server import ServerConfig, run_server

    config = ServerConfig(
        listen=args.listen,
        data_dir=args.data_dir,
        insecure=args.insecure,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        metrics_listen=args.metrics_listen,
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat_interval,
        sweep_interval=args.sweep_interval,
        timeout_grace=args.timeout_grace,
        database_url=args.database_url or getattr(args, "env_database_url", ""),
        pg_notify=args.pg_notify,
    )
    try:
        asyncio.run(run_server(config, on_ready=_serving, on_metrics=_print_metrics))
    except ValueError as error:  # the listen address was refused
        raise UsageError(str(error)) from error
    return 0


def _base_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment jobs start from: the CLI's own PATH and LANG, else the defaults."""
    from gaffer.agent import default_base_env

    return {**default_base_env(), **getattr(args, "job_env", {})}


def agent(args: argparse.Namespace) -> int:
    """``gaffer agent``: runs jobs until SIGTERM or SIGINT."""
    from gaffer.agent import AgentConfig, run_agent

    config = AgentConfig(
        server=args.server,
        name=args.name,
        slots=agent_slots(args),
        labels=pairs_to_dict(args.label),
        queues=tuple(args.queue or ("default",)),
        work_dir=args.work_dir,
        base_env=_base_env(args),
        stop_grace=args.stop_grace,
        functions=_functions(args),
    )

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await run_agent(config, stop=stop)

    asyncio.run(main())
    return 0


def _next_steps(address: str) -> str:
    g = f"gaffer --server {address}"
    return "\n".join(
        [
            "",
            "Gaffer is up: a server and one local agent. Try, in another terminal:",
            f"  {g} submit --follow -- echo hello",
            f"  {g} submit --label team=demo -- sh -c 'for i in 1 2 3; do echo $i; sleep 1; done'",
            f"  {g} list",
            f"  {g} logs -f JOB_ID",
            f"  {g} events -f",
            f"  {g} cancel JOB_ID",
            f"  {g} agents",
            f"(or export GAFFER_SERVER={address}). Ctrl-C stops both.",
            "",
        ]
    )


def dev(args: argparse.Namespace) -> int:
    """``gaffer dev``: a server and one agent on one event loop, until SIGINT or SIGTERM."""
    from gaffer.agent import AgentConfig, run_agent
    from gaffer.server import ServerConfig, start_server

    functions = _functions(args)

    async def main() -> None:
        try:
            running = await start_server(ServerConfig(listen=args.listen, data_dir=args.data_dir))
        except ValueError as error:
            raise UsageError(str(error)) from error
        _serving(running.address)
        stop = asyncio.Event()
        _stop_on_signals(stop)
        agent_config = AgentConfig(
            server=running.address,
            name=f"dev-{socket.gethostname()}",
            slots=args.slots,
            base_env=_base_env(args),
            stop_grace=args.stop_grace,
            functions=functions,
        )
        agent_task = asyncio.create_task(run_agent(agent_config, stop=stop))
        stopping = asyncio.create_task(stop.wait())
        print(_next_steps(running.address), flush=True)
        try:
            await asyncio.wait({agent_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The agent first, so it can still report to the server as it stops.
            stop.set()
            _, pending = await asyncio.wait({agent_task}, timeout=agent_config.stop_grace + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(agent_task, stopping, return_exceptions=True)
            await running.stop()
        if not agent_task.cancelled() and agent_task.exception() is not None:
            raise GafferError(f"agent stopped: {agent_task.exception()}")

    asyncio.run(main())
    return 0


async def agents(args: argparse.Namespace, client: Client) -> int:
    """``gaffer agents``."""
    found = await client.agents()
    if args.json:
        print("[" + ",\n".join(to_json(a.raw) for a in found) + "]")
    else:
        print(agents_table(found))
    return 0
