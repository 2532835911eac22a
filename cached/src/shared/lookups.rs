//! What one token's local misses may ask of the bucket. Every local miss of a read is a
//! request to the bucket (a `FindMissing` of 10,000 digests no one stored is 10,000 of
//! them), so without a bound one tenant could hold the bucket's connections, run up its bill,
//! and have it throttle every replica: a throttled bucket fails writes for everyone. Each
//! token's misses may cause `max_shared_lookups` requests a second, with a bucket of
//! [`BURST_SECONDS`] of them; past that its misses are answered without the bucket, as
//! misses. A cache may forget: a client uploads what it was told is missing, and a read that
//! missed builds. Work for no token (the server's own, or callers without tokens, who are
//! one party) is not counted.

use crate::auth::Grant;
use crate::auth::rate::TokenBuckets;

const BURST_SECONDS: f64 = 16.0;

pub(super) struct LookupBudget(Option<TokenBuckets>);

impl LookupBudget {
    /// `per_second` lookups per token; `None` is unlimited.
    pub(super) fn new(per_second: Option<u32>) -> Self {
        Self(per_second.map(|rate| TokenBuckets::new(f64::from(rate), f64::from(rate) * BURST_SECONDS)))
    }

    /// Whether the current caller ([`crate::caller`]) may ask the bucket about `lookups`
    /// local misses; they are charged to it if so.
    pub(super) fn admit(&self, lookups: usize) -> bool {
        let Some(buckets) = &self.0 else { return true };
        let Some(token) = crate::caller::current_owner() else { return true };
        if !Grant::has_own_limits(&token) {
            return true;
        }
        buckets.of(&token).charge(lookups as f64).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn admitted(budget: &LookupBudget, caller: &str, lookups: usize) -> bool {
        crate::caller::run_as(Some(Arc::from(caller)), || budget.admit(lookups))
    }

    #[test]
    fn a_tokens_misses_ask_the_bucket_only_within_its_rate() {
        let budget = LookupBudget::new(Some(10));
        assert!(admitted(&budget, "pr", 10_000), "a full bucket takes one large batch");
        assert!(!admitted(&budget, "pr", 1), "then the token waits until it is paid back");
        assert!(admitted(&budget, "main", 160), "another token has its own");
        assert!(admitted(&budget, Grant::ANONYMOUS, 1_000_000), "callers without tokens are one party");
        assert!(budget.admit(1_000_000), "the server's own work is not counted");
        assert!(admitted(&LookupBudget::new(None), "pr", usize::MAX));
    }
}
