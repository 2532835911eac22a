//! Write-through: an upload goes to the bucket and to the local tier side by side, and is
//! acknowledged only once both hold it. Small blobs go up in one PUT at commit; a blob past
//! `PART_SIZE` (5 MiB) streams up as a multipart upload, a few parts in flight, so memory stays
//! bounded whatever the blob's size. The bucket completes first: what the local tier holds
//! after an acknowledged write, the bucket holds too.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::bucket::Bucket;
use super::counters::SharedCounters;
use super::layout::trailer;
use crate::error::{Error, Result};
use crate::store::{Committed, FrameWriter};

/// Bytes of one multipart part: S3's least (but for the last part), as memory is what a
/// large upload costs; up to 10,000 parts make objects of up to 48 GiB.
const PART_SIZE: usize = 5 << 20;
/// Parts uploading at once: with the part being filled, about 3 × PART_SIZE in memory.
const PARTS_IN_FLIGHT: usize = 2;

/// One blob's object, on its way to the bucket.
pub(super) struct BlobUpload {
    bucket: Arc<Bucket>,
    path: Path,
    pending: Vec<Bytes>,
    pending_len: usize,
    multipart: Option<WriteMultipart>,
    frame_bytes: u64,
}

impl BlobUpload {
    pub(super) fn new(bucket: Arc<Bucket>, digest: &proto::Digest) -> Self {
        let path = bucket.layout.blob(digest);
        Self { bucket, path, pending: Vec::new(), pending_len: 0, multipart: None, frame_bytes: 0 }
    }

    pub(super) fn push(&mut self, frame: &Bytes) -> Result<()> {
        let prefix = u32::try_from(frame.len()).map_err(|_| Error::invalid("a frame over 4 GiB"))?;
        self.pending.push(Bytes::copy_from_slice(&prefix.to_le_bytes()));
        self.pending.push(frame.clone());
        self.pending_len += 4 + frame.len();
        self.frame_bytes += frame.len() as u64;
        if self.pending_len >= PART_SIZE { self.send_pending() } else { Ok(()) }
    }

    /// Hands what is pending to the multipart upload (starting it), waiting while too many
    /// parts are still in flight.
    fn send_pending(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            let upload = self.bucket.call(self.bucket.store.put_multipart(&self.path))?.expect("an upload");
            self.multipart = Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE));
        }
        let multipart = self.multipart.as_mut().expect("started above");
        for chunk in self.pending.drain(..) {
            multipart.put(chunk);
        }
        self.pending_len = 0;
        let bucket = &self.bucket;
        bucket.call(multipart.wait_for_capacity(PARTS_IN_FLIGHT))?;
        Ok(())
    }

    /// Ends the object with its trailer and makes it visible.
    pub(super) fn finish(mut self, sha256: &[u8; 32]) -> Result<()> {
        self.pending.push(Bytes::from(trailer(sha256, self.frame_bytes)));
        let bucket = Arc::clone(&self.bucket);
        match self.multipart.take() {
            None => {
                let payload = PutPayload::from_iter(std::mem::take(&mut self.pending));
                bucket.call(bucket.store.put(&self.path, payload))?;
            }
            Some(mut multipart) => {
                for chunk in self.pending.drain(..) {
                    multipart.put(chunk);
                }
                bucket.call(multipart.finish())?;
            }
        }
        SharedCounters::add(&bucket.counters.uploads, 1);
        SharedCounters::add(&bucket.counters.upload_bytes, self.frame_bytes);
        Ok(())
    }
}

impl Drop for BlobUpload {
    /// An upload that never finished is aborted, so the bucket does not keep its parts.
    fn drop(&mut self) {
        if let Some(multipart) = self.multipart.take() {
            let path = self.path.clone();
            self.bucket.runtime.spawn(async move {
                if let Err(err) = multipart.abort().await {
                    tracing::warn!(%path, error = %err, "could not abort a multipart upload");
                }
            });
        }
    }
}

/// The writer of a tiered upload: frames go to both tiers as they arrive.
pub(super) struct TieredWriter {
    local: Box<dyn FrameWriter>,
    upload: Option<BlobUpload>,
    sha256: Option<[u8; 32]>,
}

impl TieredWriter {
    pub(super) fn new(local: Box<dyn FrameWriter>, upload: BlobUpload) -> Self {
        Self { local, upload: Some(upload), sha256: None }
    }
}

impl FrameWriter for TieredWriter {
    fn put_frame(&mut self, frame: Bytes) -> Result<()> {
        self.upload.as_mut().expect("until commit").push(&frame)?;
        self.local.put_frame(frame)
    }

    fn record_sha256(&mut self, sha256: [u8; 32]) {
        self.sha256 = Some(sha256);
        self.local.record_sha256(sha256);
    }

    fn commit(mut self: Box<Self>) -> Result<Committed> {
        let sha256 = self.sha256.ok_or_else(|| {
            Error::Internal("a blob reached the shared store without its SHA-256".to_owned())
        })?;
        self.upload.take().expect("until commit").finish(&sha256)?;
        self.local.commit()
    }
}
