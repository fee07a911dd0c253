"""How the CLI prints: tables and lines for people, JSON for scripts, a live status line."""

from __future__ import annotations

import itertools
import json
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from google.protobuf import json_format

from gaffer.client import Agent, Job, JobEvent, JobState

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def to_json(message: Any) -> str:
    """A proto message (the ``.raw`` of a wrapper) as canonical proto3 JSON."""
    return json_format.MessageToJson(message, indent=2, sort_keys=False)


def to_json_line(message: Any) -> str:
    """A proto message as one line of JSON (for streams of events)."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def jobs_to_json(jobs: Iterable[Job]) -> str:
    """Jobs as a JSON array."""
    return json.dumps([json_format.MessageToDict(j.raw) for j in jobs], indent=2)


def age(when: datetime | None, now: datetime | None = None) -> str:
    """A short age like ``42s``, ``5m``, ``3h`` or ``2d``."""
    if when is None:
        return "-"
    delta = (now or datetime.now(UTC)) - when
    return "0s" if delta < timedelta(seconds=1) else short_duration(delta)


def short_duration(delta: timedelta | None) -> str:
    """``850ms``, ``12s``, ``5m``, ``3h`` or ``2d``; ``-`` for None."""
    if delta is None:
        return "-"
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def argv_text(argv: Sequence[str]) -> str:
    """An argv as a shell would read it."""
    return shlex.join(argv)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def jobs_table(jobs: Iterable[Job], *, argv_width: int = 50) -> str:
    """The ``gaffer list`` table."""
    now = datetime.now(UTC)
    rows = [
        (
            j.id,
            j.state.name,
            age(j.create_time, now),
            str(j.attempt or "-"),
            "-" if j.exit_code is None else str(j.exit_code),
            truncate(argv_text(j.argv), argv_width),
        )
        for j in jobs
    ]
    return table(("ID", "STATE", "AGE", "ATTEMPT", "EXIT", "ARGV"), rows)


def agents_table(agents: Iterable[Agent]) -> str:
    """The ``gaffer agents`` table."""
    now = datetime.now(UTC)
    rows = [
        (
            a.name,
            a.id,
            a.state.name,
            f"{len(a.running)}/{a.capacity.slots}",
            ",".join(a.queues) or "default",
            ",".join(f"{k}={v}" for k, v in sorted(a.labels.items())) or "-",
            age(a.last_heartbeat_time, now),
        )
        for a in agents
    ]
    return table(("NAME", "ID", "STATE", "RUNNING", "QUEUES", "LABELS", "HEARTBEAT"), rows)


def job_summary(job: Job) -> str:
    """One line: id, state, exit code and message."""
    parts = [job.id, job.state.name]
    if job.exit_code is not None:
        parts.append(f"exit {job.exit_code}")
    if job.cancel_requested and not job.is_finished:
        parts.append("cancel requested")
    text = " ".join(parts)
    return f"{text}: {job.message}" if job.message else text


def job_details(job: Job) -> str:
    """The ``gaffer get`` view: fields, timings, then the status history."""

    def when(value: datetime | None) -> str:
        return value.astimezone().isoformat(timespec="seconds") if value else "-"

    fields = [
        ("id", job.id),
        ("state", job.state.name + (" (cancel requested)" if job.cancel_requested else "")),
        ("argv", argv_text(job.argv)),
        ("queue", job.spec.queue),
        ("priority", str(job.spec.priority)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or "-"),
        ("attempt", str(job.attempt)),
        ("agent", job.agent_id or "-"),
        ("exit code", "-" if job.exit_code is None else str(job.exit_code)),
        ("message", job.message or "-"),
        ("created", when(job.create_time)),
        ("finished", when(job.finish_time)),
    ]
    if job.canceled_by:
        fields.append(("canceled by", job.canceled_by))
    t = job.timings
    fields.append(
        (
            "timings",
            f"queued {short_duration(t.queued)}, validating {short_duration(t.validating)}, "
            f"running {short_duration(t.running)}, uploading {short_duration(t.uploading)}, "
            f"total {short_duration(t.total)}",
        )
    )
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields]
    lines.append("")
    lines.append(
        table(
            ("TIME", "STATE", "ATTEMPT", "ACTOR", "MESSAGE"),
            [
                (when(s.time), s.state.name, str(s.attempt or "-"), s.actor or "-", s.message)
                for s in job.history
            ],
        )
    )
    return "\n".join(lines)


def event_line(event: JobEvent) -> str:
    """One event on one line: sequence, time, job, type, state, attempt, message."""
    when = event.time.astimezone().strftime("%H:%M:%S.%f")[:-3] if event.time else "-"
    parts = [str(event.sequence), when, event.job_id, event.type.name, event.state.name]
    if event.attempt:
        parts.append(f"attempt={event.attempt}")
    if event.exit_code is not None:
        parts.append(f"exit={event.exit_code}")
    if event.actor:
        parts.append(f"by={event.actor}")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


class StatusLine:
    """A spinner line redrawn in place on a terminal, like ``⠋ job j_1 RUNNING (attempt 1, 12s)``.

    Draws nothing unless ``stream`` is a TTY, so scripts see clean output.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty()
        self._frames = itertools.cycle(SPINNER)
        self._started = time.monotonic()
        self._width = 0

    def draw(self, job_id: str, state: JobState, attempt: int) -> None:
        """Redraws the line with the job's latest state."""
        if not self.enabled:
            return
        elapsed = short_duration(timedelta(seconds=time.monotonic() - self._started))
        detail = f"attempt {attempt}, {elapsed}" if attempt else elapsed
        text = f"{next(self._frames)} job {job_id} {state.name} ({detail})"
        self._stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self._stream.flush()

    def clear(self) -> None:
        """Erases the line."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
