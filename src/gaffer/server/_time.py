"""Timestamps for frames the server makes itself."""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts
