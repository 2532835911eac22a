//! SIGHUP reads the token tables again (those in `--config` and in `tokens_file`), so a token
//! is added or revoked without a restart. A configuration that no longer loads, or that has no
//! tokens left (which would let anyone in), changes nothing: the previous tokens stay, and the
//! log says why. Other settings still need a restart.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{AuthSettings, TokenSpec};
use crate::config;

/// Loads the tokens the configuration names now (the binary reads its config files again).
pub type TokenSource = Box<dyn Fn() -> Result<Vec<TokenSpec>, String> + Send + Sync>;

/// Reloads the tokens on every SIGHUP until `stop` turns true.
pub async fn reload_on_sighup(
    auth: Arc<AuthSettings>,
    source: TokenSource,
    listen: SocketAddr,
    allow_anonymous: bool,
    stop: watch::Receiver<bool>,
) {
    crate::signals::on_hangup("tokens", stop, || reload(&auth, &source, listen, allow_anonymous)).await;
}

fn reload(auth: &AuthSettings, source: &TokenSource, listen: SocketAddr, allow_anonymous: bool) {
    let specs = match source() {
        Ok(specs) => specs,
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP: tokens not reloaded (the configuration does not load); still serving the previous ones");
            return;
        }
    };
    if specs.is_empty() && auth.requires_tokens() {
        // Revoking every token must not open the server to anonymous callers.
        tracing::error!(
            "SIGHUP: tokens not reloaded: the configuration has none left, which would let anyone in; to serve without tokens, restart cached"
        );
        return;
    }
    if let Err(reason) = config::check_exposure(listen, !specs.is_empty(), allow_anonymous) {
        tracing::error!(%reason, "SIGHUP: tokens not reloaded; still serving the previous ones");
        return;
    }
    let (added, removed) = auth.replace_tokens(&specs);
    tracing::info!(target: "audit", tokens = specs.len(), ?added, ?removed, "SIGHUP: tokens reloaded");
}
