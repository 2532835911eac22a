//! Who may use the registry: the same tokens as gRPC, presented as `Bearer <token>` or as the
//! password of Basic auth (any user name), so `docker login`, skopeo and crane work as usual.
//!
//! Scopes: `read` pulls; `cas-write` pushes blobs and manifests by digest (content-addressed:
//! they cannot change what an existing name means); `ac-write` moves tags, because a tag is a
//! mutable pointer and whoever moves it decides what every pull of it gets, and pushes manifests
//! with a `subject`, because the referrers API lists them for that subject; `admin` deletes.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, StatusCode, header};

use super::Registry;
use super::errors::{Code, RegistryError, RegistryResult};
use super::names::Repository;
use crate::auth::refusals::{EVERY_PER_TOKEN, RefusalLog};
use crate::auth::{Grant, NamespacePattern, Scope};
use crate::error::Error;

/// Where clients fetch a bearer token, on this listener.
pub(super) const TOKEN_PATH: &str = "/token";

/// The credential of a request: a Bearer token, or the password of Basic auth.
pub(super) fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_owned());
    }
    None
}

/// `WWW-Authenticate` of a 401: where to get a token for this listener.
fn challenge(headers: &HeaderMap, tls: bool) -> String {
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("Bearer realm=\"{scheme}://{host}{TOKEN_PATH}\",service=\"cached\"")
}

impl Registry {
    /// The caller's grant, or the refusal (401 with a challenge, 429 over the rate limit).
    pub(super) fn caller(&self, headers: &HeaderMap, api: &str, peer: &str) -> RegistryResult<Arc<Grant>> {
        let secret = credential(headers);
        self.auth.grant_for_secret(secret.as_deref(), api, peer).map_err(|err| match err {
            Error::ResourceExhausted(message) | Error::Busy { message, .. } => {
                RegistryError::new(Code::TooManyRequests, message)
            }
            other => RegistryError::new(Code::Unauthorized, other.to_string())
                .with_header(header::WWW_AUTHENTICATE, challenge(headers, self.tls)),
        })
    }
}

/// Registry refusals, logged once per token (a submitter's job leases together), reason and
/// interval: a token names the repositories it is refused, and a line per refusal would let
/// it fill the disk.
static DENIALS: std::sync::LazyLock<RefusalLog> = std::sync::LazyLock::new(RefusalLog::default);

/// Refuses (403 DENIED) a caller without `scope` or without access to `repo`'s namespace.
pub(super) fn check(grant: &Grant, scope: Scope, repo: &Repository) -> RegistryResult<()> {
    if !grant.scopes.contains(scope) {
        if let Some(unlogged) = DENIALS.admit_token(&grant.budget(), "registry scope denied") {
            tracing::warn!(target: "audit", token = %grant.token, repository = %repo, %scope, unlogged, "registry scope denied{EVERY_PER_TOKEN}");
        }
        return Err(RegistryError::new(
            Code::Denied,
            format!(
                "token `{}` lacks the `{scope}` scope this needs (it has: {})",
                grant.token, grant.scopes
            ),
        ));
    }
    if !allows_repository(grant, repo) {
        if let Some(unlogged) = DENIALS.admit_token(&grant.budget(), "registry namespace denied") {
            tracing::warn!(target: "audit", token = %grant.token, repository = %repo, unlogged, "registry namespace denied{EVERY_PER_TOKEN}");
        }
        return Err(RegistryError::new(
            Code::Denied,
            format!(
                "token `{}` may not use namespace `{}` (repository {repo})",
                grant.token,
                repo.namespace()
            ),
        ));
    }
    Ok(())
}

/// Whether a pattern of `grant` names the repository's namespace (`main`, `pr-*`), or all of
/// it as `<namespace>/*` (`pr-1234/*`, the recommended pull request token, which no first
/// segment matches). A pattern for part of a namespace (`main/app`, `teams/alpha/*`) does not
/// reach its repositories: the registry keeps, counts and shares its records by namespace.
fn allows_repository(grant: &Grant, repo: &Repository) -> bool {
    grant.allows_namespace(repo.namespace())
        || grant.namespaces.iter().any(|pattern| {
            matches!(pattern, NamespacePattern::Prefix(prefix) if prefix.strip_suffix('/') == Some(repo.namespace()))
        })
}

/// `GET /v2/`: 200 for a caller the server accepts, else 401 with the challenge.
pub(super) async fn base(registry: &Registry, headers: &HeaderMap, peer: &str) -> Response {
    match registry.caller(headers, "registry/base", peer) {
        Ok(_) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
        Err(err) => err.into_response(),
    }
}

/// The token endpoint: Basic auth whose password is a cached token gets that token back as a
/// bearer token. Without tokens configured anyone gets a placeholder the server ignores.
pub(super) async fn token(registry: &Registry, headers: &HeaderMap, peer: &str) -> Response {
    let grant = match registry.caller(headers, "registry/token", peer) {
        Ok(grant) => grant,
        Err(err) => return err.into_response(),
    };
    let token = match credential(headers) {
        Some(secret) if grant.token != Grant::ANONYMOUS => secret,
        _ => Grant::ANONYMOUS.to_owned(),
    };
    super::routes::json(serde_json::json!({ "token": token, "access_token": token })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reaches_the_repositories_its_patterns_name_and_no_others() {
        let grant = |pattern: &str| Grant {
            token: "pr".into(),
            scopes: [Scope::Read].into_iter().collect(),
            namespaces: vec![pattern.parse::<NamespacePattern>().unwrap()],
            max_priority: 0,
            share: None,
        };
        let allowed = |pattern: &str, repo: &str| {
            check(&grant(pattern), Scope::Read, &Repository::parse(repo).unwrap()).is_ok()
        };
        assert!(allowed("pr-1234/*", "pr-1234/app"));
        assert!(allowed("pr-1234/*", "pr-1234/app/tools"));
        assert!(!allowed("pr-1234/*", "pr-12345/app"));
        assert!(allowed("pr-1234/*", "pr-1234"));
        assert!(allowed("pr-1234", "pr-1234/app"));
        assert!(allowed("pr-*", "pr-7/app"));
        assert!(!allowed("main/app", "main/app"), "part of a namespace");
        assert!(!allowed("teams/alpha/*", "teams/alpha/app"), "part of a namespace");
        assert!(!allowed("main/a*", "main/app"), "part of a namespace");
        assert!(!allowed("main/*", "mainline/app"));
    }

    #[test]
    fn bearer_and_basic_credentials() {
        let mut headers = HeaderMap::new();
        assert_eq!(credential(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer cached_abc".parse().unwrap());
        assert_eq!(credential(&headers).as_deref(), Some("cached_abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("ci:cached_xyz");
        headers.insert(header::AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(credential(&headers).as_deref(), Some("cached_xyz"));
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(credential(&headers), None);
    }
}
