//! What a session remembers of cached's answer to whether its token may record
//! ([`crate::trust`]): when cached cannot answer (unreachable, a TLS or token file that does
//! not work, an open breaker), a session is trusted only if cached said yes to the same token,
//! server and namespace lately. A pull request's job given a read-only token and run without
//! `--read-only` was never told yes, so an outage, or a file of its checkout that breaks its
//! connection, no longer lets what it records land where main's sessions read; main's runners
//! keep their local tiers through an outage.
//!
//! A mark is an empty file in the tier, named by a hash of the token, server and namespace:
//! code that runs as the tier's owner can forge it, as it can write the tier's records.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// How long a yes from cached counts when it cannot be asked again.
const VALID_FOR: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The mark of one token's yes on one server and namespace.
#[derive(Debug, Clone)]
pub struct Vouched {
    path: PathBuf,
}

impl Vouched {
    pub fn new(root: &Path, server: &str, namespace: &str, token: Option<&str>) -> Self {
        let namespace = if namespace.is_empty() { "default" } else { namespace };
        let mut name = Sha256::new();
        for part in [crate::disk::server_identity(server).as_str(), namespace, token.unwrap_or("")] {
            name.update(part.as_bytes());
            name.update(b"\0");
        }
        let hex: String = name.finalize()[..16].iter().map(|byte| format!("{byte:02x}")).collect();
        Self { path: root.join("vouched").join(hex) }
    }

    /// Notes cached's answer. A mark that cannot be written only costs the next outage.
    pub fn note(&self, may_put: bool) {
        let noted = match may_put {
            true => self
                .path
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|()| fs::write(&self.path, b"")),
            false => fs::remove_file(&self.path).or_else(|err| match err.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(err),
            }),
        };
        if let Err(err) = noted {
            tracing::debug!("cannot note cached's answer in {} ({err})", self.path.display());
        }
    }

    /// Whether cached said yes within [`VALID_FOR`].
    pub fn lately(&self) -> bool {
        let written = fs::metadata(&self.path).and_then(|meta| meta.modified());
        written.is_ok_and(|at| SystemTime::now().duration_since(at).is_ok_and(|age| age < VALID_FOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yes_is_remembered_for_its_token_server_and_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let main = Vouched::new(dir.path(), "http://cached:9092", "main", Some("main-secret"));
        assert!(!main.lately(), "never told");
        main.note(true);
        assert!(main.lately());
        assert!(Vouched::new(dir.path(), "http://cached:9092/", "main", Some("main-secret")).lately());
        for other in [
            Vouched::new(dir.path(), "http://cached:9092", "main", Some("pr-secret")),
            Vouched::new(dir.path(), "http://cached:9092", "main", None),
            Vouched::new(dir.path(), "http://other:9092", "main", Some("main-secret")),
            Vouched::new(dir.path(), "http://cached:9092", "pr-1", Some("main-secret")),
        ] {
            assert!(!other.lately());
        }
        main.note(false);
        assert!(!main.lately(), "a no forgets the yes");
    }
}
