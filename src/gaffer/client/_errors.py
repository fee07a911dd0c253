"""Errors raised by the Gaffer client.

The tree::

    GafferError
    ├── RPCError                      a call failed with a gRPC status
    │   ├── NotFoundError             NOT_FOUND
    │   │   └── JobNotFoundError      ... for a job (ErrorInfo reason JOB_NOT_FOUND)
    │   ├── InvalidArgumentError      INVALID_ARGUMENT, with .violations
    │   │   └── InvalidSpecError      ... for a job spec (reason INVALID_SPEC, or on submit)
    │   ├── AlreadyExistsError        ALREADY_EXISTS
    │   ├── FailedPreconditionError   FAILED_PRECONDITION (e.g. reason JOB_FINISHED)
    │   ├── UnavailableError          UNAVAILABLE (after the client's own retries)
    │   ├── DeadlineExceededError     DEADLINE_EXCEEDED
    │   ├── UnauthenticatedError      UNAUTHENTICATED
    │   └── PermissionDeniedError     PERMISSION_DENIED
    ├── JobTimeoutError               a job did not finish within the caller's timeout
    └── ArtifactDigestError           an artifact's bytes do not match its digest

Low-level ``grpc.RpcError`` s are mapped to the most specific class by :func:`map_rpc_error`
and raised ``from`` the original, so the gRPC error stays reachable as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from gaffer.client._models import Job

__all__ = [
    "AlreadyExistsError",
    "ArtifactDigestError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "GafferError",
    "InvalidArgumentError",
    "InvalidSpecError",
    "JobNotFoundError",
    "JobTimeoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "RPCError",
    "UnauthenticatedError",
    "UnavailableError",
]

_DETAILS_KEY = "grpc-status-details-bin"


class GafferError(Exception):
    """Base class of every error the Gaffer client raises."""


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of a request, from a ``google.rpc.BadRequest`` detail."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class RPCError(GafferError):
    """A call failed with a gRPC status.

    Attributes:
        code: The ``grpc.StatusCode``.
        message: The status message from the server.
        details: The status's detail messages (``google.protobuf.Any``), as sent.
        reason: The ``google.rpc.ErrorInfo`` reason (e.g. ``"JOB_NOT_FOUND"``), or ``""``.
        metadata: The ``google.rpc.ErrorInfo`` metadata, or an empty dict.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: Iterable[Any] = (),
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code.name)
        self.code = code
        self.message = message
        self.details: list[Any] = list(details)
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.message or self.code.name} ({self.code.name})"


class NotFoundError(RPCError):
    """The thing named does not exist (or belongs to another tenant)."""


class JobNotFoundError(NotFoundError):
    """No job with this id is visible to the caller."""


class InvalidArgumentError(RPCError):
    """The request was refused as invalid.

    Attributes:
        violations: One entry per field problem, from the ``google.rpc.BadRequest`` detail.
    """

    def __init__(
        self, *args: Any, violations: Iterable[FieldViolation] = (), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.violations: list[FieldViolation] = list(violations)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.violations:
            return base
        return base + "".join(f"\n  {v}" for v in self.violations)


class InvalidSpecError(InvalidArgumentError):
    """A submitted job spec was refused; ``violations`` names each bad field."""


class AlreadyExistsError(RPCError):
    """The thing to create exists already."""


class FailedPreconditionError(RPCError):
    """The call does not fit the current state, e.g. cancelling a finished job."""


class UnavailableError(RPCError):
    """The server could not be reached, even after the client's retries."""


class DeadlineExceededError(RPCError):
    """The call's deadline passed before the server answered."""


class UnauthenticatedError(RPCError):
    """The call carried no valid credentials."""


class PermissionDeniedError(RPCError):
    """The caller's role does not allow the call."""


class JobTimeoutError(GafferError, TimeoutError):
    """A job was not finished when the caller's wait timed out.

    Attributes:
        job_id: The job waited for.
        job: The job as it was when the wait ended, if known.
    """

    def __init__(self, job_id: str, timeout: float | None, job: Job | None = None) -> None:
        state = f" (still {job.state.name})" if job is not None else ""
        super().__init__(f"job {job_id} not finished after {timeout}s{state}")
        self.job_id = job_id
        self.timeout = timeout
        self.job = job


class ArtifactDigestError(GafferError):
    """An artifact's bytes did not hash to the digest the server listed."""


_BY_CODE: dict[grpc.StatusCode, type[RPCError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

_JOB_METHODS = frozenset(
    {"GetJob", "CancelJob", "WaitJob", "StreamJobEvents", "StreamLogs", "ListArtifacts"}
)


def _status_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:
                return None
            return status
    return None


def map_rpc_error(error: grpc.RpcError, *, method: str = "") -> RPCError:
    """Turns a sync or aio ``grpc.RpcError`` into the most specific :class:`RPCError`.

    Args:
        error: The error raised by a stub (``grpc.Call`` or ``grpc.aio.AioRpcError``).
        method: The RPC's short name (``"GetJob"``), to tell a job's NOT_FOUND from others.

    Returns:
        The error to raise ``from error``.
    """
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    metadata_fn = getattr(error, "trailing_metadata", None)
    status = _status_from_metadata(metadata_fn() if callable(metadata_fn) else None)

    reason = domain = ""
    info_metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    details: list[Any] = list(status.details) if status is not None else []
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, info_metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)

    cls = _BY_CODE.get(code, RPCError)
    if cls is NotFoundError and (
        reason == "JOB_NOT_FOUND" or (not reason and method in _JOB_METHODS)
    ):
        cls = JobNotFoundError
    if cls is InvalidArgumentError and (
        reason == "INVALID_SPEC" or (not reason and method == "SubmitJob")
    ):
        cls = InvalidSpecError
    kwargs: dict[str, Any] = {
        "details": details,
        "reason": reason,
        "domain": domain,
        "metadata": info_metadata,
    }
    if issubclass(cls, InvalidArgumentError):
        kwargs["violations"] = violations
    return cls(code, message, **kwargs)
