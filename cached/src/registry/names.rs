//! What the distribution API names things by: repositories (inside namespaces), tags, and
//! `sha256:` digests. Everything a path carries is checked here before any store sees it.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::errors::{Code, RegistryError};

/// Longest repository name accepted (the spec suggests clients keep under 255).
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A repository: `<namespace>/<path...>`. The first path segment is the cached namespace the
/// token's `namespaces` are checked against; a one-segment name is a namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository(String);

impl Repository {
    pub fn parse(name: &str) -> Result<Self, RegistryError> {
        let valid = !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component);
        if !valid {
            return Err(RegistryError::new(
                Code::NameInvalid,
                format!("invalid repository name {name:?}: lowercase components separated by `/`"),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cached namespace the repository lives in: its first segment.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the spec's path component.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            if !matches!(separator.as_str(), "" | "." | "_" | "__") && !separator.bytes().all(|s| s == b'-') {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(super) fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let bytes = tag.as_bytes();
    let first = bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !first || !rest || bytes.len() > MAX_TAG_LEN {
        return Err(RegistryError::new(Code::ManifestInvalid, format!("invalid tag {tag:?}")));
    }
    Ok(())
}

/// An OCI `sha256:<64 lowercase hex>` digest, the only algorithm served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// A digest as a record store keeps it: its 32 bytes.
    pub fn from_stored(bytes: &[u8]) -> crate::error::Result<Self> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| crate::error::Error::Corrupt("a stored registry digest is not 32 bytes".to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let invalid =
            |reason: &str| RegistryError::new(Code::DigestInvalid, format!("digest {text:?}: {reason}"));
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(invalid("expected <algorithm>:<hex>"));
        };
        if algorithm != "sha256" {
            return Err(RegistryError::new(
                Code::Unsupported,
                format!("digest algorithm `{algorithm}` is not supported; use sha256"),
            ));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid("expected 64 lowercase hex digits"));
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).map_err(|_| invalid("bad hex"))?;
        }
        Ok(Self(bytes))
    }

    /// Whether a manifest reference is a digest rather than a tag.
    pub fn looks_like_digest(reference: &str) -> bool {
        reference.contains(':')
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_spec_and_start_with_a_namespace() {
        let repo = Repository::parse("main/app/server").unwrap();
        assert_eq!(repo.namespace(), "main");
        assert_eq!(Repository::parse("app").unwrap().namespace(), "app");
        for good in ["a/b", "a.b/c__d", "a--b/c_d"] {
            assert!(Repository::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "A/b", "a//b", "a/", "/a", "a/-b", "a/b_", "a/b___c", "a/b.-c", "a\0b"] {
            assert!(Repository::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(check_tag("v1.2_3-x").is_ok() && check_tag("_x").is_ok());
        assert!(check_tag("-x").is_err() && check_tag("").is_err() && check_tag(&"a".repeat(129)).is_err());
        let digest = Sha256Digest::of(b"");
        let text = digest.to_string();
        assert_eq!(text, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Sha256Digest::parse(&text).unwrap(), digest);
        assert_eq!(Sha256Digest::parse("sha512:00").unwrap_err().code, Code::Unsupported);
        assert_eq!(
            Sha256Digest::parse(&text.to_uppercase().replace("SHA", "sha")).unwrap_err().code,
            Code::DigestInvalid
        );
    }
}
