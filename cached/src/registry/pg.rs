//! The registry's records in PostgreSQL (migration V4), shared by every replica: an image
//! pushed through one replica is pullable through any other (its blobs are CAS blobs in the
//! shared bucket). Tags and referrer entries reference their manifest, so deleting it takes
//! them along in the database itself. The trait blocks (its callers run in blocking tasks), so
//! each call drives its query on the runtime it was made in.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use proto::Digest;
use tokio::runtime::Handle;

use super::names::{Repository, Sha256Digest};
use super::records::{
    Forgotten, MAX_DESCRIPTOR_BYTES, MAX_REFERRERS, MAX_REFERRERS_BYTES, ManifestPut, ManifestWrite,
    ORDER_MARKER, OrderRow, POINTERS, Placement, Recorded, RegistryRecords, StoredManifest, UNKNOWN_TIME,
    Written, is_order_key, listed_descriptor, order_time, place, pointed_row, pointer_of,
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

    /// Moves the rows of those of `recorded` the registry holds to now, as `written` says;
    /// returns the others.
    fn move_held(&self, recorded: &[Recorded], written: Written) -> Result<Vec<Recorded>> {
        self.run(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let (now, mut missing) = (order_time(), Vec::new());
            for recorded in recorded {
                // The row first: a forget deleting it is waited for, and its record is then gone.
                let current = current_row(&tx, recorded).await?;
                if holds(&tx, recorded).await? {
                    apply(&tx, place(recorded, now, written, current)).await?;
                } else {
                    missing.push(recorded.clone());
                }
            }
            tx.commit().await?;
            Ok(missing)
        })
    }
}

/// Removes what `recorded` names, as it names it; whether it was there. A manifest's tags and
/// referrer entry go with it (the schema's cascades).
async fn forget_record(tx: &tokio_postgres::Transaction<'_>, recorded: Option<&Recorded>) -> Result<bool> {
    let deleted = match recorded {
        Some(Recorded::Blob { repo, sha256 }) => {
            tx.execute(
                "DELETE FROM registry_blobs WHERE repository = $1 AND sha256 = $2",
                &[&repo.as_str(), &sha256.0.as_slice()],
            )
            .await?
        }
        Some(Recorded::Manifest { repo, digest, .. }) => {
            tx.execute(
                "DELETE FROM registry_manifests WHERE repository = $1 AND digest = $2",
                &[&repo.as_str(), &digest.0.as_slice()],
            )
            .await?
        }
        Some(Recorded::Tag { repo, tag, digest }) => {
            tx.execute(
                "DELETE FROM registry_tags WHERE repository = $1 AND tag = $2 AND digest = $3",
                &[&repo.as_str(), &tag, &digest.0.as_slice()],
            )
            .await?
        }
        None => 0,
    };
    Ok(deleted > 0)
}

/// Whether the registry holds `recorded` as it names it. After [`current_row`] in the same
/// transaction, a forget of it has committed or waits for `tx`.
async fn holds(tx: &tokio_postgres::Transaction<'_>, recorded: &Recorded) -> Result<bool> {
    let found = match recorded {
        Recorded::Blob { repo, sha256 } => {
            tx.query_opt(
                "SELECT 1 FROM registry_blobs WHERE repository = $1 AND sha256 = $2",
                &[&repo.as_str(), &sha256.0.as_slice()],
            )
            .await?
        }
        Recorded::Manifest { repo, digest, .. } => {
            tx.query_opt(
                "SELECT 1 FROM registry_manifests WHERE repository = $1 AND digest = $2",
                &[&repo.as_str(), &digest.0.as_slice()],
            )
            .await?
        }
        Recorded::Tag { repo, tag, digest } => {
            tx.query_opt(
                "SELECT 1 FROM registry_tags WHERE repository = $1 AND tag = $2 AND digest = $3",
                &[&repo.as_str(), &tag, &digest.0.as_slice()],
            )
            .await?
        }
    };
    Ok(found.is_some())
}

/// Links the blob unless the repository has it; whether it was linked now. The same SHA-256
/// names the same bytes: a link there already is this one.
async fn insert_link(
    tx: &tokio_postgres::Transaction<'_>,
    repo: &Repository,
    sha256: &Sha256Digest,
    digest: &Digest,
    size: i64,
) -> Result<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO registry_blobs (repository, sha256, cas_hash, cas_size) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (repository, sha256) DO NOTHING",
            &[&repo.as_str(), &sha256.0.as_slice(), &digest.hash.as_slice(), &size],
        )
        .await?;
    Ok(inserted > 0)
}

/// The key and value of `recorded`'s row, found through its pointer, both locked for the rest
/// of `tx`: a forget deleting them ([`RegistryRecords::forget`]) is waited for, and then they
/// are gone, rather than moved or kept again for a record the forget removed.
async fn current_row(
    tx: &tokio_postgres::Transaction<'_>,
    recorded: &Recorded,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let pointer = recorded.pointer_key();
    let row = tx.query_opt("SELECT value FROM registry_order WHERE key = $1 FOR UPDATE", &[&pointer]).await?;
    let Some(row_key) = row.and_then(|row| pointed_row(&pointer, row.get::<_, &[u8]>(0))) else {
        return Ok(None);
    };
    let row = tx.query_opt("SELECT value FROM registry_order WHERE key = $1 FOR UPDATE", &[&row_key]).await?;
    Ok(row.map(|row| (row_key, row.get::<_, Vec<u8>>(0))))
}

/// Places `recorded`'s row at `time` ([`place`]): a new row, or its row moved; returns the
/// bytes it adds.
async fn place_row(
    tx: &tokio_postgres::Transaction<'_>,
    recorded: &Recorded,
    time: i64,
    written: Written,
) -> Result<u64> {
    let current = current_row(tx, recorded).await?;
    apply(tx, place(recorded, time, written, current)).await
}

/// Writes `placement`; returns the bytes it adds.
async fn apply(tx: &tokio_postgres::Transaction<'_>, placement: Placement) -> Result<u64> {
    if let Some(key) = &placement.delete {
        tx.execute("DELETE FROM registry_order WHERE key = $1", &[key]).await?;
    }
    for (key, value) in &placement.put {
        tx.execute(
            "INSERT INTO registry_order (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[key, value],
        )
        .await?;
    }
    Ok(placement.counted)
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

/// What [`insert_manifest`] found.
enum Inserted {
    New,
    Already,
    /// Stored already, with this other media type.
    Differs(String),
}

/// Inserts the manifest unless it is stored already (its first push decides how it is served).
async fn insert_manifest(
    tx: &tokio_postgres::Transaction<'_>,
    repo: &str,
    write: &ManifestWrite<'_>,
) -> Result<Inserted> {
    let (digest, manifest) = (write.digest.0.as_slice(), write.manifest);
    let inserted = tx
        .execute(
            "INSERT INTO registry_manifests (repository, digest, media_type, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (repository, digest) DO NOTHING",
            &[&repo, &digest, &manifest.media_type, &manifest.bytes.as_ref()],
        )
        .await?;
    if inserted > 0 {
        return Ok(Inserted::New);
    }
    let stored = tx
        .query_opt(
            "SELECT media_type FROM registry_manifests WHERE repository = $1 AND digest = $2",
            &[&repo, &digest],
        )
        .await?;
    Ok(match stored.map(|row| row.get::<_, String>(0)) {
        Some(stored) if stored != manifest.media_type => Inserted::Differs(stored),
        _ => Inserted::Already,
    })
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

    fn blobs(&self, repo: &Repository, sha256s: &[Sha256Digest]) -> Result<Vec<Option<Digest>>> {
        let wanted: Vec<&[u8]> = sha256s.iter().map(|sha256| sha256.0.as_slice()).collect();
        self.run(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT sha256, cas_hash, cas_size FROM registry_blobs \
                     WHERE repository = $1 AND sha256 = ANY($2)",
                    &[&repo.as_str(), &wanted],
                )
                .await?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in rows {
                found.insert(row.get::<_, Vec<u8>>(0), cas_digest(row.get(1), row.get(2))?);
            }
            Ok(wanted.iter().map(|sha256| found.get(*sha256).copied()).collect())
        })
    }

    fn link_blob(&self, repo: &Repository, sha256: &Sha256Digest, digest: &Digest) -> Result<u64> {
        let size = i64::try_from(digest.size)
            .map_err(|_| Error::InvalidArgument(format!("blob {digest} is too large to record")))?;
        self.run(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let mut inserted = insert_link(&tx, repo, sha256, digest, size).await?;
            let recorded = Recorded::Blob { repo: repo.clone(), sha256: *sha256 };
            let current = current_row(&tx, &recorded).await?;
            if !inserted && current.is_none() {
                // A forget removed the link this push found, and its row, while the row's lock
                // was waited for: it is linked anew.
                inserted = insert_link(&tx, repo, sha256, digest, size).await?;
            }
            // Pushed again, it is as recent as a new one.
            let size = inserted.then_some(repo.as_str().len() + 32 + 40);
            let counted =
                apply(&tx, place(&recorded, order_time(), Written::new(size, true), current)).await?;
            tx.commit().await?;
            Ok(counted)
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

    fn has_manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<bool> {
        self.run(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT 1 FROM registry_manifests WHERE repository = $1 AND digest = $2",
                    &[&repo.as_str(), &digest.0.as_slice()],
                )
                .await?;
            Ok(row.is_some())
        })
    }

    fn has_manifests(&self, repo: &Repository, digests: &[Sha256Digest]) -> Result<Vec<bool>> {
        let wanted: Vec<&[u8]> = digests.iter().map(|digest| digest.0.as_slice()).collect();
        self.run(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT digest FROM registry_manifests WHERE repository = $1 AND digest = ANY($2)",
                    &[&repo.as_str(), &wanted],
                )
                .await?;
            let held: HashSet<Vec<u8>> = rows.iter().map(|row| row.get(0)).collect();
            Ok(wanted.iter().map(|digest| held.contains(*digest)).collect())
        })
    }

    fn put_manifest(&self, repo: &Repository, write: ManifestWrite<'_>) -> Result<ManifestPut> {
        let (repository, repo, digest) = (repo, repo.as_str(), write.digest.0.as_slice());
        self.run(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            if let Some((subject, descriptor)) = &write.referrer
                && referrers_full(&tx, repo, subject, &write.digest, descriptor.len()).await?
            {
                return Ok(ManifestPut::ReferrersFull);
            }
            let (now, mut counted) = (order_time(), 0);
            let subject = write.referrer.as_ref().map(|(subject, _)| *subject);
            let recorded = Recorded::Manifest { repo: repository.clone(), digest: write.digest, subject };
            let loose = write.is_loose();
            match insert_manifest(&tx, repo, &write).await? {
                Inserted::Differs(media_type) => return Ok(ManifestPut::MediaTypeDiffers(media_type)),
                // Pushed again: as recent as a new one.
                Inserted::Already => {
                    counted += place_row(&tx, &recorded, now, Written::new(None, loose)).await?
                }
                Inserted::New => {
                    // The referrer entry lives and goes with the manifest: it counts with it.
                    let referrer = write.referrer.as_ref().map_or(0, |(_, descriptor)| 64 + descriptor.len());
                    let size = repo.len()
                        + 32
                        + write.manifest.media_type.len()
                        + write.manifest.bytes.len()
                        + referrer;
                    counted += place_row(&tx, &recorded, now, Written::new(Some(size), loose)).await?;
                }
            }
            if let Some(tag) = write.tag {
                // Only a tag new or moved adds a row; one put again has its row moved.
                let changed = tx
                    .execute(
                        "INSERT INTO registry_tags (repository, tag, digest) VALUES ($1, $2, $3) \
                         ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest \
                         WHERE registry_tags.digest <> excluded.digest",
                        &[&repo, &tag, &digest],
                    )
                    .await?;
                let recorded =
                    Recorded::Tag { repo: repository.clone(), tag: tag.to_owned(), digest: write.digest };
                let size = (changed > 0).then_some(repo.len() + tag.len() + 32);
                counted += place_row(&tx, &recorded, now, Written::new(size, false)).await?;
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
            Ok(ManifestPut::Stored { counted })
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

    fn oldest(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<OrderRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async {
            let client = self.db.client().await?;
            // Every key is after the empty one; the pointers start at POINTERS.
            let rows = client
                .query(
                    "SELECT key, value FROM registry_order WHERE key > $1 AND key < $2 \
                     AND octet_length(key) = 24 ORDER BY key LIMIT $3",
                    &[&after.unwrap_or_default(), &[POINTERS].as_slice(), &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| OrderRow::parse(row.get::<_, &[u8]>(0), row.get::<_, &[u8]>(1)))
                .filter(|row| is_order_key(&row.key))
                .collect())
        })
    }

    fn forget(&self, rows: &[OrderRow]) -> Result<Forgotten> {
        self.run(async {
            let mut client = self.db.client().await?;
            let mut forgotten = Forgotten::default();
            // A transaction a row: the row as read is deleted first, which a push keeping or
            // moving it waits behind (or has changed it already, and the delete finds nothing).
            for row in rows {
                let tx = client.transaction().await?;
                if is_order_key(&row.key) {
                    // Pointer before row, as pushes lock them (`current_row`): the other order
                    // deadlocked a push moving the row, and PostgreSQL failed one of the two.
                    tx.execute(
                        "SELECT 1 FROM registry_order WHERE key = $1 FOR UPDATE",
                        &[&pointer_of(&row.key)],
                    )
                    .await?;
                }
                let held = tx
                    .execute(
                        "DELETE FROM registry_order WHERE key = $1 AND value = $2",
                        &[&row.key, &row.value],
                    )
                    .await?;
                if held == 0 {
                    tx.rollback().await?;
                    continue;
                }
                if is_order_key(&row.key) {
                    // A pointer goes with the row it points at, not with an older one.
                    tx.execute(
                        "DELETE FROM registry_order WHERE key = $1 AND value = $2",
                        &[&pointer_of(&row.key), &&row.key[..8]],
                    )
                    .await?;
                }
                let gone = forget_record(&tx, row.recorded.as_ref()).await?;
                tx.commit().await?;
                forgotten.records += u64::from(gone);
                forgotten.bytes += row.size;
            }
            Ok(forgotten)
        })
    }

    fn touch(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>> {
        self.move_held(recorded, Written::USED)
    }

    fn keep(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>> {
        self.move_held(recorded, Written::KEPT)
    }

    fn give_order_rows(&self) -> Result<()> {
        self.run(async {
            let mut client = self.db.client().await?;
            let marked = client
                .query_opt("SELECT 1 FROM registry_order WHERE key = $1", &[&ORDER_MARKER])
                .await?
                .is_some();
            if marked {
                return Ok(());
            }
            let tx = client.transaction().await?;
            let mut recorded = Vec::new();
            let blobs = tx.query("SELECT repository, sha256 FROM registry_blobs", &[]).await?;
            for row in &blobs {
                let (Some(repo), Ok(sha256)) =
                    (stored_repository(row.get(0)), Sha256Digest::from_stored(row.get(1)))
                else {
                    continue;
                };
                recorded.push((Recorded::Blob { repo, sha256 }, 0));
            }
            let manifests = tx
                .query(
                    "SELECT m.repository, m.digest, octet_length(m.body) + octet_length(m.media_type), \
                            (SELECT r.subject FROM registry_referrers r \
                             WHERE r.repository = m.repository AND r.referrer = m.digest LIMIT 1) \
                     FROM registry_manifests m",
                    &[],
                )
                .await?;
            for row in &manifests {
                let (Some(repo), Ok(digest)) =
                    (stored_repository(row.get(0)), Sha256Digest::from_stored(row.get(1)))
                else {
                    continue;
                };
                let subject = row.get::<_, Option<&[u8]>>(3).and_then(|s| Sha256Digest::from_stored(s).ok());
                let size = usize::try_from(row.get::<_, i32>(2)).unwrap_or(0);
                recorded.push((Recorded::Manifest { repo, digest, subject }, size));
            }
            let tags = tx.query("SELECT repository, tag, digest FROM registry_tags", &[]).await?;
            for row in &tags {
                let (Some(repo), Ok(digest)) =
                    (stored_repository(row.get(0)), Sha256Digest::from_stored(row.get(2)))
                else {
                    continue;
                };
                recorded.push((Recorded::Tag { repo, tag: row.get(1), digest }, 0));
            }
            // Records written before any row of theirs: one row each, however often this ran,
            // kept, since which of them a tag reaches is not known. A record with a row was
            // pushed since, and is loose or kept as that push made it.
            for (recorded, size) in &recorded {
                if current_row(&tx, recorded).await?.is_some() {
                    continue;
                }
                place_row(&tx, recorded, UNKNOWN_TIME, Written::new(Some(size + 64), false)).await?;
            }
            tx.execute(
                "INSERT INTO registry_order (key, value) VALUES ($1, '') ON CONFLICT (key) DO NOTHING",
                &[&ORDER_MARKER],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

fn stored_repository(name: &str) -> Option<Repository> {
    Repository::parse(name).ok()
}
