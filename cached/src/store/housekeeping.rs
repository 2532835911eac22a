//! Housekeeping: the store's periodic upkeep, off the request path. Reads note access times in
//! memory and uploads only mark the high watermark crossed; this persists the one and evicts
//! for the other, keeps the disk above its free-space floor, drops Go entries whose blob
//! eviction took and forgets the oldest beyond `max_go_entries`, and scrubs the next slice of
//! stored blobs (`scrub_rate`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{FreeSpace, StoreUpkeep, reclaim};
use crate::gocache::GoCache;

/// Go entries looked at per housekeeping round for blobs that are gone: a bounded amount of
/// work (a few hundred milliseconds) however large the action cache is.
const DANGLING_SWEEP_PER_ROUND: usize = 100_000;

/// When rounds run and how much each scrubs.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    /// Stored bytes each round reads back; 0: no scrub.
    pub scrub_per_round: u64,
}

impl Schedule {
    /// Rounds every `interval`, scrubbing `scrub_rate` stored bytes per second of it.
    pub fn new(interval: Duration, scrub_rate: u64) -> Self {
        let scrub_per_round = (scrub_rate as f64 * interval.as_secs_f64()).min(u64::MAX as f64) as u64;
        Self { interval, scrub_per_round }
    }
}

/// Every `interval` until `stop`: persists access times and evicts past the high watermark or
/// below the free-space floor, then drops the next slice of Go entries whose blob is gone and
/// scrubs the next slice of blobs. A round under way when `stop` comes is finished first, so
/// it never races the final flush.
pub async fn run(
    store: Arc<dyn StoreUpkeep>,
    space: Arc<FreeSpace>,
    go_cache: Arc<GoCache>,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let (store, space, go_cache, slice) =
            (Arc::clone(&store), Arc::clone(&space), Arc::clone(&go_cache), std::mem::take(&mut cursor));
        match crate::task::spawn_blocking("housekeeping round", move || {
            round(&*store, &space, &go_cache, schedule.scrub_per_round, slice)
        })
        .await
        {
            Ok(next) => cursor = next,
            Err(err) => tracing::warn!(error = %err, "store housekeeping panicked"),
        }
    }
}

/// One round, blocking. A failed step is logged and the others still run; the sweep of Go
/// entries goes on from `slice` and returns where the next round starts (the scrub keeps its
/// own place, in the store).
fn round(
    store: &dyn StoreUpkeep,
    space: &FreeSpace,
    go_cache: &GoCache,
    scrub: u64,
    mut slice: Vec<u8>,
) -> Vec<u8> {
    if let Err(err) = store.maintain() {
        tracing::warn!(error = %err, "store housekeeping failed");
    }
    if let Err(err) = reclaim(store, space) {
        tracing::warn!(error = %err, "freeing disk space failed");
    }
    match go_cache.sweep_dangling(&mut slice, DANGLING_SWEEP_PER_ROUND) {
        Ok(0) => {}
        Ok(dropped) => tracing::info!(dropped, "dropped Go entries whose blob was evicted"),
        Err(err) => tracing::warn!(error = %err, "sweeping Go entries failed"),
    }
    match go_cache.forget_oldest(crate::gocache::FORGET_PER_ROUND) {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(forgotten, "forgot the oldest Go entries beyond max_go_entries"),
        Err(err) => tracing::warn!(error = %err, "forgetting the oldest Go entries failed"),
    }
    if scrub > 0 {
        match store.scrub(scrub) {
            Ok(slice) if slice.pass_done => tracing::debug!(?slice, "a scrub pass of the store ended"),
            Ok(_) => {}
            // The scrub's place is past the blob that failed to read: the next round goes on.
            Err(err) => tracing::warn!(error = %err, "scrubbing stored blobs failed"),
        }
    }
    slice
}
