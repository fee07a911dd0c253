"""Versioned schema of the SQLite store; each migration runs once, in order, at start-up."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: jobs, events, logs, artifacts, agents.
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        request_id TEXT,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state INTEGER NOT NULL,
        labels TEXT NOT NULL,
        created_at REAL NOT NULL,
        agent_id TEXT NOT NULL DEFAULT '',
        lease_token TEXT NOT NULL DEFAULT '',
        lease_expires REAL NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        deadline REAL NOT NULL DEFAULT 0,
        spec BLOB NOT NULL,
        body BLOB NOT NULL
    );
    CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
    CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq);
    CREATE INDEX jobs_pending ON jobs (queue, priority DESC, seq) WHERE state = 1;
    CREATE INDEX jobs_agent ON jobs (agent_id) WHERE agent_id != '';
    CREATE INDEX jobs_leased ON jobs (lease_expires) WHERE lease_expires > 0;

    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE INDEX events_tenant ON events (tenant, seq);

    CREATE TABLE log_chunks (
        rowid INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (job_id, attempt, stream, offset)
    );
    CREATE TABLE log_sizes (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (job_id, attempt, stream)
    );

    CREATE TABLE artifacts (
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, name)
    );

    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        last_heartbeat REAL NOT NULL,
        body BLOB NOT NULL
    );
    """,
    # 2: the jobs an agent holds, indexed apart from the ones it finished long ago (which
    # the old index made every claim and heartbeat walk through).
    """
    DROP INDEX jobs_agent;
    CREATE INDEX jobs_held ON jobs (agent_id) WHERE state IN (2,3,4,5);
    """,
]
