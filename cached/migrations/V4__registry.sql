-- The OCI registry's records of every replica (cached/src/registry/pg.rs): which blobs a
-- repository holds, its manifests as pushed, its tags and the referrers of its manifests.
-- Blob bytes stay CAS blobs (in the shared bucket); these rows only name them. Repository
-- names and tags compare bytewise (COLLATE "C"), as the RocksDB backend's keys do, so tag
-- listings page in the same order through either backend.

CREATE TABLE registry_blobs (
    repository text COLLATE "C" NOT NULL,
    sha256 bytea NOT NULL,
    -- The CAS digest: BLAKE3 of the bytes and their size.
    cas_hash bytea NOT NULL,
    cas_size bigint NOT NULL,
    PRIMARY KEY (repository, sha256)
);

CREATE TABLE registry_manifests (
    repository text COLLATE "C" NOT NULL,
    digest bytea NOT NULL,
    media_type text NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (repository, digest)
);

-- A tag or a referrer entry never outlives its manifest.
CREATE TABLE registry_tags (
    repository text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    digest bytea NOT NULL,
    PRIMARY KEY (repository, tag),
    FOREIGN KEY (repository, digest) REFERENCES registry_manifests ON DELETE CASCADE
);
CREATE INDEX registry_tags_by_digest ON registry_tags (repository, digest);

CREATE TABLE registry_referrers (
    repository text COLLATE "C" NOT NULL,
    subject bytea NOT NULL,
    referrer bytea NOT NULL,
    descriptor bytea NOT NULL,
    PRIMARY KEY (repository, subject, referrer),
    FOREIGN KEY (repository, referrer) REFERENCES registry_manifests ON DELETE CASCADE
);
CREATE INDEX registry_referrers_by_referrer ON registry_referrers (repository, referrer);
