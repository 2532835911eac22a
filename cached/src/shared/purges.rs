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
use crate::admin::{Purged, purge_with_jobs};
use crate::builds::BuildRecords;
use crate::error::Result;
use crate::gocache::GoEntryStore;
use crate::scheduler::backend::SchedulerBackend;

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
    /// last looked; those namespaces. Blocking.
    pub fn catch_up(&self) -> Result<Vec<String>> {
        let mut purged = Vec::new();
        for marker in self.bucket.purge_markers()? {
            let key = marker.key.to_string();
            if self.lock().get(&key) == Some(&marker.version) {
                continue;
            }
            // This replica's own purges were applied as they were made.
            let notice = self.bucket.purged_namespace(&marker)?.filter(|notice| !notice.ours);
            if let Some(namespace) = notice.map(|notice| notice.namespace) {
                self.epochs.advance(&namespace);
                let dropped = self.local.purge_namespace(&namespace)?;
                tracing::info!(namespace, dropped, "a purge through another replica: local entries dropped");
                purged.push(namespace);
            }
            self.lock().insert(key, marker.version);
        }
        Ok(purged)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.applied.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// What a replica without a database keeps of a namespace on its own besides Go entries:
/// whole-build records and jobs. A purge through another replica reaches them through the
/// marker too, or its whole builds would still be restored here, and its jobs (whose lease
/// credentials write to the bucket) go on or be reused.
pub struct LocalRecords {
    pub build_records: Arc<dyn BuildRecords>,
    pub scheduler: Arc<dyn SchedulerBackend>,
}

impl LocalRecords {
    async fn purge(&self, namespace: &str) -> Result<()> {
        let records = Arc::clone(&self.build_records);
        let target = namespace.to_owned();
        let report = purge_with_jobs(&*self.scheduler, namespace, move || {
            Ok(Purged { go_entries: 0, build_records: records.purge_namespace(&target)? })
        })
        .await?;
        tracing::info!(
            namespace,
            build_records = report.purged.build_records,
            jobs_revoked = report.jobs_revoked,
            jobs_cancelled = report.jobs_cancelled,
            "a purge through another replica: local records and jobs purged"
        );
        Ok(())
    }
}

/// Catches up once: local entries, then local records when the replica keeps them alone.
pub async fn catch_up(follower: &Arc<PurgeFollower>, records: Option<&LocalRecords>) -> Result<()> {
    let follower = Arc::clone(follower);
    let purged = crate::task::spawn_blocking("follow purges", move || follower.catch_up())
        .await
        .map_err(|err| crate::error::Error::Internal(format!("following purges: {err}")))??;
    if let Some(records) = records {
        for namespace in purged {
            records.purge(&namespace).await?;
        }
    }
    Ok(())
}

/// Catches up every `FOLLOW_INTERVAL` until `stop`. A bucket that does not answer is reported
/// by the shared tier's health; the next look tries again.
pub async fn follow(
    follower: Arc<PurgeFollower>,
    records: Option<LocalRecords>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(FOLLOW_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(err) = catch_up(&follower, records.as_ref()).await {
            tracing::debug!(error = %err, "could not look for purges through other replicas");
        }
    }
}
