//! Job watches last as long as their job (up to `max_job_timeout`) and cost the server a
//! subscription each. A token's rate limit bounds how fast they open, not how many stay open,
//! so each token holds at most `max_watches_per_token` `Jobs.Watch` streams at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;

/// The path of the streams counted here.
pub(super) const WATCH: &str = "/cached.v1.Jobs/Watch";

pub(super) struct TokenWatches {
    cap: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl TokenWatches {
    pub(super) fn new(cap: usize) -> Self {
        Self { cap, held: Mutex::default() }
    }

    /// A slot for one more watch of `token`, or the refusal that says what to do.
    pub(super) fn open(self: &Arc<Self>, token: &str) -> Result<WatchSlot, Error> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let used = held.entry(token.to_owned()).or_default();
        if *used >= self.cap {
            return Err(Error::ResourceExhausted(format!(
                "token `{token}` already watches {} jobs (max_watches_per_token); close a watch \
                 or follow the jobs with Jobs.List",
                self.cap
            )));
        }
        *used += 1;
        Ok(WatchSlot { watches: Arc::clone(self), token: token.to_owned() })
    }

    fn close(&self, token: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(used) = held.get_mut(token) {
            *used = used.saturating_sub(1);
            if *used == 0 {
                held.remove(token);
            }
        }
    }
}

/// One watch's place, given back when its response body is dropped.
pub(super) struct WatchSlot {
    watches: Arc<TokenWatches>,
    token: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.watches.close(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_is_capped_and_slots_come_back() {
        let watches = Arc::new(TokenWatches::new(2));
        let held = [watches.open("ci").unwrap(), watches.open("ci").unwrap()];
        let Err(err) = watches.open("ci") else { panic!("over the cap") };
        assert!(err.to_string().contains("max_watches_per_token"), "{err}");
        let other = watches.open("dev").expect("another token has its own");
        drop(held);
        let again = watches.open("ci").expect("slots came back");
        drop((other, again));
        assert!(watches.held.lock().unwrap().is_empty());
    }
}
