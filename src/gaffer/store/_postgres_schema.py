"""Versioned schema of the PostgreSQL store; each migration runs once, in order, at start-up.

The tables mirror the SQLite schema column for column (times are double precision epoch
seconds, protobuf bodies are bytea, labels are jsonb). ``seq`` of jobs and events is not a
serial: it is taken from the single row of ``sequences``, whose row lock makes transactions
that write jobs or events commit in ``seq`` order (see ``_postgres.py``). Names that are
listed in order use ``COLLATE "C"``: byte order, as SQLite sorts them.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: sequences, jobs, events, logs, artifacts, agents.
    """
    CREATE TABLE sequences (
        id integer PRIMARY KEY CHECK (id = 1),
        jobs bigint NOT NULL,
        events bigint NOT NULL
    );
    INSERT INTO sequences (id, jobs, events) VALUES (1, 0, 0);

    CREATE TABLE jobs (
        seq bigint PRIMARY KEY,
        id text NOT NULL UNIQUE,
        tenant text NOT NULL,
        request_id text,
        queue text NOT NULL,
        priority integer NOT NULL,
        state integer NOT NULL,
        labels jsonb NOT NULL,
        created_at double precision NOT NULL,
        agent_id text NOT NULL DEFAULT '',
        lease_token text NOT NULL DEFAULT '',
        lease_expires double precision NOT NULL DEFAULT 0,
        not_before double precision NOT NULL DEFAULT 0,
        deadline double precision NOT NULL DEFAULT 0,
        spec bytea NOT NULL,
        body bytea NOT NULL
    );
    CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
    CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq);
    CREATE INDEX jobs_pending ON jobs (queue, priority DESC, seq) WHERE state = 1;
    CREATE INDEX jobs_agent ON jobs (agent_id) WHERE agent_id <> '';
    CREATE INDEX jobs_leased ON jobs (lease_expires) WHERE lease_expires > 0;

    CREATE TABLE events (
        seq bigint PRIMARY KEY,
        job_id text NOT NULL,
        tenant text NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE INDEX events_tenant ON events (tenant, seq);

    CREATE TABLE log_chunks (
        id bigserial PRIMARY KEY,
        job_id text NOT NULL,
        attempt integer NOT NULL,
        stream integer NOT NULL,
        "offset" bigint NOT NULL,
        data bytea NOT NULL,
        UNIQUE (job_id, attempt, stream, "offset")
    );
    CREATE TABLE log_sizes (
        job_id text NOT NULL,
        attempt integer NOT NULL,
        stream integer NOT NULL,
        size bigint NOT NULL,
        PRIMARY KEY (job_id, attempt, stream)
    );

    CREATE TABLE artifacts (
        job_id text NOT NULL,
        name text COLLATE "C" NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (job_id, name)
    );

    CREATE TABLE agents (
        id text PRIMARY KEY,
        name text COLLATE "C" NOT NULL UNIQUE,
        last_heartbeat double precision NOT NULL,
        body bytea NOT NULL
    );
    """,
    # 2: the jobs an agent holds, indexed apart from the ones it finished long ago (which
    # the old index made every claim and heartbeat walk through).
    """
    DROP INDEX jobs_agent;
    CREATE INDEX jobs_held ON jobs (agent_id) WHERE state IN (2,3,4,5);
    """,
    # 3: jobs and events are numbered at commit (deferred triggers), not at insert: the
    # counter row is then held only while a transaction commits, not across the round
    # trips between its first write and its COMMIT. Rows carry a provisional negative
    # number until then (never visible to another transaction).
    """
    CREATE SEQUENCE provisional_seq;
    ALTER TABLE jobs ALTER COLUMN seq SET DEFAULT -nextval('provisional_seq');
    ALTER TABLE events ALTER COLUMN seq SET DEFAULT -nextval('provisional_seq');

    CREATE FUNCTION gaffer_number_job() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE n bigint;
    BEGIN
        UPDATE sequences SET jobs = jobs + 1 WHERE id = 1 RETURNING jobs INTO n;
        UPDATE jobs SET seq = n WHERE seq = NEW.seq;
        RETURN NULL;
    END $$;
    CREATE FUNCTION gaffer_number_event() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE n bigint;
    BEGIN
        UPDATE sequences SET events = events + 1 WHERE id = 1 RETURNING events INTO n;
        UPDATE events SET seq = n WHERE seq = NEW.seq;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER jobs_number AFTER INSERT ON jobs
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gaffer_number_job();
    CREATE CONSTRAINT TRIGGER events_number AFTER INSERT ON events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gaffer_number_event();
    """,
]
