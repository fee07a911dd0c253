"""Opaque ids: time-ordered so that they sort roughly by creation, random enough never to clash."""

from __future__ import annotations

import os
import random
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


# Ids need to be unique, not secret (lease tokens are the secrets): a generator seeded from the
# OS (again in a forked child) saves a system call per id.
_random = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _random.seed(secrets.randbits(128)))


def _ulid_like() -> str:
    millis = int(time.time() * 1000)
    return _b32(millis, 10) + _b32(_random.getrandbits(80), 16)


def new_job_id() -> str:
    return "j_" + _ulid_like()


def new_agent_id() -> str:
    return "a_" + _ulid_like()


def new_lease_token() -> str:
    return secrets.token_urlsafe(18)
