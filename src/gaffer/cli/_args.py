"""Argument types and the mapping from a finished job to the CLI's exit status."""

from __future__ import annotations

import argparse
import re

from gaffer.client import Job, JobState
from gaffer.client._target import channel_target

# Exit statuses of `submit --wait|--follow` and `wait`, besides the job's own exit code.
EXIT_FAILED = 1  # FAILED with no exit code (timeout, lost lease, rejected), or errors
EXIT_USAGE = 2  # bad usage, or a spec the server refused
EXIT_TIMEOUT = 124  # `wait --timeout` passed before the job finished (as timeout(1))
EXIT_CANCELED = 130  # the job was CANCELED (as a shell's Ctrl-C)

EXIT_CODES_HELP = """\
exit status when waiting: the job's own exit code (0 for COMPLETED); 1 for a job FAILED
without one (timeout, lost lease); 128+N for a job killed by signal N; 130 for CANCELED;
124 when --timeout passed first; 2 for bad usage or an invalid spec; 1 for other errors."""


class UsageError(Exception):
    """A mistake in the command line found after parsing (exit status 2)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def key_value(text: str) -> tuple[str, str]:
    """``k=v`` as a pair; the key must be non-empty, the value may be empty or hold ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def duration(text: str) -> float:
    """Seconds from ``"1.5"``, ``"500ms"``, ``"30s"``, ``"5m"`` or ``"2h"``."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30, 30s, 5m or 500ms: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def server_addresses(text: str) -> str:
    """``HOST:PORT`` or several, comma-separated (replicas of one Gaffer); checked, kept as given.

    Names in a list are resolved here, so a typo fails at once rather than on the first call.
    """
    try:
        channel_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def non_negative_int(text: str) -> int:
    """An int that is 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def positive_int(text: str) -> int:
    """An int that is 1 or more."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def job_state(text: str) -> JobState:
    """A job state by name (``running``), any case; commas are split by the caller."""
    try:
        state = JobState.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if state is JobState.UNSPECIFIED:
        raise argparse.ArgumentTypeError("unspecified is not a state to filter by")
    return state


def pairs_to_dict(pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    """Repeated ``--label k=v`` values as a dict; a later key wins."""
    return dict(pairs or [])


def exit_status(job: Job) -> int:
    """The CLI's exit status for a finished job (see :data:`EXIT_CODES_HELP`)."""
    return exit_status_of(job.state, job.exit_code)


def exit_status_of(state: JobState, code: int | None) -> int:
    """The CLI's exit status for a job that finished in ``state`` with exit ``code``."""
    if state is JobState.CANCELED:
        return EXIT_CANCELED
    if state is JobState.COMPLETED:
        return 0 if code is None else code & 0xFF
    if code is None or code == 0:
        return EXIT_FAILED
    if code < 0:  # killed by a signal
        return 128 + (-code & 0x7F)
    return code & 0xFF or EXIT_FAILED
