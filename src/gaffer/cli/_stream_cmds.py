"""Commands that follow streams: logs and events."""

from __future__ import annotations

import argparse
import sys

from gaffer.cli._args import non_negative_int
from gaffer.cli._format import event_line, to_json_line
from gaffer.client import Client, LogStream

# How long an events stream may stay quiet before `events` without -f counts history as sent.


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers logs and events."""
    p = sub.add_parser("logs", parents=[common], help="print a job's output")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--follow", "-f", action="store_true", help="keep going until the job ends")
    p.add_argument("--tail", type=non_negative_int, default=0, metavar="N", help="last N lines")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--stdout", action="store_true", help="only stdout")
    only.add_argument("--stderr", action="store_true", help="only stderr")
    p.set_defaults(run=logs)

    p = sub.add_parser(
        "events", parents=[common], help="print job events, one line each (all jobs if no ID)"
    )
    p.add_argument("job_id", metavar="ID", nargs="?")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument(
        "--after", type=non_negative_int, default=0, metavar="SEQ", help="start after SEQ"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=events)


async def logs(args: argparse.Namespace, client: Client) -> int:
    """``gaffer logs``: stdout to stdout, stderr to stderr, flushed per chunk."""
    streams = [LogStream.STDOUT] if args.stdout else [LogStream.STDERR] if args.stderr else None
    async for chunk in client.logs(
        args.job_id, follow=args.follow, tail_lines=args.tail, streams=streams
    ):
        out = sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout
        out.buffer.write(chunk.data)
        out.buffer.flush()
    return 0


async def events(args: argparse.Namespace, client: Client) -> int:
    """``gaffer events``: history, then live events with -f."""
    async for event in client.events(
        args.job_id,
        after_sequence=args.after,
        follow=args.follow,
    ):
        print(to_json_line(event.raw) if args.json else event_line(event), flush=True)
    return 0
