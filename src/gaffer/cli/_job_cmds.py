"""Commands about jobs: submit, get, list, cancel, wait."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gaffer.cli._args import (
    EXIT_CODES_HELP,
    EXIT_TIMEOUT,
    UsageError,
    duration,
    exit_status,
    exit_status_of,
    job_state,
    key_value,
    non_negative_int,
    pairs_to_dict,
    positive_int,
)
from gaffer.cli._format import (
    StatusLine,
    job_details,
    job_summary,
    jobs_table,
    jobs_to_json,
    to_json,
)
from gaffer.client import Client, Job, JobHandle, JobState, JobTimeoutError, LogStream


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers submit, get, list, cancel and wait."""
    p = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a job: gaffer submit [options] -- ARGV...",
        description="Submit an exec job. Prints its id, or waits or follows it.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait and exit with the job's status")
    mode.add_argument(
        "--follow", "-f", action="store_true", help="stream its output live, then exit likewise"
    )
    p.add_argument("--label", "-l", type=key_value, action="append", metavar="K=V")
    p.add_argument("--env", "-e", type=key_value, action="append", metavar="K=V")
    p.add_argument("--queue", "-q", help="queue to submit to (default: default)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")
    p.add_argument("--timeout", type=duration, metavar="S", help="bound on one attempt's run")
    p.add_argument(
        "--retries", type=non_negative_int, default=0, metavar="N", help="retries after a failure"
    )
    p.add_argument("--output", "-o", action="append", metavar="GLOB", help="upload as artifact")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        metavar="PATH[=LOCALFILE]",
        help="write LOCALFILE (default: PATH) into the job's work dir as PATH",
    )
    p.add_argument("--stdin-file", metavar="FILE", help="bytes for the job's standard input")
    p.add_argument("--request-id", help="idempotency key (default: a fresh one)")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.add_argument(
        "--function",
        metavar="NAME",
        help="submit a function job calling NAME on an agent, instead of ARGV",
    )
    p.add_argument(
        "--args",
        dest="function_args",
        metavar="JSON",
        help="the function's arguments: a JSON array (positional) or object (keyword)",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the program and arguments")
    p.set_defaults(run=submit)

    p = sub.add_parser("get", parents=[common], help="show a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(run=get)

    p = sub.add_parser("list", aliases=["ls"], parents=[common], help="list jobs, newest first")
    p.add_argument(
        "--state",
        "-s",
        action="append",
        metavar="S",
        help="only jobs in this state (repeat, or comma-separate)",
    )
    p.add_argument("--label", "-l", type=key_value, action="append", metavar="K=V")
    p.add_argument("--queue", "-q")
    p.add_argument("--oldest-first", action="store_true")
    p.add_argument("--limit", "-n", type=positive_int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print the jobs as a JSON array")
    p.set_defaults(run=list_jobs)

    p = sub.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--reason", default="", help="recorded in the job's history")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(run=cancel)

    p = sub.add_parser(
        "wait",
        parents=[common],
        help="wait for a job to finish",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--timeout", type=duration, metavar="S", help="give up after this long")
    p.add_argument("--json", action="store_true", help="print the finished job as JSON")
    p.set_defaults(run=wait)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("nothing to run: gaffer submit [options] -- PROGRAM [ARGS...]")
    return argv


def function_arguments(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """``--args JSON``: positional arguments from an array, keyword ones from an object."""
    if not text:
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise UsageError(f"--args is not JSON: {error}") from error
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise UsageError("--args must be a JSON array or object")


async def _submit_function(args: argparse.Namespace, client: Client) -> JobHandle:
    argv = [a for a in args.argv if a != "--"]
    if argv or args.env or args.stdin_file or args.input or args.output:
        raise UsageError("--function takes no ARGV, --env, --stdin-file, --input or --output")
    positional, keyword = function_arguments(args.function_args)
    return await client.submit_function_with(
        args.function,
        positional,
        keyword,
        labels=pairs_to_dict(args.label),
        queue=args.queue,
        priority=args.priority,
        timeout=args.timeout,
        retry=args.retries + 1 if args.retries else None,
        request_id=args.request_id,
    )


def _inputs(specs: list[str] | None) -> dict[str, bytes]:
    inputs: dict[str, bytes] = {}
    for spec in specs or ():
        path, _, local = spec.partition("=")
        try:
            inputs[path] = Path(local or path).read_bytes()
        except OSError as error:
            raise UsageError(f"--input {spec}: {error.strerror}: {error.filename}") from None
    return inputs


def _local_files(args: argparse.Namespace) -> tuple[bytes | None, dict[str, bytes]]:
    """Reads --stdin-file and --input files before anything is sent (small, local, once)."""
    stdin = None
    if args.stdin_file:
        try:
            stdin = Path(args.stdin_file).read_bytes()
        except OSError as error:
            raise UsageError(f"--stdin-file: {error.strerror}: {error.filename}") from None
    return stdin, _inputs(args.input)


def _states(values: list[str] | None) -> list[JobState]:
    states = []
    for value in values or ():
        for name in filter(None, (v.strip() for v in value.split(","))):
            try:
                states.append(job_state(name))
            except argparse.ArgumentTypeError as error:
                raise UsageError(f"--state: {error}") from None
    return states


async def submit(args: argparse.Namespace, client: Client) -> int:
    """``gaffer submit``."""
    if args.json and args.follow:
        raise UsageError("--json and --follow do not mix: the output is the job's")
    if args.function_args is not None and not args.function:
        raise UsageError("--args goes with --function NAME")
    if args.function:
        handle = await _submit_function(args, client)
    else:
        handle = await _submit_exec(args, client)
    return await _submit_then(args, client, handle)


async def _submit_exec(args: argparse.Namespace, client: Client) -> JobHandle:
    stdin, inputs = _local_files(args)
    return await client.submit(
        _argv(args),
        env=pairs_to_dict(args.env),
        stdin=stdin,
        labels=pairs_to_dict(args.label),
        queue=args.queue,
        priority=args.priority,
        timeout=args.timeout,
        retry=args.retries + 1 if args.retries else None,
        inputs=inputs,
        outputs=args.output,
        request_id=args.request_id,
    )


async def _submit_then(args: argparse.Namespace, client: Client, handle: JobHandle) -> int:
    if args.follow:
        if sys.stderr.isatty():
            print(f"gaffer: following job {handle.id}", file=sys.stderr, flush=True)
        try:
            return await follow_output(client, handle.id)
        except asyncio.CancelledError:  # Ctrl-C: say the job itself goes on
            print(
                f"\ngaffer: stopped following; job {handle.id} keeps running "
                f"(gaffer cancel {handle.id})",
                file=sys.stderr,
                flush=True,
            )
            raise
    if not args.wait:
        assert handle.job is not None
        print(to_json(handle.job.raw) if args.json else handle.id, flush=True)
        return 0
    if not args.json:
        print(handle.id, flush=True)
    job = await wait_with_status(client, handle.id, None)
    if args.json:
        print(to_json(job.raw))
    elif job.raw.result_json:  # what a function job returned
        print(job.raw.result_json, flush=True)
    return exit_status(job)


async def follow_output(client: Client, job_id: str) -> int:
    """Copies a job's stdout and stderr to ours as they come; its exit status once it ends."""
    logs = client.logs(job_id, follow=True)
    async for chunk in logs:
        out = sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout
        out.buffer.write(chunk.data)
        out.buffer.flush()
    if logs.end is not None:
        return exit_status_of(logs.end.state, logs.end.exit_code)
    return exit_status(await client.wait(job_id))


async def wait_with_status(client: Client, job_id: str, timeout: float | None) -> Job:
    """Waits for a job, drawing a live status line on stderr when it is a terminal."""
    status = StatusLine()
    if not status.enabled:
        return await client.wait(job_id, timeout=timeout)
    job = await client.get_job(job_id)
    state, attempt = job.state, job.attempt

    async def watch() -> None:
        nonlocal state, attempt
        async for event in client.events(job_id):
            state, attempt = event.state, event.attempt or attempt

    async def spin() -> None:
        while True:
            status.draw(job_id, state, attempt)
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(watch()), asyncio.create_task(spin())]
    try:
        return await client.wait(job_id, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        status.clear()


async def get(args: argparse.Namespace, client: Client) -> int:
    """``gaffer get``."""
    job = await client.get_job(args.job_id)
    print(to_json(job.raw) if args.json else job_details(job))
    return 0


async def list_jobs(args: argparse.Namespace, client: Client) -> int:
    """``gaffer list``."""
    jobs = [
        job
        async for job in client.list_jobs(
            states=_states(args.state),
            labels=pairs_to_dict(args.label),
            queue=args.queue,
            order="oldest" if args.oldest_first else "newest",
            limit=args.limit,
        )
    ]
    print(jobs_to_json(jobs) if args.json else jobs_table(jobs))
    return 0


async def cancel(args: argparse.Namespace, client: Client) -> int:
    """``gaffer cancel``."""
    job = await client.cancel(args.job_id, reason=args.reason)
    print(to_json(job.raw) if args.json else job_summary(job))
    return 0


async def wait(args: argparse.Namespace, client: Client) -> int:
    """``gaffer wait``."""
    try:
        job = await wait_with_status(client, args.job_id, args.timeout)
    except JobTimeoutError as error:
        if args.json and error.job is not None:
            print(to_json(error.job.raw))
        print(f"gaffer: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    print(to_json(job.raw) if args.json else job_summary(job))
    return exit_status(job)
