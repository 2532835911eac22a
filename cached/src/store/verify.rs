//! Verification decorator: decompresses and BLAKE3-hashes every frame of an upload as it
//! arrives, and refuses to commit anything whose bytes do not match the digest it claimed.

use bytes::Bytes;
use proto::Digest;
use proto::frames::{FrameDecoder, frame_count};

use super::{BlobStore, Committed, FrameReader, FrameWriter};
use crate::error::{Error, Result};

pub struct Verified<S> {
    inner: S,
}

impl<S: BlobStore> Verified<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: BlobStore> BlobStore for Verified<S> {
    fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.inner.contains(digests)
    }

    fn read(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        self.inner.read(digest, first_frame)
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        let decoder = FrameDecoder::new(digest.size, 0)
            .map_err(|err| Error::Internal(format!("zstd decoder: {err}")))?;
        Ok(Box::new(VerifyingWriter {
            inner: self.inner.write(digest)?,
            digest: *digest,
            decoder,
            hasher: blake3::Hasher::new(),
        }))
    }
}

struct VerifyingWriter {
    inner: Box<dyn FrameWriter>,
    digest: Digest,
    decoder: FrameDecoder,
    hasher: blake3::Hasher,
}

impl FrameWriter for VerifyingWriter {
    fn put_frame(&mut self, frame: Bytes) -> Result<()> {
        let raw = self
            .decoder
            .decode(&frame)
            .map_err(|err| Error::invalid(format!("upload of {}: {err}; nothing was stored", self.digest)))?;
        self.hasher.update(raw);
        self.inner.put_frame(frame)
    }

    fn commit(self: Box<Self>) -> Result<Committed> {
        if !self.decoder.is_complete() {
            return Err(Error::invalid(format!(
                "upload of {} ended after {} of {} bytes ({} of {} frames); nothing was stored",
                self.digest,
                self.decoder.decoded_bytes(),
                self.digest.size,
                self.decoder.decoded_bytes().div_ceil(proto::FRAME_SIZE as u64),
                frame_count(self.digest.size),
            )));
        }
        let actual = Digest::from_hasher(&self.hasher, self.digest.size);
        if actual != self.digest {
            return Err(Error::invalid(format!(
                "uploaded bytes hash to {actual}, not to the digest {} they were sent as; \
                 nothing was stored",
                self.digest
            )));
        }
        self.inner.commit()
    }
}
