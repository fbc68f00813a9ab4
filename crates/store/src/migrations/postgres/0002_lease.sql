-- Schema version 2 for PostgreSQL: the leadership lease, as ../0002_lease.sql.
-- A fenced write locks this row FOR SHARE and taking the lease locks it FOR
-- UPDATE, so a new epoch and an old leader's write never interleave.
CREATE TABLE lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
