//! Request rate per token: a token bucket that holds one second's worth of requests, so a token
//! may burst to its rate at once and then sustain it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        Self {
            per_second: rate,
            burst: rate,
            bucket: Mutex::new(Bucket { tokens: rate, refilled: Instant::now() }),
        }
    }

    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Takes one request from the bucket, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
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
}
