//! Who may do what. Every gRPC call passes one tower layer ([`AuthLayer`]) that finds the
//! caller's token (`authorization: Bearer <secret>`), checks the scope its method needs (the
//! table in [`scopes`]), applies the token's rate limit and the upload, deadline and idle
//! limits, and attaches the token's [`Grant`] to the request. Handlers whose request names a
//! namespace check it with [`check_namespace`].
//!
//! With no tokens configured every caller is `anonymous` with every scope; `config` only allows
//! that on loopback unless `allow_anonymous` is set.
//!
//! A build on a runner agent reaches the cache with the credential of its lease ([`lease`]),
//! which the layer checks beside the configured tokens.

mod held;
mod idle;
pub mod layer;
pub mod lease;
pub mod open;
pub mod rate;
pub(crate) mod refusals;
pub mod reload;
pub mod scopes;
mod slots;
pub mod standing;
pub mod tokens;

use std::sync::Arc;

pub use layer::{AuthLayer, AuthSettings};
pub use lease::{LeaseId, LeaseKeys, LiveLeases};
pub use reload::TokenSource;
pub use scopes::{NamespacePattern, Scope, Scopes};
pub use standing::{Standing, lost, standing};
pub use tokens::{SecretHash, TokenSpec};

use self::refusals::{EVERY, RefusalLog};
use crate::error::{Error, Result};

/// Namespace denials, logged like the layer's refusals: once per address and interval.
static NAMESPACE_DENIALS: std::sync::LazyLock<RefusalLog> = std::sync::LazyLock::new(RefusalLog::default);

/// What the caller of one request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's name, for audit logs and messages; `anonymous` without tokens.
    pub token: String,
    pub scopes: Scopes,
    pub namespaces: Vec<NamespacePattern>,
    /// The highest `priority` its jobs may ask (`max_priority`).
    pub max_priority: i32,
    /// Whose budgets its calls count against when not its token's (a lease credential's: its
    /// submitter's leases together, [`Grant::budget`]).
    pub share: Option<String>,
}

impl Grant {
    pub const ANONYMOUS: &str = "anonymous";

    /// The caller of a server that has no tokens: everything.
    pub fn anonymous() -> Self {
        Self {
            token: Self::ANONYMOUS.to_owned(),
            scopes: Scopes::all(),
            namespaces: vec![NamespacePattern::Any],
            max_priority: *crate::scheduler::validate::PRIORITIES.end(),
            share: None,
        }
    }

    /// Whether per-token limits (shares of pools, budgets) apply to the token named `token`:
    /// not to the callers of a server without tokens, who are one party with no tenant to
    /// keep from another (and a fleet of whom one share would throttle).
    pub fn has_own_limits(token: &str) -> bool {
        token != Self::ANONYMOUS
    }

    /// The name its per-token budgets are kept under (request bytes, unfinished uploads,
    /// decoding, registry sessions, the rate limit, the pools): its token's, or for a lease
    /// credential its submitter's share, which all the leases of one submitter's jobs hold together
    /// as one token would. A budget per lease let whoever runs an agent for its own jobs take
    /// each budget once per task.
    pub fn budget(&self) -> String {
        self.share.clone().unwrap_or_else(|| self.token.clone())
    }

    /// A budget named by [`Grant::budget`], as refusals name it to the caller: "token `ci`",
    /// or "the job leases of `ci`".
    pub fn describe_budget(budget: &str) -> String {
        match budget.strip_prefix("lease:") {
            Some(submitter) => format!("the job leases of `{submitter}`"),
            None => format!("token `{budget}`"),
        }
    }

    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|pattern| pattern.matches(namespace))
    }
}

/// The grant the auth layer attached to this request. A request without one was never
/// checked, and is refused.
pub fn grant(extensions: &http::Extensions) -> Result<Arc<Grant>> {
    extensions
        .get::<Arc<Grant>>()
        .cloned()
        .ok_or_else(|| Error::PermissionDenied("this call did not pass the auth layer".to_owned()))
}

/// Checks that the caller may touch `namespace` (already normalised: `default` for none), and
/// returns its grant for the audit log.
pub fn check_namespace(extensions: &http::Extensions, namespace: &str) -> Result<Arc<Grant>> {
    let grant = grant(extensions)?;
    if grant.allows_namespace(namespace) {
        return Ok(grant);
    }
    let allowed: Vec<String> = grant.namespaces.iter().map(ToString::to_string).collect();
    // Namespaces are the caller's to name, so a line per denial would let a token fill the disk.
    let peer = layer::peer_addr_of(extensions).map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
    if let Some(unlogged) = NAMESPACE_DENIALS.admit(&peer, "namespace denied") {
        tracing::warn!(target: "audit", token = %grant.token, namespace, unlogged, "namespace denied{EVERY}");
    }
    Err(Error::PermissionDenied(format!(
        "token `{}` may not use namespace `{namespace}`; it may use: {}",
        grant.token,
        allowed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_check_names_the_namespace() {
        let mut extensions = http::Extensions::new();
        assert!(check_namespace(&extensions, "main").is_err(), "no grant, no access");
        extensions.insert(Arc::new(Grant {
            token: "pr".to_owned(),
            scopes: Scopes::parse_list("read").unwrap(),
            namespaces: NamespacePattern::parse_list("pr-7/*").unwrap(),
            max_priority: 0,
            share: None,
        }));
        assert_eq!(check_namespace(&extensions, "pr-7/linux").unwrap().token, "pr");
        let err = check_namespace(&extensions, "main").unwrap_err().to_string();
        assert!(err.contains("`main`") && err.contains("pr-7/*"), "{err}");
    }
}
