//! Rechecks of blobs a reader says came back wrong.
//!
//! Readers verify every byte they download, so a blob that rotted at rest never reaches anyone
//! as wrong bytes. But it stays: uploads of its digest are dropped as already present, and the
//! scrub may take hours to reach it. A reader that saw a digest mismatch or an undecodable
//! frame asks for a recheck; the server never trusts the report, it reads the blob back and
//! hashes it itself, and removes it only when it fails. The next upload then stores it whole.
//!
//! A report costs the server a decode and a hash of the blob, so anyone with the read scope
//! could use reports to make it work: one recheck runs at a time, and a blob found sound is
//! not read again for a while whoever asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Digest;
use proto::frames::FrameDecoder;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::store::SharedStore;

/// How long a blob found sound answers reports without being read again.
const SOUND_FOR: Duration = Duration::from_secs(10 * 60);
/// Sound blobs remembered at most; past it the oldest are forgotten.
const SOUND_REMEMBERED: usize = 4096;

/// What a recheck found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// The stored bytes hash to the digest: the damage the reader saw happened on the way.
    Sound,
    /// The stored bytes were corrupt; the blob is gone, and the next upload stores it again.
    Removed,
    /// The store does not hold the blob (evicted, or removed by an earlier report).
    Absent,
}

pub(super) struct Rechecks {
    store: SharedStore,
    one_at_a_time: Arc<Semaphore>,
    sound: Mutex<HashMap<Digest, Instant>>,
}

impl Rechecks {
    pub(super) fn new(store: SharedStore) -> Self {
        Self { store, one_at_a_time: Arc::new(Semaphore::new(1)), sound: Mutex::default() }
    }

    /// Reads `digest` back and removes it if its bytes fail; see the module's documentation.
    pub(super) async fn recheck(&self, digest: Digest) -> Result<Recheck> {
        if self.recently_sound(&digest) {
            return Ok(Recheck::Sound);
        }
        // The caller's thread first: one whose share is busy must not hold the server's only
        // recheck slot while it waits for a thread.
        let thread = crate::task::reserve_thread().await;
        let permit =
            Arc::clone(&self.one_at_a_time).acquire_owned().await.map_err(|_| Error::ShuttingDown)?;
        // Another report of the same blob may have been checked while this one waited.
        if self.recently_sound(&digest) {
            return Ok(Recheck::Sound);
        }
        let store = Arc::clone(&self.store);
        // The permit goes with the work: a caller that gives up must not let a second recheck
        // start while this one still runs.
        let found = crate::task::spawn_blocking_reserved("cas recheck", thread, move || {
            let _permit = permit;
            recheck_stored(&store, &digest)
        })
        .await??;
        if found == Recheck::Sound {
            self.remember_sound(digest);
        }
        Ok(found)
    }

    fn recently_sound(&self, digest: &Digest) -> bool {
        let sound = self.sound.lock().unwrap_or_else(|poison| poison.into_inner());
        sound.get(digest).is_some_and(|checked| checked.elapsed() < SOUND_FOR)
    }

    fn remember_sound(&self, digest: Digest) {
        let mut sound = self.sound.lock().unwrap_or_else(|poison| poison.into_inner());
        if sound.len() >= SOUND_REMEMBERED {
            sound.retain(|_, checked| checked.elapsed() < SOUND_FOR);
        }
        if sound.len() >= SOUND_REMEMBERED
            && let Some(oldest) = sound.iter().min_by_key(|(_, checked)| **checked).map(|(digest, _)| *digest)
        {
            sound.remove(&oldest);
        }
        sound.insert(digest, Instant::now());
    }
}

fn recheck_stored(store: &SharedStore, digest: &Digest) -> Result<Recheck> {
    let Some(frames) = store.read(digest, 0)? else { return Ok(Recheck::Absent) };
    let mut decoder =
        FrameDecoder::new(digest.size, 0).map_err(|err| Error::Internal(format!("zstd: {err}")))?;
    let mut hasher = blake3::Hasher::new();
    for frame in frames {
        let decoded = match frame {
            Ok(frame) => {
                decoder.decode(&frame).map(|bytes| hasher.update(bytes)).map_err(|err| err.to_string())
            }
            // The store's own frame check found it and already removed the blob.
            Err(Error::Corrupt(_)) => return Ok(Recheck::Removed),
            Err(err) => return Err(err),
        };
        if let Err(why) = decoded {
            return remove(store, digest, &why);
        }
    }
    let actual = Digest::from_hasher(&hasher, digest.size);
    if !decoder.is_complete() || actual != *digest {
        return remove(store, digest, &format!("its bytes hash to {actual}"));
    }
    Ok(Recheck::Sound)
}

fn remove(store: &SharedStore, digest: &Digest, why: &str) -> Result<Recheck> {
    tracing::error!(blob = %digest, why, "a blob a reader reported failed its recheck; it is removed");
    store.remove(digest)?;
    Ok(Recheck::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RocksStore;
    use crate::store::{BlobStore, Verified};

    fn stored(rocks: &RocksStore, data: &[u8]) -> Digest {
        let store = Verified::new(rocks.clone());
        let digest = Digest::of(data);
        let mut writer = store.write(&digest).unwrap();
        writer.put_frame(proto::frames::FrameEncoder::new(1).unwrap().encode(data).unwrap().into()).unwrap();
        writer.commit().unwrap();
        digest
    }

    fn rechecks(rocks: &RocksStore) -> Rechecks {
        Rechecks::new(Arc::new(Verified::new(rocks.clone())))
    }

    #[tokio::test]
    async fn a_sound_blob_stays_and_is_not_read_again_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let digest = stored(&rocks, b"sound bytes");
        let rechecks = rechecks(&rocks);
        assert_eq!(rechecks.recheck(digest).await.unwrap(), Recheck::Sound);
        assert!(rocks.contains(&[digest]).unwrap()[0]);
        assert!(rechecks.recently_sound(&digest));
        let never_stored = Digest::of(b"never stored");
        assert_eq!(rechecks.recheck(never_stored).await.unwrap(), Recheck::Absent);
        assert!(!rechecks.recently_sound(&never_stored));
    }

    #[tokio::test]
    async fn a_rotten_blob_is_removed_and_can_be_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let data = vec![7u8; 100_000];
        let digest = stored(&rocks, &data);
        // A well-formed frame of other bytes, as rot inside a payload that still decodes leaves it.
        let other = proto::frames::FrameEncoder::new(1).unwrap().encode(&vec![8u8; 100_000]).unwrap();
        rocks.damage_frame_for_tests(&digest, 0, |bytes| *bytes = other);
        let rechecks = rechecks(&rocks);
        assert_eq!(rechecks.recheck(digest).await.unwrap(), Recheck::Removed);
        assert!(!rocks.contains(&[digest]).unwrap()[0]);
        assert_eq!(rechecks.recheck(digest).await.unwrap(), Recheck::Absent);
        assert_eq!(stored(&rocks, &data), digest);
        assert_eq!(rechecks.recheck(digest).await.unwrap(), Recheck::Sound);
    }

    #[test]
    fn the_remembered_sound_blobs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let rechecks = rechecks(&rocks);
        for index in 0..SOUND_REMEMBERED + 10 {
            rechecks.remember_sound(Digest::of(&index.to_le_bytes()));
        }
        assert_eq!(rechecks.sound.lock().unwrap().len(), SOUND_REMEMBERED);
        assert!(rechecks.recently_sound(&Digest::of(&(SOUND_REMEMBERED + 9).to_le_bytes())));
    }
}
