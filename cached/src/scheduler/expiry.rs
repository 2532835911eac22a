//! Leases that were not extended in time and jobs past their deadline: what the sweeper,
//! run every quarter of the lease timeout, takes away from the agents.

use std::sync::Arc;
use std::time::Duration;

use super::dispatch::Scope;
use super::store::Durability;
use super::{Scheduler, State, abort, job_finished, now_ms, transitions};

impl Scheduler {
    /// Expires leases past their deadline and fails jobs past theirs; then hands out what was
    /// requeued.
    pub fn sweep(&self) {
        let mut state = self.lock();
        let State { jobs, workers, index, .. } = &mut *state;
        let now = now_ms();
        let mut changed = Vec::new();
        for (job_id, job) in jobs.iter_mut().filter(|(_, job)| !job_finished(job)) {
            let (timeout, deadline) = (self.timeout(job), self.deadline(job));
            let settings = &self.settings;
            let (events, aborted) = transitions::expire(
                job,
                now,
                timeout,
                deadline,
                settings.lease_timeout,
                settings.max_attempts,
            );
            for task in &aborted {
                abort(workers, job_id, task);
            }
            if !events.is_empty() {
                for event in events {
                    self.emit(job_id, event);
                }
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
