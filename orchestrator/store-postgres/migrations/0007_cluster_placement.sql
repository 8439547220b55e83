-- How the cluster's nodes hold its shards (ADR 0030): 'spread', each live
-- node serving a share, or 'one-node', one node serving every shard while
-- the others stand by. The cluster's first node sets it; it changes only
-- when no node of the cluster runs, and not within moments of being set
-- (placement_set_at), so that of two nodes starting at once the second
-- cannot undo the first's. A cluster created before it was stored ran with
-- one node serving, and keeps doing so.
ALTER TABLE cluster_config
    ADD COLUMN placement text NOT NULL DEFAULT 'one-node' CHECK (placement IN ('spread', 'one-node')),
    ADD COLUMN placement_set_at timestamptz NOT NULL DEFAULT now();
