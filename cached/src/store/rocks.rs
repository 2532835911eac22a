//! The RocksDB backend: frames in `chunks` (BlobDB), metadata in `blobs`, committed together.
//! Eviction (`lru`) is a part of it: it works on the same batches, under the same lock.

mod claims;
mod lru;
mod owners;
mod scrub;
#[cfg(test)]
mod testing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use proto::Digest;
use proto::frames::frame_count;
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch};

use self::lru::AccessLog;
use self::owners::{Change, Ledger};
pub use self::scrub::{ScrubSlice, ScrubTotals};
use super::keys::{BlobKey, BlobMeta, chunk_key, lru_key, u64_be};
use super::{BlobInfo, BlobStore, Committed, FrameReader, FrameWriter, StoreUpkeep, StoreUsage};
use crate::db::{CF_BLOBS, CF_CHUNKS, CF_COUNTERS, CF_LRU, CF_PENDING, cf};
use crate::error::{Error, Result};

const TOTALS_KEY: &[u8] = b"totals";
const TOTALS_VERSION: u8 = 1;

/// What the store holds, kept exact by writing it in the same batch as every change to it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreTotals {
    pub blobs: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

impl StoreTotals {
    fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[0] = TOTALS_VERSION;
        out[1..9].copy_from_slice(&self.blobs.to_be_bytes());
        out[9..17].copy_from_slice(&self.raw_bytes.to_be_bytes());
        out[17..25].copy_from_slice(&self.stored_bytes.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 25 || bytes[0] != TOTALS_VERSION {
            return Err(Error::Corrupt("store totals record".into()));
        }
        Ok(Self {
            blobs: u64_be(&bytes[1..]),
            raw_bytes: u64_be(&bytes[9..]),
            stored_bytes: u64_be(&bytes[17..]),
        })
    }

    fn add(&mut self, meta: &BlobMeta) {
        self.blobs += 1;
        self.raw_bytes += meta.size;
        self.stored_bytes += meta.stored_bytes;
    }

    fn remove(&mut self, meta: &BlobMeta) {
        self.blobs = self.blobs.saturating_sub(1);
        self.raw_bytes = self.raw_bytes.saturating_sub(meta.size);
        self.stored_bytes = self.stored_bytes.saturating_sub(meta.stored_bytes);
    }
}

/// The byte budget for stored frames, with the watermarks eviction works between.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_bytes: u64,
    /// Eviction starts above this many stored bytes...
    pub high_bytes: u64,
    /// ...and stops once the store is down to this many.
    pub low_bytes: u64,
}

impl Budget {
    pub fn new(max_bytes: u64, high_watermark: f64, low_watermark: f64) -> Self {
        let fraction = |f: f64| (max_bytes as f64 * f) as u64;
        Self { max_bytes, high_bytes: fraction(high_watermark), low_bytes: fraction(low_watermark) }
    }
}

#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    /// Held by every change to `blobs`, `lru` and the ledger, which keeps them consistent
    /// without read-modify-write races. Commits are short, so one lock is enough.
    ledger: Mutex<Ledger>,
    budget: Budget,
    access_log: AccessLog,
    evicted_blobs: AtomicU64,
    evicted_bytes: AtomicU64,
    over_high_watermark: AtomicBool,
    next_upload: AtomicU64,
    scrubbed_bytes: AtomicU64,
    scrub_removed: AtomicU64,
    /// [`lru::IDLE_AFTER`], in milliseconds (shorter in tests).
    idle_after_ms: u64,
}

impl RocksStore {
    /// Opens the store in `db`, discarding uploads a crash cut off.
    pub fn open(db: Arc<DB>, budget: Budget) -> Result<Self> {
        Self::open_idle_after(db, budget, lru::IDLE_AFTER)
    }

    /// [`RocksStore::open`], with blobs unused for `idle_after` evicted ahead of fair shares.
    pub(crate) fn open_idle_after(
        db: Arc<DB>,
        budget: Budget,
        idle_after: std::time::Duration,
    ) -> Result<Self> {
        let totals = match db.get_cf(cf(&db, CF_COUNTERS)?, TOTALS_KEY)? {
            Some(bytes) => StoreTotals::decode(&bytes)?,
            None => StoreTotals::default(),
        };
        let next_upload = discard_interrupted_uploads(&db)?;
        let ledger = Ledger::load(&db, totals)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                ledger: Mutex::new(ledger),
                budget,
                access_log: AccessLog::default(),
                evicted_blobs: AtomicU64::new(0),
                evicted_bytes: AtomicU64::new(0),
                over_high_watermark: AtomicBool::new(false),
                next_upload: AtomicU64::new(next_upload),
                scrubbed_bytes: AtomicU64::new(0),
                scrub_removed: AtomicU64::new(0),
                idle_after_ms: idle_after.as_millis() as u64,
            }),
        })
    }

    pub fn totals(&self) -> StoreTotals {
        self.inner.lock_ledger().totals
    }

    pub fn budget(&self) -> Budget {
        self.inner.budget
    }

    /// (blobs, bytes) evicted since start.
    pub fn evictions(&self) -> (u64, u64) {
        (self.inner.evicted_blobs.load(Ordering::Relaxed), self.inner.evicted_bytes.load(Ordering::Relaxed))
    }

    /// Flushes every memtable, so the WAL they kept (up to 128 MiB) can go.
    pub fn flush_memtables(&self) -> Result<()> {
        crate::db::flush_all(&self.inner.db)
    }

    /// Compacts the frames' column family, so that the frames of deleted blobs give their disk
    /// space back now rather than whenever compaction would next reach them.
    pub fn compact_chunks(&self) -> Result<()> {
        let db = &self.inner.db;
        db.compact_range_cf(cf(db, CF_CHUNKS)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Persists access times and flushes memtables and the WAL, for a clean shutdown.
    pub fn flush(&self) -> Result<()> {
        self.flush_access_times()?;
        self.inner.db.flush_wal(true)?;
        // Every column family: `DB::flush` alone writes out only the default one, which holds
        // nothing, and the next start would replay the whole WAL.
        self.flush_memtables()
    }
}

impl RocksStore {
    /// Deletes the blob stored under `key` if its record passes `still`; whether it did.
    fn remove_if(&self, key: &BlobKey, still: impl FnOnce(&BlobMeta) -> bool) -> Result<bool> {
        let inner = &self.inner;
        let mut ledger = inner.lock_ledger();
        let Some(meta) = inner.meta(key)?.filter(still) else { return Ok(false) };
        let mut batch = WriteBatch::default();
        let mut change = ledger.change();
        inner.delete_blob(&mut batch, key, &meta, &mut change)?;
        ledger.put(&inner.db, &mut batch, &change)?;
        inner.db.write(batch)?;
        ledger.apply(change);
        Ok(true)
    }
}

#[cfg(test)]
impl RocksStore {
    /// Rewrites frame `frame` of a stored blob through `damage`, as rot at rest would.
    pub(crate) fn damage_frame_for_tests(
        &self,
        digest: &Digest,
        frame: u64,
        damage: impl FnOnce(&mut Vec<u8>),
    ) {
        let db = &self.inner.db;
        let meta = self.inner.meta(&BlobKey::blake3(digest)).unwrap().unwrap();
        let key = chunk_key(meta.upload_id, frame);
        let chunks = cf(db, CF_CHUNKS).unwrap();
        let mut bytes = db.get_cf(chunks, key).unwrap().unwrap();
        damage(&mut bytes);
        db.put_cf(chunks, key, bytes).unwrap();
    }
}

impl StoreUsage for RocksStore {
    fn totals(&self) -> StoreTotals {
        RocksStore::totals(self)
    }

    fn budget(&self) -> Budget {
        RocksStore::budget(self)
    }

    fn evictions(&self) -> (u64, u64) {
        RocksStore::evictions(self)
    }

    fn scrubbed(&self) -> ScrubTotals {
        RocksStore::scrubbed(self)
    }
}

impl StoreUpkeep for RocksStore {
    fn maintain(&self) -> Result<()> {
        RocksStore::maintain(self)
    }

    fn evict_bytes(&self, bytes: u64) -> Result<(u64, u64)> {
        RocksStore::evict_bytes(self, bytes)
    }

    fn flush_buffers(&self) -> Result<()> {
        self.flush_memtables()
    }

    fn compact(&self) -> Result<()> {
        self.compact_chunks()
    }

    fn flush(&self) -> Result<()> {
        RocksStore::flush(self)
    }

    fn scrub(&self, budget: u64) -> Result<ScrubSlice> {
        RocksStore::scrub(self, budget)
    }
}

/// How frames are read. RocksDB's own checksum of a blob-file record is not checked: no
/// frame's bytes reach anyone unverified without it (clients hash what they decode against
/// the digest; the server's frame check refuses malformed frames; a replica filling from the
/// bucket verifies what it fetches), so rot at rest still ends as an error, never as wrong
/// bytes. The checksum, computed in software by this RocksDB build, took a third of the
/// server's CPU on a large read.
fn frame_read_options() -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_verify_checksums(false);
    options
}

impl Inner {
    fn lock_ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-updated: it is only
        // assigned after the batch that persists it succeeded.
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Frame `frame` of upload `upload_id` as stored; `None` when it is not (the blob went).
    fn stored_frame(&self, upload_id: u64, frame: u64) -> Result<Option<Vec<u8>>> {
        let chunks = cf(&self.db, CF_CHUNKS)?;
        Ok(self.db.get_cf_opt(chunks, chunk_key(upload_id, frame), &frame_read_options())?)
    }

    fn meta(&self, key: &BlobKey) -> Result<Option<BlobMeta>> {
        self.db
            .get_pinned_cf(cf(&self.db, CF_BLOBS)?, key.as_bytes())?
            .map(|bytes| BlobMeta::decode(&bytes))
            .transpose()
    }

    /// Adds the deletion of every frame of an upload to `batch`.
    fn delete_chunks(&self, batch: &mut WriteBatch, upload_id: u64, frames: u64) -> Result<()> {
        let chunks = cf(&self.db, CF_CHUNKS)?;
        for frame in 0..frames {
            batch.delete_cf(chunks, chunk_key(upload_id, frame));
        }
        Ok(())
    }

    /// Adds the deletion of a stored blob (metadata, access order, frames) to `batch`, and
    /// takes it off the ledger in `change`.
    fn delete_blob(
        &self,
        batch: &mut WriteBatch,
        key: &BlobKey,
        meta: &BlobMeta,
        change: &mut Change,
    ) -> Result<()> {
        batch.delete_cf(cf(&self.db, CF_BLOBS)?, key.as_bytes());
        batch.delete_cf(cf(&self.db, CF_LRU)?, lru_key(meta.owner, meta.atime_ms, key));
        self.delete_claims(batch, key)?;
        self.delete_chunks(batch, meta.upload_id, frame_count(meta.size))?;
        change.remove(meta);
        Ok(())
    }
}

/// Deletes the chunks of uploads that were in progress when the process stopped, and returns
/// the first upload id that is certainly unused.
fn discard_interrupted_uploads(db: &DB) -> Result<u64> {
    let pending = cf(db, CF_PENDING)?;
    let chunks = cf(db, CF_CHUNKS)?;
    let mut batch = WriteBatch::default();
    let mut discarded = 0;
    for item in db.iterator_cf(pending, IteratorMode::Start) {
        let (key, _) = item?;
        let upload_id = u64_be(&key);
        batch.delete_range_cf(chunks, chunk_key(upload_id, 0), chunk_key(upload_id + 1, 0));
        batch.delete_cf(pending, key);
        discarded += 1;
    }
    let last_id = |name| -> Result<u64> {
        Ok(match db.iterator_cf(cf(db, name)?, IteratorMode::End).next() {
            Some(item) => u64_be(&item?.0),
            None => 0,
        })
    };
    let next = last_id(CF_CHUNKS)?.max(last_id(CF_PENDING)?) + 1;
    if discarded > 0 {
        db.write(batch)?;
        tracing::info!(discarded, "discarded uploads interrupted by the last shutdown");
    }
    Ok(next)
}

/// What a lookup of `digest` finds in `meta`: the blob, unless its size differs (another
/// blob with the same hash cannot exist; a client that names a wrong size asks for nothing)
/// or it predates SHA-256s and frame checks (a miss, replaced by the next upload).
fn live(meta: &BlobMeta, digest: &Digest) -> Option<BlobInfo> {
    let sha256 = meta.sha256.filter(|_| meta.size == digest.size)?;
    Some(BlobInfo { stored_bytes: meta.stored_bytes, sha256 })
}

impl BlobStore for RocksStore {
    fn stat(&self, digests: &[Digest]) -> Result<Vec<Option<BlobInfo>>> {
        let blobs = cf(&self.inner.db, CF_BLOBS)?;
        let keys: Vec<BlobKey> = digests.iter().map(BlobKey::blake3).collect();
        let values = self.inner.db.batched_multi_get_cf(blobs, keys.iter().map(BlobKey::as_bytes), false);
        digests
            .iter()
            .zip(values)
            .map(|(digest, value)| match value? {
                Some(bytes) => Ok(live(&BlobMeta::decode(&bytes)?, digest)),
                None => Ok(None),
            })
            .collect()
    }

    /// Opens each without reading its frames: opening notes the access time.
    fn mark_used(&self, digests: &[Digest]) -> Result<()> {
        for digest in digests {
            self.read(digest, 0)?;
        }
        Ok(())
    }

    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        self.read(digest, first_frame)
    }

    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        let key = BlobKey::blake3(digest);
        let Some(meta) = self.inner.meta(&key)? else { return Ok(None) };
        let Some(info) = live(&meta, digest) else { return Ok(None) };
        self.inner.access_log.touch(key);
        let inner = Arc::clone(&self.inner);
        let digest = *digest;
        let frames = (first_frame..frame_count(meta.size)).map(move |frame| {
            match inner.stored_frame(meta.upload_id, frame)? {
                Some(bytes) => Ok(Bytes::from(bytes)),
                // Upload ids are never reused, so a missing frame means the blob went away
                // (eviction) after the read started: never another blob's bytes.
                None => {
                    Err(Error::NotFound(format!("blob {digest} was evicted while it was being read; retry")))
                }
            }
        });
        Ok(Some(FrameReader::new(info, frames)))
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        let upload_id = self.inner.next_upload.fetch_add(1, Ordering::Relaxed);
        let key = BlobKey::blake3(digest);
        let db = &self.inner.db;
        db.put_cf(cf(db, CF_PENDING)?, upload_id.to_be_bytes(), key.as_bytes())?;
        Ok(Box::new(RocksWriter {
            store: self.clone(),
            key,
            size: digest.size,
            upload_id,
            frames: 0,
            stored_bytes: 0,
            sha256: None,
            finished: false,
        }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.remove_if(&BlobKey::blake3(digest), |_| true).map(drop)
    }

    fn claim(&self, digests: &[Digest]) {
        self.claim_for_caller(digests)
    }
}

struct RocksWriter {
    store: RocksStore,
    key: BlobKey,
    size: u64,
    upload_id: u64,
    frames: u64,
    stored_bytes: u64,
    sha256: Option<[u8; 32]>,
    finished: bool,
}

impl FrameWriter for RocksWriter {
    fn put_frame(&mut self, frame: Bytes) -> Result<()> {
        let db = &self.store.inner.db;
        let len = frame.len() as u64;
        db.put_cf(cf(db, CF_CHUNKS)?, chunk_key(self.upload_id, self.frames), frame)?;
        self.frames += 1;
        self.stored_bytes += len;
        Ok(())
    }

    fn record_sha256(&mut self, sha256: [u8; 32]) {
        self.sha256 = Some(sha256);
    }

    fn commit(mut self: Box<Self>) -> Result<Committed> {
        let Some(sha256) = self.sha256 else {
            return Err(Error::Internal(format!(
                "blob {} reached the store without its SHA-256: the store must be wrapped in Verified",
                Digest { hash: self.key.hash(), size: self.size }
            )));
        };
        let inner = Arc::clone(&self.store.inner);
        let (owner_name, owner) = owners::current_owner();
        let mut ledger = inner.lock_ledger();
        let mut batch = WriteBatch::default();
        let mut change = ledger.change();
        match inner.meta(&self.key)? {
            // The blob keeps its first owner; this one claims it.
            Some(meta) if meta.sha256.is_some() => {
                inner.claim_locked(&ledger, &[Digest { hash: self.key.hash(), size: self.size }]);
                return Ok(Committed::AlreadyPresent);
            }
            // A blob from before SHA-256s were recorded: this verified upload replaces it.
            Some(legacy) => inner.delete_blob(&mut batch, &self.key, &legacy, &mut change)?,
            None => {}
        }
        let budget = inner.budget;
        if self.stored_bytes > budget.max_bytes {
            return Err(Error::ResourceExhausted(format!(
                "a blob taking {} bytes does not fit in the store's budget of {} bytes (--max-size)",
                self.stored_bytes, budget.max_bytes
            )));
        }
        if change.totals.stored_bytes + self.stored_bytes > budget.max_bytes {
            let target = budget.low_bytes.min(budget.max_bytes - self.stored_bytes);
            self.store.evict_locked(&mut ledger, target)?;
            // Eviction may have taken the legacy blob being replaced: start again from what
            // is stored now.
            batch = WriteBatch::default();
            change = ledger.change();
            if let Some(legacy) = inner.meta(&self.key)? {
                inner.delete_blob(&mut batch, &self.key, &legacy, &mut change)?;
            }
        }
        let now = lru::now_ms();
        let meta = BlobMeta {
            size: self.size,
            stored_bytes: self.stored_bytes,
            upload_id: self.upload_id,
            atime_ms: now,
            sha256: Some(sha256),
            owner,
        };
        change.add(&meta, &owner_name);
        let db = &inner.db;
        batch.put_cf(cf(db, CF_BLOBS)?, self.key.as_bytes(), meta.encode());
        batch.put_cf(cf(db, CF_LRU)?, lru_key(owner, now, &self.key), []);
        batch.delete_cf(cf(db, CF_PENDING)?, self.upload_id.to_be_bytes());
        ledger.put(db, &mut batch, &change)?;
        db.write(batch)?;
        let stored_bytes = change.totals.stored_bytes;
        ledger.apply(change);
        self.finished = true;
        if stored_bytes > budget.high_bytes {
            inner.over_high_watermark.store(true, Ordering::Relaxed);
        }
        Ok(Committed::Stored { stored_bytes: self.stored_bytes })
    }
}

impl Drop for RocksWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let inner = &self.store.inner;
        let discard = || -> Result<()> {
            let mut batch = WriteBatch::default();
            inner.delete_chunks(&mut batch, self.upload_id, self.frames)?;
            batch.delete_cf(cf(&inner.db, CF_PENDING)?, self.upload_id.to_be_bytes());
            inner.db.write(batch)?;
            Ok(())
        };
        if let Err(err) = discard() {
            // The pending record stays, so the next start-up deletes the chunks instead.
            tracing::warn!(error = %err, upload_id = self.upload_id, "could not discard an unfinished upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_blob(store: &RocksStore, data: &[u8], sha256: [u8; 32]) -> Committed {
        let mut writer = store.write(&Digest::of(data)).unwrap();
        writer.put_frame(Bytes::copy_from_slice(data)).unwrap();
        writer.record_sha256(sha256);
        writer.commit().unwrap()
    }

    #[test]
    fn a_blob_stored_before_sha256s_is_a_miss_and_the_next_upload_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = crate::store::open_for_tests(dir.path());
        let digest = Digest::of(b"old blob");
        store_blob(&store, b"old blob", [1; 32]);
        // Rewrite its metadata as a version 1 record, as an older cached left it.
        let key = BlobKey::blake3(&digest);
        let meta = BlobMeta { sha256: None, ..store.inner.meta(&key).unwrap().unwrap() };
        db.put_cf(cf(&db, CF_BLOBS).unwrap(), key.as_bytes(), meta.encode()).unwrap();

        assert_eq!(store.stat(&[digest]).unwrap(), [None]);
        assert!(store.read(&digest, 0).unwrap().is_none());
        assert!(matches!(store_blob(&store, b"old blob", [2; 32]), Committed::Stored { .. }));
        assert_eq!(store.stat(&[digest]).unwrap()[0].unwrap().sha256, [2; 32]);
        assert_eq!(store.totals().blobs, 1, "the old copy was replaced, not added to");
        assert!(db.get_cf(cf(&db, CF_CHUNKS).unwrap(), chunk_key(meta.upload_id, 0)).unwrap().is_none());
        assert!(matches!(store_blob(&store, b"old blob", [2; 32]), Committed::AlreadyPresent));
    }

    #[test]
    fn a_commit_without_a_sha256_is_refused_and_remove_forgets_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, store) = crate::store::open_for_tests(dir.path());
        let mut writer = store.write(&Digest::of(b"x")).unwrap();
        writer.put_frame(Bytes::from_static(b"x")).unwrap();
        assert!(matches!(writer.commit(), Err(Error::Internal(_))));
        assert_eq!(store.totals().blobs, 0);

        store_blob(&store, b"kept", [3; 32]);
        store.remove(&Digest::of(b"kept")).unwrap();
        assert_eq!(store.totals(), StoreTotals::default());
        assert_eq!(store.stat(&[Digest::of(b"kept")]).unwrap(), [None]);
        store.remove(&Digest::of(b"kept")).unwrap();
    }
}
