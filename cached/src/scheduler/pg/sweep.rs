//! What any replica does on a timer: expire leases not extended in time and jobs past their
//! deadline (idempotent: under the job's row lock, skipping rows another replica holds, and a
//! second pass finds nothing left to do), delete the oldest finished jobs, and re-read which
//! leases are current for the credential check.

use std::sync::Arc;
use std::time::Duration;

use super::super::store::KEEP_FINISHED;
use super::super::{job_deadline, job_timeout, now_ms, transitions};
use super::{PgScheduler, RETRY, rows};
use crate::auth::LeaseId;
use crate::error::Result;

/// Jobs one sweep looks at; the next sweep takes the rest.
const SWEEP_BATCH: i64 = 256;
/// Finished jobs whose events one sweep deletes (each may hold a task's logs many times over).
const EVENTS_BATCH: i64 = 16;

impl PgScheduler {
    pub(super) async fn run_sweeps(self: Arc<Self>) {
        let period =
            (self.settings.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.subscribe();
        loop {
            let stopped = tokio::select! {
                _ = ticker.tick() => false,
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if stopped {
                return;
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "sweep failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// One pass: expiry, pruning, and the live leases.
    pub async fn sweep(&self) -> Result<()> {
        let now = now_ms();
        let due: Vec<String> = {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT job_id FROM tasks WHERE state = 2 AND lease_until_ms < $1 \
                     UNION SELECT job_id FROM jobs WHERE NOT finished AND deadline_ms < $1 LIMIT $2",
                    &[&now, &SWEEP_BATCH],
                )
                .await?;
            rows.iter().map(|row| row.get(0)).collect()
        };
        let mut expired = false;
        for job_id in due {
            expired |= self.expire(&job_id, now).await?;
        }
        if expired {
            self.changed();
        }
        self.prune().await?;
        self.drop_finished_events(now).await?;
        self.refresh_live().await
    }

    /// Expires what of the job ran out of time; false if nothing did, or another replica is on it.
    async fn expire(&self, job_id: &str, now: i64) -> Result<bool> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let Some(mut locked) = rows::lock(&tx, job_id, true).await? else { return Ok(false) };
        let settings = &self.settings;
        let (timeout, deadline) = (job_timeout(settings, &locked.job), job_deadline(settings, &locked.job));
        let (events, aborted) = transitions::expire(
            &mut locked.job,
            now,
            timeout,
            deadline,
            settings.lease_timeout,
            settings.max_attempts,
        );
        if events.is_empty() {
            return Ok(false);
        }
        rows::update(&tx, &locked.job, locked.version, &self.settings).await?;
        rows::append_events(&tx, job_id, &events).await?;
        tx.commit().await?;
        for task in &aborted {
            self.set_live(
                LeaseId { job_id: job_id.to_owned(), task: task.index, attempt: task.attempt },
                false,
            );
        }
        self.abort_local(job_id, &aborted);
        Ok(true)
    }

    /// Deletes the events of jobs finished long enough ago (`events_until_ms`): up to 8 MiB of
    /// build log per task attempt, which nothing reads once watchers have had the end, and
    /// which the last [`KEEP_FINISHED`] jobs would otherwise keep in the database.
    async fn drop_finished_events(&self, now: i64) -> Result<()> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let due: Vec<String> = tx
            .query(
                "SELECT job_id FROM jobs WHERE events_until_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&now, &EVENTS_BATCH],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let deleted = tx.execute("DELETE FROM job_events WHERE job_id = ANY($1)", &[&due]).await?;
        tx.execute("UPDATE jobs SET events_until_ms = NULL WHERE job_id = ANY($1)", &[&due]).await?;
        tx.commit().await?;
        tracing::debug!(jobs = due.len(), deleted, "events of finished jobs deleted");
        Ok(())
    }

    /// Deletes the oldest finished jobs beyond [`KEEP_FINISHED`] (their tasks and events go
    /// with them).
    async fn prune(&self) -> Result<()> {
        let client = self.db.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM jobs WHERE job_id IN \
                 (SELECT job_id FROM jobs WHERE finished ORDER BY job_id DESC OFFSET $1)",
                &[&(KEEP_FINISHED as i64)],
            )
            .await?;
        if deleted > 0 {
            tracing::debug!(deleted, "old finished jobs deleted");
        }
        Ok(())
    }
}
