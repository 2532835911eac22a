-- Whole-build records of every replica (cached/src/builds/pg.rs): the three ordered tables of
-- cached/src/builds/records.rs in one, keys compared as bytes (bytea orders bytewise).

CREATE TABLE build_records (
    -- 0 entries, 1 index, 2 events.
    tbl smallint NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
