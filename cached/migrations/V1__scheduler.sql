-- Jobs, tasks and leases of every cached replica (cached/src/scheduler/pg/).
-- A job's record (the versioned encoding of cached/src/scheduler/store/record.rs) is the truth;
-- the columns beside it and the tasks table are kept in step in the same transaction, so that
-- queue, lease counts and expiry are queries, and the fencing check is a conditional update.

CREATE TABLE server_keys (
    name text PRIMARY KEY,
    key bytea NOT NULL
);

CREATE TABLE jobs (
    job_id text PRIMARY KEY,
    namespace text NOT NULL,
    finished boolean NOT NULL,
    -- Queued build tasks and queued image-index tasks.
    queued_builds integer NOT NULL,
    queued_index integer NOT NULL,
    priority integer NOT NULL,
    submitted_ms bigint NOT NULL,
    deadline_ms bigint NOT NULL,
    -- Bumped by every write: a write whose version is stale changes nothing.
    version bigint NOT NULL,
    record bytea NOT NULL
);

CREATE INDEX jobs_queue ON jobs (priority DESC, submitted_ms, job_id)
    WHERE NOT finished AND (queued_builds > 0 OR queued_index > 0);
CREATE INDEX jobs_open ON jobs (namespace) WHERE NOT finished;
CREATE INDEX jobs_deadline ON jobs (deadline_ms) WHERE NOT finished;
CREATE INDEX jobs_finished ON jobs (job_id) WHERE finished;

CREATE TABLE tasks (
    job_id text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    idx integer NOT NULL,
    -- TaskState of cached.v1: 1 queued, 2 leased, 3 succeeded, 4 failed, 5 cancelled.
    state smallint NOT NULL,
    attempt integer NOT NULL,
    agent text NOT NULL,
    lease_until_ms bigint NOT NULL,
    is_index boolean NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE INDEX tasks_leased_by ON tasks (agent) WHERE state = 2;
CREATE INDEX tasks_lease_until ON tasks (lease_until_ms) WHERE state = 2;

-- Every completion the scheduler accepted, one row per (task, attempt): what "each task
-- completes once" is checked against.
CREATE TABLE completions (
    job_id text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    idx integer NOT NULL,
    attempt integer NOT NULL,
    agent text NOT NULL,
    succeeded boolean NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
);

-- What Jobs.Watch streams, whichever replica a watcher asks: every event of a job, written in
-- the transaction that changed the job, so a job's events are in the order of its changes.
CREATE TABLE job_events (
    seq bigserial PRIMARY KEY,
    job_id text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    event bytea NOT NULL
);

CREATE INDEX job_events_of ON job_events (job_id, seq);
