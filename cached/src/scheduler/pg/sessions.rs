//! Heartbeats of the agents connected to this replica: each extends the leases it lists that
//! the agent holds (whichever replica leased them), with their secrets; every other one is
//! answered with an abort, which is how an agent hears that another replica cancelled or
//! expired its task.

use proto::v1::{FencingToken, Heartbeat};

use super::super::sessions::{Holder, check_heartbeat};
use super::super::{abort_message, job_namespace, lease_id, millis, now_ms, token_text};
use super::{PgScheduler, rows};
use crate::auth::Grant;
use crate::error::Result;

impl PgScheduler {
    pub(super) async fn extend_leases(&self, session: u64, heartbeat: Heartbeat) -> Result<()> {
        let (agent, name, grant, sender, resumed) = {
            let mut workers = self.workers();
            let Some(worker) = workers.get_mut(session) else { return Ok(()) };
            check_heartbeat(&worker.info, &heartbeat)?;
            let resumed = worker.draining && !heartbeat.draining;
            worker.draining = heartbeat.draining;
            (
                worker.agent.clone(),
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
        let holder = Holder { agent: &agent, name: &name, now };
        let (extended, refused): (Vec<&FencingToken>, Vec<&FencingToken>) =
            heartbeat.running.iter().partition(|token| self.extend(&mut jobs, token, &holder, &grant, until));
        jobs.retain(|locked| extended.iter().any(|token| token.job_id == locked.job.job_id));
        let leases: Vec<(&str, i32)> =
            extended.iter().map(|token| (token.job_id.as_str(), token.task as i32)).collect();
        rows::extend_leases(&tx, &jobs, &leases, &agent, until).await?;
        tx.commit().await?;
        for token in extended {
            self.set_live(lease_id(token), true);
        }
        for token in refused {
            sender.send(abort_message(token.clone()));
        }
        Ok(())
    }

    /// Extends `token`'s lease in its locked job if the agent still holds it with that secret,
    /// and records the lease as the agent's (a lease of before agents were keyed by their
    /// tokens has the bare name).
    fn extend(
        &self,
        jobs: &mut [rows::Locked],
        token: &FencingToken,
        holder: &Holder<'_>,
        grant: &Grant,
        until: i64,
    ) -> bool {
        let Some(locked) = jobs.iter_mut().find(|locked| locked.job.job_id == token.job_id) else {
            return false;
        };
        let allowed = grant.allows_namespace(job_namespace(&locked.job));
        let held = locked.job.tasks.get_mut(token.task as usize).filter(|task| holder.holds(task, token));
        let Some(task) = held else { return false };
        if !allowed || !self.keys.secret_matches(&lease_id(token), &grant.token, &token.secret) {
            tracing::warn!(target: "audit", agent = %holder.agent, token = %grant.token, lease = %token_text(token), "heartbeat without the lease's secret refused");
            return false;
        }
        task.lease_until_unix_ms = until;
        holder.agent.clone_into(&mut task.agent);
        true
    }
}
