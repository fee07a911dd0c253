"""The ``gaffer`` command line: run Gaffer (server, agent, dev) and drive it (submit, logs...).

``main`` is the only entry point; it alone reads the environment (``GAFFER_SERVER``) and
configures logging. Each command group lives in its own module.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from gaffer.cli import _job_cmds, _server_cmds, _stream_cmds
from gaffer.cli._args import (
    EXIT_CANCELED,
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    server_addresses,
)
from gaffer.client import Client, GafferError, InvalidArgumentError

__all__ = ["build_parser", "main"]

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports it


def build_parser(default_server: str = DEFAULT_SERVER) -> argparse.ArgumentParser:
    """The argument parser of every command.

    Args:
        default_server: The ``--server`` used when none is given.
    """
    parser = argparse.ArgumentParser(
        prog="gaffer",
        description="Gaffer: submit jobs, run them on agents, follow them live.",
    )
    parser.add_argument(
        "--server",
        default=default_server,
        type=server_addresses,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="server address, or several replicas of one Gaffer, comma-separated: calls move "
        f"to another when one goes away (env GAFFER_SERVER; now {default_server})",
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more logging")
    # Also accepted after the command (`gaffer list --server X`); SUPPRESS keeps the global.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", default=argparse.SUPPRESS, type=server_addresses, metavar="HOST:PORT[,...]"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _server_cmds.add_parsers(sub, common)
    _job_cmds.add_parsers(sub, common)
    _stream_cmds.add_parsers(sub, common)
    return parser


async def _run_client_command(args: argparse.Namespace) -> int:
    async with await Client.connect(args.server) as client:
        code: int = await args.run(args, client)
        return code


def _print_error(message: str) -> None:
    print(f"gaffer: error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs one ``gaffer`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.
        environ: The environment; ``os.environ`` when None.

    Returns:
        The exit status: 0 on success, 2 for bad usage or an invalid spec, 1 for other
        errors, or the job's own status for commands that wait (see ``gaffer wait -h``).
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(environ.get("GAFFER_SERVER") or DEFAULT_SERVER)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage or help already
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Jobs run by a local agent inherit this PATH and LANG (library code never reads the env).
    args.job_env = {k: environ[k] for k in ("PATH", "LANG") if k in environ}
    args.env_database_url = environ.get("GAFFER_DATABASE_URL", "")
    try:
        if hasattr(args, "run"):
            return asyncio.run(_run_client_command(args))
        code: int = args.main(args)
        return code
    except UsageError as error:
        _print_error(str(error))
        return EXIT_USAGE
    except InvalidArgumentError as error:
        _print_error(error.message or "invalid request")
        for violation in error.violations:
            print(f"  {violation}", file=sys.stderr)
        return EXIT_USAGE
    except GafferError as error:
        _print_error(str(error))
        return EXIT_FAILED
    except BrokenPipeError:  # `gaffer logs ID | head`: the reader left; leave quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as error:  # e.g. a data dir that cannot be created
        _print_error(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELED
