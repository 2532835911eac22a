//! Go entries with the shared tier: the bucket holds every entry, each replica's RocksDB the
//! ones it used. An entry goes to the bucket only once its blob's object is there, so another
//! replica that finds the entry can find its output too.

use std::sync::Arc;

use proto::ActionId;

use super::bucket::Bucket;
use super::purges::PurgeEpochs;
use super::upload::BlobUpload;
use crate::error::{Error, Result};
use crate::gocache::{EntrySlice, GoEntry, GoEntryStore};
use crate::store::{BlobStore, RocksStore};

pub struct SharedGoEntries {
    local: Arc<dyn GoEntryStore>,
    /// The local blobs, to copy up one the bucket lacks.
    local_blobs: RocksStore,
    bucket: Arc<Bucket>,
    epochs: Arc<PurgeEpochs>,
}

impl SharedGoEntries {
    pub fn new(
        local: Arc<dyn GoEntryStore>,
        local_blobs: RocksStore,
        bucket: Arc<Bucket>,
        epochs: Arc<PurgeEpochs>,
    ) -> Self {
        Self { local, local_blobs, bucket, epochs }
    }

    /// Makes sure the bucket holds the entry's blob: a blob only this replica holds (stored
    /// before it joined the bucket, or while the bucket's copy was lost) is copied up.
    fn ensure_blob_shared(&self, digest: &proto::Digest) -> Result<()> {
        if self.bucket.stat(digest)?.is_some() {
            return Ok(());
        }
        let Some(frames) = self.local_blobs.read(digest, 0)? else {
            return Err(Error::FailedPrecondition(format!(
                "the entry's blob {digest} is not in the shared store {}; upload it again before recording the entry",
                self.bucket.url()
            )));
        };
        let sha256 = frames.info().sha256;
        let mut upload = BlobUpload::new(Arc::clone(&self.bucket), digest);
        for frame in frames {
            upload.push(&frame?)?;
        }
        upload.finish(&sha256)
    }
}

impl GoEntryStore for SharedGoEntries {
    /// Local first; a local miss asks the bucket and keeps what it finds, unless a purge of
    /// the namespace was applied meanwhile (see [`PurgeEpochs`]). A bucket that does not
    /// answer makes it a miss (the build goes on and compiles).
    fn get(&self, namespace: &str, action_id: &ActionId) -> Result<Option<GoEntry>> {
        if let Some(entry) = self.local.get(namespace, action_id)? {
            return Ok(Some(entry));
        }
        if !self.bucket.admit_lookups(1) {
            return Ok(None);
        }
        let epoch = self.epochs.of(namespace);
        match self.bucket.get_entry(namespace, action_id) {
            Ok(Some(entry)) => {
                self.local.put_synced(namespace, action_id, &entry)?;
                if self.epochs.of(namespace) != epoch {
                    self.local.remove(namespace, action_id)?;
                    return Ok(None);
                }
                Ok(Some(entry))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                tracing::warn!(error = %err, "a Go entry could not be looked up in the shared store");
                Ok(None)
            }
        }
    }

    fn put_synced(&self, namespace: &str, action_id: &ActionId, entry: &GoEntry) -> Result<()> {
        self.ensure_blob_shared(&entry.digest)?;
        self.bucket.put_entry(namespace, action_id, entry)?;
        self.local.put_synced(namespace, action_id, entry)
    }

    /// Removes the local copy: an entry is removed locally when its blob is gone from this
    /// replica, which says nothing of the bucket.
    fn remove(&self, namespace: &str, action_id: &ActionId) -> Result<()> {
        self.local.remove(namespace, action_id)
    }

    fn slice(&self, from: &[u8], limit: usize) -> Result<EntrySlice> {
        self.local.slice(from, limit)
    }

    fn remove_keys(&self, positions: &[Vec<u8>]) -> Result<()> {
        self.local.remove_keys(positions)
    }

    /// Purges the bucket's entries of `namespace` too: a purge is of what the namespace
    /// recorded, wherever it is kept. The other replicas' local copies go when they see the
    /// marker left for them ([`super::purges`]).
    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        // Before the bucket's purge, for lookups that read it before the delete and keep
        // their copy after; and again before the local purge, for those that noted the count
        // between the two and kept their copy before it (the local purge drops theirs).
        self.epochs.advance(namespace);
        let shared = self.bucket.purge_namespace(namespace)?;
        self.epochs.advance(namespace);
        let local = self.local.purge_namespace(namespace)?;
        self.bucket.mark_purged(namespace)?;
        Ok(shared.max(local))
    }

    /// The local entries: `max_go_entries` bounds what this replica keeps, not the bucket.
    fn count(&self) -> u64 {
        self.local.count()
    }

    fn forget_oldest(&self, limit: usize) -> Result<u64> {
        self.local.forget_oldest(limit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};

    use super::*;
    use crate::backend::Backends;
    use crate::store::Budget;

    /// A lookup on one replica reads an entry from the bucket just before a purge through
    /// another replica deletes it, and this replica applies the purge while the read is under
    /// way: the entry must not be kept, or local hits would serve it long after the purge.
    #[test]
    fn a_lookup_racing_a_purge_keeps_no_copy() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // This replica's reads come in slowly (after the bucket answered): 30 ms a byte.
        let slow =
            ThrottleConfig { wait_get_per_byte: Duration::from_millis(30), ..ThrottleConfig::default() };
        let here =
            Bucket::over(Arc::new(ThrottledStore::new(Arc::clone(&bucket), slow)), runtime.handle().clone());
        let elsewhere = Bucket::over(bucket, runtime.handle().clone());
        let dir = tempfile::tempdir().unwrap();
        let backends = Backends::open_rocksdb(dir.path(), Budget::new(1 << 30, 0.9, 0.8), 1000)
            .unwrap()
            .with_shared_store(here, dir.path());
        let (entries, follower) = (Arc::clone(&backends.go_entries), backends.purges.clone().unwrap());

        let (namespace, action_id) = ("pr-1", ActionId([7; 32]));
        let entry = GoEntry {
            output_id: proto::OutputId([1; 32]),
            digest: proto::Digest::of(b"poisoned"),
            time_unix_nanos: 1,
        };
        elsewhere.put_entry(namespace, &action_id, &entry).unwrap();
        let lookup = std::thread::Builder::new()
            .name("lookup".into())
            .spawn({
                let entries = Arc::clone(&entries);
                move || entries.get(namespace, &action_id).unwrap()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The purge through the other replica, then this one following it.
        elsewhere.purge_namespace(namespace).unwrap();
        elsewhere.mark_purged(namespace).unwrap();
        let unapplied = follower.unapplied().unwrap();
        assert_eq!(unapplied.len(), 1);
        follower.drop_local(namespace).unwrap();
        assert!(!lookup.is_finished(), "the lookup was to be under way during the purge");
        lookup.join().unwrap();
        assert_eq!(entries.get(namespace, &action_id).unwrap(), None, "the purged entry came back");
    }
}
