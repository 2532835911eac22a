//! The blob store: a small trait that backends implement, and decorators that add one
//! behaviour each (verification, free space, metrics) around it.
//!
//! Blobs are held as the zstd frames of `proto::frames`. A store never sees uncompressed data
//! on its hot path: uploads arrive as frames and downloads leave as frames.

pub mod housekeeping;
mod keys;
mod metrics;
mod rocks;
mod space;
mod verify;

use std::sync::Arc;

use bytes::Bytes;
use proto::Digest;

pub use keys::BlobKey;
pub use metrics::{Metered, StoreCounters};
pub use rocks::{Budget, RocksStore, ScrubSlice, ScrubTotals, StoreTotals};
pub use space::{Evictable, FreeSpace, PendingBytes, SpaceGuarded, reclaim};
pub use verify::Verified;

use crate::error::Result;

/// What `FrameWriter::commit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The blob is now stored, taking this many (compressed) bytes.
    Stored { stored_bytes: u64 },
    /// Another upload of the same digest got there first; this one was discarded.
    AlreadyPresent,
}

/// What the store knows of a stored blob without reading it: what reading it costs, and the
/// SHA-256 of its bytes (Go's OutputID of them), taken when its upload was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Bytes of the stored (compressed) frames.
    pub stored_bytes: u64,
    pub sha256: [u8; 32],
}

/// A content-addressed store of framed blobs. Every method blocks: call it from a blocking
/// task, never from an async worker thread.
pub trait BlobStore: Send + Sync + 'static {
    /// For each digest, what the store knows of it, or `None` when it does not hold it.
    fn stat(&self, digests: &[Digest]) -> Result<Vec<Option<BlobInfo>>>;

    /// For each digest, whether the store holds it.
    fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        Ok(self.stat(digests)?.iter().map(Option::is_some).collect())
    }

    /// For each digest, whether this machine's own tier holds it: for upkeep, which must not
    /// send a request to a shared tier per blob. Without a shared tier, `contains`.
    fn contains_locally(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.contains(digests)
    }

    /// Marks the blobs this machine's own tier holds as used, as opening them does, for
    /// eviction; reads and copies nothing. For a reply that names a blob without carrying it:
    /// opening one a shared tier lacks locally would copy all of it from the bucket.
    fn mark_used(&self, digests: &[Digest]) -> Result<()>;

    /// The frames of a stored blob from frame `first_frame` on, or `None` on a miss.
    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>>;

    /// `read`, for a read that sends only part of the blob: what this machine's own tier
    /// holds, and a miss where `read` would copy the whole blob in from a shared tier first,
    /// which would cost this disk more than the read sends. No default, so a decorator cannot
    /// forget to pass it on and fall back to `read`.
    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>>;

    /// Starts an upload. Nothing becomes visible until `commit`; dropping the writer without
    /// committing discards what it wrote.
    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>>;

    /// Deletes a stored blob (one found corrupt); nothing happens when it is not stored.
    fn remove(&self, digest: &Digest) -> Result<()>;

    /// Notes that the current caller relies on these blobs (it stored, linked or recorded one
    /// another owner holds): should eviction take one from its holder's account, it passes to
    /// a claimant's instead of going. Blobs this machine does not hold are left alone. A claim
    /// that cannot be noted is logged, not an error of the call. No default, so a decorator
    /// cannot forget to pass it on.
    fn claim(&self, digests: &[Digest]);
}

type Frames = Box<dyn Iterator<Item = Result<Bytes>> + Send>;

/// The stored frames of one blob, read lazily one at a time, with what the store knew of the
/// blob when the read started.
pub struct FrameReader {
    info: BlobInfo,
    frames: Frames,
}

impl FrameReader {
    pub fn new(info: BlobInfo, frames: impl Iterator<Item = Result<Bytes>> + Send + 'static) -> Self {
        Self { info, frames: Box::new(frames) }
    }

    pub fn info(&self) -> &BlobInfo {
        &self.info
    }

    /// Passes every frame read through `step`, which may refuse it.
    pub fn and_then(self, mut step: impl FnMut(Bytes) -> Result<Bytes> + Send + 'static) -> Self {
        Self { info: self.info, frames: Box::new(self.frames.map(move |frame| frame.and_then(&mut step))) }
    }
}

impl Iterator for FrameReader {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        self.frames.next()
    }
}

pub trait FrameWriter: Send {
    /// Appends the next zstd frame of the blob.
    fn put_frame(&mut self, frame: Bytes) -> Result<()>;

    /// Records the SHA-256 of the blob's bytes, to be stored beside it. `Verified` computes it
    /// and calls this before `commit`; a backend refuses to commit a blob without it.
    fn record_sha256(&mut self, sha256: [u8; 32]);

    /// Makes the blob visible, atomically.
    fn commit(self: Box<Self>) -> Result<Committed>;
}

/// What the store holds, its budget, and what eviction took: what operators see (`Stats`,
/// `/metrics`) and what the free-space guard may count on getting back.
pub trait StoreUsage: Send + Sync + 'static {
    fn totals(&self) -> StoreTotals;
    fn budget(&self) -> Budget;
    /// (blobs, bytes) evicted since start.
    fn evictions(&self) -> (u64, u64);
    /// What scrubbing checked and removed since start.
    fn scrubbed(&self) -> ScrubTotals;
}

/// The store's upkeep, run by housekeeping and at shutdown, off the request path. Every
/// method blocks.
pub trait StoreUpkeep: StoreUsage {
    /// Persists access times noted by reads, and evicts down to the low watermark once the
    /// high one was crossed.
    fn maintain(&self) -> Result<()>;
    /// Evicts least recently used blobs storing about `bytes`; returns the (blobs, bytes)
    /// evicted.
    fn evict_bytes(&self, bytes: u64) -> Result<(u64, u64)>;
    /// Writes buffered writes out, so the logs that kept them can go: disk given back.
    fn flush_buffers(&self) -> Result<()>;
    /// Gives back the disk space of evicted blobs now rather than eventually.
    fn compact(&self) -> Result<()>;
    /// Makes everything durable, for a clean shutdown.
    fn flush(&self) -> Result<()>;
    /// Reads back the next `budget` stored bytes or so of blobs, removing any whose bytes no
    /// longer match their digest; the next call goes on after them.
    fn scrub(&self, budget: u64) -> Result<ScrubSlice>;
}

/// The store handle the services share.
pub type SharedStore = Arc<dyn BlobStore>;

/// The store the services share: RocksDB under verification, then the free-space guard,
/// then metrics, each decorator adding one behaviour.
/// With a shared bucket, RocksDB is its local tier (`shared::Tiered`) under the same decorators.
pub fn layered(
    rocks: &RocksStore,
    shared: Option<&Arc<crate::shared::Bucket>>,
    space: &Arc<FreeSpace>,
    counters: &Arc<StoreCounters>,
) -> SharedStore {
    match shared {
        None => decorated(rocks, Verified::new(rocks.clone()), space, counters),
        Some(bucket) => {
            let tiered = crate::shared::Tiered::new(rocks.clone(), Arc::clone(bucket), Arc::clone(space));
            decorated(rocks, Verified::new(tiered), space, counters)
        }
    }
}

fn decorated(
    rocks: &RocksStore,
    verified: impl BlobStore,
    space: &Arc<FreeSpace>,
    counters: &Arc<StoreCounters>,
) -> SharedStore {
    Arc::new(Metered::new(
        SpaceGuarded::new(verified, Arc::clone(space), evictable(rocks)),
        Arc::clone(counters),
    ))
}

/// What eviction could give back of `rocks`: every byte it stores.
pub fn evictable(rocks: &RocksStore) -> Evictable {
    let held = rocks.clone();
    Box::new(move || held.totals().stored_bytes)
}

/// The eviction budget a configuration asks for.
pub fn rocks_budget(config: &crate::config::Config) -> rocks::Budget {
    rocks::Budget::new(config.max_size, config.high_watermark, config.low_watermark)
}

/// For unit tests: the database at `dir` and a store on it with the default budget.
#[cfg(test)]
pub(crate) fn open_for_tests(dir: &std::path::Path) -> (Arc<rocksdb::DB>, RocksStore) {
    let db = crate::db::open(dir).unwrap();
    let config = crate::config::Config::load(&std::collections::BTreeMap::new(), None, &|_| None).unwrap();
    let store = RocksStore::open(Arc::clone(&db), rocks_budget(&config)).unwrap();
    (db, store)
}
