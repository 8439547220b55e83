-- How many shards the cluster places workflows in (ADR 0030): set by the
-- first node that starts on the database, and never changed, since a
-- workflow's shard is its id's hash modulo this count. One row.
CREATE TABLE cluster_config (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_count integer NOT NULL CHECK (shard_count BETWEEN 1 AND 1024)
);
-- A cluster that ran before shard counts were stored was one shard.
INSERT INTO cluster_config (shard_count) SELECT 1 WHERE EXISTS (SELECT 1 FROM shard_leases);
