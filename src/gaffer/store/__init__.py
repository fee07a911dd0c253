"""Durable state behind one interface; SQLite is the embedded default, PostgreSQL is shared."""

from gaffer.store._base import (
    EVENTS_TOPIC,
    JobQuery,
    LogAppend,
    Store,
    StoredAgent,
    StoredJob,
    Transaction,
    agent_topic,
    job_topic,
    logs_topic,
    queue_topic,
)
from gaffer.store._blobs import BlobStore
from gaffer.store._notifier import Notifier, Subscription
from gaffer.store._postgres import PostgresStore
from gaffer.store._sqlite import SqliteStore

__all__ = [
    "EVENTS_TOPIC",
    "BlobStore",
    "JobQuery",
    "LogAppend",
    "Notifier",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoredAgent",
    "StoredJob",
    "Subscription",
    "Transaction",
    "agent_topic",
    "job_topic",
    "logs_topic",
    "queue_topic",
]
