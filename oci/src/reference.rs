//! Image references (`registry/repository:tag@sha256:...`), parsed as Docker does, with an
//! error that names the part that is wrong.

use std::fmt;
use std::net::IpAddr;

use super::digest::Sha256;
use super::error::{OciError, Result};

pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host, which is not the name users write.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Sha256>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self> {
        let fail = |reason: &str| OciError::reference(text, reason);
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.contains("://") {
            return Err(fail("leave out the scheme: write host[:port]/repository[:tag]"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(fail("it contains whitespace"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                (rest, Some(digest.parse::<Sha256>().map_err(|err| fail(&err.to_string()))?))
            }
            None => (text, None),
        };
        // A tag is after the last colon, unless that colon is in the registry's host:port.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| fail(&reason))?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                check_registry(first).map_err(|reason| fail(&reason))?;
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if repository.is_empty() {
            return Err(fail("the repository name is missing (expected host[:port]/repository[:tag])"));
        }
        check_repository(&repository).map_err(|reason| fail(&reason))?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(fail("the name is longer than 255 characters"));
        }
        Ok(Self { registry, repository, tag: tag.map(str::to_owned), digest })
    }

    /// What the registry's API is addressed by.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The tag or digest to ask the registry for (`latest` when neither is given).
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `registry/repository`, the reference without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True for hosts on this machine, which are spoken to in plain HTTP.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host the API of `registry` (as written in references) answers on.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry }
}

pub fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

fn check_registry(host: &str) -> std::result::Result<(), String> {
    let (name, port) = match host.find(']') {
        Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':')),
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(format!("registry port {port:?} is not a number from 0 to 65535"));
    }
    let ipv6 = name.starts_with('[') && name.ends_with(']');
    if !ipv6 && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))) {
        return Err(format!("registry host {name:?} is not a host name"));
    }
    Ok(())
}

fn check_repository(repository: &str) -> std::result::Result<(), String> {
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(format!("repository {repository:?} has an empty path component"));
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("repository {repository:?} must be lowercase"));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let separators_ok = {
            let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
            let mut i = 0;
            while ok && i < bytes.len() {
                if alnum(bytes[i]) {
                    i += 1;
                    continue;
                }
                // One of: ".", "_", "__", or a run of "-".
                let start = i;
                while i < bytes.len() && !alnum(bytes[i]) {
                    i += 1;
                }
                let separator = &component[start..i];
                ok = separator == "."
                    || separator == "_"
                    || separator == "__"
                    || separator.bytes().all(|b| b == b'-');
            }
            ok
        };
        if !separators_ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, separated by \
                 '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        Reference::parse(text).unwrap()
    }

    #[test]
    fn references_parse_like_docker() {
        let r = parse("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1.2"))
        );
        assert!(r.is_loopback());
        let r = parse("alpine");
        assert_eq!(r.name(), "docker.io/library/alpine");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.target(), "latest");
        let r = parse("localhost/app");
        assert_eq!(r.registry, "localhost");
        let r =
            parse("ghcr.io/o/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(r.digest.is_some() && r.tag.is_none());
        assert_eq!(
            r.to_string(),
            "ghcr.io/o/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(!parse("example.com/a-b__c.d/e---f:x").is_loopback());
        assert!(is_loopback_host("[::1]:5000"));
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (text, expected) in [
            ("", "empty"),
            ("https://ghcr.io/app", "scheme"),
            ("ghcr.io/App:v1", "lowercase"),
            ("ghcr.io/app:", "tag \"\""),
            ("ghcr.io/app:-x", "must be 1 to 128"),
            ("ghcr.io/", "repository name is missing"),
            ("ghcr.io//app", "empty path component"),
            ("ghcr.io/app@sha256:abc", "64 lowercase hex"),
            ("host:99999/app", "port"),
            ("ghcr.io/a..b", "separated by"),
            ("app name", "whitespace"),
        ] {
            let err = Reference::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("invalid image reference"), "{err}");
        }
    }
}
