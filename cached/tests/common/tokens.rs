//! Tokens for tests of per-token limits: a tokens file naming each token with its scopes, and
//! requests that present one.

use std::path::Path;

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use tonic::Request;

pub fn secret_of(name: &str) -> String {
    format!("test-secret-of-{name}")
}

/// Writes `tokens.toml` into `dir` with `names`, each with `scopes` in every namespace, and
/// returns its path for the `tokens_file` setting.
pub fn tokens_file(dir: &Path, names: &[&str], scopes: &str) -> String {
    let text: String = names
        .iter()
        .map(|name| {
            let spec = TokenSpec {
                name: (*name).to_owned(),
                scopes: Scopes::parse_list(scopes).unwrap(),
                namespaces: NamespacePattern::parse_list("*").unwrap(),
                secret_hash: SecretHash::new(&secret_of(name)).unwrap(),
                rate_limit: None,
                max_priority: None,
            };
            format!("{}\n", spec.to_toml())
        })
        .collect();
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `message` as the token named `token` sends it.
pub fn as_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {}", secret_of(token)).parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}
