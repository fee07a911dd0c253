"""Opaque ids: time-ordered so that they sort roughly by creation, random enough never to clash."""

from __future__ import annotations

import os
import random
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
#: Two digits for each 10-bit value: an id is 13 lookups instead of 26 divisions.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))


# Ids need to be unique, not secret (lease tokens are the secrets): a generator seeded from the
# OS (again in a forked child) saves a system call per id.
_random = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _random.seed(secrets.randbits(128)))


def _ulid_like() -> str:
    """26 base32 digits: 50 bits of milliseconds since the epoch, then 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_job_id() -> str:
    return "j_" + _ulid_like()


def new_agent_id() -> str:
    return "a_" + _ulid_like()


def new_lease_token() -> str:
    return secrets.token_urlsafe(18)
