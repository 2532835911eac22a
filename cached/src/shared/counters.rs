//! What the shared tier counts, per tier: reads the local tier answered, reads the bucket
//! answered (fills), bytes each way, request latency, corrupt objects, and whether the bucket
//! answers at all. `cachectl stats` and `/metrics` show them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// While the bucket does not answer, one request this often tries it; the others fail at
/// once rather than each waiting out its retries (a build's misses would crawl).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct SharedCounters {
    pub local_hits: AtomicU64,
    /// Local misses the bucket answered: each one filled the local tier.
    pub shared_hits: AtomicU64,
    pub shared_misses: AtomicU64,
    /// Local misses not asked of the bucket: their caller was over `max_shared_lookups`.
    pub lookups_skipped: AtomicU64,
    /// Stored (compressed) bytes read from the bucket into the local tier.
    pub fill_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    /// Objects whose bytes did not match their key; each was deleted, never served.
    pub corrupt_objects: AtomicU64,
    /// Requests that failed for want of the bucket (unreachable, timed out, refused, throttled).
    pub errors: AtomicU64,
    pub requests: AtomicU64,
    pub request_nanos: AtomicU64,
    reachable: AtomicBool,
    /// When the bucket last failed a request, or was last probed since.
    last_try: Mutex<Option<Instant>>,
}

impl Default for SharedCounters {
    fn default() -> Self {
        Self {
            local_hits: AtomicU64::new(0),
            shared_hits: AtomicU64::new(0),
            shared_misses: AtomicU64::new(0),
            lookups_skipped: AtomicU64::new(0),
            fill_bytes: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            upload_bytes: AtomicU64::new(0),
            corrupt_objects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            request_nanos: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            last_try: Mutex::new(None),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SharedSnapshot {
    pub local_hits: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub lookups_skipped: u64,
    pub fill_bytes: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub corrupt_objects: u64,
    pub errors: u64,
    pub requests: u64,
    pub request_seconds_total: f64,
    pub reachable: bool,
}

impl SharedCounters {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Notes one request's outcome; the last one decides whether the bucket counts as reachable.
    pub fn request_ended(&self, took: Duration, reached: bool) {
        Self::add(&self.requests, 1);
        Self::add(&self.request_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        if !reached {
            Self::add(&self.errors, 1);
            *self.last_try.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        let was = self.reachable.swap(reached, Ordering::Relaxed);
        if was != reached {
            if reached {
                tracing::info!("the shared store answers again");
            } else {
                tracing::warn!("the shared store does not answer: reads use the local tier, writes fail");
            }
        }
    }

    /// Notes a request the bucket refused for its rate: it failed, but the bucket answered, so
    /// whether it counts as reachable stays as it was (a breaker one tenant's flood opened would
    /// fail every tenant's writes; one a 429 closed would hide an outage).
    pub fn request_throttled(&self, took: Duration) {
        Self::add(&self.requests, 1);
        Self::add(&self.request_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        Self::add(&self.errors, 1);
    }

    /// Whether a request should be sent: always while the bucket answers; while it does not,
    /// one probe per `PROBE_INTERVAL`. A request not sent counts as an error.
    pub fn may_send(&self) -> bool {
        if self.reachable() {
            return true;
        }
        let mut last_try = self.last_try.lock().unwrap_or_else(PoisonError::into_inner);
        if last_try.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
            Self::add(&self.errors, 1);
            return false;
        }
        *last_try = Some(Instant::now());
        true
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> SharedSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SharedSnapshot {
            local_hits: get(&self.local_hits),
            shared_hits: get(&self.shared_hits),
            shared_misses: get(&self.shared_misses),
            lookups_skipped: get(&self.lookups_skipped),
            fill_bytes: get(&self.fill_bytes),
            uploads: get(&self.uploads),
            upload_bytes: get(&self.upload_bytes),
            corrupt_objects: get(&self.corrupt_objects),
            errors: get(&self.errors),
            requests: get(&self.requests),
            request_seconds_total: Duration::from_nanos(get(&self.request_nanos)).as_secs_f64(),
            reachable: self.reachable(),
        }
    }
}
