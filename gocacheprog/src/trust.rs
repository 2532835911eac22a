//! Whether a session told it is trusted may record where trusted sessions read: it asks cached
//! whether its token may write Go cache entries (`GoCache.Access`), holding what it records
//! meanwhile ([`DiskTier::awaiting_trust`]). A pull request's CI job given a read-only token
//! but run without `--read-only` then keeps its records its own, as `--read-only` would.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::disk::DiskTier;
use super::remote::RemoteTier;
use super::vouched::Vouched;

/// How long `close` waits for an answer still coming: what a session recorded without one
/// stays its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The question, asked once per session.
pub struct Trust {
    disk: Arc<DiskTier>,
    remote: Arc<RemoteTier>,
    /// Which sessions share its records if it is not trusted (`--untrusted-scope`).
    scope: Option<String>,
    /// cached's last yes to this token, for when it cannot answer.
    vouched: Vouched,
    /// True once the answer is in (or the question given up).
    settled: watch::Sender<bool>,
    asked: Mutex<Option<JoinHandle<()>>>,
}

impl Trust {
    pub fn new(
        disk: Arc<DiskTier>,
        remote: Arc<RemoteTier>,
        scope: Option<String>,
        vouched: Vouched,
    ) -> Self {
        Self { disk, remote, scope, vouched, settled: watch::Sender::new(false), asked: Mutex::new(None) }
    }

    /// Asks, in the background.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let asked = cached_client::task::spawn("ask-trust", async move {
            let may_put = this.remote.may_put().await;
            if may_put == Some(false) {
                tracing::warn!(
                    "the token may not record Go cache entries in namespace {:?} at {}: this session runs as \
                     with --read-only, and what it records stays its own",
                    this.remote.namespace(),
                    this.remote.server()
                );
            }
            let trusted = match may_put {
                Some(answer) => {
                    this.vouched.note(answer);
                    answer
                }
                None => this.unanswered(),
            };
            this.settle(trusted).await;
        });
        *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = Some(asked);
    }

    /// Whether a session cached could not answer is trusted: if cached said yes to its token
    /// lately, so that an outage does not empty the runners' local tiers; else not, so that
    /// no pull request's job breaks its own connection to record where main's sessions read.
    fn unanswered(&self) -> bool {
        let lately = self.vouched.lately();
        if !lately {
            tracing::warn!(
                "cached at {} did not say whether this session may record, and has not said yes to this \
                 token lately: what it records stays its own",
                self.remote.server()
            );
        }
        lately
    }

    async fn settle(&self, trusted: bool) {
        let (disk, scope) = (Arc::clone(&self.disk), self.scope.clone());
        let _ = cached_client::task::spawn_blocking("settle-trust", move || {
            disk.settle(trusted, scope.as_deref())
        })
        .await;
        self.settled.send_replace(true);
    }

    /// Waits, at most `limit`, until the session's trust is known.
    pub async fn known(&self, limit: Duration) {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(limit, settled.wait_for(|settled| *settled)).await;
    }

    /// Waits a little for an answer still coming; without one (cached busy all along), what
    /// the session recorded stays its own.
    pub async fn close(&self) {
        let asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut asked) = asked else { return };
        match tokio::time::timeout(CLOSE_WAIT, &mut asked).await {
            Ok(Ok(())) => {}
            // The question itself failed: as when cached cannot answer.
            Ok(Err(_)) => self.settle(self.unanswered()).await,
            Err(_) => {
                asked.abort();
                tracing::warn!(
                    "cached at {} did not say whether this session may record; what it recorded stays its own",
                    self.remote.server()
                );
                self.settle(false).await;
            }
        }
    }
}
