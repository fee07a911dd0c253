"""Python views of the contract's messages: enums mirrored as IntEnums, messages as dataclasses.

Every wrapper keeps the message it came from as ``.raw`` for callers who need a field the
wrapper does not show; the wrappers are built in :mod:`gaffer.client._convert`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "Agent",
    "AgentState",
    "ArtifactInfo",
    "Capacity",
    "InputFile",
    "Job",
    "JobEvent",
    "JobEventType",
    "JobPage",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobTimings",
    "ListOrder",
    "LogChunk",
    "LogEnd",
    "LogStream",
    "Resources",
    "RetryPolicy",
]


class _ParsableEnum(enum.IntEnum):
    """An IntEnum mirroring a proto enum; prints as its name (``RUNNING``), not its number."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)

    @classmethod
    def parse(cls, value: str | int) -> Any:
        """Accepts a member, its number, or its name in any case, with or without prefix.

        Raises:
            ValueError: No member matches.
        """
        if isinstance(value, int):
            return cls(value)
        name = value.strip().upper().replace("-", "_")
        for member in cls:
            if member.name == name:
                return member
        raise ValueError(
            f"unknown {cls.__name__} {value!r}; expected one of "
            + ", ".join(m.name.lower() for m in cls if m.value)
        )


class JobState(_ParsableEnum):
    """Where a job is in its lifecycle (mirrors ``gaffer.v1.JobState``)."""

    UNSPECIFIED = 0
    PENDING = 1
    CLAIMED = 2
    VALIDATING = 3
    RUNNING = 4
    UPLOADING = 5
    COMPLETED = 6
    FAILED = 7
    CANCELED = 8

    @property
    def is_finished(self) -> bool:
        """True for COMPLETED, FAILED and CANCELED, which never change again."""
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)


class JobEventType(_ParsableEnum):
    """What kind of change a :class:`JobEvent` records."""

    UNSPECIFIED = 0
    CREATED = 1
    STATE_CHANGED = 2
    CANCEL_REQUESTED = 3
    LEASE_LOST = 4


class LogStream(_ParsableEnum):
    """Which output stream a :class:`LogChunk` comes from."""

    UNSPECIFIED = 0
    STDOUT = 1
    STDERR = 2


class ListOrder(_ParsableEnum):
    """Order of :meth:`Client.list_jobs`."""

    UNSPECIFIED = 0
    NEWEST_FIRST = 1
    OLDEST_FIRST = 2


class AgentState(_ParsableEnum):
    """Whether an agent gets new jobs."""

    UNSPECIFIED = 0
    ACTIVE = 1
    DRAINING = 2
    OFFLINE = 3


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts of a job are retried (``max_attempts`` counts the first one)."""

    max_attempts: int = 1
    initial_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    backoff_multiplier: float = 0.0
    retryable_exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Resources:
    """What a job needs from its agent; zero means not asked for."""

    cpu: float = 0.0
    memory_bytes: int = 0
    gpu: int = 0


@dataclass(frozen=True)
class InputFile:
    """A file written into the job's working directory before it runs."""

    path: str
    content: bytes
    mode: int = 0


@dataclass(frozen=True)
class JobSpec:
    """What a job runs, and where and how."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    stdin: bytes
    labels: Mapping[str, str]
    queue: str
    priority: int
    timeout: timedelta | None
    retry: RetryPolicy
    resources: Resources
    node_selector: Mapping[str, str]
    inputs: tuple[InputFile, ...]
    outputs: tuple[str, ...]
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class JobStatus:
    """One entry of a job's status history."""

    state: JobState
    time: datetime | None
    message: str
    agent_id: str
    attempt: int
    actor: str
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class JobTimings:
    """Time the latest attempt spent in each phase; None where the phase was not reached."""

    queued: timedelta | None
    validating: timedelta | None
    running: timedelta | None
    uploading: timedelta | None
    total: timedelta | None


@dataclass(frozen=True)
class Job:
    """A submitted job: its spec plus what happened to it."""

    id: str
    state: JobState
    spec: JobSpec
    history: tuple[JobStatus, ...]
    create_time: datetime | None
    update_time: datetime | None
    finish_time: datetime | None
    attempt: int
    agent_id: str
    exit_code: int | None
    message: str
    cancel_requested: bool
    canceled_by: str
    request_id: str
    timings: JobTimings
    raw: Any = field(repr=False, compare=False)

    @property
    def is_finished(self) -> bool:
        """True once the job is COMPLETED, FAILED or CANCELED."""
        return self.state.is_finished

    @property
    def argv(self) -> tuple[str, ...]:
        """The program and arguments the job runs."""
        return self.spec.argv

    @property
    def result(self) -> Any:
        """What a function job returned, parsed from JSON; None when it returned nothing."""
        text = self.raw.result_json if self.raw is not None else ""
        return json.loads(text) if text else None

    @property
    def labels(self) -> Mapping[str, str]:
        """The job's labels."""
        return self.spec.labels


@dataclass(frozen=True)
class JobPage:
    """One page of :meth:`Client.list_jobs_page`; ``next_page_token`` is empty on the last."""

    jobs: list[Job]
    next_page_token: str


@dataclass(frozen=True)
class JobEvent:
    """One change to a job; ``sequence`` only grows."""

    sequence: int
    job_id: str
    type: JobEventType
    time: datetime | None
    state: JobState
    attempt: int
    agent_id: str
    message: str
    actor: str
    exit_code: int | None
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class LogChunk:
    """Bytes a job wrote to stdout or stderr, at ``offset`` in that stream of its attempt."""

    stream: LogStream
    offset: int
    data: bytes
    attempt: int
    raw: Any = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        """The bytes decoded as UTF-8, undecodable bytes replaced."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class LogEnd:
    """The last frame of a log stream: the job finished and all its output was sent."""

    state: JobState
    exit_code: int | None
    message: str
    attempt: int
    stdout_size: int
    stderr_size: int
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class ArtifactInfo:
    """A file a job produced, addressed by its ``"sha256:..."`` digest."""

    job_id: str
    name: str
    digest: str
    size_bytes: int
    attempt: int
    create_time: datetime | None
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class Capacity:
    """What an agent can run at once."""

    slots: int
    cpu: float
    memory_bytes: int
    gpu: int


@dataclass(frozen=True)
class Agent:
    """A worker process, as the server sees it."""

    id: str
    name: str
    labels: Mapping[str, str]
    capacity: Capacity
    queues: tuple[str, ...]
    state: AgentState
    running: tuple[tuple[str, int], ...]
    last_heartbeat_time: datetime | None
    register_time: datetime | None
    raw: Any = field(repr=False, compare=False)
