-- The key of a job's spec (cached/src/scheduler/reuse.rs): any replica can then answer a
-- submission with a finished job that was submitted through another. NULL for jobs stored
-- before this migration, which are simply never reused.
ALTER TABLE jobs ADD COLUMN spec_key bytea;

CREATE INDEX jobs_spec_key ON jobs (spec_key, submitted_ms DESC) WHERE finished;
