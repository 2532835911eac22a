//! Singleflight: concurrent local misses of one blob share one fetch from the bucket. The
//! first caller fetches; the others wait for it, then find the blob in the local tier.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

use proto::Digest;

#[derive(Default)]
pub(super) struct Flights {
    fetching: Mutex<HashSet<Digest>>,
    landed: Condvar,
}

/// Held while its digest is being fetched; dropping it lets the next caller in.
pub(super) struct Flight<'a> {
    flights: &'a Flights,
    digest: Digest,
}

impl Flights {
    /// Waits until no other caller is fetching `digest`, then claims it.
    pub(super) fn enter(&self, digest: Digest) -> Flight<'_> {
        let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        while fetching.contains(&digest) {
            fetching = self.landed.wait(fetching).unwrap_or_else(PoisonError::into_inner);
        }
        fetching.insert(digest);
        Flight { flights: self, digest }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut fetching = self.flights.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        fetching.remove(&self.digest);
        self.flights.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_caller_at_a_time_per_digest() {
        let flights = Arc::new(Flights::default());
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (flights, inside, most) = (Arc::clone(&flights), Arc::clone(&inside), Arc::clone(&most));
                std::thread::Builder::new()
                    .name("flight test".into())
                    .spawn(move || {
                        let _flight = flights.enter(Digest::of(b"one key"));
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                    .unwrap()
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
