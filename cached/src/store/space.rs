//! Free-space decorator: the store never fills its disk.
//!
//! A full disk wedges RocksDB: after one failed write it refuses every write, eviction's
//! deletes included, until 64 MiB are free again, and only an operator can make that room. So
//! uploads are refused while the data directory's file system has less than `min_free_space`
//! free, and housekeeping ([`reclaim`]) evicts least recently used blobs and compacts them
//! away until it has more. `max_size` bounds what the store holds; this bounds what the disk
//! lets it hold, whoever else writes there.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto::Digest;

use super::{BlobStore, Committed, FrameReader, FrameWriter, RocksStore};
use crate::error::{Error, Result};

/// Uploads come in bursts of thousands of small blobs; one sample serves a burst.
const SAMPLE_FOR: Duration = Duration::from_millis(250);

/// The free space of the data directory's file system, against its floor.
pub struct FreeSpace {
    dir: PathBuf,
    floor: u64,
    sample: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    /// A floor of 0 turns the guard off.
    pub fn new(dir: PathBuf, floor: u64) -> Self {
        Self { dir, floor, sample: Mutex::new(None) }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Bytes available to cached there, measured now.
    pub fn available(&self) -> Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir).map_err(|err| {
            Error::Internal(format!("cannot read the free space of {}: {err}", self.dir.display()))
        })?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), available));
        Ok(available)
    }

    /// How far below the floor the disk is (0 when above it).
    pub fn deficit(&self) -> Result<u64> {
        Ok(self.floor.saturating_sub(self.available()?))
    }

    /// Refuses an upload while the disk is below the floor.
    fn admit(&self) -> Result<()> {
        if self.floor == 0 {
            return Ok(());
        }
        let recent = *self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        let available = match recent {
            Some((at, available)) if at.elapsed() < SAMPLE_FOR => available,
            _ => self.available()?,
        };
        if available >= self.floor {
            return Ok(());
        }
        Err(Error::ResourceExhausted(format!(
            "the server's disk is nearly full: {available} bytes free under {}, below min_free_space \
             ({} bytes); nothing was stored. cached is evicting least recently used blobs to make \
             room: retry later, or free space there or lower max_size",
            self.dir.display(),
            self.floor
        )))
    }
}

pub struct SpaceGuarded<S> {
    inner: S,
    space: Arc<FreeSpace>,
}

impl<S: BlobStore> SpaceGuarded<S> {
    pub fn new(inner: S, space: Arc<FreeSpace>) -> Self {
        Self { inner, space }
    }
}

impl<S: BlobStore> BlobStore for SpaceGuarded<S> {
    fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.inner.contains(digests)
    }

    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        self.inner.read(digest, first_frame)
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        self.space.admit()?;
        Ok(Box::new(GuardedWriter { inner: self.inner.write(digest)?, space: Arc::clone(&self.space) }))
    }
}

/// Looks again at commit: a long upload may have taken the disk below the floor.
struct GuardedWriter {
    inner: Box<dyn FrameWriter>,
    space: Arc<FreeSpace>,
}

impl FrameWriter for GuardedWriter {
    fn put_frame(&mut self, frame: bytes::Bytes) -> Result<()> {
        self.inner.put_frame(frame)
    }

    fn commit(self: Box<Self>) -> Result<Committed> {
        self.space.admit()?;
        self.inner.commit()
    }
}

/// Run by housekeeping: below the floor, first flushes the memtables (the WAL behind them is
/// often most of what a busy store adds to its disk); if that is not enough, evicts twice the
/// shortfall (deleted blobs free their disk space only once compaction drops them, and not all
/// of it at once) and compacts.
pub fn reclaim(store: &RocksStore, space: &FreeSpace) -> Result<()> {
    if space.floor == 0 || space.deficit()? == 0 {
        return Ok(());
    }
    store.flush_memtables()?;
    let deficit = space.deficit()?;
    if deficit == 0 {
        tracing::info!(free = space.available()?, "the disk was nearly full: flushing memtables made room");
        return Ok(());
    }
    let evicted = store.evict_bytes(deficit.saturating_mul(2))?;
    store.compact_chunks()?;
    tracing::warn!(
        free = space.available()?,
        min_free_space = space.floor,
        evicted_blobs = evicted.0,
        evicted_bytes = evicted.1,
        dir = %space.dir.display(),
        "the disk is nearly full: evicted least recently used blobs and compacted to free space"
    );
    Ok(())
}
