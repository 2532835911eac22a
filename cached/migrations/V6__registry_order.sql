-- The registry's records oldest first (cached/src/registry/records.rs, `Recorded`): every
-- blob link, manifest and tag a push adds gets a row, keyed by its write time and a hash of
-- what it names, whose value is the bytes it counts and what it names. The registry forgets
-- the oldest beyond max_registry_records (cached/src/registry/retention.rs).

CREATE TABLE registry_order (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);
