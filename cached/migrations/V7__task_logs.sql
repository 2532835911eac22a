-- Bytes of build output each task attempt has added to job_events (cached/src/scheduler/logcap.rs):
-- cached's own cap on what an agent may log, whatever the agent does. Updated under the job's
-- row lock, in the transaction that appends the lines; a job's rows go with it.
CREATE TABLE task_logs (
    job_id text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    idx integer NOT NULL,
    attempt integer NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
);
