//! What one session did, for the summary line printed on close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cached_client::size::human as bytes;

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

    /// The one summary line: `cachectl gocacheprog: 812 gets (790 local hits, ...`, ending
    /// with the CPU the bridge used (on a fresh runner, landing the bodies is what competes with
    /// the go command for the cores).
    pub fn summary(&self, remote: Option<&str>, cpu: Duration) -> String {
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
        line += &format!("; {:.2}s CPU", cpu.as_secs_f64());
        line
    }
}

/// The CPU time this process has used so far, all threads together.
pub fn process_cpu() -> Duration {
    let spent = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(u64::try_from(spent.tv_sec).unwrap_or(0), u32::try_from(spent.tv_nsec).unwrap_or(0))
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
        let line = counters.summary(Some("http://c"), Duration::from_millis(250));
        assert_eq!(
            line,
            "cachectl gocacheprog: 1 gets (1 local hits, 0 preloaded hits, 0 remote hits, 0 misses), 0 puts, \
             0 uploaded, 0 not uploaded; 0 preloaded, 0 B down, 2.0 KiB up; 1.50s waiting on cached at http://c; \
             0.25s CPU"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn process_cpu_grows_with_work() {
        let before = process_cpu();
        let mut hasher = sha2::Sha256::default();
        for _ in 0..20_000 {
            sha2::Digest::update(&mut hasher, [7u8; 4096]);
        }
        std::hint::black_box(sha2::Digest::finalize(hasher));
        assert!(process_cpu() > before, "hashing 80 MiB took no CPU time");
    }
}
