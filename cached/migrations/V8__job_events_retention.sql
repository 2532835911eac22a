-- When a finished job's events (its build logs above all, up to 8 MiB per task attempt) are
-- deleted: a while after it finished, so that watchers still reading reach its end. Nothing
-- reads them later (a watch of a finished job starts after its last event); the job's record
-- and task rows stay as long as before. NULL while the job runs and once they are gone.
ALTER TABLE jobs ADD COLUMN events_until_ms bigint;
UPDATE jobs SET events_until_ms = 0 WHERE finished;
CREATE INDEX jobs_events_until ON jobs (events_until_ms) WHERE events_until_ms IS NOT NULL;
