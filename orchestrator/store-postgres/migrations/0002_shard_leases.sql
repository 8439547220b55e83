-- Shard ownership. A node holds a shard until expires_at, on the database's
-- clock (so that nodes' clocks never matter); epoch rises each time the
-- shard changes hands, and a fenced write checks it under FOR SHARE, which
-- a takeover's row lock waits for.
CREATE TABLE shard_leases (
    shard integer PRIMARY KEY,
    owner text COLLATE "C" NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
