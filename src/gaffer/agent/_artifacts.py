"""Uploads an attempt's output files through UploadArtifact: a header, then 1 MiB chunks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from gaffer.agent._logs import AttemptKey
from gaffer.agent._retry import call_with_retry
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


def digest_file(path: Path) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            sha.update(block)
            size += len(block)
    return f"sha256:{sha.hexdigest()}", size


async def _requests(
    key: AttemptKey, name: str, path: Path, digest: str, size: int
) -> AsyncIterator[agent_service_pb2.UploadArtifactRequest]:
    yield agent_service_pb2.UploadArtifactRequest(
        header=agent_service_pb2.ArtifactHeader(
            job_id=key.job_id,
            attempt=key.attempt,
            lease_token=key.lease_token,
            name=name,
            size_bytes=size,
            digest=digest,
        )
    )
    with path.open("rb") as handle:
        sent = 0
        while sent < size and (block := await asyncio.to_thread(handle.read, CHUNK)):
            block = block[: size - sent]  # a file that grew since it was hashed is cut back
            sent += len(block)
            yield agent_service_pb2.UploadArtifactRequest(chunk=block)


async def upload_artifacts(
    stub: agent_service_pb2_grpc.AgentServiceStub,
    key: AttemptKey,
    workdir: Path,
    names: list[str],
    *,
    rpc_timeout: float,
) -> None:
    """Uploads each named file of ``workdir``; a transient failure restarts that file.

    Raises:
        Fenced: the attempt is no longer ours.
        grpc.RpcError: the server refused a file for another reason.
    """
    for name in names:
        path = workdir / name
        digest, size = await asyncio.to_thread(digest_file, path)

        async def upload(
            name: str = name, path: Path = path, digest: str = digest, size: int = size
        ) -> agent_service_pb2.UploadArtifactResponse:
            # Generous deadline: a large file over a slow link takes a while.
            deadline = rpc_timeout + size / (1024 * 1024)
            response: agent_service_pb2.UploadArtifactResponse = await stub.UploadArtifact(
                _requests(key, name, path, digest, size), timeout=deadline
            )
            return response

        response = await call_with_retry(upload, what=f"upload {name}")
        logger.info(
            "attempt %s/%s: uploaded %s (%s bytes, %s)",
            key.job_id,
            key.attempt,
            name,
            response.artifact.size_bytes,
            digest,
        )
