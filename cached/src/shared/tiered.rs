//! The tiered blob store: RocksDB in front of the bucket. A local hit costs what it cost
//! before (no request to the bucket); a local miss is fetched from the bucket, verified frame
//! by frame (BLAKE3 of the plain bytes, through the same verification uploads pass), stored
//! locally, then served from the local tier. Concurrent misses of one blob share one fetch.
//!
//! The bucket being down never fails a read: a miss that cannot be fetched is a miss. It
//! fails writes, which are acknowledged only once in both tiers.
//!
//! A fill is a write to the local disk like an upload, under the same free-space floor: one
//! the room above the floor cannot take is a miss (housekeeping is asked to make that room),
//! so a burst of reads on a nearly full replica cannot fill its disk and wedge RocksDB.

use std::sync::Arc;

use proto::Digest;

use super::bucket::{Bucket, FramesError, ObjectFrames};
use super::counters::SharedCounters;
use super::flights::Flights;
use super::layout::parse_trailer;
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
        let _flight = self.flights.enter(*digest);
        if self.local.contains(&[*digest])?[0] {
            return Ok(true);
        }
        if !self.bucket.admit_lookups(1) {
            return Ok(false);
        }
        let frames = match self.bucket.open_blob(digest) {
            Ok(Some(frames)) => frames,
            Ok(None) => return Ok(false),
            Err(err) => {
                tracing::warn!(%digest, error = %err, "a local miss could not be looked up in the shared store");
                return Ok(false);
            }
        };
        match self.copy_verified(digest, frames) {
            Ok(stored_bytes) => {
                SharedCounters::add(&self.counters().fill_bytes, stored_bytes);
                Ok(true)
            }
            Err(FillError::Unreachable(err)) => {
                tracing::warn!(%digest, error = %err, "the shared store stopped answering while a blob was read");
                Ok(false)
            }
            Err(FillError::Corrupt(why)) => {
                self.bucket.discard_corrupt(digest, &why);
                Ok(false)
            }
            Err(FillError::Local(Error::ResourceExhausted(why))) => {
                tracing::info!(%digest, reason = %why, "a local miss was not filled from the shared store: no room");
                Ok(false)
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
    /// answer makes those blobs missing: a client then uploads them, which is always safe.
    fn stat(&self, digests: &[Digest]) -> Result<Vec<Option<BlobInfo>>> {
        let mut found = self.local.stat(digests)?;
        let missing: Vec<usize> = (0..digests.len()).filter(|&index| found[index].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        if !self.bucket.admit_lookups(missing.len()) {
            return Ok(found);
        }
        let asked: Vec<Digest> = missing.iter().map(|&index| digests[index]).collect();
        match self.bucket.stat_many(&asked) {
            Ok(answers) => missing.into_iter().zip(answers).for_each(|(index, answer)| found[index] = answer),
            Err(err) => {
                tracing::warn!(error = %err, blobs = asked.len(), "the shared store could not say which blobs it holds")
            }
        }
        Ok(found)
    }

    fn contains_locally(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.local.contains(digests)
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

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        let upload = BlobUpload::new(Arc::clone(&self.bucket), digest);
        Ok(Box::new(TieredWriter::new(self.local.write(digest)?, upload)))
    }

    /// Removes the local copy only: the bucket is shared, and local removals are of local
    /// copies (one found corrupt on this disk). Corrupt objects are deleted where found.
    fn remove(&self, digest: &Digest) -> Result<()> {
        self.local.remove(digest)
    }
}
