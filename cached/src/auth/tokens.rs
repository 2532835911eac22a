//! Tokens: how secrets are made and hashed, how `[[tokens]]` tables are read, and the table the
//! auth layer looks secrets up in.
//!
//! A secret is 32 random bytes (`cached_<43 base64url characters>`), so a fast keyed hash is
//! enough to store it: a salted BLAKE3 (the salt is the key) cannot be reversed or brute-forced.
//! Only the hash is ever in the config file; the secret is printed once by `cached token new`.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use dashmap::DashMap;

use super::Grant;
use super::rate::RateLimiter;
use super::scopes::{NamespacePattern, Scope, Scopes};
use crate::scheduler::validate::PRIORITIES as JOB_PRIORITIES;

const SECRET_PREFIX: &str = "cached_";
/// A minted secret: the prefix and 32 bytes in unpadded base64url (43 characters).
const SECRET_LEN: usize = SECRET_PREFIX.len() + 43;
const HASH_SCHEME: &str = "blake3";
const MAX_NAME_LEN: usize = 64;

/// A token as configured: everything but its secret.
#[derive(Clone, PartialEq)]
pub struct TokenSpec {
    pub name: String,
    pub scopes: Scopes,
    pub namespaces: Vec<NamespacePattern>,
    pub secret_hash: SecretHash,
    /// Requests per second; `None` takes the server's `rate_limit`, `Some(0)` is unlimited.
    pub rate_limit: Option<u32>,
    /// The highest `priority` its jobs may ask; `None`: 0, or any with the `admin` scope.
    pub max_priority: Option<i32>,
}

impl fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("namespaces", &self.namespaces)
            .field("rate_limit", &self.rate_limit)
            .field("max_priority", &self.max_priority)
            .finish_non_exhaustive()
    }
}

/// `blake3:<salt hex>:<hash hex>`: BLAKE3 keyed with a random 32-byte salt, of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash {
    salt: [u8; 32],
    hash: blake3::Hash,
}

impl SecretHash {
    /// Hashes `secret` with a fresh salt.
    pub fn new(secret: &str) -> Result<Self, String> {
        let salt = random_bytes()?;
        Ok(Self::with_salt(salt, secret))
    }

    fn with_salt(salt: [u8; 32], secret: &str) -> Self {
        Self { salt, hash: blake3::keyed_hash(&salt, secret.as_bytes()) }
    }

    /// Constant-time comparison (`blake3::Hash` equality is).
    pub fn matches(&self, secret: &str) -> bool {
        #[cfg(test)]
        tests::count_hash();
        blake3::keyed_hash(&self.salt, secret.as_bytes()) == self.hash
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let malformed =
            || format!("expected {HASH_SCHEME}:<64 hex salt>:<64 hex hash>, as `cached token new` prints");
        let mut parts = text.split(':');
        let (Some(HASH_SCHEME), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let salt = blake3::Hash::from_hex(salt).map_err(|_| malformed())?;
        let hash = blake3::Hash::from_hex(hash).map_err(|_| malformed())?;
        Ok(Self { salt: *salt.as_bytes(), hash })
    }
}

/// Debug shows no hash: hashes stay out of logs too.
impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let salt = blake3::Hash::from_bytes(self.salt);
        write!(f, "{HASH_SCHEME}:{}:{}", salt.to_hex(), self.hash.to_hex())
    }
}

fn random_bytes() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| format!("the system random source failed: {err}"))?;
    Ok(bytes)
}

/// A new secret: `cached_` and 32 random bytes in base64url.
pub fn new_secret() -> Result<String, String> {
    let bytes = random_bytes()?;
    Ok(format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "token name {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`"
        ));
    }
    // Per-token limits leave the callers of a server without tokens alone: they are one party.
    if name == super::Grant::ANONYMOUS {
        return Err(format!(
            "token name {name:?} is reserved for the callers of a server without tokens; choose another"
        ));
    }
    Ok(())
}

impl TokenSpec {
    /// The highest priority its jobs may ask: as configured, else any for an admin token
    /// and 0 for the others, so that no tenant moves ahead of the rest unless allowed.
    pub fn max_priority(&self) -> i32 {
        self.max_priority.unwrap_or(if self.scopes.contains(Scope::Admin) {
            *JOB_PRIORITIES.end()
        } else {
            0
        })
    }

    /// The `[[tokens]]` table that configures this token, for `cached token new`.
    pub fn to_toml(&self) -> String {
        let list =
            |items: Vec<String>| items.iter().map(|item| format!("{item:?}")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            "[[tokens]]\nname = {:?}\nscopes = [{}]\nnamespaces = [{}]\nsecret_hash = \"{}\"\n",
            self.name,
            list(self.scopes.iter().map(|s| s.name().to_owned()).collect()),
            list(self.namespaces.iter().map(ToString::to_string).collect()),
            self.secret_hash,
        );
        if let Some(rate) = self.rate_limit {
            text.push_str(&format!("rate_limit = {rate}\n"));
        }
        if let Some(priority) = self.max_priority {
            text.push_str(&format!("max_priority = {priority}\n"));
        }
        text
    }
}

const TOKEN_KEYS: &[&str] = &["name", "scopes", "namespaces", "secret_hash", "rate_limit", "max_priority"];

/// Reads the value of a `tokens` key: an array of tables. `origin` says where it is, for errors.
pub fn parse_tokens(value: &toml::Value, origin: &str) -> Result<Vec<TokenSpec>, String> {
    let Some(tables) = value.as_array() else {
        return Err(format!("{origin}: `tokens` must be an array of tables ([[tokens]])"));
    };
    tables
        .iter()
        .enumerate()
        .map(|(index, table)| {
            let origin = format!("{origin}: tokens[{index}]");
            let table = table.as_table().ok_or_else(|| format!("{origin} must be a table ([[tokens]])"))?;
            parse_token(table).map_err(|reason| format!("{origin}: {reason}"))
        })
        .collect()
}

fn parse_token(table: &toml::Table) -> Result<TokenSpec, String> {
    if let Some(key) = table.keys().find(|key| !TOKEN_KEYS.contains(&key.as_str())) {
        return Err(format!("unknown key `{key}`; known keys: {}", TOKEN_KEYS.join(", ")));
    }
    let string = |key: &str| -> Result<&str, String> {
        match table.get(key) {
            Some(toml::Value::String(text)) => Ok(text),
            Some(_) => Err(format!("`{key}` must be a string")),
            None => Err(format!("`{key}` is missing")),
        }
    };
    let strings = |key: &str| -> Result<Vec<&str>, String> {
        let array = match table.get(key) {
            Some(toml::Value::Array(array)) => array,
            Some(_) => return Err(format!("`{key}` must be an array of strings")),
            None => return Err(format!("`{key}` is missing")),
        };
        array
            .iter()
            .map(|v| v.as_str().ok_or_else(|| format!("`{key}` must be an array of strings")))
            .collect()
    };
    let name = string("name")?;
    check_name(name)?;
    let scopes = strings("scopes")?
        .into_iter()
        .map(str::parse)
        .collect::<Result<Scopes, String>>()
        .map_err(|reason| format!("`scopes`: {reason}"))?;
    if scopes.is_empty() {
        return Err("`scopes` is empty; a token needs at least one scope".to_owned());
    }
    let namespaces = strings("namespaces")?
        .into_iter()
        .map(str::parse)
        .collect::<Result<Vec<NamespacePattern>, String>>()
        .map_err(|reason| format!("`namespaces`: {reason}"))?;
    if namespaces.is_empty() {
        return Err("`namespaces` is empty; use [\"*\"] for every namespace".to_owned());
    }
    let secret_hash =
        SecretHash::parse(string("secret_hash")?).map_err(|reason| format!("`secret_hash`: {reason}"))?;
    let rate_limit = match table.get("rate_limit") {
        None => None,
        Some(toml::Value::Integer(rate)) => Some(
            u32::try_from(*rate).map_err(|_| "`rate_limit` must be 0 (unlimited) or a positive number")?,
        ),
        Some(_) => return Err("`rate_limit` must be a number of requests per second".to_owned()),
    };
    let max_priority = match table.get("max_priority") {
        None => None,
        Some(toml::Value::Integer(priority)) => Some(
            i32::try_from(*priority)
                .ok()
                .filter(|priority| JOB_PRIORITIES.contains(priority))
                .ok_or("`max_priority` must be a job priority, -1000 to 1000")?,
        ),
        Some(_) => return Err("`max_priority` must be a number, -1000 to 1000".to_owned()),
    };
    Ok(TokenSpec { name: name.to_owned(), scopes, namespaces, secret_hash, rate_limit, max_priority })
}

/// Checks a whole set of tokens: names must be unique.
pub fn check_unique(tokens: &[TokenSpec]) -> Result<(), String> {
    let mut names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(format!("two tokens are named `{}`; token names must be unique", pair[0])),
        None => Ok(()),
    }
}

/// A configured token, ready for requests.
pub struct Token {
    pub grant: Arc<Grant>,
    pub limiter: Option<Arc<RateLimiter>>,
    hash: SecretHash,
}

/// The configured tokens. A secret that matched once is remembered by an unsalted BLAKE3 of it
/// (in memory only), so a request costs one hash whatever the number of tokens; unknown
/// secrets are not remembered, so they cannot fill the memo.
pub struct TokenTable {
    tokens: Vec<Token>,
    known: DashMap<blake3::Hash, usize>,
}

impl TokenTable {
    /// `default_rate` is the server's `rate_limit` (`None`: unlimited).
    pub fn new(specs: &[TokenSpec], default_rate: Option<u32>) -> Self {
        let tokens = specs
            .iter()
            .map(|spec| {
                let rate = spec.rate_limit.or(default_rate).filter(|rate| *rate > 0);
                Token {
                    grant: Arc::new(Grant {
                        token: spec.name.clone(),
                        scopes: spec.scopes,
                        namespaces: spec.namespaces.clone(),
                        max_priority: spec.max_priority(),
                        share: None,
                    }),
                    limiter: rate.map(|rate| Arc::new(RateLimiter::per_second(rate))),
                    hash: spec.secret_hash.clone(),
                }
            })
            .collect();
        Self { tokens, known: DashMap::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|token| token.grant.token.as_str())
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The token whose secret this is. What is longer than a minted secret or has a
    /// character base64url lacks is no token's secret and is refused before any hashing: a
    /// refusal costs at most one hash per token (and one more) of at most [`SECRET_LEN`] bytes, whatever an
    /// unauthenticated caller sends (lease credentials are checked elsewhere, before this).
    pub fn verify(&self, secret: &str) -> Option<&Token> {
        if !plausible_secret(secret) {
            return None;
        }
        #[cfg(test)]
        tests::count_hash();
        let memo = blake3::hash(secret.as_bytes());
        if let Some(index) = self.known.get(&memo) {
            return self.tokens.get(*index);
        }
        let index = self.tokens.iter().position(|token| token.hash.matches(secret))?;
        self.known.insert(memo, index);
        self.tokens.get(index)
    }
}

/// Whether `secret` could be one `cached token new` minted: no longer than one, in its
/// alphabet. Shorter secrets pass, so hashes made of other secrets (tests do) keep working.
fn plausible_secret(secret: &str) -> bool {
    secret.len() <= SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static HASHES: Cell<usize> = const { Cell::new(0) };
    }

    /// Called before every hash of a presented secret, so tests can count them.
    pub(super) fn count_hash() {
        HASHES.with(|n| n.set(n.get() + 1));
    }

    fn hashes() -> usize {
        HASHES.with(Cell::get)
    }

    fn spec(secret: &str) -> TokenSpec {
        TokenSpec {
            name: "ci".to_owned(),
            scopes: Scopes::parse_list("read,ac-write").unwrap(),
            namespaces: NamespacePattern::parse_list("main/*").unwrap(),
            secret_hash: SecretHash::new(secret).unwrap(),
            rate_limit: None,
            max_priority: None,
        }
    }

    #[test]
    fn secrets_are_random_and_hashes_salted() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("cached_") && a.len() == 7 + 43, "{a}");
        let (h1, h2) = (SecretHash::new(&a).unwrap(), SecretHash::new(&a).unwrap());
        assert_ne!(h1, h2, "every hash has its own salt");
        assert!(h1.matches(&a) && h2.matches(&a) && !h1.matches(&b));
        assert_eq!(SecretHash::parse(&h1.to_string()).unwrap(), h1);
        assert!(SecretHash::parse("blake3:00:11").is_err());
        assert!(SecretHash::parse(&format!("sha1:{}:{}", "0".repeat(64), "0".repeat(64))).is_err());
    }

    #[test]
    fn printed_table_reads_back() {
        let spec = spec("s3cret");
        let text = spec.to_toml();
        assert!(!text.contains("s3cret"));
        let table: toml::Table = text.parse().unwrap();
        let parsed = parse_tokens(&table["tokens"], "test").unwrap();
        assert_eq!(parsed, vec![spec]);
        assert!(!format!("{:?}", parsed[0]).contains("blake3"), "Debug leaves the hash out");
    }

    #[test]
    fn table_errors_name_the_key() {
        let text = |extra: &str| {
            format!(
                "[[tokens]]\nname = \"a\"\nscopes = [\"read\"]\nnamespaces = [\"*\"]\nsecret_hash = \"{}\"\n{extra}",
                SecretHash::new("x").unwrap()
            )
        };
        let parse = |text: String| {
            let table: toml::Table = text.parse().unwrap();
            parse_tokens(&table["tokens"], "cached.toml")
        };
        assert!(parse(text("")).is_ok());
        let err = parse(text("colour = 1\n")).unwrap_err();
        assert!(err.contains("tokens[0]") && err.contains("`colour`"), "{err}");
        let err = parse(text("").replace("\"read\"", "\"raed\"")).unwrap_err();
        assert!(err.contains("`scopes`") && err.contains("raed"), "{err}");
        let err = parse(text("").replace("name = \"a\"", "name = \"a b\"")).unwrap_err();
        assert!(err.contains("token name"), "{err}");
        // A token named like the callers of a server without tokens would escape per-token limits.
        let err = parse(text("").replace("name = \"a\"", "name = \"anonymous\"")).unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        let err = parse(text("rate_limit = -1\n")).unwrap_err();
        assert!(err.contains("rate_limit"), "{err}");
        for bad in ["max_priority = 1001\n", "max_priority = \"high\"\n"] {
            let err = parse(text(bad)).unwrap_err();
            assert!(err.contains("max_priority") && err.contains("-1000 to 1000"), "{err}");
        }
        assert_eq!(parse(text("max_priority = -5\n")).unwrap()[0].max_priority(), -5);
    }

    #[test]
    fn tokens_ask_priority_0_at_most_unless_admin_or_allowed() {
        let with = |scopes: &str, max_priority| TokenSpec {
            scopes: Scopes::parse_list(scopes).unwrap(),
            max_priority,
            ..spec("s")
        };
        assert_eq!(with("read,submit", None).max_priority(), 0);
        assert_eq!(with("submit,admin", None).max_priority(), 1000);
        assert_eq!(with("read,submit", Some(50)).max_priority(), 50);
        assert!(with("read,submit", Some(50)).to_toml().contains("max_priority = 50\n"));
    }

    #[test]
    fn table_finds_tokens_by_secret() {
        let table = TokenTable::new(&[spec("one")], Some(10));
        assert_eq!(table.verify("one").map(|t| t.grant.token.as_str()), Some("ci"));
        assert_eq!(table.verify("one").map(|t| t.grant.token.as_str()), Some("ci"), "memoised");
        assert!(table.verify("two").is_none());
        assert!(table.verify("").is_none());
    }

    #[test]
    fn ill_shaped_secrets_are_refused_unhashed() {
        let minted = new_secret().unwrap();
        let specs: Vec<TokenSpec> = (0..8).map(|_| spec(&new_secret().unwrap())).collect();
        let table = TokenTable::new(&specs, None);
        let refused = [
            "x".repeat(16 << 10),
            format!("{minted}{}", "A".repeat(400 << 10)),
            format!("{minted}A"),
            minted.replace('_', "."),
            "cached_ secret".to_owned(),
            "cached_\nsecret".to_owned(),
            "caché".to_owned(),
        ];
        for secret in &refused {
            let before = hashes();
            assert!(table.verify(secret).is_none());
            assert_eq!(hashes(), before, "a secret of {} bytes was hashed", secret.len());
        }
        let before = hashes();
        assert!(table.verify(&minted).is_none());
        assert!(hashes() > before, "a secret shaped like a minted one is looked up");
    }
}
