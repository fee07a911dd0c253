"""Domain errors. The server maps each class to one gRPC status code in one table.

DomainError
├── InvalidArgument      bad input, with a FieldViolation per problem
├── NotFound             unknown id, or another tenant's
├── AlreadyExists
├── FailedPrecondition   the job is finished, the attempt is no longer current, ...
├── OutOfRange           a cursor past what exists
├── ResourceExhausted    a limit on concurrent work
└── StoreUnavailable     the store could not be reached or failed
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of a request, named by its path (``spec.exec.argv``)."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error Gaffer's rules raise; ``reason`` is a stable UPPER_SNAKE code."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(
        self, violations: list[FieldViolation], *, reason: str | None = None, message: str = ""
    ) -> None:
        text = message or "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(text, reason=reason)
        self.violations = violations

    @classmethod
    def single(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"


class StoreUnavailable(DomainError):
    reason = "STORE_UNAVAILABLE"
