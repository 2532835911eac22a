//! The registry's records in PostgreSQL (migration V4), shared by every replica: an image
//! pushed through one replica is pullable through any other (its blobs are CAS blobs in the
//! shared bucket). Tags and referrer entries reference their manifest, so deleting it takes
//! them along in the database itself. The trait blocks (its callers run in blocking tasks), so
//! each call drives its query on the runtime it was made in.

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use proto::Digest;
use tokio::runtime::Handle;

use super::names::{Repository, Sha256Digest};
use super::records::{
    MAX_DESCRIPTOR_BYTES, MAX_REFERRERS, MAX_REFERRERS_BYTES, ManifestPut, ManifestWrite, RegistryRecords,
    StoredManifest, listed_descriptor,
};
use crate::error::{Error, Result};
use crate::postgres::Database;

/// The first key of the transaction locks that serialise the pushes of one subject's
/// referrers (the second is a hash of the subject), a lock space of its own: two-key advisory
/// locks never meet the one-key locks of the migrations and the scheduler.
const REFERRERS_LOCK: i32 = 0x4f43_4952; // "OCIR"

pub struct PgRegistry {
    db: Database,
    runtime: Handle,
}

impl PgRegistry {
    /// Call from within the runtime that will run its queries.
    pub fn new(db: Database) -> Self {
        Self { db, runtime: Handle::current() }
    }

    fn run<T>(&self, query: impl Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block_on(query)
    }
}

fn cas_digest(hash: &[u8], size: i64) -> Result<Digest> {
    let corrupt = || Error::Corrupt("a registry blob row in the database is malformed".to_owned());
    let hash = <[u8; 32]>::try_from(hash).map_err(|_| corrupt())?;
    Ok(Digest { hash, size: u64::try_from(size).map_err(|_| corrupt())? })
}

/// Whether `referrer`, with an entry of `bytes`, would be a new referrer of `subject` past
/// [`MAX_REFERRERS`] or [`MAX_REFERRERS_BYTES`]. Takes the subject's lock for the rest of `tx`:
/// pushes through other replicas wait, so none counts before another has written.
async fn referrers_full(
    tx: &tokio_postgres::Transaction<'_>,
    repo: &str,
    subject: &Sha256Digest,
    referrer: &Sha256Digest,
    bytes: usize,
) -> Result<bool> {
    let lock = format!("{repo}@{subject}");
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&REFERRERS_LOCK, &lock]).await?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM registry_referrers \
                            WHERE repository = $1 AND subject = $2 AND referrer = $3), \
                    count(*), coalesce(sum(octet_length(descriptor)), 0)::bigint \
             FROM registry_referrers WHERE repository = $1 AND subject = $2",
            &[&repo, &subject.0.as_slice(), &referrer.0.as_slice()],
        )
        .await?;
    let (listed, held, total): (bool, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let total = usize::try_from(total).unwrap_or(usize::MAX).saturating_add(bytes);
    let full = usize::try_from(held).unwrap_or(usize::MAX) >= MAX_REFERRERS || total > MAX_REFERRERS_BYTES;
    Ok(!listed && full)
}

/// Inserts the manifest unless it is stored already (its first push decides how it is served);
/// the other media type it is stored with, if so.
async fn insert_manifest(
    tx: &tokio_postgres::Transaction<'_>,
    repo: &str,
    write: &ManifestWrite<'_>,
) -> Result<Option<String>> {
    let (digest, manifest) = (write.digest.0.as_slice(), write.manifest);
    let inserted = tx
        .execute(
            "INSERT INTO registry_manifests (repository, digest, media_type, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (repository, digest) DO NOTHING",
            &[&repo, &digest, &manifest.media_type, &manifest.bytes.as_ref()],
        )
        .await?;
    if inserted > 0 {
        return Ok(None);
    }
    let stored = tx
        .query_opt(
            "SELECT media_type FROM registry_manifests WHERE repository = $1 AND digest = $2",
            &[&repo, &digest],
        )
        .await?;
    Ok(stored.map(|row| row.get::<_, String>(0)).filter(|stored| *stored != manifest.media_type))
}

impl RegistryRecords for PgRegistry {
    fn blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<Option<Digest>> {
        self.run(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT cas_hash, cas_size FROM registry_blobs WHERE repository = $1 AND sha256 = $2",
                    &[&repo.as_str(), &sha256.0.as_slice()],
                )
                .await?;
            row.map(|row| cas_digest(row.get(0), row.get(1))).transpose()
        })
    }

    fn link_blob(&self, repo: &Repository, sha256: &Sha256Digest, digest: &Digest) -> Result<()> {
        let size = i64::try_from(digest.size)
            .map_err(|_| Error::InvalidArgument(format!("blob {digest} is too large to record")))?;
        self.run(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "INSERT INTO registry_blobs (repository, sha256, cas_hash, cas_size) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (repository, sha256) \
                     DO UPDATE SET cas_hash = excluded.cas_hash, cas_size = excluded.cas_size",
                    &[&repo.as_str(), &sha256.0.as_slice(), &digest.hash.as_slice(), &size],
                )
                .await?;
            Ok(())
        })
    }

    fn unlink_blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<bool> {
        self.run(async {
            let client = self.db.client().await?;
            let deleted = client
                .execute(
                    "DELETE FROM registry_blobs WHERE repository = $1 AND sha256 = $2",
                    &[&repo.as_str(), &sha256.0.as_slice()],
                )
                .await?;
            Ok(deleted > 0)
        })
    }

    fn manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<Option<StoredManifest>> {
        self.run(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT media_type, body FROM registry_manifests WHERE repository = $1 AND digest = $2",
                    &[&repo.as_str(), &digest.0.as_slice()],
                )
                .await?;
            Ok(row.map(|row| StoredManifest {
                media_type: row.get(0),
                bytes: Bytes::from(row.get::<_, Vec<u8>>(1)),
            }))
        })
    }

    fn put_manifest(&self, repo: &Repository, write: ManifestWrite<'_>) -> Result<ManifestPut> {
        let (repo, digest) = (repo.as_str(), write.digest.0.as_slice());
        self.run(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            if let Some((subject, descriptor)) = &write.referrer
                && referrers_full(&tx, repo, subject, &write.digest, descriptor.len()).await?
            {
                return Ok(ManifestPut::ReferrersFull);
            }
            if let Some(media_type) = insert_manifest(&tx, repo, &write).await? {
                return Ok(ManifestPut::MediaTypeDiffers(media_type));
            }
            if let Some(tag) = write.tag {
                tx.execute(
                    "INSERT INTO registry_tags (repository, tag, digest) VALUES ($1, $2, $3) \
                     ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest",
                    &[&repo, &tag, &digest],
                )
                .await?;
            }
            if let Some((subject, descriptor)) = &write.referrer {
                tx.execute(
                    "INSERT INTO registry_referrers (repository, subject, referrer, descriptor) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (repository, subject, referrer) \
                     DO UPDATE SET descriptor = excluded.descriptor",
                    &[&repo, &subject.0.as_slice(), &digest, descriptor],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(ManifestPut::Stored)
        })
    }

    fn delete_manifest(
        &self,
        repo: &Repository,
        digest: &Sha256Digest,
        _subject: Option<&Sha256Digest>,
    ) -> Result<bool> {
        self.run(async {
            let client = self.db.client().await?;
            let deleted = client
                .execute(
                    "DELETE FROM registry_manifests WHERE repository = $1 AND digest = $2",
                    &[&repo.as_str(), &digest.0.as_slice()],
                )
                .await?;
            Ok(deleted > 0)
        })
    }

    fn tag(&self, repo: &Repository, tag: &str) -> Result<Option<Sha256Digest>> {
        self.run(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT digest FROM registry_tags WHERE repository = $1 AND tag = $2",
                    &[&repo.as_str(), &tag],
                )
                .await?;
            row.map(|row| Sha256Digest::from_stored(row.get(0))).transpose()
        })
    }

    fn delete_tag(&self, repo: &Repository, tag: &str) -> Result<bool> {
        self.run(async {
            let client = self.db.client().await?;
            let deleted = client
                .execute(
                    "DELETE FROM registry_tags WHERE repository = $1 AND tag = $2",
                    &[&repo.as_str(), &tag],
                )
                .await?;
            Ok(deleted > 0)
        })
    }

    fn tags(&self, repo: &Repository, last: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async {
            let client = self.db.client().await?;
            // Without `last`, every tag is after the empty string.
            let rows = client
                .query(
                    "SELECT tag FROM registry_tags WHERE repository = $1 AND tag > $2 ORDER BY tag LIMIT $3",
                    &[&repo.as_str(), &last.unwrap_or(""), &limit],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn referrers(
        &self,
        repo: &Repository,
        subject: &Sha256Digest,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cap = i32::try_from(MAX_DESCRIPTOR_BYTES).unwrap_or(i32::MAX);
        self.run(async {
            let client = self.db.client().await?;
            // Entries stored before MAX_DESCRIPTOR_BYTES held lose their annotations in the
            // database, so their bytes never come over; rows are read one at a time up to the
            // budget.
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&repo.as_str(), &subject.0.as_slice(), &limit, &cap];
            let rows = client
                .query_raw(
                    "SELECT CASE WHEN octet_length(descriptor) <= $4 THEN descriptor \
                            ELSE convert_to((convert_from(descriptor, 'UTF8')::jsonb - 'annotations')::text, 'UTF8') \
                            END \
                     FROM registry_referrers WHERE repository = $1 AND subject = $2 \
                     ORDER BY referrer LIMIT $3",
                    params,
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            let (mut listed, mut total) = (Vec::new(), 0);
            while let Some(row) = rows.next().await.transpose()? {
                let Some(descriptor) = listed_descriptor(row.get::<_, &[u8]>(0)) else { continue };
                total += descriptor.len();
                if total > max_bytes {
                    break;
                }
                listed.push(descriptor);
            }
            Ok(listed)
        })
    }
}
