//! Metrics decorator: counts the compressed bytes that move through the store and how
//! uploads end. Hits and misses are counted per API by the services, which know what a
//! lookup meant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use proto::Digest;

use super::{BlobStore, Committed, FrameReader, FrameWriter};
use crate::error::Result;

#[derive(Debug, Default)]
pub struct StoreCounters {
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub duplicate_commits: AtomicU64,
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

pub struct Metered<S> {
    inner: S,
    counters: Arc<StoreCounters>,
}

impl<S: BlobStore> Metered<S> {
    pub fn new(inner: S, counters: Arc<StoreCounters>) -> Self {
        Self { inner, counters }
    }

    fn metered(&self, frames: FrameReader) -> FrameReader {
        let counters = Arc::clone(&self.counters);
        frames.and_then(move |frame| {
            add(&counters.read_bytes, frame.len() as u64);
            Ok(frame)
        })
    }
}

impl<S: BlobStore> BlobStore for Metered<S> {
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
        Ok(self.inner.read(digest, first_frame)?.map(|frames| self.metered(frames)))
    }

    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        Ok(self.inner.read_part(digest, first_frame)?.map(|frames| self.metered(frames)))
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        Ok(Box::new(MeteredWriter { inner: self.inner.write(digest)?, counters: Arc::clone(&self.counters) }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.inner.remove(digest)
    }

    fn claim(&self, digests: &[Digest]) {
        self.inner.claim(digests)
    }
}

struct MeteredWriter {
    inner: Box<dyn FrameWriter>,
    counters: Arc<StoreCounters>,
}

impl FrameWriter for MeteredWriter {
    fn put_frame(&mut self, frame: Bytes) -> Result<()> {
        let len = frame.len() as u64;
        self.inner.put_frame(frame)?;
        add(&self.counters.written_bytes, len);
        Ok(())
    }

    fn record_sha256(&mut self, sha256: [u8; 32]) {
        self.inner.record_sha256(sha256);
    }

    fn commit(self: Box<Self>) -> Result<Committed> {
        let committed = self.inner.commit()?;
        match committed {
            Committed::Stored { .. } => add(&self.counters.commits, 1),
            Committed::AlreadyPresent => add(&self.counters.duplicate_commits, 1),
        }
        Ok(committed)
    }
}
