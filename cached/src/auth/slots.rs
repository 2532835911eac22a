//! Shares of the server's long-lived slots per token. A token's rate limit bounds how fast
//! calls open, not how many stay open, and the server-wide pools (`max_concurrent_uploads`,
//! `max_concurrent_streams`) are first come, first served: one token holding them all would
//! refuse every other tenant. So each token holds at most its share of each (and of the
//! pools, a token growing leaves room for tokens that hold none: [`PerToken::take_from_pool`]):
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
    /// The refusal of one more slot to `token`, which holds `held` of its `cap`: all of it, or
    /// its share of the server's pool while other tokens hold some too.
    fn refusal(self, token: &str, held: usize, cap: usize) -> Error {
        let busy = |message| Error::Busy { message, retry_after: super::layer::POOL_RETRY };
        let who = super::Grant::describe_budget(token);
        let share = |setting: &str, pool: &str| {
            if held >= cap {
                format!("({setting})")
            } else {
                format!("(the rest of {pool} is kept for tokens that hold none)")
            }
        };
        match self {
            // A watch lasts as long as its job: there is no moment worth retrying at.
            Self::Watches => Error::ResourceExhausted(format!(
                "{who} already watches {held} jobs (max_watches_per_token); close a watch \
                 or follow the jobs with Jobs.List"
            )),
            Self::Uploads => busy(format!(
                "{who} is already sending {held} uploads {}; retry once one has finished",
                share("max_uploads_per_token", "max_concurrent_uploads")
            )),
            Self::Streams => busy(format!(
                "{who} already holds {held} Cas.Read/Cas.Write streams {}; retry once one \
                 has finished",
                share("max_streams_per_token", "max_concurrent_streams")
            )),
        }
    }
}

pub(super) struct TokenSlots {
    kind: SlotKind,
    held: PerToken,
    /// The server-wide pool the slots are of, if any ([`PerToken::take_from_pool`]).
    pool: Option<u64>,
}

impl TokenSlots {
    pub(super) fn new(kind: SlotKind, cap: usize) -> Self {
        Self { kind, held: PerToken::new(cap as u64), pool: None }
    }

    /// Slots of a server-wide pool of `pool`, of which one token takes at most `cap`, and less
    /// while other tokens hold some too.
    pub(super) fn of_pool(kind: SlotKind, cap: usize, pool: usize) -> Self {
        Self { kind, held: PerToken::new(cap as u64), pool: Some(pool as u64) }
    }

    /// A slot for one more call of `token`, or the refusal that says what to do.
    pub(super) fn open(self: &Arc<Self>, token: &str) -> Result<TokenSlot, Error> {
        let taken = match self.pool {
            Some(pool) => self.held.take_from_pool(token, 1, pool),
            None => self.held.take(token, 1),
        };
        taken.map_err(|held| self.kind.refusal(token, held as usize, self.held.cap() as usize))?;
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
