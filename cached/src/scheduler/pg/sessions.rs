//! Heartbeats of the agents connected to this replica: each extends the leases it lists that
//! the agent holds (whichever replica leased them), with their secrets; every other one is
//! answered with an abort, which is how an agent hears that another replica cancelled or
//! expired its task.

use proto::v1::{FencingToken, Heartbeat, TaskState};

use super::super::sessions::check_heartbeat;
use super::super::{abort_message, job_namespace, lease_id, millis, now_ms, token_text};
use super::{PgScheduler, rows};
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
        let mut running = heartbeat.running;
        // Rows are locked in one order by every replica, so two heartbeats never deadlock.
        running.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        let now = now_ms();
        let until = now.saturating_add(millis(self.settings.lease_timeout));
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut refused: Vec<FencingToken> = Vec::new();
        let mut current: Option<rows::Locked> = None;
        let mut changed = false;
        for token in running {
            if current.as_ref().is_none_or(|locked| locked.job.job_id != token.job_id) {
                if let Some(locked) = current.take().filter(|_| changed) {
                    rows::update(&tx, &locked.job, locked.version).await?;
                }
                changed = false;
                current = rows::lock(&tx, &token.job_id, false).await?;
            }
            let Some(locked) = current.as_mut() else {
                refused.push(token);
                continue;
            };
            let allowed = grant.allows_namespace(job_namespace(&locked.job));
            let held = locked.job.tasks.get_mut(token.task as usize).filter(|task| {
                task.state == TaskState::Leased as i32
                    && task.attempt == token.attempt
                    && task.agent == agent_id
                    && task.lease_until_unix_ms >= now
            });
            match held {
                Some(task)
                    if allowed
                        && self.keys.secret_matches(&lease_id(&token), &grant.token, &token.secret) =>
                {
                    task.lease_until_unix_ms = until;
                    changed = true;
                    self.set_live(lease_id(&token), true);
                }
                Some(_) => {
                    tracing::warn!(target: "audit", agent = %agent_id, token = %grant.token, lease = %token_text(&token), "heartbeat without the lease's secret refused");
                    refused.push(token);
                }
                None => refused.push(token),
            }
        }
        if let Some(locked) = current.filter(|_| changed) {
            rows::update(&tx, &locked.job, locked.version).await?;
        }
        tx.commit().await?;
        for token in refused {
            sender.send(abort_message(token));
        }
        Ok(())
    }
}
