//! Shares of a bounded resource per token: how much of it each token holds now, against a cap
//! per token. A token's rate limit bounds how fast its calls come, not how much they hold;
//! these bound that (streams, request bytes in flight, unfinished uploads on disk). And the
//! fair level records are cut down to by namespace when a bound is passed ([`fair_level`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

pub struct PerToken {
    cap: u64,
    held: Mutex<HashMap<String, u64>>,
}

impl PerToken {
    pub fn new(cap: u64) -> Self {
        Self { cap, held: Mutex::default() }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Takes `amount` more for `token`, or, when that would pass the cap, takes nothing and
    /// says how much the token holds.
    pub fn take(&self, token: &str, amount: u64) -> Result<(), u64> {
        let mut held = self.lock();
        let used = held.entry(token.to_owned()).or_default();
        if used.saturating_add(amount) > self.cap {
            let used = *used;
            if used == 0 {
                held.remove(token);
            }
            return Err(used);
        }
        *used += amount;
        Ok(())
    }

    pub fn give_back(&self, token: &str, amount: u64) {
        let mut held = self.lock();
        if let Some(used) = held.get_mut(token) {
            *used = used.saturating_sub(amount);
            if *used == 0 {
                held.remove(token);
            }
        }
    }

    /// Whether no token holds anything.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The highest level such that holders of `bytes`, each cut down to it, hold `target` or less
/// in all: what is above it goes, and a holder below it keeps everything. Records past a
/// bound go this way by namespace, so a namespace's flood costs that namespace first.
pub fn fair_level(bytes: impl Iterator<Item = u64>, target: u64) -> u64 {
    let mut bytes: Vec<u64> = bytes.collect();
    bytes.sort_unstable();
    let mut below = 0u64;
    for (at, &held) in bytes.iter().enumerate() {
        let above = (bytes.len() - at) as u64;
        if below.saturating_add(held.saturating_mul(above)) > target {
            return target.saturating_sub(below) / above;
        }
        below += held;
    }
    bytes.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_level_cuts_only_the_holders_above_it() {
        assert_eq!(fair_level([100, 1200].into_iter(), 1170), 1070);
        assert_eq!(fair_level([300, 300, 300].into_iter(), 600), 200);
        assert_eq!(fair_level([10, 20].into_iter(), 100), 20, "nothing to cut");
        assert_eq!(fair_level(std::iter::empty(), 100), 0);
    }

    #[test]
    fn each_token_holds_up_to_its_cap_and_gets_it_back() {
        let shares = PerToken::new(100);
        shares.take("ci", 60).unwrap();
        assert_eq!(shares.take("ci", 41), Err(60));
        shares.take("dev", 100).expect("another token has its own");
        shares.give_back("ci", 60);
        shares.take("ci", 100).expect("it came back");
        shares.give_back("ci", 100);
        shares.give_back("dev", 100);
        assert!(shares.is_empty());
    }
}
