"""Artifact bytes on disk, addressed by sha256: written to a temp file, checked, then renamed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from gaffer.domain import InvalidArgument


def _flush_and_sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


class BlobStore:
    """``root/sha256/ab/abcdef...``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    async def put(
        self,
        chunks: AsyncIterator[bytes],
        *,
        expected_size: int,
        expected_digest: str,
        max_bytes: int,
    ) -> tuple[str, int]:
        """Streams chunks to disk, then checks size and digest; returns (digest, size).

        Raises:
            InvalidArgument: the bytes did not match the header, or were too many.
        """
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes or size > expected_size:
                        raise InvalidArgument.single(
                            "header.size_bytes",
                            f"more bytes arrived than the {expected_size} announced",
                            reason="ARTIFACT_SIZE_MISMATCH",
                        )
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)  # disk I/O off the event loop
                await asyncio.to_thread(_flush_and_sync, out)
            if size != expected_size:
                raise InvalidArgument.single(
                    "header.size_bytes",
                    f"announced {expected_size} bytes but {size} arrived",
                    reason="ARTIFACT_SIZE_MISMATCH",
                )
            digest = "sha256:" + hasher.hexdigest()
            if digest != expected_digest:
                raise InvalidArgument.single(
                    "header.digest",
                    f"announced {expected_digest} but the bytes hash to {digest}",
                    reason="ARTIFACT_DIGEST_MISMATCH",
                )
            final = self.path_of(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
