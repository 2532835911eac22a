//! The registry's records in cached's RocksDB, one column family each (see `crate::db`).
//! Keys start with the repository name and a NUL, which no repository name contains.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use proto::Digest;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::names::{Repository, Sha256Digest};
use super::records::{
    Forgotten, MAX_REFERRERS, MAX_REFERRERS_BYTES, ManifestPut, ManifestWrite, ORDER_MARKER, OrderRow,
    POINTERS, Recorded, RegistryRecords, StoredManifest, UNKNOWN_TIME, Written, is_order_key,
    listed_descriptor, order_time, place, pointed_row, pointer_of,
};
use crate::db::{
    CF_REGISTRY_BLOBS, CF_REGISTRY_MANIFESTS, CF_REGISTRY_ORDER, CF_REGISTRY_REFERRERS, CF_REGISTRY_TAGS, cf,
};
use crate::error::{Error, Result};

/// Leading byte of a stored manifest, so the layout can change later.
const MANIFEST_VERSION: u8 = 1;

pub struct RocksRegistry {
    db: Arc<DB>,
    /// Held by each write: what a manifest push checks (a subject's referrers) stays true until
    /// it has written, and a record's row and the pointer to it change together.
    puts: Mutex<()>,
}

impl RocksRegistry {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db, puts: Mutex::new(()) }
    }
}

fn key(repo: &Repository, rest: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(repo.as_str().len() + 1 + 64);
    key.extend_from_slice(repo.as_str().as_bytes());
    key.push(0);
    for part in rest {
        key.extend_from_slice(part);
    }
    key
}

fn encode_digest(digest: &Digest) -> Vec<u8> {
    let mut value = digest.hash.to_vec();
    value.extend_from_slice(&digest.size.to_be_bytes());
    value
}

fn decode_digest(value: &[u8]) -> Result<Digest> {
    let (hash, size) = value
        .split_first_chunk::<32>()
        .and_then(|(hash, size)| Some((*hash, u64::from_be_bytes(size.try_into().ok()?))))
        .ok_or_else(|| Error::Corrupt("a registry blob record is malformed".to_owned()))?;
    Ok(Digest { hash, size })
}

fn encode_manifest(manifest: &StoredManifest) -> Vec<u8> {
    let media_type = manifest.media_type.as_bytes();
    let mut value = Vec::with_capacity(3 + media_type.len() + manifest.bytes.len());
    value.push(MANIFEST_VERSION);
    value.extend_from_slice(&(media_type.len() as u16).to_be_bytes());
    value.extend_from_slice(media_type);
    value.extend_from_slice(&manifest.bytes);
    value
}

fn decode_manifest(value: &[u8]) -> Result<StoredManifest> {
    let (media_type, bytes) = split_manifest(value)?;
    Ok(StoredManifest { media_type, bytes: Bytes::copy_from_slice(bytes) })
}

/// The media type of a stored manifest, without copying its bytes.
fn decode_media_type(value: &[u8]) -> Result<String> {
    Ok(split_manifest(value)?.0)
}

fn split_manifest(value: &[u8]) -> Result<(String, &[u8])> {
    let corrupt = || Error::Corrupt("a registry manifest record is malformed".to_owned());
    let [MANIFEST_VERSION, high, low, rest @ ..] = value else { return Err(corrupt()) };
    let len = usize::from(u16::from_be_bytes([*high, *low]));
    let (media_type, bytes) = (rest.get(..len).ok_or_else(corrupt)?, &rest[len..]);
    Ok((String::from_utf8(media_type.to_vec()).map_err(|_| corrupt())?, bytes))
}

impl RocksRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.puts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes what `recorded` names, as it names it; whether it was there. Call with `puts`
    /// held.
    fn forget_record(&self, recorded: Option<&Recorded>) -> Result<bool> {
        match recorded {
            Some(Recorded::Blob { repo, sha256 }) => self.unlink_blob(repo, sha256),
            Some(Recorded::Manifest { repo, digest, subject }) => {
                self.delete_manifest(repo, digest, subject.as_ref())
            }
            Some(Recorded::Tag { repo, tag, digest }) => {
                Ok(self.tag(repo, tag)? == Some(*digest) && self.delete_tag(repo, tag)?)
            }
            None => Ok(false),
        }
    }

    /// Whether the registry holds `recorded` as it names it. Call with `puts` held: a forget
    /// removes the record before its row, so only the record itself says it is there.
    fn holds(&self, recorded: &Recorded) -> Result<bool> {
        Ok(match recorded {
            Recorded::Blob { repo, sha256 } => self.blob(repo, sha256)?.is_some(),
            Recorded::Manifest { repo, digest, .. } => self.has_manifest(repo, digest)?,
            Recorded::Tag { repo, tag, digest } => self.tag(repo, tag)? == Some(*digest),
        })
    }

    /// Moves the rows of those of `recorded` the registry holds to now, as `written` says;
    /// returns the others.
    fn move_held(&self, recorded: &[Recorded], written: Written) -> Result<Vec<Recorded>> {
        let _put = self.lock();
        let (mut batch, mut missing) = (WriteBatch::default(), Vec::new());
        let now = order_time();
        for recorded in recorded {
            if self.holds(recorded)? {
                self.place_row(&mut batch, recorded, now, written)?;
            } else {
                missing.push(recorded.clone());
            }
        }
        self.db.write(batch)?;
        Ok(missing)
    }

    /// Deletes the order rows `keys` and the pointers to them. Call with `puts` held.
    pub(super) fn delete_rows(&self, keys: &[Vec<u8>]) -> Result<()> {
        let rows = cf(&self.db, CF_REGISTRY_ORDER)?;
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.delete_cf(rows, key);
            if is_order_key(key) {
                let pointer = pointer_of(key);
                if self.db.get_pinned_cf(rows, &pointer)?.is_some_and(|time| *time == key[..8]) {
                    batch.delete_cf(rows, pointer);
                }
            }
        }
        Ok(self.db.write(batch)?)
    }

    /// Adds to `batch` what places `recorded`'s row at `time` ([`place`]): a new row, or its
    /// row moved; returns the bytes it adds. Call with `puts` held.
    fn place_row(
        &self,
        batch: &mut WriteBatch,
        recorded: &Recorded,
        time: i64,
        written: Written,
    ) -> Result<u64> {
        let current = self.current_row(recorded)?;
        let placement = place(recorded, time, written, current);
        let rows = cf(&self.db, CF_REGISTRY_ORDER)?;
        if let Some(key) = placement.delete {
            batch.delete_cf(rows, key);
        }
        for (key, value) in placement.put {
            batch.put_cf(rows, key, value);
        }
        Ok(placement.counted)
    }

    /// The key and value of `recorded`'s row, found through its pointer.
    fn current_row(&self, recorded: &Recorded) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let rows = cf(&self.db, CF_REGISTRY_ORDER)?;
        let pointer = recorded.pointer_key();
        let Some(row) = self.db.get_cf(rows, &pointer)?.and_then(|time| pointed_row(&pointer, &time)) else {
            return Ok(None);
        };
        Ok(self.db.get_cf(rows, &row)?.map(|value| (row, value)))
    }

    /// Keys and values of `family` under `prefix`, from `from` on, at most `limit`.
    fn scan(
        &self,
        family: &str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut found = Vec::new();
        let entries =
            self.db.iterator_cf(cf(&self.db, family)?, IteratorMode::From(from, Direction::Forward));
        for entry in entries {
            let (key, value) = entry?;
            if !key.starts_with(prefix) || found.len() >= limit {
                break;
            }
            found.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        Ok(found)
    }
}

impl RocksRegistry {
    /// Whether `referrer`, with an entry of `bytes`, would be a new referrer of `subject` past
    /// [`MAX_REFERRERS`] or [`MAX_REFERRERS_BYTES`].
    fn referrers_full(
        &self,
        repo: &Repository,
        subject: &Sha256Digest,
        referrer: &Sha256Digest,
        bytes: usize,
    ) -> Result<bool> {
        let family = cf(&self.db, CF_REGISTRY_REFERRERS)?;
        if self.db.get_pinned_cf(family, key(repo, &[&subject.0, &referrer.0]))?.is_some() {
            return Ok(false);
        }
        let prefix = key(repo, &[&subject.0]);
        let mut entries = self.db.raw_iterator_cf(family);
        entries.seek(&prefix);
        let (mut held, mut total) = (0, bytes);
        while entries.key().is_some_and(|key| key.starts_with(&prefix)) {
            held += 1;
            total += entries.value().map_or(0, <[u8]>::len);
            if held >= MAX_REFERRERS || total > MAX_REFERRERS_BYTES {
                return Ok(true);
            }
            entries.next();
        }
        entries.status()?;
        Ok(total > MAX_REFERRERS_BYTES)
    }
}

impl RegistryRecords for RocksRegistry {
    fn blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<Option<Digest>> {
        let value = self.db.get_cf(cf(&self.db, CF_REGISTRY_BLOBS)?, key(repo, &[&sha256.0]))?;
        value.map(|value| decode_digest(&value)).transpose()
    }

    fn link_blob(&self, repo: &Repository, sha256: &Sha256Digest, digest: &Digest) -> Result<u64> {
        let family = cf(&self.db, CF_REGISTRY_BLOBS)?;
        let link = key(repo, &[&sha256.0]);
        let value = encode_digest(digest);
        let _put = self.lock();
        let mut batch = WriteBatch::default();
        let recorded = Recorded::Blob { repo: repo.clone(), sha256: *sha256 };
        // The same SHA-256 names the same bytes: a link there already is this one, pushed again.
        let size = self.db.get_pinned_cf(family, &link)?.is_none().then_some(link.len() + value.len());
        let counted = self.place_row(&mut batch, &recorded, order_time(), Written::new(size, true))?;
        batch.put_cf(family, link, value);
        self.db.write(batch)?;
        Ok(counted)
    }

    fn unlink_blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<bool> {
        let (family, key) = (cf(&self.db, CF_REGISTRY_BLOBS)?, key(repo, &[&sha256.0]));
        let held = self.db.get_pinned_cf(family, &key)?.is_some();
        self.db.delete_cf(family, key)?;
        Ok(held)
    }

    fn manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<Option<StoredManifest>> {
        let value = self.db.get_cf(cf(&self.db, CF_REGISTRY_MANIFESTS)?, key(repo, &[&digest.0]))?;
        value.map(|value| decode_manifest(&value)).transpose()
    }

    fn has_manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<bool> {
        let family = cf(&self.db, CF_REGISTRY_MANIFESTS)?;
        Ok(self.db.get_pinned_cf(family, key(repo, &[&digest.0]))?.is_some())
    }

    fn put_manifest(&self, repo: &Repository, write: ManifestWrite<'_>) -> Result<ManifestPut> {
        let _put = self.lock();
        if let Some((subject, descriptor)) = &write.referrer
            && self.referrers_full(repo, subject, &write.digest, descriptor.len())?
        {
            return Ok(ManifestPut::ReferrersFull);
        }
        let mut batch = WriteBatch::default();
        let manifests = cf(&self.db, CF_REGISTRY_MANIFESTS)?;
        let manifest_key = key(repo, &[&write.digest.0]);
        let (now, mut counted) = (order_time(), 0);
        let subject = write.referrer.as_ref().map(|(subject, _)| *subject);
        let recorded = Recorded::Manifest { repo: repo.clone(), digest: write.digest, subject };
        let loose = write.is_loose();
        match self.db.get_pinned_cf(manifests, &manifest_key)? {
            None => {
                let value = encode_manifest(write.manifest);
                // The referrer entry lives and goes with the manifest: it counts with it.
                let referrer_size = write
                    .referrer
                    .as_ref()
                    .map_or(0, |(_, descriptor)| repo.as_str().len() + 65 + descriptor.len());
                let size = manifest_key.len() + value.len() + referrer_size;
                counted += self.place_row(&mut batch, &recorded, now, Written::new(Some(size), loose))?;
                batch.put_cf(manifests, manifest_key, value);
            }
            Some(stored) => {
                let media_type = decode_media_type(&stored)?;
                if media_type != write.manifest.media_type {
                    return Ok(ManifestPut::MediaTypeDiffers(media_type));
                }
                // Pushed again: as recent as a new one.
                counted += self.place_row(&mut batch, &recorded, now, Written::new(None, loose))?;
            }
        }
        if let Some(tag) = write.tag {
            let (tags, tag_key) = (cf(&self.db, CF_REGISTRY_TAGS)?, key(repo, &[tag.as_bytes()]));
            let moved = self.db.get_pinned_cf(tags, &tag_key)?.is_none_or(|named| *named != write.digest.0);
            let recorded = Recorded::Tag { repo: repo.clone(), tag: tag.to_owned(), digest: write.digest };
            let size = moved.then_some(tag_key.len() + 32);
            counted += self.place_row(&mut batch, &recorded, now, Written::new(size, false))?;
            batch.put_cf(tags, tag_key, write.digest.0);
        }
        if let Some((subject, descriptor)) = &write.referrer {
            let referrers = cf(&self.db, CF_REGISTRY_REFERRERS)?;
            batch.put_cf(referrers, key(repo, &[&subject.0, &write.digest.0]), descriptor);
        }
        self.db.write(batch)?;
        Ok(ManifestPut::Stored { counted })
    }

    fn delete_manifest(
        &self,
        repo: &Repository,
        digest: &Sha256Digest,
        subject: Option<&Sha256Digest>,
    ) -> Result<bool> {
        let manifests = cf(&self.db, CF_REGISTRY_MANIFESTS)?;
        let held = self.db.get_pinned_cf(manifests, key(repo, &[&digest.0]))?.is_some();
        let mut batch = WriteBatch::default();
        batch.delete_cf(manifests, key(repo, &[&digest.0]));
        // Tags pointing at a deleted manifest would be dangling: they go with it.
        let tags = cf(&self.db, CF_REGISTRY_TAGS)?;
        let prefix = key(repo, &[]);
        for entry in self.db.iterator_cf(tags, IteratorMode::From(&prefix, Direction::Forward)) {
            let (tag_key, value) = entry?;
            if !tag_key.starts_with(&prefix) {
                break;
            }
            if *value == digest.0 {
                batch.delete_cf(tags, tag_key);
            }
        }
        if let Some(subject) = subject {
            batch.delete_cf(cf(&self.db, CF_REGISTRY_REFERRERS)?, key(repo, &[&subject.0, &digest.0]));
        }
        self.db.write(batch)?;
        Ok(held)
    }

    fn tag(&self, repo: &Repository, tag: &str) -> Result<Option<Sha256Digest>> {
        let value = self.db.get_cf(cf(&self.db, CF_REGISTRY_TAGS)?, key(repo, &[tag.as_bytes()]))?;
        value.map(|value| Sha256Digest::from_stored(&value)).transpose()
    }

    fn delete_tag(&self, repo: &Repository, tag: &str) -> Result<bool> {
        let (family, key) = (cf(&self.db, CF_REGISTRY_TAGS)?, key(repo, &[tag.as_bytes()]));
        let held = self.db.get_pinned_cf(family, &key)?.is_some();
        self.db.delete_cf(family, key)?;
        Ok(held)
    }

    fn tags(&self, repo: &Repository, last: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let prefix = key(repo, &[]);
        // The first key after `last`: `last` followed by a NUL sorts right after it.
        let from = match last {
            Some(last) => key(repo, &[last.as_bytes(), b"\0"]),
            None => prefix.clone(),
        };
        self.scan(CF_REGISTRY_TAGS, &prefix, &from, limit)?
            .into_iter()
            .map(|(tag, _)| {
                String::from_utf8(tag).map_err(|_| Error::Corrupt("a registry tag is not UTF-8".to_owned()))
            })
            .collect()
    }

    fn referrers(
        &self,
        repo: &Repository,
        subject: &Sha256Digest,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let prefix = key(repo, &[&subject.0]);
        let mut entries = self.db.raw_iterator_cf(cf(&self.db, CF_REGISTRY_REFERRERS)?);
        entries.seek(&prefix);
        let (mut listed, mut total) = (Vec::new(), 0);
        while listed.len() < limit && entries.key().is_some_and(|key| key.starts_with(&prefix)) {
            if let Some(descriptor) = entries.value().and_then(listed_descriptor) {
                total += descriptor.len();
                if total > max_bytes {
                    break;
                }
                listed.push(descriptor);
            }
            entries.next();
        }
        entries.status()?;
        Ok(listed)
    }

    fn oldest(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<OrderRow>> {
        let rows = cf(&self.db, CF_REGISTRY_ORDER)?;
        let mut found = Vec::new();
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(vec![POINTERS]);
        let mut iterator = self.db.raw_iterator_cf_opt(rows, options);
        match after {
            Some(after) => {
                iterator.seek(after);
                if iterator.key() == Some(after) {
                    iterator.next();
                }
            }
            None => iterator.seek_to_first(),
        }
        while found.len() < limit
            && let (Some(key), Some(value)) = (iterator.key(), iterator.value())
        {
            if is_order_key(key) {
                found.push(OrderRow::parse(key, value));
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(found)
    }

    fn forget(&self, rows: &[OrderRow]) -> Result<Forgotten> {
        let order = cf(&self.db, CF_REGISTRY_ORDER)?;
        let mut forgotten = Forgotten::default();
        for row in rows {
            // Held from the check to the delete, a row at a time (a manifest's delete reads its
            // repository's tags): pushes keep and move rows under it.
            let _put = self.lock();
            if self.db.get_pinned_cf(order, &row.key)?.is_none_or(|value| *value != *row.value) {
                continue;
            }
            forgotten.records += u64::from(self.forget_record(row.recorded.as_ref())?);
            forgotten.bytes += row.size;
            self.delete_rows(std::slice::from_ref(&row.key))?;
        }
        Ok(forgotten)
    }

    fn touch(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>> {
        self.move_held(recorded, Written::USED)
    }

    fn keep(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>> {
        self.move_held(recorded, Written::KEPT)
    }

    fn give_order_rows(&self) -> Result<()> {
        let rows = cf(&self.db, CF_REGISTRY_ORDER)?;
        let _put = self.lock();
        if self.db.get_pinned_cf(rows, ORDER_MARKER)?.is_some() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (family, kind) in
            [(CF_REGISTRY_BLOBS, b'B'), (CF_REGISTRY_MANIFESTS, b'M'), (CF_REGISTRY_TAGS, b'T')]
        {
            for entry in self.db.iterator_cf(cf(&self.db, family)?, IteratorMode::Start) {
                let (stored_key, value) = entry?;
                let Some(recorded) = self.recorded_of(kind, &stored_key, &value)? else { continue };
                // One row each, whatever a crash repeated; a record with a row was pushed since
                // and is loose or kept as that push made it.
                if self.current_row(&recorded)?.is_some() {
                    continue;
                }
                // Written before there were rows: kept, since which of them a tag reaches is
                // not known.
                let size = stored_key.len() + value.len();
                self.place_row(&mut batch, &recorded, UNKNOWN_TIME, Written::new(Some(size), false))?;
                if batch.len() >= 10_000 {
                    self.db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        batch.put_cf(rows, ORDER_MARKER, []);
        Ok(self.db.write(batch)?)
    }
}

impl RocksRegistry {
    /// What a stored record of `kind` (`B`, `M`, `T`) names; `None` for one unreadable.
    fn recorded_of(&self, kind: u8, stored_key: &[u8], value: &[u8]) -> Result<Option<Recorded>> {
        let Some(split) = stored_key.iter().position(|b| *b == 0) else { return Ok(None) };
        let Some(repo) =
            std::str::from_utf8(&stored_key[..split]).ok().and_then(|r| Repository::parse(r).ok())
        else {
            return Ok(None);
        };
        let rest = &stored_key[split + 1..];
        Ok(match kind {
            b'B' => Sha256Digest::from_stored(rest).ok().map(|sha256| Recorded::Blob { repo, sha256 }),
            b'M' => {
                let Ok(digest) = Sha256Digest::from_stored(rest) else { return Ok(None) };
                // The subject of a referrer: the referrer entry naming it, if there is one.
                let subject = split_manifest(value)
                    .ok()
                    .and_then(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(bytes).ok())
                    .and_then(|manifest| manifest.pointer("/subject/digest")?.as_str().map(str::to_owned))
                    .and_then(|subject| Sha256Digest::parse(&subject).ok());
                Some(Recorded::Manifest { repo, digest, subject })
            }
            _ => {
                let (Ok(tag), Ok(digest)) =
                    (String::from_utf8(rest.to_vec()), Sha256Digest::from_stored(value))
                else {
                    return Ok(None);
                };
                Some(Recorded::Tag { repo, tag, digest })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, RocksRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        (dir, RocksRegistry::new(db))
    }

    #[test]
    fn tags_page_in_order_and_go_with_their_manifest() {
        let (_dir, records) = open();
        let repo = Repository::parse("main/app").unwrap();
        let other = Repository::parse("main/app2").unwrap();
        let manifest = StoredManifest { media_type: "m".to_owned(), bytes: Bytes::from_static(b"{}") };
        let digest = Sha256Digest::of(b"{}");
        for tag in ["b", "a", "c"] {
            let write = ManifestWrite { digest, manifest: &manifest, tag: Some(tag), referrer: None };
            records.put_manifest(&repo, write).unwrap();
        }
        let write = ManifestWrite { digest, manifest: &manifest, tag: Some("z"), referrer: None };
        records.put_manifest(&other, write).unwrap();
        assert_eq!(records.tags(&repo, None, 10).unwrap(), ["a", "b", "c"]);
        assert_eq!(records.tags(&repo, Some("a"), 1).unwrap(), ["b"]);
        assert_eq!(records.manifest(&repo, &digest).unwrap(), Some(manifest));
        assert!(records.delete_manifest(&repo, &digest, None).unwrap());
        assert!(records.tags(&repo, None, 10).unwrap().is_empty());
        assert_eq!(records.tags(&other, None, 10).unwrap(), ["z"], "another repository keeps its own");
    }

    #[test]
    fn blobs_and_referrers_are_per_repository() {
        let (_dir, records) = open();
        let (repo, other) = (Repository::parse("a/b").unwrap(), Repository::parse("a/c").unwrap());
        let (sha, digest) = (Sha256Digest::of(b"x"), Digest::of(b"x"));
        records.link_blob(&repo, &sha, &digest).unwrap();
        assert_eq!(records.blob(&repo, &sha).unwrap(), Some(digest));
        assert_eq!(records.blob(&other, &sha).unwrap(), None);
        assert!(records.unlink_blob(&repo, &sha).unwrap() && !records.unlink_blob(&repo, &sha).unwrap());

        let manifest = StoredManifest { media_type: "m".to_owned(), bytes: Bytes::from_static(b"r") };
        let referrer = Sha256Digest::of(b"r");
        let write = ManifestWrite {
            digest: referrer,
            manifest: &manifest,
            tag: None,
            referrer: Some((sha, b"d".to_vec())),
        };
        records.put_manifest(&repo, write).unwrap();
        assert_eq!(records.referrers(&repo, &sha, 10, 1 << 20).unwrap(), [b"d".to_vec()]);
        records.delete_manifest(&repo, &referrer, Some(&sha)).unwrap();
        assert!(records.referrers(&repo, &sha, 10, 1 << 20).unwrap().is_empty());
    }

    /// A forget that read a kept row before a tagged push checked its record again leaves it:
    /// keeping moves the row. It left a kept row as it was, and the forget then removed what
    /// the push had just found there.
    #[test]
    fn keeping_a_kept_record_again_moves_its_row() {
        let (_dir, records) = open();
        let (repo, sha) = (Repository::parse("teama/app").unwrap(), Sha256Digest::of(b"x"));
        records.link_blob(&repo, &sha, &Digest::of(b"x")).unwrap();
        let blob = Recorded::Blob { repo: repo.clone(), sha256: sha };
        assert_eq!(records.keep(std::slice::from_ref(&blob)).unwrap(), []);
        let read = records.oldest(None, 10).unwrap();
        assert!(read.len() == 1 && !read[0].loose, "{read:?}");
        assert_eq!(records.keep(std::slice::from_ref(&blob)).unwrap(), []);
        assert_eq!(records.forget(&read).unwrap().records, 0, "a push kept it since the forget read it");
        assert!(records.blob(&repo, &sha).unwrap().is_some());
    }

    /// A forget that read rows just before a tagged push made one kept, or a push used one,
    /// leaves what they name: the push relies on it. Unchanged rows go with their records.
    #[test]
    fn a_forget_leaves_rows_a_push_changed_since_it_read_them() {
        let (_dir, records) = open();
        let repo = Repository::parse("teama/app").unwrap();
        let blobs: Vec<Sha256Digest> = (0..3u8).map(|n| Sha256Digest::of(&[n])).collect();
        for sha in &blobs {
            records.link_blob(&repo, sha, &Digest::of(&sha.0)).unwrap();
        }
        let read = records.oldest(None, 10).unwrap();
        assert!(read.iter().all(|row| row.loose), "{read:?}");
        let recorded = |n: usize| Recorded::Blob { repo: repo.clone(), sha256: blobs[n] };
        assert_eq!(records.keep(&[recorded(0)]).unwrap(), []);
        assert_eq!(records.touch(&[recorded(1)]).unwrap(), []);

        let forgotten = records.forget(&read).unwrap();
        assert_eq!(forgotten, Forgotten { records: 1, bytes: read[2].size });
        assert!(records.blob(&repo, &blobs[0]).unwrap().is_some(), "made kept since: stays");
        assert!(records.blob(&repo, &blobs[1]).unwrap().is_some(), "used since: stays");
        assert_eq!(records.blob(&repo, &blobs[2]).unwrap(), None);
        let left = records.oldest(None, 10).unwrap();
        assert_eq!(left.len(), 2, "the changed rows stay, the forgotten one goes: {left:?}");

        // A push naming the forgotten one learns it is gone, and places no row for it.
        assert_eq!(records.touch(&[recorded(1), recorded(2)]).unwrap(), [recorded(2)]);
        assert_eq!(records.keep(&[recorded(0), recorded(2)]).unwrap(), [recorded(2)]);
        assert_eq!(records.oldest(None, 10).unwrap().len(), 2);
    }
}
