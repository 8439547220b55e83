-- Secrets every node of a cluster must share, made once by whichever node
-- needs one first: the key that signs task leases, so that a lease handed
-- out by one node is still proven to the node that takes its shard over.
CREATE TABLE cluster_secrets (
    name text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
