"""The rules of stored output, the same for every store: appending without gaps or repeats,
trimming chunks to a reader's offsets, and finding where the last N lines start."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gaffer.domain import OutOfRange
from gaffer.store._base import LogAppend
from gaffer.v1 import job_pb2


def new_bytes(stream: int, size: int, offset: int, data: bytes) -> bytes:
    """The part of a pushed chunk not stored yet (a resent or regrouped chunk adds nothing
    twice); empty when every byte is stored already.

    Raises:
        OutOfRange: the chunk starts past the end of what is stored (a gap).
    """
    if offset > size:
        raise OutOfRange(
            f"chunk at offset {offset} of stream {stream} leaves a gap: {size} bytes are stored",
            reason="LOG_GAP",
        )
    return data[size - offset :] if offset + len(data) > size else b""


def log_append(sizes: dict[int, int], accepted: bool) -> LogAppend:
    return LogAppend(
        accepted=accepted,
        stdout_size=sizes.get(job_pb2.LOG_STREAM_STDOUT, 0),
        stderr_size=sizes.get(job_pb2.LOG_STREAM_STDERR, 0),
    )


def trimmed_chunks(
    rows: Iterable[Sequence[Any]], offsets: dict[int, int], attempt: int, max_bytes: int
) -> list[job_pb2.LogChunk]:
    """(stream, offset, data) rows as chunks starting at the reader's offsets, up to max_bytes."""
    chunks: list[job_pb2.LogChunk] = []
    total = 0
    for stream, offset, data in rows:
        skip = offsets[stream] - offset
        if skip > 0:
            data, offset = data[skip:], offset + skip
        chunks.append(job_pb2.LogChunk(stream=stream, offset=offset, data=data, attempt=attempt))
        total += len(data)
        if total >= max_bytes:
            break
    return chunks


class TailScan:
    """Fed a stream's chunks from the last backwards, finds where its last ``lines`` start."""

    def __init__(self, lines: int) -> None:
        self._lines = lines
        self._newlines = 0
        self._first = True

    def feed(self, offset: int, data: bytes) -> int | None:
        """The start offset once found in this chunk, else None (feed the one before)."""
        end = len(data)
        if self._first and data.endswith(b"\n"):
            end -= 1  # a newline at the very end of the stream ends the last line
        self._first = False
        pos = end
        while (pos := data.rfind(b"\n", 0, pos)) >= 0:
            self._newlines += 1
            if self._newlines == self._lines:
                return int(offset + pos + 1)
        return None
