-- Schema version 2: the leadership lease of several `serve` replicas
-- (runfleet_engine::ports::Store::try_lease / apply_fenced).
--
-- One row, `name = 'leader'`, once the lease was first taken. `epoch` is the
-- fencing token: it grows by one whenever another holder takes the lease,
-- and a fenced write is refused unless this row still names its writer and
-- epoch. `expires_at` is in milliseconds since the Unix epoch, on the clock
-- of the holder that last took or renewed it.
CREATE TABLE lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
