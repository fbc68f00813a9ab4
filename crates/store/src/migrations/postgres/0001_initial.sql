-- Schema version 1 for PostgreSQL: the same tables and meaning as
-- ../0001_initial.sql (SQLite); see there for what each one holds.
--
-- Differences, and why:
-- - PostgreSQL text cannot hold a NUL character, model strings can: the
--   keys and free text that are stored as themselves (delivery ids, launch
--   and instance ids, timeline text) are BYTEA, their UTF-8 bytes. Records
--   stay JSON text (JSON escapes NUL as \u0000), not JSONB (which refuses
--   \u0000). The informational columns beside a record (state, repo, pool)
--   are text with any NUL dropped: the record is what is read back.
-- - u64s are BIGINT holding their two's-complement bit pattern, as in SQLite.
-- - The intake sequence is a SEQUENCE; intakes are serialised by an
--   advisory lock taken in the inserting statement (see postgres.rs), so
--   sequence order is commit order and a reader never sees a seq before a
--   smaller one.

CREATE TABLE deliveries (
    id  BYTEA PRIMARY KEY,
    seq BIGINT NOT NULL
);

CREATE SEQUENCE intake_seq;

CREATE TABLE intake (
    seq    BIGINT PRIMARY KEY,
    job_id BIGINT NOT NULL,
    event  TEXT NOT NULL -- IntakeEvent as JSON
);

CREATE TABLE jobs (
    id        BIGINT PRIMARY KEY,
    state     TEXT NOT NULL,
    repo      TEXT NOT NULL,
    queued_at BIGINT NOT NULL,
    record    TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, queued_at);

CREATE TABLE launches (
    id     BYTEA PRIMARY KEY,   -- the ClientToken
    job_id BIGINT,
    state  TEXT NOT NULL,
    pool   TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX launches_by_job ON launches (job_id);

CREATE TABLE instances (
    id        BYTEA PRIMARY KEY,
    pool      TEXT NOT NULL,
    state     TEXT NOT NULL,
    launch_id BYTEA,
    record    TEXT NOT NULL
);
CREATE INDEX instances_by_pool ON instances (pool, state);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE timeline (
    seq         BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    job_id      BIGINT,
    instance_id BYTEA,
    what        BYTEA NOT NULL
);
CREATE INDEX timeline_by_job ON timeline (job_id, seq);
