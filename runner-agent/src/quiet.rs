//! Warnings a local process can cause at will (a connection to a socket every process may
//! reach), logged at most once per key every [`EVERY`] with how many went unsaid: a build that
//! connects in a loop would otherwise fill the agent's log and the disk under it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// Per key (a uid): when it was last logged, and how many were not since. Bounded by the keys
/// the caller admits (the agent's build uids).
#[derive(Debug, Default)]
pub(crate) struct Quiet(Mutex<HashMap<u32, (Instant, u64)>>);

impl Quiet {
    /// `Some(unsaid)` when a warning for `key` may be logged now, with the number held back
    /// since the last one; `None` to stay quiet.
    pub(crate) fn admit(&self, key: u32) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get_mut(&key) {
            Some((last, unsaid)) if now.duration_since(*last) < EVERY => {
                *unsaid += 1;
                None
            }
            Some((last, unsaid)) => {
                *last = now;
                Some(std::mem::take(unsaid))
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_key_then_quiet() {
        let quiet = Quiet::default();
        assert_eq!(quiet.admit(7), Some(0));
        for _ in 0..1000 {
            assert_eq!(quiet.admit(7), None);
        }
        assert_eq!(quiet.admit(8), Some(0), "keys are apart");
        quiet.0.lock().unwrap().get_mut(&7).unwrap().0 -= EVERY;
        assert_eq!(quiet.admit(7), Some(1000), "the next says how many went unsaid");
    }
}
