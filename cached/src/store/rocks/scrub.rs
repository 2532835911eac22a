//! Scrubbing at rest: stored blobs are read back a slice at a time, every frame decoded and
//! the bytes hashed against the blob's digest, and a blob that fails is removed.
//!
//! Readers verify what they download, so rot never reaches anyone as wrong bytes; but a blob
//! that rotted would otherwise stay: its digest is "present" to every upload, which is then
//! discarded, and each failed read touches it, so eviction never takes it either. The scrub
//! makes it a miss, and the next build that produces it stores it again.
//!
//! Only BLAKE3 is checked: it names the bytes. The SHA-256 beside them (Go's OutputID) sits
//! in the blob's metadata record, which RocksDB's own checksum covers on every read.

use std::sync::atomic::Ordering;

use proto::Digest;
use proto::frames::{FrameDecoder, frame_count};
use rocksdb::{Direction, IteratorMode};

use super::{BlobKey, BlobMeta, RocksStore};
use crate::db::{CF_BLOBS, CF_COUNTERS, cf};
use crate::error::{Error, Result};

/// Where the next scrub slice starts: the key of the last blob checked (empty: the first).
const SCRUB_CURSOR_KEY: &[u8] = b"scrub_cursor";

/// What one slice of the scrub did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSlice {
    pub blobs: u64,
    /// Stored (compressed) bytes read.
    pub stored_bytes: u64,
    pub removed: u64,
    /// The slice reached the last blob: the next one starts a new pass.
    pub pass_done: bool,
}

/// Scrub totals since start: stored bytes checked and blobs removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubTotals {
    pub checked_bytes: u64,
    pub removed_blobs: u64,
}

/// How a blob read back.
enum Verdict {
    Sound,
    /// Its bytes are not what its digest names; why.
    Rotten(String),
    /// It went away (eviction) while it was read.
    Gone,
}

impl RocksStore {
    /// Checks the next stored blobs in key order until about `budget` bytes were checked,
    /// removing any whose bytes fail. A blob costs its size or its stored bytes, whichever is
    /// more: checking it is decoding and hashing it, and a blob of zeros stores a few bytes per
    /// MiB it decodes to, so counting stored bytes alone let a slice decode terabytes. Where the next slice starts is kept in the database, so
    /// a pass goes on across restarts: on a large store one pass outlasts many of them. Reads
    /// here are not accesses: they leave eviction's order alone.
    pub fn scrub(&self, budget: u64) -> Result<ScrubSlice> {
        let db = &self.inner.db;
        let counters = cf(db, CF_COUNTERS)?;
        let mut cursor = db.get_cf(counters, SCRUB_CURSOR_KEY)?.unwrap_or_default();
        let slice = self.scrub_from(&mut cursor, budget);
        // Saved even when the slice failed part way: the blob it failed on is not read again.
        db.put_cf(counters, SCRUB_CURSOR_KEY, &cursor)?;
        slice
    }

    /// [`Self::scrub`] from `cursor`, which is left where the next slice starts (empty: at the
    /// first blob).
    fn scrub_from(&self, cursor: &mut Vec<u8>, budget: u64) -> Result<ScrubSlice> {
        let db = &self.inner.db;
        let blobs = cf(db, CF_BLOBS)?;
        let mode = IteratorMode::From(cursor.as_slice(), Direction::Forward);
        let mut slice = ScrubSlice { pass_done: true, ..ScrubSlice::default() };
        let mut spent = 0u64;
        // One zstd context for the slice: setting one up costs more than a small blob's decode.
        let mut decoder = FrameDecoder::new(0, 0).map_err(|err| Error::Internal(format!("zstd: {err}")))?;
        for item in db.iterator_cf(blobs, mode) {
            let (key, value) = item?;
            if key.as_ref() == cursor.as_slice() {
                continue; // Checked by the slice before.
            }
            if spent >= budget {
                slice.pass_done = false;
                break;
            }
            let (key, meta) = (BlobKey::from_bytes(&key)?, BlobMeta::decode(&value)?);
            *cursor = key.as_bytes().to_vec();
            slice.blobs += 1;
            slice.stored_bytes += meta.stored_bytes;
            spent = spent.saturating_add(meta.size.max(meta.stored_bytes));
            let digest = Digest { hash: key.hash(), size: meta.size };
            if let Verdict::Rotten(why) = self.check(&digest, &meta, &mut decoder)? {
                tracing::error!(blob = %digest, why, "a stored blob failed its scrub; it is removed");
                // Only the upload checked: not a copy stored again since.
                let checked = meta.upload_id;
                slice.removed += u64::from(self.remove_if(&key, |now| now.upload_id == checked)?);
            }
        }
        if slice.pass_done {
            cursor.clear();
        }
        self.inner.scrubbed_bytes.fetch_add(slice.stored_bytes, Ordering::Relaxed);
        self.inner.scrub_removed.fetch_add(slice.removed, Ordering::Relaxed);
        Ok(slice)
    }

    /// Stored bytes checked and blobs removed by scrubbing since start.
    pub fn scrubbed(&self) -> ScrubTotals {
        ScrubTotals {
            checked_bytes: self.inner.scrubbed_bytes.load(Ordering::Relaxed),
            removed_blobs: self.inner.scrub_removed.load(Ordering::Relaxed),
        }
    }

    fn check(&self, digest: &Digest, meta: &BlobMeta, decoder: &mut FrameDecoder) -> Result<Verdict> {
        decoder.restart(meta.size, 0);
        let mut hasher = blake3::Hasher::new();
        for frame in 0..frame_count(meta.size) {
            let Some(stored) = self.inner.stored_frame(meta.upload_id, frame)? else {
                return Ok(Verdict::Gone);
            };
            match decoder.decode(&stored) {
                Ok(bytes) => {
                    hasher.update(bytes);
                }
                Err(err) => return Ok(Verdict::Rotten(err.to_string())),
            }
        }
        let actual = Digest::from_hasher(&hasher, meta.size);
        Ok(if actual == *digest {
            Verdict::Sound
        } else {
            Verdict::Rotten(format!("its bytes hash to {actual}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::frames::FrameEncoder;
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::store::{BlobStore, Committed};

    /// Stores `data` as an upload would leave it: zstd frames and their SHA-256.
    fn store(store: &RocksStore, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let mut writer = store.write(&digest).unwrap();
        let mut encoder = FrameEncoder::new(1).unwrap();
        for raw in data.chunks(proto::FRAME_SIZE) {
            writer.put_frame(Bytes::from(encoder.encode(raw).unwrap())).unwrap();
        }
        writer.record_sha256(Sha256::digest(data).into());
        assert!(matches!(writer.commit().unwrap(), Committed::Stored { .. }));
        digest
    }

    fn damage(store: &RocksStore, digest: &Digest, frame: u64, damage: impl FnOnce(&mut Vec<u8>)) {
        store.damage_frame_for_tests(digest, frame, damage);
    }

    /// Bytes that compress, different for each `seed`.
    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) as u8).wrapping_mul(seed) ^ (i % 5) as u8).collect()
    }

    #[test]
    fn a_blob_whose_bytes_rotted_is_removed_and_sound_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let sound = store(&rocks, &data(3, 3 * proto::FRAME_SIZE + 10));
        let flipped = store(&rocks, &data(5, 2 * proto::FRAME_SIZE));
        let swapped = store(&rocks, &data(7, 2 * proto::FRAME_SIZE + 1));
        let tiny = store(&rocks, b"a small blob");
        // A bit flipped inside the compressed payload, headers intact: only decoding and
        // hashing find it.
        damage(&rocks, &flipped, 1, |bytes| {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
        });
        // A well-formed frame of other bytes in its place: only the digest finds it.
        let other = FrameEncoder::new(1).unwrap().encode(&data(9, proto::FRAME_SIZE)).unwrap();
        damage(&rocks, &swapped, 0, |bytes| *bytes = other);

        let slice = rocks.scrub(u64::MAX).unwrap();
        assert_eq!((slice.blobs, slice.removed, slice.pass_done), (4, 2, true), "{slice:?}");
        assert_eq!(
            rocks.contains(&[sound, flipped, swapped, tiny]).unwrap(),
            [true, false, false, true],
            "the rotten blobs are misses; the sound ones stay"
        );
        assert_eq!(rocks.totals().blobs, 2);
        assert_eq!(rocks.scrubbed().removed_blobs, 2);
        // Removed, the blob can be stored again whole.
        let again = store(&rocks, &data(5, 2 * proto::FRAME_SIZE));
        assert_eq!(again, flipped);
        let again = rocks.scrub(u64::MAX).unwrap();
        assert_eq!((again.blobs, again.removed), (3, 0), "the next pass starts over, at the first blob");
    }

    #[test]
    fn a_slice_counts_what_its_blobs_decode_to_not_what_they_store() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        // Zeros store a few bytes per MiB they decode to.
        for extra in 0..10 {
            store(&rocks, &vec![0; proto::FRAME_SIZE + extra]);
        }
        let slice = rocks.scrub(2 * proto::FRAME_SIZE as u64).unwrap();
        assert!(slice.blobs <= 2, "a 2 MiB slice decoded {} blobs of a MiB each", slice.blobs);
        assert!(!slice.pass_done);
    }

    #[test]
    fn slices_take_up_where_the_last_stopped_even_after_a_restart_and_leave_eviction_order_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (db, rocks) = crate::store::open_for_tests(dir.path());
        let digests: Vec<Digest> = (1..=10).map(|seed| store(&rocks, &data(seed, 4096))).collect();
        // A budget of one byte reads one blob per slice.
        let first = rocks.scrub(1).unwrap();
        assert_eq!((first.blobs, first.pass_done), (1, false));
        // A restart: the pass goes on after the blob checked last.
        drop((db, rocks));
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let mut seen = first.blobs;
        loop {
            let slice = rocks.scrub(1).unwrap();
            seen += slice.blobs;
            if slice.pass_done {
                break;
            }
            assert_eq!(slice.blobs, 1);
        }
        assert_eq!(seen, 10, "every blob once per pass, the restart included");
        assert_eq!(rocks.scrubbed().checked_bytes + first.stored_bytes, rocks.totals().stored_bytes);
        assert!(rocks.inner.access_log.drain().is_empty(), "scrubbing is not an access");
        assert_eq!(rocks.contains(&digests).unwrap(), vec![true; 10]);
    }
}
