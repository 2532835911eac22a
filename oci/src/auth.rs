//! Registry credentials, read as docker reads them: `$DOCKER_CONFIG/config.json` (or
//! `~/.docker/config.json`) `auths`, `credHelpers` and `credsStore`; and the
//! `WWW-Authenticate` challenges registries answer with.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::error::{OciError, Result};
use super::reference::DOCKER_HUB;

/// How Docker Hub is keyed in config.json.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token service.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Self::Anonymous => write!(f, "Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username})"),
            Self::IdentityToken(_) => write!(f, "IdentityToken"),
        }
    }
}

/// Credentials and where they came from, for error messages.
#[derive(Clone, Debug)]
pub struct Found {
    pub credentials: Credentials,
    pub origin: String,
}

impl Found {
    pub fn anonymous(config: &Path) -> Self {
        Self { credentials: Credentials::Anonymous, origin: format!("no entry in {}", config.display()) }
    }

    /// `user "ci" from /root/.docker/config.json auths["host"]`, without the secret.
    pub fn describe(&self) -> String {
        match &self.credentials {
            Credentials::Anonymous => format!("anonymous ({})", self.origin),
            Credentials::Basic { username, .. } => format!("user {username:?} from {}", self.origin),
            Credentials::IdentityToken(_) => format!("an identity token from {}", self.origin),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The config.json to read: the given one, `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
pub fn docker_config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_owned();
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    dirs::home_dir().unwrap_or_default().join(".docker").join("config.json")
}

/// Credentials for `registry` (as written in references: `host[:port]` or `docker.io`).
/// A missing config file means anonymous access; an unreadable or malformed one is an error.
pub fn credentials_for(config_path: &Path, registry: &str) -> Result<Found> {
    let text = match std::fs::read(config_path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Found::anonymous(config_path)),
        Err(err) => {
            return Err(OciError::Credentials(format!("cannot read {}: {err}", config_path.display())));
        }
    };
    let config: ConfigFile = serde_json::from_slice(&text).map_err(|err| {
        OciError::Credentials(format!("{} is not a valid docker config.json: {err}", config_path.display()))
    })?;
    if let Some(helper) =
        config.cred_helpers.iter().find(|(key, _)| same_registry(key, registry)).map(|(_, h)| h)
    {
        return run_helper(helper, registry, &format!("credHelpers in {}", config_path.display()));
    }
    if let Some((key, entry)) = config.auths.iter().find(|(key, _)| same_registry(key, registry)) {
        let origin = format!("{} auths[{key:?}]", config_path.display());
        return entry_credentials(entry, &origin).map(|credentials| Found { credentials, origin });
    }
    if let Some(store) = &config.creds_store {
        return run_helper(store, registry, &format!("credsStore in {}", config_path.display()));
    }
    Ok(Found::anonymous(config_path))
}

fn entry_credentials(entry: &AuthEntry, origin: &str) -> Result<Credentials> {
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Credentials::IdentityToken(token.to_owned()));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = |reason: &str| {
            OciError::Credentials(format!("{origin}: \"auth\" {reason}; it must be base64 of user:password"))
        };
        let decoded =
            STANDARD.decode(auth.trim()).map_err(|err| bad(&format!("is not valid base64 ({err})")))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("does not decode to UTF-8 text"))?;
        let (username, password) =
            text.split_once(':').ok_or_else(|| bad("decodes to text without a ':'"))?;
        if username.is_empty() {
            return Err(bad("has an empty user name"));
        }
        return Ok(Credentials::Basic { username: username.to_owned(), password: password.to_owned() });
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Credentials::Basic { username: username.clone(), password: password.clone() })
        }
        (None, None) => Ok(Credentials::Anonymous),
        _ => Err(OciError::Credentials(format!(
            "{origin}: has no \"auth\" and not both \"username\" and \"password\""
        ))),
    }
}

/// True when a config.json key (`host`, `https://host/v1/`, ...) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or_default();
    if registry == DOCKER_HUB {
        matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com")
    } else {
        host == registry
    }
}

/// Asks `docker-credential-<helper>` for the registry's credentials (the docker protocol:
/// the server URL on stdin, JSON on stdout).
fn run_helper(helper: &str, registry: &str, origin: &str) -> Result<Found> {
    let program = format!("docker-credential-{helper}");
    let server = if registry == DOCKER_HUB { DOCKER_HUB_KEY } else { registry };
    let fail = |reason: String| OciError::Credentials(format!("{program} (from {origin}): {reason}"));
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| fail(format!("cannot run it: {err}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(|err| fail(format!("cannot write to it: {err}")))?;
    }
    let output = child.wait_with_output().map_err(|err| fail(err.to_string()))?;
    let origin = format!("{program} ({origin})");
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if message.contains("credentials not found") {
            return Ok(Found { credentials: Credentials::Anonymous, origin });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("{} {message} {}", output.status, stderr.trim())));
    }
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&output.stdout).map_err(|err| fail(format!("unexpected answer: {err}")))?;
    let credentials = if answer.username == "<token>" {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic { username: answer.username, password: answer.secret }
    };
    Ok(Found { credentials, origin })
}

/// `Basic <base64 user:password>`.
pub fn basic_header(username: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{username}:{password}")))
}

/// One `WWW-Authenticate` challenge: its scheme (lowercased) and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses the first challenge of a `WWW-Authenticate` value, like
/// `Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder;
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn credentials_come_from_auths_in_every_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let auth = STANDARD.encode("ci:s3cr:et");
        let path = config(
            dir.path(),
            &format!(
                r#"{{"auths": {{"https://127.0.0.1:5000/v1/": {{"auth": "{auth}"}},
                    "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}},
                    "ghcr.io": {{"identitytoken": "tok"}}}}}}"#
            ),
        );
        let found = credentials_for(&path, "127.0.0.1:5000").unwrap();
        assert_eq!(
            found.credentials,
            Credentials::Basic { username: "ci".into(), password: "s3cr:et".into() }
        );
        assert!(found.describe().starts_with("user \"ci\" from "), "{}", found.describe());
        assert!(!format!("{:?}", found.credentials).contains("s3cr"));
        assert!(matches!(
            credentials_for(&path, "docker.io").unwrap().credentials,
            Credentials::Basic { .. }
        ));
        assert_eq!(
            credentials_for(&path, "ghcr.io").unwrap().credentials,
            Credentials::IdentityToken("tok".into())
        );
        assert_eq!(credentials_for(&path, "quay.io").unwrap().credentials, Credentials::Anonymous);
        assert_eq!(
            credentials_for(&dir.path().join("absent.json"), "ghcr.io").unwrap().credentials,
            Credentials::Anonymous
        );
    }

    #[test]
    fn malformed_credentials_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            (r#"{"auths": {"r.io": {"auth": "%%%"}}}"#, "is not valid base64"),
            (
                &format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, STANDARD.encode("nocolon")),
                "without a ':'",
            ),
            (r#"{"auths": {"r.io": {"username": "u"}}}"#, "not both \"username\" and \"password\""),
            (r#"{"auths": ["#, "is not a valid docker config.json"),
            (r#"{"credHelpers": {"r.io": "nosuchhelper"}}"#, "docker-credential-nosuchhelper"),
        ] {
            let path = config(dir.path(), text);
            let err = credentials_for(&path, "r.io").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("config.json"), "{err}");
        }
    }

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        let challenge = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(challenge.scheme, "bearer");
        assert_eq!(challenge.params["realm"], "https://auth.example/token");
        assert_eq!(challenge.params["scope"], "repository:a/b:pull,push");
        let basic = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((basic.scheme.as_str(), basic.params["realm"].as_str()), ("basic", "Registry Realm"));
    }
}
