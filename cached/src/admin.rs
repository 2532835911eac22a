//! Operator actions on the stored records.

use crate::builds::BuildRecords;
use crate::error::{Error, Result};
use crate::gocache::GoEntryStore;
use crate::scheduler::backend::SchedulerBackend;

/// What the tasks of a job cancelled by a purge say.
const PURGED_WHILE_RUNNING: &str = "its namespace was purged while it ran, and it may have used what the purge \
     removed; submit it again";

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub go_entries: u64,
    pub build_records: u64,
}

/// Removes every Go action entry and whole-build record (with its index and history) of
/// `namespace`. Blocking: call it off the async runtime.
pub fn purge_namespace(go: &dyn GoEntryStore, builds: &dyn BuildRecords, namespace: &str) -> Result<Purged> {
    Ok(Purged {
        go_entries: go.purge_namespace(namespace)?,
        build_records: builds.purge_namespace(namespace)?,
    })
}

/// What a purge did, jobs included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub purged: Purged,
    pub jobs_revoked: u64,
    pub jobs_cancelled: u64,
}

/// Purges `namespace`: `remove` deletes its records (blocking, off the runtime), and the jobs
/// that may have read them go with them. Unfinished jobs are cancelled first (a running build
/// may have read the entries, and its lease credential could write them back right after they
/// are gone), no job from before is reused after (every one may have read them), and unfinished
/// jobs are cancelled again (one leased while the purge ran may have read entries it then
/// removed). Reuse is revoked before the records go as well as after, so a submission that
/// arrives while they are being removed is not answered with a job that read them.
pub async fn purge_with_jobs(
    scheduler: &dyn SchedulerBackend,
    namespace: &str,
    remove: impl FnOnce() -> Result<Purged> + Send + 'static,
) -> Result<PurgeReport> {
    let mut jobs_cancelled = scheduler.cancel_unfinished(namespace, PURGED_WHILE_RUNNING).await?;
    let mut jobs_revoked = scheduler.revoke_reuse(namespace).await?;
    let purged = crate::task::spawn_blocking("purge", remove)
        .await
        .map_err(|err| Error::Internal(format!("purge: {err}")))??;
    jobs_revoked += scheduler.revoke_reuse(namespace).await?;
    jobs_cancelled += scheduler.cancel_unfinished(namespace, PURGED_WHILE_RUNNING).await?;
    Ok(PurgeReport { purged, jobs_revoked, jobs_cancelled })
}
