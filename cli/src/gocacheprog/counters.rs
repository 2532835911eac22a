//! What one session did, for the summary line printed on close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::render::bytes;

#[derive(Default)]
pub struct Counters {
    pub gets: AtomicU64,
    pub local_hits: AtomicU64,
    pub remote_hits: AtomicU64,
    /// Hits on entries the session preload brought in (see `preload`).
    pub preloaded_hits: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
    pub put_errors: AtomicU64,
    pub uploads: AtomicU64,
    /// Uploads not made: queue full, server refusing, or still pending at the close deadline.
    pub uploads_lost: AtomicU64,
    /// Entries the session preload brought into the local tier.
    pub preloaded: AtomicU64,
    /// Bytes down, preloaded bodies included.
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    /// Time the go command spent blocked on the server: remote lookups and the close flush.
    pub wait_nanos: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

impl Counters {
    pub fn waited(&self, duration: Duration) {
        add(&self.wait_nanos, u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The one summary line: `cachectl gocacheprog: 812 gets (790 local hits, ...`.
    pub fn summary(&self, remote: Option<&str>) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut line = format!(
            "cachectl gocacheprog: {} gets ({} local hits, {} preloaded hits, {} remote hits, {} misses), {} puts",
            get(&self.gets),
            get(&self.local_hits),
            get(&self.preloaded_hits),
            get(&self.remote_hits),
            get(&self.misses),
            get(&self.puts),
        );
        if get(&self.put_errors) > 0 {
            line += &format!(" ({} failed)", get(&self.put_errors));
        }
        match remote {
            Some(server) => {
                line += &format!(
                    ", {} uploaded, {} not uploaded; {} preloaded, {} down, {} up; {:.2}s waiting on cached at {server}",
                    get(&self.uploads),
                    get(&self.uploads_lost),
                    get(&self.preloaded),
                    bytes(get(&self.bytes_down)),
                    bytes(get(&self.bytes_up)),
                    Duration::from_nanos(get(&self.wait_nanos)).as_secs_f64(),
                );
            }
            None => line += "; local only",
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_count() {
        let counters = Counters::default();
        bump(&counters.gets);
        bump(&counters.local_hits);
        add(&counters.bytes_up, 2048);
        counters.waited(Duration::from_millis(1500));
        let line = counters.summary(Some("http://c"));
        assert_eq!(
            line,
            "cachectl gocacheprog: 1 gets (1 local hits, 0 preloaded hits, 0 remote hits, 0 misses), 0 puts, \
             0 uploaded, 0 not uploaded; 0 preloaded, 0 B down, 2.0 KiB up; 1.50s waiting on cached at http://c"
        );
        assert!(!line.contains('\n'));
    }
}
