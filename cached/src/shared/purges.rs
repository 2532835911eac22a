//! Purges across replicas. A purge through one replica deletes the namespace's entries from the
//! bucket and from that replica's RocksDB, but every other replica keeps local copies of the
//! entries it used, and a local hit never asks the bucket: it would go on answering with what
//! the purge was for. So the purging replica leaves a marker in the bucket
//! (`layout::purge_marker`), and every replica follows the markers: one it has not applied
//! drops its local copies of that namespace, and, without a database, its own whole-build
//! records and jobs of it ([`LocalRecords`]). A replica applies them before it serves, then
//! looks again every `FOLLOW_INTERVAL`.
//!
//! A marker counts as applied once all of that succeeded, and what was applied is kept in the
//! data directory (`purges-applied`): a restart does not purge again records and jobs made
//! since, and a replica that was down when the purge happened applies it when it starts. A
//! replica with no such record yet (new, or upgraded) takes the markers it first finds as
//! applied to its records and jobs, dropping only its local entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Each marker applied, by key: the version it had; kept in `record`.
    applied: Mutex<HashMap<String, String>>,
    record: PathBuf,
    /// No record of applied markers was found: the first look applies no records purge.
    first_look: AtomicBool,
}

/// A marker this replica has yet to apply.
pub struct Unapplied {
    key: String,
    version: String,
    /// The purged namespace; `None` when this replica made the purge itself (it applied it as
    /// it made it) or the marker is gone.
    namespace: Option<String>,
}

impl PurgeFollower {
    /// Follows the markers of `bucket`, keeping what it applied in `data_dir`.
    pub fn new(
        bucket: Arc<Bucket>,
        local: Arc<dyn GoEntryStore>,
        epochs: Arc<PurgeEpochs>,
        data_dir: &Path,
    ) -> Self {
        let record = data_dir.join(APPLIED_FILE);
        let kept = std::fs::read_to_string(&record);
        // Without a record (a new replica, or one from before records were kept), the markers
        // already in the bucket drop local entries but purge no records or jobs: those
        // purges were made before this replica kept anything to purge, or were applied by a
        // version that did not record them, and applying them now would purge what was made
        // since.
        let first_look = kept.is_err();
        let applied = kept
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(key, version)| (key.to_owned(), version.to_owned()))
            .collect();
        Self {
            bucket,
            local,
            epochs,
            applied: Mutex::new(applied),
            record,
            first_look: AtomicBool::new(first_look),
        }
    }

    /// The markers not applied yet. Blocking.
    pub fn unapplied(&self) -> Result<Vec<Unapplied>> {
        let mut found = Vec::new();
        for marker in self.bucket.purge_markers()? {
            let key = marker.key.to_string();
            if self.lock().get(&key) == Some(&marker.version) {
                continue;
            }
            let notice = self.bucket.purged_namespace(&marker)?;
            let namespace = notice.filter(|notice| !notice.ours).map(|notice| notice.namespace);
            found.push(Unapplied { key, version: marker.version, namespace });
        }
        Ok(found)
    }

    /// Drops this replica's local entries of `namespace`. Blocking.
    pub(crate) fn drop_local(&self, namespace: &str) -> Result<()> {
        self.epochs.advance(namespace);
        let dropped = self.local.purge_namespace(namespace)?;
        tracing::info!(namespace, dropped, "a purge through another replica: local entries dropped");
        Ok(())
    }

    /// Writes what was applied to the data directory. Blocking.
    fn keep_record(&self) -> Result<()> {
        let applied = self.lock();
        self.write_record(applied.iter())
    }

    fn write_record<'a>(&self, applied: impl Iterator<Item = (&'a String, &'a String)>) -> Result<()> {
        let text: String = applied.map(|(key, version)| format!("{key}\t{version}\n")).collect();
        let temp = self.record.with_extension("tmp");
        std::fs::write(&temp, text)
            .and_then(|()| std::fs::rename(&temp, &self.record))
            .map_err(|err| crate::error::Error::Internal(format!("{}: {err}", self.record.display())))
    }

    /// Records `marker` as applied, in the data directory and then here (so a restart never
    /// finds applied what it does not). Blocking.
    fn applied(&self, marker: &Unapplied) -> Result<()> {
        let mut applied = self.lock();
        let new = (&marker.key, &marker.version);
        self.write_record(applied.iter().filter(|(key, _)| **key != marker.key).chain([new]))?;
        applied.insert(marker.key.clone(), marker.version.clone());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.applied.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Where a replica keeps the markers it applied.
const APPLIED_FILE: &str = "purges-applied";

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

/// Catches up once: for each marker not applied yet, the local entries, then the local
/// records when the replica keeps them alone; the marker counts as applied only once all of
/// that succeeded, so one that failed is tried again at the next look.
pub async fn catch_up(follower: &Arc<PurgeFollower>, records: Option<&LocalRecords>) -> Result<()> {
    let unapplied = blocking(follower, |follower| follower.unapplied()).await?;
    let first_look = follower.first_look.load(Ordering::Relaxed);
    let records = records.filter(|_| !first_look);
    for marker in unapplied {
        // One marker that fails (its namespace's records, say) holds none of the others back.
        if let Err(err) = apply(follower, records, marker).await {
            tracing::warn!(error = %err, "a purge through another replica could not be applied yet; trying again");
        }
    }
    if first_look {
        // From now on the record exists, even empty: a marker seen later is applied whole.
        blocking(follower, PurgeFollower::keep_record).await?;
        follower.first_look.store(false, Ordering::Relaxed);
    }
    Ok(())
}

async fn apply(
    follower: &Arc<PurgeFollower>,
    records: Option<&LocalRecords>,
    marker: Unapplied,
) -> Result<()> {
    if let Some(namespace) = marker.namespace.clone() {
        blocking(follower, move |follower| follower.drop_local(&namespace)).await?;
        if let (Some(records), Some(namespace)) = (records, &marker.namespace) {
            records.purge(namespace).await?;
        }
    }
    blocking(follower, move |follower| follower.applied(&marker)).await
}

async fn blocking<T: Send + 'static>(
    follower: &Arc<PurgeFollower>,
    work: impl FnOnce(&PurgeFollower) -> Result<T> + Send + 'static,
) -> Result<T> {
    let follower = Arc::clone(follower);
    crate::task::spawn_blocking("follow purges", move || work(&follower))
        .await
        .map_err(|err| crate::error::Error::Internal(format!("following purges: {err}")))?
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
