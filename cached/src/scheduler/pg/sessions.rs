//! Heartbeats of the agents connected to this replica: each extends the leases it lists that
//! the agent holds (whichever replica leased them), with their secrets; every other one is
//! answered with an abort, which is how an agent hears that another replica cancelled or
//! expired its task.

use proto::v1::{FencingToken, Heartbeat, TaskState};

use super::super::sessions::check_heartbeat;
use super::super::{abort_message, job_namespace, lease_id, millis, now_ms, token_text};
use super::{PgScheduler, rows};
use crate::auth::Grant;
use crate::error::Result;

impl PgScheduler {
    pub(super) async fn extend_leases(&self, session: u64, heartbeat: Heartbeat) -> Result<()> {
        let (agent_id, grant, sender, resumed) = {
            let mut workers = self.workers();
            let Some(worker) = workers.get_mut(session) else { return Ok(()) };
            check_heartbeat(&worker.info, &heartbeat)?;
            let resumed = worker.draining && !heartbeat.draining;
            worker.draining = heartbeat.draining;
            (
                worker.info.agent_id.clone(),
                std::sync::Arc::clone(&worker.grant),
                worker.sender.clone(),
                resumed,
            )
        };
        if resumed {
            self.work.notify_one();
        }
        if heartbeat.running.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let until = now.saturating_add(millis(self.settings.lease_timeout));
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut job_ids: Vec<&str> = heartbeat.running.iter().map(|token| token.job_id.as_str()).collect();
        job_ids.sort_unstable();
        job_ids.dedup();
        let mut jobs = rows::lock_many(&tx, &job_ids).await?;
        let held = Holder { agent_id: &agent_id, grant: &grant, now };
        let (extended, refused): (Vec<&FencingToken>, Vec<&FencingToken>) =
            heartbeat.running.iter().partition(|token| self.extend(&mut jobs, token, &held, until));
        jobs.retain(|locked| extended.iter().any(|token| token.job_id == locked.job.job_id));
        let leases: Vec<(&str, i32)> =
            extended.iter().map(|token| (token.job_id.as_str(), token.task as i32)).collect();
        rows::extend_leases(&tx, &jobs, &leases, until).await?;
        tx.commit().await?;
        for token in extended {
            self.set_live(lease_id(token), true);
        }
        for token in refused {
            sender.send(abort_message(token.clone()));
        }
        Ok(())
    }

    /// Extends `token`'s lease in its locked job if the agent still holds it with that secret.
    fn extend(
        &self,
        jobs: &mut [rows::Locked],
        token: &FencingToken,
        holder: &Holder<'_>,
        until: i64,
    ) -> bool {
        let Some(locked) = jobs.iter_mut().find(|locked| locked.job.job_id == token.job_id) else {
            return false;
        };
        let allowed = holder.grant.allows_namespace(job_namespace(&locked.job));
        let held = locked.job.tasks.get_mut(token.task as usize).filter(|task| {
            task.state == TaskState::Leased as i32
                && task.attempt == token.attempt
                && task.agent == holder.agent_id
                && task.lease_until_unix_ms >= holder.now
        });
        let Some(task) = held else { return false };
        if !allowed || !self.keys.secret_matches(&lease_id(token), &holder.grant.token, &token.secret) {
            tracing::warn!(target: "audit", agent = %holder.agent_id, token = %holder.grant.token, lease = %token_text(token), "heartbeat without the lease's secret refused");
            return false;
        }
        task.lease_until_unix_ms = until;
        true
    }
}

/// Who sends a heartbeat, and when it is judged.
struct Holder<'a> {
    agent_id: &'a str,
    grant: &'a Grant,
    now: i64,
}
