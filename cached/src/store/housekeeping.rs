//! Housekeeping: the store's periodic upkeep, off the request path. Reads note access times in
//! memory and uploads only mark the high watermark crossed; this persists the one and evicts
//! for the other, keeps the disk above its free-space floor, and drops Go entries whose blob
//! eviction took.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{FreeSpace, StoreUpkeep, reclaim};
use crate::gocache::GoCache;

/// Go entries looked at per housekeeping round for blobs that are gone: a bounded amount of
/// work (a few hundred milliseconds) however large the action cache is.
const DANGLING_SWEEP_PER_ROUND: usize = 100_000;

/// Every `interval` until `stop`: persists access times and evicts past the high watermark or
/// below the free-space floor, then drops the next slice of Go entries whose blob is gone. A
/// round under way when `stop` comes is finished first, so it never races the final flush.
pub async fn run(
    store: Arc<dyn StoreUpkeep>,
    space: Arc<FreeSpace>,
    go_cache: Arc<GoCache>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
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
            round(&*store, &space, &go_cache, slice)
        })
        .await
        {
            Ok(next) => cursor = next,
            Err(err) => tracing::warn!(error = %err, "store housekeeping panicked"),
        }
    }
}

/// One round, blocking. A failed step is logged and the others still run; the sweep of Go
/// entries goes on from `slice` and returns where the next round starts.
fn round(store: &dyn StoreUpkeep, space: &FreeSpace, go_cache: &GoCache, mut slice: Vec<u8>) -> Vec<u8> {
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
    slice
}
