//! Rates per token: a token bucket. For requests it holds one second's worth, so a token may
//! burst to its rate at once and then sustain it; for bytes of work ([`RateLimiter::charge`])
//! the burst is chosen by the caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self::with_burst(rate, rate)
    }

    /// A bucket refilled at `per_second` that holds at most `burst`, full at first.
    pub fn with_burst(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst, bucket: Mutex::new(Bucket { tokens: burst, refilled: Instant::now() }) }
    }

    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Takes one request from the bucket, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.refilled(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(1.0 - bucket.tokens))
        }
    }

    /// Takes `amount` unless the bucket is in debt, letting it go below zero: a cost larger
    /// than the burst (one whole blob) is allowed once, and paid back before the next.
    pub fn charge(&self, amount: f64) -> Result<(), Duration> {
        self.charge_at(amount, Instant::now())
    }

    fn charge_at(&self, amount: f64, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.refilled(now);
        if bucket.tokens < 0.0 {
            return Err(self.wait_for(-bucket.tokens));
        }
        bucket.tokens -= amount;
        Ok(())
    }

    /// Whether the bucket is full, so forgetting it changes nothing.
    pub fn is_full(&self) -> bool {
        self.refilled(Instant::now()).tokens >= self.burst
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        bucket
    }

    fn wait_for(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(tokens / self.per_second)
    }
}

/// Buckets kept before full ones (as good as new) are dropped: lease credentials are tokens
/// of their own, one per task attempt.
const PRUNE_BUCKETS_AT: usize = 1024;

/// One bucket per token name, each refilled at `per_second` and holding `burst`.
pub struct TokenBuckets {
    per_second: f64,
    burst: f64,
    buckets: DashMap<String, Arc<RateLimiter>>,
    prune_at: AtomicUsize,
}

impl TokenBuckets {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst, buckets: DashMap::new(), prune_at: AtomicUsize::new(PRUNE_BUCKETS_AT) }
    }

    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// The bucket of the token named `token`.
    pub fn of(&self, token: &str) -> Arc<RateLimiter> {
        if let Some(bucket) = self.buckets.get(token) {
            return Arc::clone(&bucket);
        }
        if self.buckets.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.buckets.retain(|_, bucket| !bucket.is_full());
            self.prune_at.store(PRUNE_BUCKETS_AT.max(2 * self.buckets.len()), Ordering::Relaxed);
        }
        let (per_second, burst) = (self.per_second, self.burst);
        Arc::clone(
            &self
                .buckets
                .entry(token.to_owned())
                .or_insert_with(|| Arc::new(RateLimiter::with_burst(per_second, burst))),
        )
    }

    /// Buckets kept, for tests of pruning.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_the_rate_then_refills() {
        let limiter = RateLimiter::per_second(10);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check_at(start).is_ok());
        }
        let wait = limiter.check_at(start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert!(limiter.check_at(start + Duration::from_millis(100)).is_ok());
        assert!(limiter.check_at(start + Duration::from_millis(100)).is_err());
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.check_at(later).is_ok()).count(), 10);
    }

    #[test]
    fn full_buckets_are_dropped_once_many_exist() {
        let buckets = TokenBuckets::new(1.0, 10.0);
        buckets.of("spent").charge(1.0).unwrap();
        for i in 0..PRUNE_BUCKETS_AT {
            buckets.of(&format!("lease:{i}"));
        }
        buckets.of("one more");
        assert!(buckets.kept() <= 3, "{} buckets kept", buckets.kept());
        assert!(buckets.buckets.contains_key("spent"), "a bucket in use is kept");
    }

    #[test]
    fn a_charge_past_the_burst_is_paid_back_before_the_next() {
        let limiter = RateLimiter::with_burst(100.0, 1000.0);
        let start = Instant::now();
        assert!(limiter.charge_at(5000.0, start).is_ok(), "a full bucket takes any one charge");
        let wait = limiter.charge_at(1.0, start).unwrap_err();
        assert!(wait > Duration::from_secs(39) && wait <= Duration::from_secs(40), "{wait:?}");
        assert!(limiter.charge_at(1.0, start + Duration::from_secs(39)).is_err());
        assert!(limiter.charge_at(1.0, start + Duration::from_secs(40)).is_ok(), "the debt is paid");
    }
}
