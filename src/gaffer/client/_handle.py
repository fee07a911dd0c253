"""Handles on server-side things: jobs, their artifacts and their log streams.

Each comes in an async flavour (from :class:`Client`) and a sync one (from :class:`SyncClient`);
both hold their client and an id, and call back into it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaffer.client._convert import Seconds
from gaffer.client._errors import ArtifactDigestError, JobTimeoutError
from gaffer.client._models import ArtifactInfo, Job, JobEvent, LogChunk, LogEnd, LogStream

if TYPE_CHECKING:
    from gaffer.client._client import Client
    from gaffer.client._sync import SyncClient

__all__ = [
    "Artifact",
    "JobHandle",
    "LogIterator",
    "SyncArtifact",
    "SyncJobHandle",
    "SyncLogIterator",
]


class LogIterator:
    """Async iterator of a job's :class:`LogChunk` s.

    Once iteration ends, ``end`` holds the final :class:`LogEnd` (state and exit code), or
    None when the stream ended without one (not following a running job).
    """

    def __init__(self, frames: AsyncIterator[LogChunk | LogEnd]) -> None:
        self._frames = frames
        self.end: LogEnd | None = None

    def __aiter__(self) -> LogIterator:
        return self

    async def __anext__(self) -> LogChunk:
        while True:
            frame = await anext(self._frames)
            if isinstance(frame, LogEnd):
                self.end = frame
                continue
            return frame

    async def aclose(self) -> None:
        """Stops the stream early."""
        aclose = getattr(self._frames, "aclose", None)
        if aclose is not None:
            await aclose()


class SyncLogIterator:
    """Iterator of a job's :class:`LogChunk` s; ``end`` holds the :class:`LogEnd` afterwards."""

    def __init__(self, frames: Iterator[LogChunk | LogEnd]) -> None:
        self._frames = frames
        self.end: LogEnd | None = None

    def __iter__(self) -> SyncLogIterator:
        return self

    def __next__(self) -> LogChunk:
        while True:
            frame = next(self._frames)
            if isinstance(frame, LogEnd):
                self.end = frame
                continue
            return frame

    def close(self) -> None:
        """Stops the stream early."""
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


class _Digest:
    """Checks streamed bytes against an artifact's ``sha256:`` digest."""

    def __init__(self, info: ArtifactInfo) -> None:
        self._info = info
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def check(self) -> None:
        algorithm, _, expected = self._info.digest.partition(":")
        if algorithm == "sha256" and expected and self._hash.hexdigest() != expected:
            raise ArtifactDigestError(
                f"artifact {self._info.name!r} of job {self._info.job_id}: got sha256:"
                f"{self._hash.hexdigest()}, expected {self._info.digest}"
            )


@dataclass(frozen=True)
class Artifact:
    """A job's output file, read through the async client.

    Attributes:
        info: Name, digest, size and attempt (``info.raw`` is the message).
    """

    _client: Client
    info: ArtifactInfo

    @property
    def name(self) -> str:
        """Path relative to the job's working directory."""
        return self.info.name

    @property
    def digest(self) -> str:
        """``"sha256:"`` plus the hex digest."""
        return self.info.digest

    @property
    def size_bytes(self) -> int:
        """Size in bytes."""
        return self.info.size_bytes

    @property
    def raw(self) -> Any:
        """The ``gaffer.v1.Artifact`` message."""
        return self.info.raw

    def chunks(self, offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes from ``offset`` on, in chunks of at most 1 MiB."""
        return self._client._read_artifact(self.info.job_id, self.info.name, offset)

    async def read_bytes(self) -> bytes:
        """The whole content, checked against the digest.

        Raises:
            ArtifactDigestError: The bytes do not match the digest.
        """
        digest = _Digest(self.info)
        parts: list[bytes] = []
        async for data in self.chunks():
            digest.update(data)
            parts.append(data)
        digest.check()
        return b"".join(parts)

    async def read_text(self, encoding: str = "utf-8") -> str:
        """The content decoded as text."""
        return (await self.read_bytes()).decode(encoding)

    async def read_json(self) -> Any:
        """The content parsed as JSON."""
        return json.loads(await self.read_bytes())

    async def copy_to(self, path: str | os.PathLike[str]) -> Path:
        """Writes the content to ``path`` (a directory gets the artifact's base name).

        Returns:
            The file written.

        Raises:
            ArtifactDigestError: The bytes do not match the digest (the file is removed).
        """
        target = _target_path(path, self.info.name)
        digest = _Digest(self.info)
        with target.open("wb") as out:
            async for data in self.chunks():
                digest.update(data)
                out.write(data)
        _checked(digest, target)
        return target


@dataclass(frozen=True)
class SyncArtifact:
    """A job's output file, read through the sync client (see :class:`Artifact`)."""

    _client: SyncClient
    info: ArtifactInfo

    @property
    def name(self) -> str:
        """Path relative to the job's working directory."""
        return self.info.name

    @property
    def digest(self) -> str:
        """``"sha256:"`` plus the hex digest."""
        return self.info.digest

    @property
    def size_bytes(self) -> int:
        """Size in bytes."""
        return self.info.size_bytes

    @property
    def raw(self) -> Any:
        """The ``gaffer.v1.Artifact`` message."""
        return self.info.raw

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        """The bytes from ``offset`` on, in chunks of at most 1 MiB."""
        return self._client._read_artifact(self.info.job_id, self.info.name, offset)

    def read_bytes(self) -> bytes:
        """The whole content, checked against the digest.

        Raises:
            ArtifactDigestError: The bytes do not match the digest.
        """
        digest = _Digest(self.info)
        parts: list[bytes] = []
        for data in self.chunks():
            digest.update(data)
            parts.append(data)
        digest.check()
        return b"".join(parts)

    def read_text(self, encoding: str = "utf-8") -> str:
        """The content decoded as text."""
        return self.read_bytes().decode(encoding)

    def read_json(self) -> Any:
        """The content parsed as JSON."""
        return json.loads(self.read_bytes())

    def copy_to(self, path: str | os.PathLike[str]) -> Path:
        """Writes the content to ``path`` (a directory gets the artifact's base name).

        Returns:
            The file written.

        Raises:
            ArtifactDigestError: The bytes do not match the digest (the file is removed).
        """
        target = _target_path(path, self.info.name)
        digest = _Digest(self.info)
        with target.open("wb") as out:
            for data in self.chunks():
                digest.update(data)
                out.write(data)
        _checked(digest, target)
        return target


def _target_path(path: str | os.PathLike[str], name: str) -> Path:
    target = Path(path)
    if target.is_dir():
        target = target / Path(name).name
    return target


def _checked(digest: _Digest, target: Path) -> None:
    try:
        digest.check()
    except ArtifactDigestError:
        target.unlink(missing_ok=True)
        raise


class JobHandle:
    """A job, by id, with the calls that concern it (async).

    Attributes:
        id: The job's id.
        job: The job as the server last returned it through this handle, if fetched.
        existing: True when submit matched an earlier ``request_id`` and made no new job.
    """

    def __init__(
        self, client: Client, job_id: str, *, job: Job | None = None, existing: bool = False
    ) -> None:
        self.client = client
        self.id = job_id
        self.job = job
        self.existing = existing

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def get(self) -> Job:
        """The job as it is now (also stored in ``.job``)."""
        self.job = await self.client.get_job(self.id)
        return self.job

    refresh = get

    async def wait(
        self,
        *,
        timeout: Seconds | None = None,
    ) -> Job:
        """Waits for the job to finish.

        Raises:
            JobTimeoutError: Not finished within ``timeout`` seconds.
        """
        try:
            self.job = await self.client.wait(self.id, timeout=timeout)
        except JobTimeoutError as error:
            self.job = error.job or self.job
            raise
        return self.job

    async def cancel(self, *, reason: str = "") -> Job:
        """Cancels the job.

        Raises:
            FailedPreconditionError: It was already finished.
        """
        self.job = await self.client.cancel(self.id, reason=reason)
        return self.job

    def events(self, *, after_sequence: int = 0, from_now: bool = False) -> AsyncIterator[JobEvent]:
        """The job's events, ending after its final one."""
        return self.client.events(self.id, after_sequence=after_sequence, from_now=from_now)

    def logs(
        self,
        *,
        follow: bool = True,
        tail_lines: int = 0,
        streams: list[LogStream | str] | None = None,
    ) -> LogIterator:
        """The job's output, live by default; ``.end`` holds the final frame afterwards."""
        return self.client.logs(self.id, follow=follow, tail_lines=tail_lines, streams=streams)

    async def artifacts(self) -> list[Artifact]:
        """The job's output files."""
        return await self.client.artifacts(self.id)


class SyncJobHandle:
    """A job, by id, with the calls that concern it (sync); see :class:`JobHandle`."""

    def __init__(
        self, client: SyncClient, job_id: str, *, job: Job | None = None, existing: bool = False
    ) -> None:
        self.client = client
        self.id = job_id
        self.job = job
        self.existing = existing

    def __repr__(self) -> str:
        return f"SyncJobHandle({self.id!r})"

    def get(self) -> Job:
        """The job as it is now (also stored in ``.job``)."""
        self.job = self.client.get_job(self.id)
        return self.job

    refresh = get

    def wait(self, *, timeout: Seconds | None = None) -> Job:
        """Waits for the job to finish.

        Raises:
            JobTimeoutError: Not finished within ``timeout`` seconds.
        """
        try:
            self.job = self.client.wait(self.id, timeout=timeout)
        except JobTimeoutError as error:
            self.job = error.job or self.job
            raise
        return self.job

    def cancel(self, *, reason: str = "") -> Job:
        """Cancels the job.

        Raises:
            FailedPreconditionError: It was already finished.
        """
        self.job = self.client.cancel(self.id, reason=reason)
        return self.job

    def events(self, *, after_sequence: int = 0, from_now: bool = False) -> Iterator[JobEvent]:
        """The job's events, ending after its final one."""
        return self.client.events(self.id, after_sequence=after_sequence, from_now=from_now)

    def logs(
        self,
        *,
        follow: bool = True,
        tail_lines: int = 0,
        streams: list[LogStream | str] | None = None,
    ) -> SyncLogIterator:
        """The job's output, live by default; ``.end`` holds the final frame afterwards."""
        return self.client.logs(self.id, follow=follow, tail_lines=tail_lines, streams=streams)

    def artifacts(self) -> list[SyncArtifact]:
        """The job's output files."""
        return self.client.artifacts(self.id)
