//! Long calls (an agent's lease stream, a job watch) outlive the token table that admitted them.
//! A reload (SIGHUP) that revokes or narrows their token ends them: an agent whose token was
//! revoked would otherwise keep leasing tasks, and with each the cache credential of the job's
//! namespace, for as long as its connection lasted.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::layer::AuthSettings;
use super::{Grant, Scope};
use crate::error::Error;

/// What admitted a streaming call, to check again after each token reload.
#[derive(Clone)]
pub struct Standing {
    pub(super) settings: Arc<AuthSettings>,
    /// The bearer secret it presented; `None` when the server had no tokens.
    pub(super) secret: Option<Secret>,
    pub(super) grant: Arc<Grant>,
    pub(super) scope: Scope,
    pub(super) reloads: watch::Receiver<u64>,
}

impl Standing {
    /// Resolves, with the reason, once a reload leaves the call without the grant it was
    /// admitted with; pending for as long as it keeps it.
    pub async fn lost(&mut self) -> Error {
        loop {
            if self.reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Err(err) = self.settings.recheck(self.secret.as_ref(), &self.grant, self.scope) {
                return err;
            }
        }
    }
}

/// [`Standing::lost`] of the call's standing, if the layer gave it one (streaming calls).
pub async fn lost(standing: &mut Option<Standing>) -> Error {
    match standing {
        Some(standing) => standing.lost().await,
        None => std::future::pending().await,
    }
}

/// The call's standing, from its request extensions.
pub fn standing(extensions: &http::Extensions) -> Option<Standing> {
    extensions.get::<Standing>().cloned()
}

/// A bearer secret kept for a call's life; never printed.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}
