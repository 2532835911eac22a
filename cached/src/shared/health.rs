//! The shared tier's health, for load balancers and operators: the gRPC health status of
//! `HEALTH_SERVICE` is SERVING while the bucket answers and NOT_SERVING (degraded: local reads
//! only, writes refused) while it does not. While it does not, a probe every few seconds
//! finds out when it is back, even with no traffic to notice it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::Bucket;

/// The name health checks ask about.
pub const HEALTH_SERVICE: &str = "cached.v1.SharedStore";
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps `HEALTH_SERVICE`'s status in step with the bucket until `stop`.
pub async fn watch(bucket: Arc<Bucket>, health: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if !bucket.counters.reachable() {
            let probe = Arc::clone(&bucket);
            // The answer lands in the counters; a failed probe was logged as the bucket failing.
            let _ = crate::task::spawn_blocking("shared store probe", move || probe.probe()).await;
        }
        let reachable = bucket.counters.reachable();
        if reported != Some(reachable) {
            let status = if reachable { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status(HEALTH_SERVICE, status).await;
            reported = Some(reachable);
        }
    }
}
