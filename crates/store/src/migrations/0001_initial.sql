-- Schema version 1: the state behind runfleet_engine::ports::Store.
--
-- Integers that are u64 in the model (job ids, run ids, milliseconds) are
-- stored as their two's-complement i64 bit pattern, so every u64 round-trips;
-- real values are far below 2^63 and read as themselves. Records are stored
-- whole as JSON (`record`), with the columns that queries, indexes and the
-- status page need beside them.

-- Every delivery id ever accepted (webhook X-GitHub-Delivery or a synthetic
-- id for polled observations): a second intake of the same id stores nothing.
CREATE TABLE deliveries (
    id  TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) STRICT;

-- The intake log, in acceptance order. AUTOINCREMENT: a sequence number is
-- never reused, even after rows are deleted, so a cursor never points back.
CREATE TABLE intake (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    event  TEXT NOT NULL -- JobEvent as JSON
) STRICT;

CREATE TABLE jobs (
    id        INTEGER PRIMARY KEY,
    state     TEXT NOT NULL,    -- JobState, snake_case
    repo      TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    record    TEXT NOT NULL     -- Job as JSON
) STRICT;
CREATE INDEX jobs_by_state ON jobs (state, queued_at);

CREATE TABLE launches (
    id     TEXT PRIMARY KEY,    -- the ClientToken
    job_id INTEGER,
    state  TEXT NOT NULL,       -- LaunchState, snake_case
    pool   TEXT NOT NULL,
    record TEXT NOT NULL        -- Launch as JSON
) STRICT;
CREATE INDEX launches_by_job ON launches (job_id);

CREATE TABLE instances (
    id        TEXT PRIMARY KEY,
    pool      TEXT NOT NULL,
    state     TEXT NOT NULL,    -- InstanceState, snake_case
    launch_id TEXT,
    record    TEXT NOT NULL     -- Instance as JSON
) STRICT;
CREATE INDEX instances_by_pool ON instances (pool, state);

-- Single values: `cursor` (last intake seq folded into jobs).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;

-- Per-job and per-instance history, in insertion order (seq).
CREATE TABLE timeline (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    job_id      INTEGER,
    instance_id TEXT,
    what        TEXT NOT NULL
) STRICT;
CREATE INDEX timeline_by_job ON timeline (job_id, seq);
