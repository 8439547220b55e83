-- The first layout. Every id column is COLLATE "C": ORDER BY, paging and
-- LIKE prefixes then run in byte order, the order of the key-value backends,
-- whatever collation the database was created with, and a LIKE prefix can
-- use the primary key's index.
--
-- Records are the prost encodings the key-value backends store; the columns
-- beside them are copies that indexes and WHERE clauses need.

-- One row per workflow with a history: the row a commit locks (FOR UPDATE)
-- to append, so that two nodes cannot both extend one position.
CREATE TABLE histories (
    workflow_id text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
) WITH (fillfactor = 80);

-- One row per commit: the HistoryBatch of its events, under its last event.
CREATE TABLE history_batches (
    workflow_id text COLLATE "C" NOT NULL,
    last_seq bigint NOT NULL,
    first_seq bigint NOT NULL,
    events bytea NOT NULL,
    PRIMARY KEY (workflow_id, last_seq)
);

-- The workflow index. Nearly every commit rewrites its row; no indexed
-- column changes then, so with room left on the page the update is HOT.
CREATE TABLE summaries (
    workflow_id text COLLATE "C" PRIMARY KEY,
    summary bytea NOT NULL,
    status integer NOT NULL,
    workflow_type text COLLATE "C" NOT NULL,
    labels jsonb NOT NULL,
    stuck boolean NOT NULL,
    paused boolean NOT NULL,
    closed_ms bigint NOT NULL,
    -- Not terminal: the open set recovery pages through.
    open boolean NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX summaries_open ON summaries (workflow_id) WHERE open;
CREATE INDEX summaries_status ON summaries (status, workflow_id);
CREATE INDEX summaries_type ON summaries (workflow_type, workflow_id);
CREATE INDEX summaries_labels ON summaries USING gin (labels jsonb_path_ops);
CREATE INDEX summaries_stuck ON summaries (workflow_id) WHERE stuck;
CREATE INDEX summaries_paused ON summaries (workflow_id) WHERE paused;
CREATE INDEX summaries_closed ON summaries (closed_ms) WHERE NOT open AND closed_ms > 0;

-- A start's request id and the workflow it started.
CREATE TABLE requests (
    request_id text COLLATE "C" PRIMARY KEY,
    workflow_id text COLLATE "C" NOT NULL
);

CREATE TABLE tasks (
    workflow_id text COLLATE "C" NOT NULL,
    task_id text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (workflow_id, task_id)
);

CREATE TABLE leases (
    workflow_id text COLLATE "C" NOT NULL,
    task_id text COLLATE "C" NOT NULL,
    lease bytea NOT NULL,
    PRIMARY KEY (workflow_id, task_id)
);

CREATE TABLE timers (
    fire_at_ms bigint NOT NULL,
    workflow_id text COLLATE "C" NOT NULL,
    timer_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (fire_at_ms, workflow_id, timer_id)
);

CREATE TABLE outbox (
    seq bigint PRIMARY KEY,
    record bytea NOT NULL
);

-- Counters that must survive deletions: the last outbox sequence number
-- handed out (numbers are never reused) and the pruned floor.
CREATE TABLE sagaflow_meta (
    name text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO sagaflow_meta (name, value) VALUES ('outbox_high_water', 0), ('outbox_floor', 0);

-- Source data, not derived: a rebuild keeps both.
CREATE TABLE definitions (
    workflow_type text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (workflow_type, version)
);

CREATE TABLE queue_pauses (
    queue text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
