//! What one token may make the server decompress beyond what it sends.
//!
//! A zstd frame of a few dozen bytes may stand for a whole frame of zeros, and the server
//! decodes and hashes every frame of an upload before it can tell the digest was wrong. A
//! stream upload is bounded only by max_blob_size, so a client could spend seconds of the
//! server's CPU with each kilobyte it sends. Bytes decoded beyond the bytes received are
//! charged to the caller's token, and so is a recheck, which decodes a whole blob for a
//! request of a few bytes. Uncompressed uploads cost nothing here: the client paid for each
//! byte by sending it.
//!
//! The bucket of a token refills at `max_decode_rate` and holds [`BURST_SECONDS`] of it, so a
//! build's uploads (Go outputs compress about 4:1) or one large `cachectl put` pass, while a
//! stream of zero bombs is refused before its frames are decoded. Without tokens every caller
//! is `anonymous`, one party with no tenant to protect from another, and nothing is charged:
//! one bucket for all of a fleet's runners would cap the server's compressed uploads instead.

use std::sync::Arc;

use crate::auth::Grant;
use crate::auth::rate::{RateLimiter, TokenBuckets};
use crate::error::{Error, Result};

/// Seconds of the rate a token's bucket holds.
const BURST_SECONDS: f64 = 16.0;

/// The decode budgets of all tokens; `None` is unlimited.
pub(super) struct DecodeBudgets(Option<TokenBuckets>);

impl DecodeBudgets {
    pub(super) fn new(rate: Option<u64>) -> Self {
        Self(rate.map(|rate| TokenBuckets::new(rate as f64, rate as f64 * BURST_SECONDS)))
    }

    /// The budget of the token named `token` (its grant's name).
    pub(super) fn of(&self, token: &str) -> DecodeBudget {
        match &self.0 {
            Some(buckets) if Grant::has_own_limits(token) => DecodeBudget {
                token: token.to_owned(),
                rate: buckets.rate() as u64,
                bucket: Some(buckets.of(token)),
            },
            _ => DecodeBudget::unmetered(),
        }
    }
}

/// One caller's share of the server's decoding.
pub struct DecodeBudget {
    token: String,
    rate: u64,
    bucket: Option<Arc<RateLimiter>>,
}

impl DecodeBudget {
    /// For the server's own uploads (registry blobs arrive uncompressed and are never charged).
    pub fn unmetered() -> Self {
        Self { token: String::new(), rate: 0, bucket: None }
    }

    /// Charges the decoding of `decoded` bytes of which the caller sent `sent`.
    pub fn charge(&self, decoded: u64, sent: u64) -> Result<()> {
        let Some(bucket) = &self.bucket else { return Ok(()) };
        let amplified = decoded.saturating_sub(sent);
        if amplified == 0 {
            return Ok(());
        }
        bucket.charge(amplified as f64).map_err(|wait| Error::Busy {
            retry_after: wait,
            message: format!(
                "{} has made the server decompress more than it sent, past its budget of \
                 {} bytes per second (max_decode_rate); nothing was stored. Retry in {} ms, send \
                 highly compressible blobs uncompressed, or ask the operator to raise \
                 max_decode_rate",
                crate::auth::Grant::describe_budget(&self.token),
                self.rate,
                wait.as_millis().max(1)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn amplified_bytes_are_charged_per_token_and_sent_bytes_are_free() {
        let budgets = DecodeBudgets::new(Some(MIB));
        let bomber = budgets.of("pr-7");
        // Uncompressed bytes cost nothing, however many.
        for _ in 0..1000 {
            bomber.charge(MIB, MIB).unwrap();
        }
        // The burst is 16 MiB: a 17 MiB zero bomb sent as 1 KiB frames is refused part way.
        let passed = (0..100).take_while(|_| bomber.charge(MIB, 1024).is_ok()).count();
        assert_eq!(passed, 17, "the frame that empties the bucket still passes");
        let err = bomber.charge(MIB, 1024).unwrap_err().to_string();
        assert!(err.contains("pr-7") && err.contains("max_decode_rate"), "{err}");
        // The same token's next request shares the bucket; another token has its own.
        assert!(budgets.of("pr-7").charge(MIB, 0).is_err());
        budgets.of("main").charge(16 * MIB, 0).unwrap();
    }

    #[test]
    fn without_a_rate_or_without_tokens_nothing_is_charged() {
        let budgets = DecodeBudgets::new(None);
        for _ in 0..100 {
            budgets.of("anyone").charge(u64::MAX, 0).unwrap();
        }
        assert!(budgets.0.as_ref().is_none_or(|buckets| buckets.kept() == 0));
        let budgets = DecodeBudgets::new(Some(MIB));
        for _ in 0..100 {
            budgets.of(Grant::ANONYMOUS).charge(u64::MAX, 0).unwrap();
        }
        assert!(budgets.0.as_ref().is_none_or(|buckets| buckets.kept() == 0));
    }
}
