//! The circuit breaker in front of the remote tier: after a few failures in a row, stop asking
//! the server for a while and build with the local tier only, saying so once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker. Low, because each costs the build a wait.
pub const THRESHOLD: u32 = 3;
/// How long an open breaker refuses before letting requests probe the server again.
pub const COOLDOWN: Duration = Duration::from_secs(30);

pub struct Breaker {
    server: String,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    warned: AtomicBool,
}

impl Breaker {
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether a remote request may be made now.
    pub fn allows(&self) -> bool {
        let open_until = self.open_until.lock().unwrap_or_else(|poison| poison.into_inner());
        open_until.is_none_or(|until| Instant::now() >= until)
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.open_until.lock().unwrap_or_else(|poison| poison.into_inner()) = None;
    }

    /// Counts a failure; opens the breaker at the threshold. The first opening of a session
    /// prints the one warning line the build shows.
    pub fn failure(&self, reason: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < THRESHOLD {
            return;
        }
        *self.open_until.lock().unwrap_or_else(|poison| poison.into_inner()) =
            Some(Instant::now() + COOLDOWN);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cached at {} is not answering ({reason}); continuing with the local cache only",
                self.server
            );
        }
    }

    pub fn has_tripped(&self) -> bool {
        self.warned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new("http://x");
        breaker.failure("a");
        breaker.failure("b");
        breaker.success();
        breaker.failure("c");
        breaker.failure("d");
        assert!(breaker.allows());
        breaker.failure("e");
        assert!(!breaker.allows());
        assert!(breaker.has_tripped());
    }
}
