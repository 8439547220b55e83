-- Each node, serving or standing by, as it last said it was alive: it
-- writes its row each time it takes or renews a lease, or asks for one
-- (every second), on the database's clock. For operators (`sagaflow cluster
-- status`); nothing decides anything on it. A node's name is new at each
-- start, so rows of stopped nodes are deleted after 15 minutes.
CREATE TABLE cluster_nodes (
    owner text COLLATE "C" PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
