//! How a build may use go's own cache (the bridge's, shared through cached). The go command's
//! action ID for a package hashes the files `go list` names for it, not a header its C or
//! assembly sources include from elsewhere, nor `.incbin` data: for a build that reads such
//! files, an entry of the shared cache may hold an object built from other versions of them,
//! and a build that writes one puts it under an ID honest builds of other contents look up.
//! So the include scan decides: a build whose every read file go keys shares the cache as it
//! is; one that reads others keys its entries apart under a salt of those files' contents
//! (`CACHED_ACTION_SALT`); one whose reads are not known uses no shared cache at all.

use std::collections::BTreeSet;
use std::path::Path;

use crate::includes;
use crate::inputs::{self, GoEnv, NoKey, Package};

/// The go command from which GOCACHEPROG is on without an experiment.
const CACHEPROG_SINCE: (u32, u32) = (1, 24);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoCache {
    /// go's action IDs hash every file the build reads: the shared cache as it is.
    Shared,
    /// Some package reads files its action ID misses: every entry keyed under this salt of
    /// their names and contents.
    Salted([u8; 32]),
    /// Which files the build reads is not known, or the go command cannot key the cache apart
    /// (it ignores GOCACHEPROG): nothing of a shared cache is read or written, and every
    /// package is compiled (`go build -a`).
    Off,
}

impl GoCache {
    /// `salt` as the go command of `env` can use it: a salt needs the bridge, which a go
    /// command older than 1.24 runs only with GOEXPERIMENT=cacheprog.
    pub fn for_go(self, env: &GoEnv) -> Self {
        match self {
            Self::Salted(_) if !runs_cache_program(env) => Self::Off,
            other => other,
        }
    }

    /// From the names and hashes of the files go's action IDs miss (none: shared).
    pub(crate) fn of_unseen<'a>(unseen: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>) -> Self {
        let mut named: Vec<_> = unseen.into_iter().collect();
        if named.is_empty() {
            return Self::Shared;
        }
        named.sort();
        let mut salt = blake3::Hasher::new();
        salt.update(b"cached go cache salt\0");
        for (name, hash) in named {
            salt.update(name.as_bytes()).update(&[0]).update(hash);
        }
        Self::Salted(*salt.finalize().as_bytes())
    }
}

/// Whether the go command of `env` runs GOCACHEPROG.
fn runs_cache_program(env: &GoEnv) -> bool {
    let experiment = env.get("GOEXPERIMENT").map_or("", String::as_str);
    if experiment.split(',').any(|name| name.trim() == "cacheprog") {
        return true;
    }
    let version = env.get("GOVERSION").map_or("", String::as_str);
    let mut numbers = version.strip_prefix("go").unwrap_or("").split(['.', 'r', 'b', '-', ' ']);
    let mut next = || numbers.next().and_then(|n| n.parse::<u32>().ok());
    matches!((next(), next()), (Some(major), Some(minor)) if (major, minor) >= CACHEPROG_SINCE)
}

/// The go cache a build without a whole-build key may use: the include scan alone, run for
/// the packages `go list` named (`None`: not known, so none).
pub async fn for_unkeyed(env: &GoEnv, packages: Option<Vec<Package>>, tree: Option<&Path>) -> GoCache {
    let Some(packages) = packages else { return GoCache::Off };
    let gomodcache = env.get("GOMODCACHE").cloned().unwrap_or_default();
    let base = inputs::key_base(env);
    let tree = tree.map(Path::to_owned);
    let scans = inputs::include_scans(&packages, &gomodcache);
    if scans.is_empty() {
        return GoCache::Shared;
    }
    let scanned = cached_client::task::spawn_blocking("scan-includes", move || {
        let found = includes::inputs(&scans, tree.as_deref(), &includes::LIMITS)?;
        hash_unseen(&found.unseen_by_go, &base)
    })
    .await;
    match scanned {
        Ok(Ok(hashed)) => {
            GoCache::of_unseen(hashed.iter().map(|(name, hash)| (name.as_str(), hash))).for_go(env)
        }
        _ => GoCache::Off,
    }
}

fn hash_unseen(unseen: &BTreeSet<std::path::PathBuf>, base: &Path) -> Result<Vec<(String, [u8; 32])>, NoKey> {
    let mut buffer = vec![0; 64 << 10];
    unseen
        .iter()
        .map(|path| {
            let hash = inputs::hash_file(path, &mut buffer)
                .map_err(|err| NoKey(format!("cannot read {}: {err}", path.display())))?;
            Ok((format!("file.{}", inputs::relative(path, base)), hash))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> GoEnv {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_salt_needs_a_go_command_that_runs_the_bridge() {
        let salted = GoCache::Salted([1; 32]);
        for (version, experiment, kept) in [
            ("go1.26.8", "", true),
            ("go1.24rc1", "", true),
            ("go1.23.4", "", false),
            ("go1.23.4", "cacheprog,rangefunc", true),
            ("devel go1.25-abc", "", false),
            ("", "", false),
        ] {
            let go = env(&[("GOVERSION", version), ("GOEXPERIMENT", experiment)]);
            assert_eq!(salted.for_go(&go) == salted, kept, "{version} {experiment}");
            assert_eq!(GoCache::Shared.for_go(&go), GoCache::Shared);
        }
    }

    #[test]
    fn the_salt_is_the_files_names_and_contents() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(GoCache::of_unseen([]), GoCache::Shared);
        let one = GoCache::of_unseen([("file.inc/a.h", &a), ("file.inc/b.h", &b)]);
        assert_eq!(one, GoCache::of_unseen([("file.inc/b.h", &b), ("file.inc/a.h", &a)]), "order");
        assert_ne!(one, GoCache::of_unseen([("file.inc/a.h", &b), ("file.inc/b.h", &a)]), "contents");
        assert_ne!(one, GoCache::of_unseen([("file.inc/a.h", &a), ("file.inc/c.h", &b)]), "names");
    }
}
