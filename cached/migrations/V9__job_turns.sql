-- A job's turn (JobStatus.turn): its submitter's unfinished jobs when it was submitted. Queued
-- tasks of one priority are leased by turn, then oldest first, so that submitters take turns.
ALTER TABLE jobs ADD COLUMN turn bigint NOT NULL DEFAULT 0;
