"""Gaffer: a job service with a gRPC contract.

The Python client is re-exported here: ``from gaffer import Client, SyncClient, JobState``.
The names load on first use, so importing a part of Gaffer that has no use for gRPC (the
domain rules, the store) does not load the client and grpc with it.
"""

from __future__ import annotations

import importlib
from typing import Any

# The same names as gaffer.client.__all__ (a unit test holds them equal).
__all__ = [
    "Agent", "AgentState", "AlreadyExistsError", "Artifact", "ArtifactDigestError",
    "ArtifactInfo", "CallRetry", "Capacity", "Client", "DeadlineExceededError",
    "FailedPreconditionError", "FieldViolation", "GafferError", "InputFile",
    "InvalidArgumentError", "InvalidSpecError", "Job", "JobEvent", "JobEventType",
    "JobHandle", "JobNotFoundError", "JobPage", "JobSpec", "JobState", "JobStatus",
    "JobTimeoutError", "JobTimings", "ListOrder", "LogChunk", "LogEnd", "LogIterator",
    "LogStream", "NotFoundError", "PermissionDeniedError", "RPCError", "Resources",
    "RetryPolicy", "SyncArtifact", "SyncClient", "SyncJobHandle", "SyncLogIterator",
    "UnauthenticatedError", "UnavailableError",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gaffer.client"), name)
    raise AttributeError(f"module 'gaffer' has no attribute {name!r}")
