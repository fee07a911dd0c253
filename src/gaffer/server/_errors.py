"""One table from domain errors to gRPC status codes, with rich details (AIP-193)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gaffer.domain import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "gaffer.dev"

STATUS_OF: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: DomainError) -> grpc.Status:
    """The gRPC status for a domain error: code, message, ErrorInfo and BadRequest details."""
    code = STATUS_OF.get(type(error), grpc.StatusCode.INTERNAL)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))]
    if isinstance(error, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )
    return rpc_status.to_status(status)


def classify(exc: BaseException) -> DomainError | None:
    """The domain error an exception stands for; store faults become StoreUnavailable."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, (sqlite3.Error, OSError, ConnectionError)):
        return StoreUnavailable(f"the store failed: {exc}")
    return None


def refusal(exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """The code, message and reason of the status ``exc`` maps to, for an answer that carries
    its own status (one request of several); INTERNAL (logged) for a bug."""
    error = classify(exc)
    if error is None:
        log.error("unexpected error", exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal error; see the server's log", ""
    if isinstance(error, StoreUnavailable):
        log.warning("store unavailable: %s", error.message)
    return STATUS_OF.get(type(error), grpc.StatusCode.INTERNAL), error.message, error.reason


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends the call with the status ``exc`` maps to; INTERNAL (logged) for a bug."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    error = classify(exc)
    if error is None:
        log.error("unexpected error", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server's log")
        raise AssertionError("unreachable")  # abort raises
    if isinstance(error, StoreUnavailable):
        log.warning("store unavailable: %s", error.message)
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable")  # abort raises
