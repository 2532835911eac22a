//! Free-space decorator: the store never fills its disk.
//!
//! A full disk wedges RocksDB: after one failed write it refuses every write, eviction's
//! deletes included, until 64 MiB are free again, and only an operator can make that room. So
//! uploads are refused while the data directory's file system has less than `min_free_space`
//! free, and housekeeping ([`reclaim`]) evicts least recently used blobs and compacts them
//! away until it has more. `max_size` bounds what the store holds; this bounds what the disk
//! lets it hold, whoever else writes there.
//!
//! An upload is judged at its header by its declared (uncompressed) size. Beyond the most the
//! store could still take (the room above the floor plus all it holds, which eviction can give
//! back) it is refused for good. One of at most `HEADROOM` beyond the room above the floor now
//! is refused too, since it would be cut off on the way, and housekeeping is asked to make that
//! room: otherwise a disk just above its floor refuses every upload at commit and never looks
//! full to housekeeping. A larger one is let in and measured as it streams: a header alone,
//! which costs a client nothing, never makes housekeeping evict more than `HEADROOM` past the
//! floor. While an upload streams the disk is measured again every `RECHECK_EVERY`
//! stored bytes, and an upload that takes it below the floor is cut off and stores nothing.
//! Housekeeping, once it acts, frees `HEADROOM` beyond what was short, so the uploads that
//! were waiting fit again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto::Digest;

use super::{BlobStore, Committed, FrameReader, FrameWriter, StoreUpkeep};
use crate::error::{Error, Result};
use crate::shares::PerToken;

/// Uploads come in bursts of thousands of small blobs; one sample serves a burst.
const SAMPLE_FOR: Duration = Duration::from_millis(250);
/// How many stored bytes an upload writes between two looks at the disk. Other uploads and
/// RocksDB's WAL and flushes fill it too, so the floor, not this, is the margin.
const RECHECK_EVERY: u64 = 64 << 20;
/// Room housekeeping frees above the floor (and above what a refused upload asked for) once it
/// acts: uploads in flight write their frames and their WAL before they commit.
const HEADROOM: u64 = 64 << 20;

/// The free space of the data directory's file system, against its floor.
pub struct FreeSpace {
    dir: PathBuf,
    floor: u64,
    sample: Mutex<Option<(Instant, u64)>>,
    /// When housekeeping last said the store had nothing left to evict; cleared once the
    /// disk is above the floor again.
    warned_exhausted: Mutex<Option<Instant>>,
    /// The largest upload refused since housekeeping last ran because the room above the floor
    /// was too small for it: housekeeping makes that room.
    wanted: AtomicU64,
    /// Bytes of each token's unfinished uploads on this disk, and the most one token may have:
    /// they are not the store's to evict, so one tenant's uploads held open would otherwise
    /// keep the disk below its floor for everyone.
    pending: PerToken,
}

impl FreeSpace {
    /// A floor of 0 turns the guard off.
    pub fn new(dir: PathBuf, floor: u64) -> Self {
        Self {
            dir,
            floor,
            sample: Mutex::new(None),
            warned_exhausted: Mutex::new(None),
            wanted: AtomicU64::new(0),
            pending: PerToken::new(u64::MAX),
        }
    }

    /// With at most `cap` bytes of unfinished uploads per token (`max_upload_bytes_per_token`).
    pub fn with_pending_cap(mut self, cap: u64) -> Self {
        self.pending = PerToken::new(cap);
        self
    }

    fn hold_pending(&self, token: &str, bytes: u64) -> Result<()> {
        self.pending.take(token, bytes).map_err(|held| Error::Busy {
            message: format!(
                "{} already has {} MiB of unfinished uploads on the server's disk \
                 (max_upload_bytes_per_token); finish or cancel one, or retry once one is done",
                crate::auth::Grant::describe_budget(token),
                held >> 20
            ),
            retry_after: PENDING_RETRY,
        })
    }

    fn release_pending(&self, token: &str, bytes: u64) {
        self.pending.give_back(token, bytes);
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

    /// How many bytes must go for the disk to have `wanted` plus `HEADROOM` above the floor.
    fn shortfall(&self, wanted: u64) -> Result<u64> {
        let target = self.floor.saturating_add(wanted).saturating_add(HEADROOM);
        Ok(target.saturating_sub(self.available()?))
    }

    /// Refuses an upload while the disk is below the floor, or when its declared size is more
    /// than the room above the floor plus the `evictable` bytes the store holds: what it
    /// stores is about its size at most, so such a blob could never fit.
    fn admit(&self, digest: &Digest, evictable: u64) -> Result<()> {
        if self.floor == 0 {
            return Ok(());
        }
        let recent = *self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        let available = match recent {
            Some((at, available)) if at.elapsed() < SAMPLE_FOR => available,
            _ => self.available()?,
        };
        self.check(available)?;
        let room_now = available - self.floor;
        let room = room_now.saturating_add(evictable);
        if digest.size > room {
            return Err(Error::ResourceExhausted(format!(
                "blob {digest} is larger than the {room} bytes the store could ever take on its disk: \
                 {room_now} bytes free under {} above min_free_space ({} bytes), plus the {evictable} \
                 bytes it could evict; nothing was stored. Free space there or move --data-dir \
                 to a larger disk",
                self.dir.display(),
                self.floor
            )));
        }
        if digest.size > room_now && digest.size <= HEADROOM {
            self.wanted.fetch_max(digest.size, Ordering::Relaxed);
            return Err(Error::ResourceExhausted(format!(
                "the server's disk is nearly full: blob {digest} needs more than the {room_now} bytes \
                 free under {} above min_free_space ({} bytes); nothing was stored. cached is \
                 evicting least recently used blobs to make room for it: retry later",
                self.dir.display(),
                self.floor
            )));
        }
        Ok(())
    }

    /// Measures the disk now and refuses to go on below the floor (RESOURCE_EXHAUSTED saying
    /// so): for anything else a caller may make cached write (records, spools).
    pub fn recheck(&self) -> Result<()> {
        if self.floor == 0 {
            return Ok(());
        }
        self.check(self.available()?)
    }

    fn check(&self, available: u64) -> Result<()> {
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

/// How long a caller refused for its unfinished uploads is asked to wait.
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// The bytes one unfinished upload has written, held against its token's share of the disk
/// (see [`FreeSpace::with_pending_cap`]) until it is dropped: committed, cancelled or expired.
pub struct PendingBytes {
    space: Arc<FreeSpace>,
    /// `None` for the callers of a server without tokens, one party with no tenant to keep
    /// from another.
    token: Option<String>,
    bytes: u64,
}

impl PendingBytes {
    pub fn new(space: &Arc<FreeSpace>, token: Option<&str>) -> Self {
        let token = token.filter(|token| crate::auth::Grant::has_own_limits(token)).map(str::to_owned);
        Self { space: Arc::clone(space), token, bytes: 0 }
    }

    /// Holds `bytes` more, or refuses them past the token's share.
    pub fn add(&mut self, bytes: u64) -> Result<()> {
        if let Some(token) = &self.token {
            self.space.hold_pending(token, bytes)?;
            self.bytes += bytes;
        }
        Ok(())
    }
}

impl Drop for PendingBytes {
    fn drop(&mut self) {
        if let Some(token) = &self.token {
            self.space.release_pending(token, self.bytes);
        }
    }
}

/// The bytes a store holds, which eviction could give back.
pub type Evictable = Box<dyn Fn() -> u64 + Send + Sync>;

pub struct SpaceGuarded<S> {
    inner: S,
    space: Arc<FreeSpace>,
    evictable: Evictable,
    /// Whether writes count against their caller's share of unfinished uploads: not for the
    /// shared tier's fills, which a read makes.
    charged: bool,
}

impl<S: BlobStore> SpaceGuarded<S> {
    pub fn new(inner: S, space: Arc<FreeSpace>, evictable: Evictable) -> Self {
        Self { inner, space, evictable, charged: true }
    }

    /// For the copies a read makes (the shared tier's fills): not an upload of the caller's.
    pub fn for_fills(mut self) -> Self {
        self.charged = false;
        self
    }
}

impl<S: BlobStore> BlobStore for SpaceGuarded<S> {
    fn stat(&self, digests: &[Digest]) -> Result<Vec<Option<super::BlobInfo>>> {
        self.inner.stat(digests)
    }

    fn contains_locally(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.inner.contains_locally(digests)
    }

    fn mark_used(&self, digests: &[Digest]) -> Result<()> {
        self.inner.mark_used(digests)
    }

    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        self.inner.read(digest, first_frame)
    }

    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        self.inner.read_part(digest, first_frame)
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        self.space.admit(digest, (self.evictable)())?;
        // Held against the caller's budget: its token's, or its tenant's for a lease.
        let owner = crate::caller::current_owner().filter(|_| self.charged);
        Ok(Box::new(GuardedWriter {
            inner: self.inner.write(digest)?,
            pending: PendingBytes::new(&self.space, owner.as_deref()),
            space: Arc::clone(&self.space),
            unchecked: 0,
        }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.inner.remove(digest)
    }

    fn claim(&self, digests: &[Digest]) {
        self.inner.claim(digests)
    }
}

/// Looks again every `RECHECK_EVERY` bytes and at commit: a long upload may have taken the
/// disk below the floor.
struct GuardedWriter {
    inner: Box<dyn FrameWriter>,
    /// What it has written before its commit, against its caller's share.
    pending: PendingBytes,
    space: Arc<FreeSpace>,
    /// Bytes written since the disk was last measured.
    unchecked: u64,
}

impl FrameWriter for GuardedWriter {
    fn put_frame(&mut self, frame: bytes::Bytes) -> Result<()> {
        self.pending.add(frame.len() as u64)?;
        self.unchecked += frame.len() as u64;
        if self.unchecked >= RECHECK_EVERY {
            self.unchecked = 0;
            self.space.recheck()?;
        }
        self.inner.put_frame(frame)
    }

    fn record_sha256(&mut self, sha256: [u8; 32]) {
        self.inner.record_sha256(sha256);
    }

    fn commit(self: Box<Self>) -> Result<Committed> {
        self.space.recheck()?;
        self.inner.commit()
    }
}

/// What one round of [`reclaim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    /// The disk is above the floor (or the guard is off).
    NotNeeded,
    /// Flushing the memtables was enough.
    Flushed,
    /// Blobs were evicted and compacted away.
    Evicted { blobs: u64, bytes: u64 },
    /// The store holds no blob any more: other files keep the disk below the floor.
    NothingToEvict,
}

/// Run by housekeeping: below the floor, or when an upload was refused for want of room above
/// it, first flushes the memtables (the WAL behind them is often most of what a busy store adds
/// to its disk); if that does not leave the room wanted plus `HEADROOM`, evicts what is short
/// and compacts. Deleted blobs free their disk space only once compaction drops them, which the
/// headroom also covers.
pub fn reclaim(store: &dyn StoreUpkeep, space: &FreeSpace) -> Result<Reclaimed> {
    let wanted = space.wanted.swap(0, Ordering::Relaxed);
    if space.floor == 0 || (wanted == 0 && space.deficit()? == 0) {
        *space.warned_exhausted.lock().unwrap_or_else(PoisonError::into_inner) = None;
        return Ok(Reclaimed::NotNeeded);
    }
    store.flush_buffers()?;
    let shortfall = space.shortfall(wanted)?;
    if shortfall == 0 {
        tracing::info!(free = space.available()?, "the disk was nearly full: flushing memtables made room");
        return Ok(Reclaimed::Flushed);
    }
    let (blobs, bytes) = store.evict_bytes(shortfall)?;
    // Also when nothing was evicted: frames of blobs evicted before may still be on disk.
    store.compact()?;
    if blobs == 0 {
        warn_exhausted(space, Instant::now())?;
        return Ok(Reclaimed::NothingToEvict);
    }
    tracing::warn!(
        free = space.available()?,
        min_free_space = space.floor,
        evicted_blobs = blobs,
        evicted_bytes = bytes,
        dir = %space.dir.display(),
        "the disk is nearly full: evicted least recently used blobs and compacted to free space"
    );
    Ok(Reclaimed::Evicted { blobs, bytes })
}

/// How often an operator is told again that the store has nothing left to give.
const EXHAUSTED_REPEAT: Duration = Duration::from_secs(300);

/// Says that the store has nothing left to evict: at once, then every `EXHAUSTED_REPEAT`
/// while it lasts, not every housekeeping round.
fn warn_exhausted(space: &FreeSpace, now: Instant) -> Result<()> {
    let mut warned = space.warned_exhausted.lock().unwrap_or_else(PoisonError::into_inner);
    if warned.is_some_and(|at| now.duration_since(at) < EXHAUSTED_REPEAT) {
        return Ok(());
    }
    *warned = Some(now);
    tracing::warn!(
        free = space.available()?,
        min_free_space = space.floor,
        dir = %space.dir.display(),
        "the disk is nearly full and cached has evicted every blob: other files fill it. Uploads \
         are refused until free space is above min_free_space again; free space there, or move \
         --data-dir to a disk of its own"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RocksStore;

    fn open(dir: &std::path::Path) -> RocksStore {
        crate::store::open_for_tests(dir).1
    }

    fn store_blob(store: &RocksStore, data: &'static [u8]) {
        let mut writer = store.write(&Digest::of(data)).unwrap();
        writer.put_frame(bytes::Bytes::from_static(data)).unwrap();
        writer.record_sha256([0; 32]);
        writer.commit().unwrap();
    }

    #[test]
    fn below_a_floor_no_disk_can_meet_it_evicts_everything_then_says_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db"));
        store_blob(&store, b"first blob");
        store_blob(&store, b"second blob");
        let space = FreeSpace::new(dir.path().to_owned(), u64::MAX);
        let Reclaimed::Evicted { blobs, .. } = reclaim(&store, &space).unwrap() else {
            panic!("two blobs stored and nothing evicted")
        };
        assert_eq!(blobs, 2);
        assert_eq!(reclaim(&store, &space).unwrap(), Reclaimed::NothingToEvict);
        assert_eq!(reclaim(&store, &space).unwrap(), Reclaimed::NothingToEvict);
    }

    /// A disk a little above its floor once refused every upload at commit (its own frames and
    /// WAL took the disk below the floor) while housekeeping, finding the disk above the floor
    /// again after a flush, never evicted.
    #[test]
    fn an_upload_the_room_above_the_floor_cannot_take_is_refused_at_once_and_room_is_made_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db"));
        store_blob(&store, b"least recently used");
        // The floor sits just under the disk's free space, which other tests running meanwhile
        // move (a RocksDB they drop gives back its preallocated files): a round where the disk
        // gained more than the upload asked for between the refusal and housekeeping proves
        // nothing, and is tried again.
        for _ in 0..5 {
            let available = FreeSpace::new(dir.path().to_owned(), 1).available().unwrap();
            let space = FreeSpace::new(dir.path().to_owned(), available - (16 << 20));
            let upload = Digest { hash: [7; 32], size: 64 << 20 };
            let err = space.admit(&upload, 1 << 40).expect_err("64 MiB admitted with 16 MiB of room");
            assert!(
                matches!(&err, Error::ResourceExhausted(message) if message.contains("nearly full")),
                "{err}"
            );
            let now = || FreeSpace::new(dir.path().to_owned(), 1).available().unwrap();
            match reclaim(&store, &space).unwrap() {
                Reclaimed::Evicted { blobs, .. } => return assert_eq!(blobs, 1),
                _ if now() > available + (48 << 20) => continue,
                other => panic!("housekeeping made no room for the refused upload: {other:?}"),
            }
        }
        panic!("the disk's free space kept moving by more than the upload");
    }

    /// Declaring a blob costs a client nothing: a header alone must not make housekeeping evict
    /// the store to make room for it.
    #[test]
    fn a_large_declared_upload_near_the_floor_is_measured_as_it_streams_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db"));
        store_blob(&store, b"kept");
        let available = FreeSpace::new(dir.path().to_owned(), 1).available().unwrap();
        let space = FreeSpace::new(dir.path().to_owned(), available - (16 << 20));
        let declared = Digest { hash: [8; 32], size: 1 << 30 };
        space.admit(&declared, 4 << 30).expect("let in, to be cut off if it really crosses the floor");
        assert_eq!(reclaim(&store, &space).unwrap(), Reclaimed::NotNeeded);
        assert_eq!(store.totals().blobs, 1, "a header made housekeeping evict");
    }

    #[test]
    fn with_the_guard_off_nothing_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db"));
        store_blob(&store, b"kept");
        let space = FreeSpace::new(dir.path().to_owned(), 0);
        assert_eq!(reclaim(&store, &space).unwrap(), Reclaimed::NotNeeded);
        assert_eq!(store.totals().blobs, 1);
    }

    #[test]
    fn an_exhausted_store_is_reported_once_per_interval_and_again_after_recovering() {
        let dir = tempfile::tempdir().unwrap();
        let space = FreeSpace::new(dir.path().to_owned(), u64::MAX);
        let start = Instant::now();
        let warned_at = |space: &FreeSpace| *space.warned_exhausted.lock().unwrap();
        warn_exhausted(&space, start).unwrap();
        assert_eq!(warned_at(&space), Some(start));
        warn_exhausted(&space, start + EXHAUSTED_REPEAT / 2).unwrap();
        assert_eq!(warned_at(&space), Some(start), "warned again within the interval");
        warn_exhausted(&space, start + EXHAUSTED_REPEAT).unwrap();
        assert_eq!(warned_at(&space), Some(start + EXHAUSTED_REPEAT));

        // Any disk has a byte free: above this floor the next shortage is news again.
        let recovered = FreeSpace::new(dir.path().to_owned(), 1);
        *recovered.warned_exhausted.lock().unwrap() = Some(start);
        let store = open(&dir.path().join("db"));
        assert_eq!(reclaim(&store, &recovered).unwrap(), Reclaimed::NotNeeded);
        assert_eq!(warned_at(&recovered), None);
    }
}
