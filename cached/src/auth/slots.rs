//! Shares of the server's long-lived slots per token. A token's rate limit bounds how fast
//! calls open, not how many stay open, and the server-wide pools (`max_concurrent_uploads`,
//! `max_concurrent_streams`) are first come, first served: one token holding them all would
//! refuse every other tenant. So each token holds at most its share of each:
//! - `Jobs.Watch` streams, which last as long as their job (up to `max_job_timeout`) and cost a
//!   subscription each (`max_watches_per_token`);
//! - uploads (`max_uploads_per_token`);
//! - `Cas.Read` and `Cas.Write` streams (`max_streams_per_token`).

use std::sync::Arc;

use crate::error::Error;
use crate::shares::PerToken;

/// The path of the streams counted as watches.
pub(super) const WATCH: &str = "/cached.v1.Jobs/Watch";
/// The streams counted against `max_streams_per_token`: those that take one of the CAS's
/// `max_concurrent_streams`.
pub(super) const CAS_STREAMS: [&str; 2] = ["/cached.v1.Cas/Read", "/cached.v1.Cas/Write"];

/// What a kind of slot is called in a refusal, and what to do about it.
#[derive(Debug, Clone, Copy)]
pub(super) enum SlotKind {
    Watches,
    Uploads,
    Streams,
}

impl SlotKind {
    fn refusal(self, token: &str, cap: usize) -> Error {
        let busy = |message| Error::Busy { message, retry_after: super::layer::POOL_RETRY };
        match self {
            // A watch lasts as long as its job: there is no moment worth retrying at.
            Self::Watches => Error::ResourceExhausted(format!(
                "token `{token}` already watches {cap} jobs (max_watches_per_token); close a watch \
                 or follow the jobs with Jobs.List"
            )),
            Self::Uploads => busy(format!(
                "token `{token}` is already sending {cap} uploads (max_uploads_per_token); retry \
                 once one has finished"
            )),
            Self::Streams => busy(format!(
                "token `{token}` already holds {cap} Cas.Read/Cas.Write streams \
                 (max_streams_per_token); retry once one has finished"
            )),
        }
    }
}

pub(super) struct TokenSlots {
    kind: SlotKind,
    held: PerToken,
}

impl TokenSlots {
    pub(super) fn new(kind: SlotKind, cap: usize) -> Self {
        Self { kind, held: PerToken::new(cap as u64) }
    }

    /// A slot for one more call of `token`, or the refusal that says what to do.
    pub(super) fn open(self: &Arc<Self>, token: &str) -> Result<TokenSlot, Error> {
        let cap = self.held.cap() as usize;
        self.held.take(token, 1).map_err(|_| self.kind.refusal(token, cap))?;
        Ok(TokenSlot { slots: Arc::clone(self), token: token.to_owned() })
    }

    fn close(&self, token: &str) {
        self.held.give_back(token, 1);
    }
}

/// One call's place, given back when it is dropped (with the call's response body).
pub struct TokenSlot {
    slots: Arc<TokenSlots>,
    token: String,
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        self.slots.close(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_is_capped_and_slots_come_back() {
        for (kind, setting) in [
            (SlotKind::Watches, "max_watches_per_token"),
            (SlotKind::Uploads, "max_uploads_per_token"),
            (SlotKind::Streams, "max_streams_per_token"),
        ] {
            let slots = Arc::new(TokenSlots::new(kind, 2));
            let held = [slots.open("ci").unwrap(), slots.open("ci").unwrap()];
            let Err(err) = slots.open("ci") else { panic!("over the cap") };
            assert!(err.to_string().contains(setting), "{err}");
            let other = slots.open("dev").expect("another token has its own");
            drop(held);
            let again = slots.open("ci").expect("slots came back");
            drop((other, again));
            assert!(slots.held.is_empty());
        }
    }
}
