//! Purges across replicas. A purge through one replica deletes the namespace's entries from the
//! bucket and from that replica's RocksDB, but every other replica keeps local copies of the
//! entries it used, and a local hit never asks the bucket: it would go on answering with what
//! the purge was for. So the purging replica leaves a marker in the bucket
//! (`layout::purge_marker`), and every replica follows the markers: one it has not applied
//! since it started drops its local copies of that namespace. A replica applies them all
//! before it serves, then looks again every `FOLLOW_INTERVAL`.
//!
//! Dropping local copies is only ever forgetting: entries still in the bucket are fetched again
//! on the next lookup. So a restart, which forgets what was applied, applies every marker once
//! more, which costs lookups and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Bucket;
use crate::error::Result;
use crate::gocache::GoEntryStore;

/// How often a replica looks for purges through the others: one LIST of a few keys.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// How many purges of each namespace this replica has applied to its local copies. A lookup
/// that fetched an entry from the bucket while a purge was applied may have read it before the
/// bucket's purge: it notes the count before its read and drops the copy it kept if the
/// count moved meanwhile, or the copy would outlive the purge (local hits never ask the bucket
/// again). Counts go up before the local copies are dropped.
#[derive(Default)]
pub struct PurgeEpochs(Mutex<HashMap<String, u64>>);

impl PurgeEpochs {
    pub fn of(&self, namespace: &str) -> u64 {
        self.lock().get(namespace).copied().unwrap_or(0)
    }

    pub fn advance(&self, namespace: &str) {
        *self.lock().entry(namespace.to_owned()).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

pub struct PurgeFollower {
    bucket: Arc<Bucket>,
    /// This replica's own RocksDB entries, under the shared tier.
    local: Arc<dyn GoEntryStore>,
    epochs: Arc<PurgeEpochs>,
    /// Each marker applied since start, by key: the version it had.
    applied: Mutex<HashMap<String, String>>,
}

impl PurgeFollower {
    pub fn new(bucket: Arc<Bucket>, local: Arc<dyn GoEntryStore>, epochs: Arc<PurgeEpochs>) -> Self {
        Self { bucket, local, epochs, applied: Mutex::default() }
    }

    /// Drops the local entries of every namespace purged (through any replica) since this one
    /// last looked; how many namespaces. Blocking.
    pub fn catch_up(&self) -> Result<usize> {
        let mut purged = 0;
        for marker in self.bucket.purge_markers()? {
            let key = marker.key.to_string();
            if self.lock().get(&key) == Some(&marker.version) {
                continue;
            }
            if let Some(namespace) = self.bucket.purged_namespace(&marker)? {
                self.epochs.advance(&namespace);
                let dropped = self.local.purge_namespace(&namespace)?;
                tracing::info!(namespace, dropped, "a purge through another replica: local entries dropped");
                purged += 1;
            }
            self.lock().insert(key, marker.version);
        }
        Ok(purged)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.applied.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Catches up every `FOLLOW_INTERVAL` until `stop`. A bucket that does not answer is reported
/// by the shared tier's health; the next look tries again.
pub async fn follow(follower: Arc<PurgeFollower>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(FOLLOW_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let follower = Arc::clone(&follower);
        match crate::task::spawn_blocking("follow purges", move || follower.catch_up()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "could not look for purges through other replicas"),
            Err(err) => tracing::warn!(error = %err, "following purges panicked"),
        }
    }
}
