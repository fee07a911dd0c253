"""The Python client of Gaffer: :class:`Client` (asyncio) and :class:`SyncClient` (blocking).

::

    async with await Client.connect("127.0.0.1:50051") as client:
        handle = await client.submit(["echo", "hello"])
        async for chunk in handle.logs(follow=True):
            print(chunk.text, end="")
        job = await handle.wait(timeout=60)

Users touch only the wrappers here; each keeps its proto message as ``.raw``.
"""

from gaffer.client._base import CallRetry
from gaffer.client._client import Client
from gaffer.client._errors import (
    AlreadyExistsError,
    ArtifactDigestError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GafferError,
    InvalidArgumentError,
    InvalidSpecError,
    JobNotFoundError,
    JobTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RPCError,
    UnauthenticatedError,
    UnavailableError,
)
from gaffer.client._handle import (
    Artifact,
    JobHandle,
    LogIterator,
    SyncArtifact,
    SyncJobHandle,
    SyncLogIterator,
)
from gaffer.client._models import (
    Agent,
    AgentState,
    ArtifactInfo,
    Capacity,
    InputFile,
    Job,
    JobEvent,
    JobEventType,
    JobPage,
    JobSpec,
    JobState,
    JobStatus,
    JobTimings,
    ListOrder,
    LogChunk,
    LogEnd,
    LogStream,
    Resources,
    RetryPolicy,
)
from gaffer.client._sync import SyncClient

__all__ = [
    "Agent",
    "AgentState",
    "AlreadyExistsError",
    "Artifact",
    "ArtifactDigestError",
    "ArtifactInfo",
    "CallRetry",
    "Capacity",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "GafferError",
    "InputFile",
    "InvalidArgumentError",
    "InvalidSpecError",
    "Job",
    "JobEvent",
    "JobEventType",
    "JobHandle",
    "JobNotFoundError",
    "JobPage",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobTimeoutError",
    "JobTimings",
    "ListOrder",
    "LogChunk",
    "LogEnd",
    "LogIterator",
    "LogStream",
    "NotFoundError",
    "PermissionDeniedError",
    "RPCError",
    "Resources",
    "RetryPolicy",
    "SyncArtifact",
    "SyncClient",
    "SyncJobHandle",
    "SyncLogIterator",
    "UnauthenticatedError",
    "UnavailableError",
]
