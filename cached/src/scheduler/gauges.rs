//! How the queue stands, for `/metrics` and the alerts on it: tasks waiting for an agent, how
//! long the oldest job with one has waited, and the agents connected to this replica. Taken
//! from the backend every few seconds (with PostgreSQL, a query across every replica's jobs),
//! never at scrape time, so a scrape costs the database nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::backend::SchedulerBackend;
use super::now_ms;

const REFRESH: Duration = Duration::from_secs(5);

/// The queue as a backend sees it now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub queued_tasks: u64,
    /// When the oldest unfinished job with a queued task was submitted (ms since the epoch).
    pub oldest_queued_submitted_ms: Option<i64>,
    /// Agents with a lease stream open to this replica.
    pub agents: u64,
}

#[derive(Debug, Default)]
pub struct QueueGauges {
    queued_tasks: AtomicU64,
    /// 0 while nothing is queued.
    oldest_queued_submitted_ms: AtomicI64,
    agents: AtomicU64,
}

impl QueueGauges {
    fn set(&self, depth: QueueDepth) {
        self.queued_tasks.store(depth.queued_tasks, Ordering::Relaxed);
        self.oldest_queued_submitted_ms
            .store(depth.oldest_queued_submitted_ms.unwrap_or(0), Ordering::Relaxed);
        self.agents.store(depth.agents, Ordering::Relaxed);
    }

    pub fn queued_tasks(&self) -> u64 {
        self.queued_tasks.load(Ordering::Relaxed)
    }

    /// Seconds the oldest job with a queued task has waited since it was submitted; 0 if none.
    pub fn oldest_queued_seconds(&self) -> u64 {
        match self.oldest_queued_submitted_ms.load(Ordering::Relaxed) {
            0 => 0,
            submitted => u64::try_from(now_ms().saturating_sub(submitted)).unwrap_or(0) / 1000,
        }
    }

    pub fn agents(&self) -> u64 {
        self.agents.load(Ordering::Relaxed)
    }
}

/// Keeps `gauges` in step with `scheduler` until `stop`. A failed refresh (the database is
/// away) keeps the last values and says so once.
pub async fn refresh(
    scheduler: Arc<dyn SchedulerBackend>,
    gauges: Arc<QueueGauges>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match scheduler.queue_depth().await {
            Ok(depth) => {
                gauges.set(depth);
                failing = false;
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "the queue gauges keep their last values: reading the queue failed");
            }
            Err(_) => {}
        }
    }
}
