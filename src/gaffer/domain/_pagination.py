"""Opaque page tokens for keyset pagination, bound to the query they came from."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from gaffer.domain._errors import InvalidArgument


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts: after the row with this internal sequence number."""

    after_seq: int
    query_hash: str


def query_fingerprint(query: bytes) -> str:
    return hashlib.sha256(query).hexdigest()[:16]


def encode_page_token(cursor: PageCursor) -> str:
    raw = json.dumps({"s": cursor.after_seq, "q": cursor.query_hash}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, query_hash: str, field: str = "page_token") -> PageCursor:
    """Decodes a token; INVALID_ARGUMENT when it is garbage or came from another query."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = PageCursor(after_seq=int(data["s"]), query_hash=str(data["q"]))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
        raise InvalidArgument.single(
            field, "is not a token this server issued", reason="INVALID_PAGE_TOKEN"
        ) from exc
    if cursor.query_hash != query_hash:
        raise InvalidArgument.single(
            field,
            "was issued for a different filter or order; start again without it",
            reason="INVALID_PAGE_TOKEN",
        )
    return cursor
