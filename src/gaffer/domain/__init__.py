"""The rules of Gaffer, free of gRPC and SQL: validation, lifecycle, limits, cursors."""

from gaffer.domain._errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    StoreUnavailable,
)
from gaffer.domain._ids import new_agent_id, new_job_id, new_lease_token
from gaffer.domain._lifecycle import (
    ACTIVE_STATES,
    AGENT_UPDATE_STATES,
    FINISHED_STATES,
    is_finished,
    next_backoff,
    should_retry,
)
from gaffer.domain._limits import Limits
from gaffer.domain._pagination import PageCursor, decode_page_token, encode_page_token
from gaffer.domain._timings import fill_timings
from gaffer.domain._validation import (
    check_enum_values,
    check_page_size,
    require_id,
    stays_inside,
    validate_spec,
)

__all__ = [
    "ACTIVE_STATES",
    "AGENT_UPDATE_STATES",
    "FINISHED_STATES",
    "AlreadyExists",
    "DomainError",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "Limits",
    "NotFound",
    "OutOfRange",
    "PageCursor",
    "ResourceExhausted",
    "StoreUnavailable",
    "check_enum_values",
    "check_page_size",
    "decode_page_token",
    "encode_page_token",
    "fill_timings",
    "is_finished",
    "new_agent_id",
    "new_job_id",
    "new_lease_token",
    "next_backoff",
    "require_id",
    "should_retry",
    "stays_inside",
    "validate_spec",
]
