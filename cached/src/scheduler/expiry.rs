//! Leases that were not extended in time and jobs past their deadline: what the sweeper,
//! run every quarter of the lease timeout, takes away from the agents.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::TaskState;

use super::dispatch::Scope;
use super::store::Durability;
use super::{Scheduler, State, abort, is_terminal, job_finished, now_ms};

impl Scheduler {
    /// Expires leases past their deadline and fails jobs past theirs; then hands out what was
    /// requeued.
    pub fn sweep(&self) {
        let mut state = self.lock();
        let State { jobs, workers, index } = &mut *state;
        let now = now_ms();
        let mut changed = Vec::new();
        for (job_id, job) in jobs.iter_mut().filter(|(_, job)| !job_finished(job)) {
            let mut job_changed = false;
            let timeout = self.timeout(job);
            let deadline = self.deadline(job);
            for task in &mut job.tasks {
                if is_terminal(task.state) {
                    continue;
                }
                if now > deadline {
                    if task.state == TaskState::Leased as i32 {
                        abort(workers, job_id, task);
                    }
                    let error = format!("the job timed out after {}", humantime::format_duration(timeout));
                    self.fail_task(job_id, task, error);
                    job_changed = true;
                } else if task.state == TaskState::Leased as i32 && task.lease_until_unix_ms < now {
                    abort(workers, job_id, task);
                    let why = format!(
                        "the lease of agent {} expired (no heartbeat for {})",
                        task.agent,
                        humantime::format_duration(self.settings.lease_timeout)
                    );
                    task.lease_until_unix_ms = 0;
                    if task.attempt >= self.settings.max_attempts {
                        let error = format!("gave up after {} attempts; last: {why}", task.attempt);
                        self.fail_task(job_id, task, error);
                    } else {
                        self.requeue_task(job_id, task, why);
                    }
                    tracing::warn!(job = %job_id, task = task.index, attempt = task.attempt, agent = %task.agent, "lease expired");
                    job_changed = true;
                }
            }
            if job_changed {
                self.finish_if_done(job);
                index.update(job);
                changed.push(job_id.clone());
            }
        }
        // Not synced: after a power cut the same leases and deadlines expire again.
        let _ = self.save(changed.iter().filter_map(|job_id| jobs.get(job_id)), Durability::Buffered);
        self.prune(&mut state);
        if !changed.is_empty() {
            self.dispatch(&mut state, Scope::All);
        }
    }

    /// Runs [`Scheduler::sweep`] until shutdown.
    pub async fn run_sweeper(self: Arc<Self>) {
        let period =
            (self.settings.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stopping();
        loop {
            tokio::select! {
                _ = ticker.tick() => self.sweep(),
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }
}
