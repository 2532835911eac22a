//! The tiered blob store: RocksDB in front of the bucket. A local hit costs what it cost
//! before (no request to the bucket); a local miss is fetched from the bucket, verified frame
//! by frame (BLAKE3 of the plain bytes, through the same verification uploads pass), stored
//! locally, then served from the local tier. Concurrent misses of one blob share one fetch.
//!
//! The bucket being down never fails a read: a miss that cannot be fetched is a miss. It
//! fails writes, which are acknowledged only once in both tiers. A miss the bucket was not
//! asked about is noted as such ([`super::presence`]): no proof the blob is gone.
//!
//! A fill is a write to the local disk like an upload, under the same free-space floor: one
//! the room above the floor cannot take is a miss (housekeeping is asked to make that room),
//! so a burst of reads on a nearly full replica cannot fill its disk and wedge RocksDB.
//!
//! Only a read of the whole blob fills. A read of part of one (a range, a limit) is served from
//! the local tier or is a miss: a fill would copy all of the blob onto this disk for the part
//! sent, and the object's frames can be verified only all together.

use std::sync::Arc;

use proto::Digest;

use super::bucket::{Bucket, FramesError, ObjectFrames};
use super::counters::SharedCounters;
use super::flights::Flights;
use super::layout::parse_trailer;
use super::presence::not_asked;
use super::upload::{BlobUpload, TieredWriter};
use crate::error::{Error, Result};
use crate::store::{
    BlobInfo, BlobStore, FrameReader, FrameWriter, FreeSpace, RocksStore, SpaceGuarded, Verified,
};

#[derive(Clone)]
pub struct Tiered {
    local: RocksStore,
    bucket: Arc<Bucket>,
    flights: Arc<Flights>,
    space: Arc<FreeSpace>,
}

impl Tiered {
    pub fn new(local: RocksStore, bucket: Arc<Bucket>, space: Arc<FreeSpace>) -> Self {
        Self { local, bucket, flights: Arc::new(Flights::default()), space }
    }

    fn counters(&self) -> &SharedCounters {
        &self.bucket.counters
    }

    /// Brings a blob from the bucket into the local tier, unless another caller just did;
    /// returns whether the local tier now holds it.
    fn fill(&self, digest: &Digest) -> Result<bool> {
        let filled = self.try_fill(digest)?;
        if filled == Filled::NotAsked {
            not_asked(&[*digest]);
        }
        Ok(filled == Filled::Yes)
    }

    fn try_fill(&self, digest: &Digest) -> Result<Filled> {
        let _flight = self.flights.enter(*digest);
        if self.local.contains(&[*digest])?[0] {
            return Ok(Filled::Yes);
        }
        if !self.bucket.admit_lookups(1) {
            return Ok(Filled::NotAsked);
        }
        let frames = match self.bucket.open_blob(digest) {
            Ok(Some(frames)) => frames,
            Ok(None) => return Ok(Filled::Absent),
            Err(err) => {
                tracing::warn!(%digest, error = %err, "a local miss could not be looked up in the shared store");
                return Ok(Filled::NotAsked);
            }
        };
        match self.copy_verified(digest, frames) {
            Ok(stored_bytes) => {
                SharedCounters::add(&self.counters().fill_bytes, stored_bytes);
                Ok(Filled::Yes)
            }
            Err(FillError::Unreachable(err)) => {
                tracing::warn!(%digest, error = %err, "the shared store stopped answering while a blob was read");
                Ok(Filled::NotAsked)
            }
            // Deleted from the bucket now, as `Bucket::stat` does with one: no sound copy is left.
            Err(FillError::Corrupt(why)) => {
                self.bucket.discard_corrupt(digest, &why);
                Ok(Filled::Absent)
            }
            // The bucket holds it; this disk cannot take it now.
            Err(FillError::Local(Error::ResourceExhausted(why))) => {
                tracing::info!(%digest, reason = %why, "a local miss was not filled from the shared store: no room");
                Ok(Filled::NotAsked)
            }
            Err(FillError::Local(err)) => Err(err),
        }
    }

    /// Copies an object's frames into the local tier through verification; returns their bytes.
    fn copy_verified(&self, digest: &Digest, mut frames: ObjectFrames) -> Result<u64, FillError> {
        let evictable = crate::store::evictable(&self.local);
        let local = SpaceGuarded::new(Verified::new(self.local.clone()), Arc::clone(&self.space), evictable)
            .for_fills();
        let mut writer = local.write(digest).map_err(FillError::Local)?;
        let mut stored_bytes = 0u64;
        while let Some(frame) = frames.next_frame()? {
            stored_bytes += frame.len() as u64;
            writer.put_frame(frame).map_err(FillError::from_check)?;
        }
        let trailer = frames.trailer()?;
        let object_size = stored_bytes
            + (super::layout::LENGTH_PREFIX as u64) * proto::frames::frame_count(digest.size)
            + trailer.len() as u64;
        let Some((sha256, _)) = parse_trailer(digest, &trailer, object_size) else {
            return Err(FillError::Corrupt("its trailer does not match its frames".to_owned()));
        };
        // Verification computed the SHA-256 itself; a trailer that disagrees is corrupt too.
        writer.commit().map_err(FillError::from_check)?;
        let stored = self.local.stat(&[*digest]).map_err(FillError::Local)?[0];
        if stored.is_some_and(|info| info.sha256 != sha256) {
            self.local.remove(digest).map_err(FillError::Local)?;
            return Err(FillError::Corrupt("its trailer's SHA-256 is not that of its bytes".to_owned()));
        }
        Ok(stored_bytes)
    }
}

/// What a fill came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filled {
    Yes,
    /// The bucket has no (sound) object.
    Absent,
    /// Whether the bucket has one is not known: it was not asked, or did not answer.
    NotAsked,
}

enum FillError {
    Unreachable(object_store::Error),
    Corrupt(String),
    Local(Error),
}

impl FillError {
    /// Verification refuses bytes that do not match the digest: the object is corrupt.
    fn from_check(err: Error) -> Self {
        match err {
            Error::InvalidArgument(why) => Self::Corrupt(why),
            other => Self::Local(other),
        }
    }
}

impl From<FramesError> for FillError {
    fn from(err: FramesError) -> Self {
        match err {
            FramesError::Unreachable(err) => Self::Unreachable(err),
            FramesError::Malformed(why) => Self::Corrupt(why),
        }
    }
}

impl BlobStore for Tiered {
    /// Local first; what the local tier lacks is asked of the bucket. A bucket that does not
    /// answer makes those blobs missing: a client then uploads them, which is always safe. Such
    /// misses, and those the caller's lookups did not cover, are noted as no proof of absence.
    fn stat(&self, digests: &[Digest]) -> Result<Vec<Option<BlobInfo>>> {
        let mut found = self.local.stat(digests)?;
        let missing: Vec<usize> = (0..digests.len()).filter(|&index| found[index].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let asked: Vec<Digest> = missing.iter().map(|&index| digests[index]).collect();
        if !self.bucket.admit_lookups(missing.len()) {
            not_asked(&asked);
            return Ok(found);
        }
        match self.bucket.stat_many(&asked) {
            Ok(answers) => missing.into_iter().zip(answers).for_each(|(index, answer)| found[index] = answer),
            Err(err) => {
                not_asked(&asked);
                tracing::warn!(error = %err, blobs = asked.len(), "the shared store could not say which blobs it holds")
            }
        }
        Ok(found)
    }

    fn contains_locally(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.local.contains(digests)
    }

    /// The local copies only: a blob this replica lacks is not copied here to be marked.
    fn mark_used(&self, digests: &[Digest]) -> Result<()> {
        self.local.mark_used(digests)
    }

    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        if let Some(frames) = self.local.read(digest, first_frame)? {
            SharedCounters::add(&self.counters().local_hits, 1);
            return Ok(Some(frames));
        }
        if !self.fill(digest)? {
            SharedCounters::add(&self.counters().shared_misses, 1);
            return Ok(None);
        }
        SharedCounters::add(&self.counters().shared_hits, 1);
        self.local.read(digest, first_frame)
    }

    /// The local copy only. Filling would copy the whole blob for a read that sends part of
    /// it, and the bucket's object cannot serve the part instead: its frames are checked only
    /// against the whole blob's BLAKE3, so no part of it is verified before all of it is read.
    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        let frames = self.local.read(digest, first_frame)?;
        match &frames {
            Some(_) => SharedCounters::add(&self.counters().local_hits, 1),
            None => not_asked(&[*digest]),
        }
        Ok(frames)
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        let upload = BlobUpload::new(Arc::clone(&self.bucket), digest);
        Ok(Box::new(TieredWriter::new(self.local.write(digest)?, upload)))
    }

    /// Removes the local copy only: the bucket is shared, and local removals are of local
    /// copies (one found corrupt on this disk). Corrupt objects are deleted where found.
    fn remove(&self, digest: &Digest) -> Result<()> {
        self.local.remove(digest)
    }

    fn claim(&self, digests: &[Digest]) {
        self.local.claim(digests)
    }
}

/// For tests: replicas sharing one bucket, each token's misses held to one lookup a second.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use proto::Digest;

    use super::Tiered;
    use crate::shared::Bucket;
    use crate::store::{BlobStore, FreeSpace, RocksStore, SharedStore, Verified};

    /// Lookups a token may ask of the bucket a second (`max_shared_lookups`).
    const LOOKUPS_PER_TOKEN: u32 = 1;

    pub(crate) struct SharedBucket {
        objects: Arc<InMemory>,
        runtime: tokio::runtime::Runtime,
    }

    /// One replica: its own RocksDB in front of the shared bucket.
    pub(crate) struct Replica {
        pub(crate) db: Arc<rocksdb::DB>,
        /// Its local tier alone, for blobs the bucket never had.
        pub(crate) rocks: RocksStore,
        pub(crate) store: SharedStore,
        _dir: tempfile::TempDir,
    }

    impl SharedBucket {
        pub(crate) fn new() -> Self {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            Self { objects: Arc::new(InMemory::new()), runtime }
        }

        pub(crate) fn replica(&self) -> Replica {
            let dir = tempfile::tempdir().unwrap();
            let (db, rocks) = crate::store::open_for_tests(dir.path());
            let objects: Arc<dyn object_store::ObjectStore> = self.objects.clone();
            let bucket =
                Bucket::over_limited(objects, self.runtime.handle().clone(), Some(LOOKUPS_PER_TOKEN));
            let space = Arc::new(FreeSpace::new(dir.path().to_owned(), 0));
            let store = Arc::new(Verified::new(Tiered::new(rocks.clone(), bucket, space)));
            Replica { db, rocks, store, _dir: dir }
        }
    }

    /// Stores `data` (one frame's worth) through `store`.
    pub(crate) fn put(store: &dyn BlobStore, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let mut writer = store.write(&digest).unwrap();
        let frame = proto::frames::FrameEncoder::new(1).unwrap().encode(data).unwrap();
        writer.put_frame(bytes::Bytes::from(frame)).unwrap();
        writer.commit().unwrap();
        digest
    }

    /// Runs `work` for `token`, whose misses are held to its lookup budget.
    pub(crate) fn as_token<R>(token: &str, work: impl FnOnce() -> R) -> R {
        crate::caller::run_as(Some(Arc::from(token)), work)
    }

    /// Spends `token`'s lookups on this replica, as a `FindMissing` of digests no one stored.
    pub(crate) fn spend_lookups(replica: &Replica, token: &str) {
        let nobodys: Vec<Digest> = (0..1_000u32).map(|n| Digest::of(&n.to_le_bytes())).collect();
        let held = as_token(token, || replica.store.contains(&nobodys)).unwrap();
        assert!(held.iter().all(|held| !held));
    }
}

#[cfg(test)]
mod tests {
    use proto::Digest;

    use super::testing::{SharedBucket, as_token, put, spend_lookups};
    use crate::shared::{Presence, presence};

    /// A replica lacking a blob locally says `Absent` only when the bucket said so; a miss it
    /// did not ask about (the caller over its lookups) is `Unknown`, whoever the blob belongs to.
    #[test]
    fn a_miss_not_asked_of_the_bucket_is_unknown() {
        let shared = SharedBucket::new();
        let (a, b) = (shared.replica(), shared.replica());
        let held = put(a.store.as_ref(), b"an output");
        let never = Digest::of(b"never stored");
        spend_lookups(&b, "observer");

        let observed = as_token("observer", || presence(b.store.as_ref(), &[held, never])).unwrap();
        assert_eq!(observed, [Presence::Unknown, Presence::Unknown]);
        let through_a = as_token("observer", || presence(a.store.as_ref(), &[held])).unwrap();
        assert_eq!(through_a, [Presence::Held], "a local hit asks nothing");
        let asked = presence(b.store.as_ref(), &[held, never]).unwrap();
        assert_eq!(asked, [Presence::Held, Presence::Absent], "the bucket's answers are final");
        assert!(b.store.read(&never, 0).unwrap().is_none());
    }
}
