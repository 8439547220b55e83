-- How the cluster's nodes hold its shards (ADR 0030): 'spread', each live
-- node serving a share, or 'one-node', one node serving every shard while
-- the others stand by. The cluster's first node sets it; it changes only
-- when no node of the cluster runs. A cluster created before it was stored
-- ran with one node serving, and keeps doing so.
ALTER TABLE cluster_config ADD COLUMN placement text NOT NULL DEFAULT 'one-node'
    CHECK (placement IN ('spread', 'one-node'));
