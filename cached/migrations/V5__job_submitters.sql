-- Who submitted each job (the token's name), so the cap on one token's unfinished jobs
-- (max_open_jobs_per_token) is counted in the database every replica shares. Jobs stored
-- before this migration count for no token.
ALTER TABLE jobs ADD COLUMN submitter text NOT NULL DEFAULT '';

CREATE INDEX jobs_open_by_submitter ON jobs (submitter) WHERE NOT finished;
