//! Verification decorator: decompresses and hashes every frame of an upload as it arrives,
//! and refuses to commit anything whose bytes do not match the digest it claimed. The frames
//! must be plain zstd frames with nothing else in them (`proto::frames::check_frame`), so a
//! stored blob never costs a reader more than its content.
//!
//! The SHA-256 of the bytes is taken here too, beside BLAKE3, and stored with the blob: it is
//! Go's OutputID of them, which `GoCache.Put` checks by looking it up instead of reading the
//! blob again on a thread that would outlive the request.
//!
//! Reads check each stored frame's shape again (headers only, no decompression): a frame that
//! fails is corrupt at rest, and the blob is removed rather than served.

use bytes::Bytes;
use proto::Digest;
use proto::frames::{FrameDecoder, check_frame, frame_count, frame_len};
use sha2::{Digest as _, Sha256};

use super::{BlobStore, Committed, FrameReader, FrameWriter};
use crate::error::{Error, Result};

pub struct Verified<S> {
    inner: S,
}

impl<S: BlobStore + Clone> Verified<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// Checks each frame's shape as it is read; a frame that fails is corrupt at rest, and
    /// the blob is removed rather than served.
    fn checked(&self, frames: FrameReader, digest: &Digest, first_frame: u64) -> FrameReader {
        let (store, digest) = (self.inner.clone(), *digest);
        let mut index = first_frame;
        frames.and_then(move |frame| {
            let expected = frame_len(digest.size, index).unwrap_or(0);
            if let Err(err) = check_frame(&frame, index, expected) {
                tracing::error!(%digest, error = %err, "a stored blob failed its frame check; removing it");
                if let Err(removal) = store.remove(&digest) {
                    tracing::warn!(%digest, error = %removal, "could not remove a corrupt blob");
                }
                return Err(Error::Corrupt(format!("blob {digest}: {err}; it was removed, upload it again")));
            }
            index += 1;
            Ok(frame)
        })
    }
}

impl<S: BlobStore + Clone> BlobStore for Verified<S> {
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
        Ok(self.inner.read(digest, first_frame)?.map(|frames| self.checked(frames, digest, first_frame)))
    }

    fn read_part(&self, digest: &Digest, first_frame: u64) -> Result<Option<FrameReader>> {
        Ok(self.inner.read_part(digest, first_frame)?.map(|frames| self.checked(frames, digest, first_frame)))
    }

    fn write(&self, digest: &Digest) -> Result<Box<dyn FrameWriter>> {
        let decoder = FrameDecoder::new(digest.size, 0)
            .map_err(|err| Error::Internal(format!("zstd decoder: {err}")))?;
        Ok(Box::new(VerifyingWriter {
            inner: self.inner.write(digest)?,
            digest: *digest,
            decoder,
            blake3: blake3::Hasher::new(),
            sha256: Sha256::new(),
        }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.inner.remove(digest)
    }

    fn claim(&self, digests: &[Digest]) {
        self.inner.claim(digests)
    }
}

struct VerifyingWriter {
    inner: Box<dyn FrameWriter>,
    digest: Digest,
    decoder: FrameDecoder,
    blake3: blake3::Hasher,
    sha256: Sha256,
}

impl FrameWriter for VerifyingWriter {
    fn put_frame(&mut self, frame: Bytes) -> Result<()> {
        let raw = self
            .decoder
            .decode(&frame)
            .map_err(|err| Error::invalid(format!("upload of {}: {err}; nothing was stored", self.digest)))?;
        self.blake3.update(raw);
        self.sha256.update(raw);
        self.inner.put_frame(frame)
    }

    fn record_sha256(&mut self, _: [u8; 32]) {
        // This writer computes the SHA-256 itself; nobody above it knows the bytes.
    }

    fn commit(mut self: Box<Self>) -> Result<Committed> {
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
        let actual = Digest::from_hasher(&self.blake3, self.digest.size);
        if actual != self.digest {
            return Err(Error::invalid(format!(
                "uploaded bytes hash to {actual}, not to the digest {} they were sent as; \
                 nothing was stored",
                self.digest
            )));
        }
        let sha256 = std::mem::take(&mut self.sha256).finalize().into();
        self.inner.record_sha256(sha256);
        self.inner.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RocksStore;

    fn padded_frame(raw: &[u8]) -> Bytes {
        let mut frame = proto::frames::FrameEncoder::new(1).unwrap().encode(raw).unwrap();
        // A zstd skippable frame of 64 bytes: zstd decodes past it, a reader would pay for it.
        frame.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        frame.extend_from_slice(&64u32.to_le_bytes());
        frame.extend_from_slice(&[0; 64]);
        Bytes::from(frame)
    }

    /// Stores `frame` as the one frame of `raw`'s blob behind verification's back, as a
    /// damaged disk or an older server could have left it.
    fn store_unchecked(rocks: &RocksStore, raw: &[u8], frame: Bytes) -> Digest {
        let digest = Digest::of(raw);
        let mut writer = rocks.write(&digest).unwrap();
        writer.put_frame(frame).unwrap();
        writer.record_sha256(Sha256::digest(raw).into());
        writer.commit().unwrap();
        digest
    }

    #[test]
    fn a_stored_frame_with_extra_bytes_is_never_served_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let raw = b"a small blob".repeat(4);
        let digest = store_unchecked(&rocks, &raw, padded_frame(&raw));
        let verified = Verified::new(rocks.clone());
        assert!(verified.contains(&[digest]).unwrap()[0]);
        let mut frames = verified.read(&digest, 0).unwrap().expect("still listed");
        let err = frames.next().unwrap().unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(!verified.contains(&[digest]).unwrap()[0], "the corrupt blob was removed");
        assert_eq!(rocks.totals().blobs, 0);
        assert!(verified.read(&digest, 0).unwrap().is_none());
    }

    #[test]
    fn uploads_record_the_sha256_of_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let verified = Verified::new(rocks);
        let raw = b"go build output".repeat(100);
        let digest = Digest::of(&raw);
        let mut writer = verified.write(&digest).unwrap();
        writer
            .put_frame(Bytes::from(proto::frames::FrameEncoder::new(1).unwrap().encode(&raw).unwrap()))
            .unwrap();
        writer.commit().unwrap();
        let info = verified.stat(&[digest]).unwrap()[0].expect("stored");
        assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&raw)));

        let mut writer = verified.write(&Digest::of(b"padded")).unwrap();
        let err = writer.put_frame(padded_frame(b"padded")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
