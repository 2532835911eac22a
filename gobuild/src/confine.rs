//! Keeping what a build key reads within given directories.
//!
//! The key is read by the process that builds it: on an agent, the agent itself, as root, from
//! the directories the build user's `go list` names. A job's go.mod may replace a module with
//! any path, and a path through `/proc/self` (cwd, root, fd) means the build user's own
//! directories to the go command but the agent's to the agent: the key would hash, and the
//! include scan quote, files only root may read. So a builder that reads for someone else names
//! the directories it may read in ([`crate::BuildRequest::confine_to`]), and every directory
//! the key would read in is checked against them, as written and as resolved, before anything
//! in it is opened.

use std::path::{Path, PathBuf};

use crate::includes::clean;
use crate::inputs::{NoKey, Package};

/// Directories, as written (lexically clean) and as the file system resolves them.
pub(crate) struct Within {
    written: Vec<PathBuf>,
    resolved: Vec<PathBuf>,
}

/// Why a path is not within the directories.
pub(crate) enum Outside {
    /// Its name is not under any of them.
    ByName,
    /// Its name is, but it resolves elsewhere through a link.
    ThroughLink,
}

impl Within {
    pub(crate) fn new<'a>(roots: impl IntoIterator<Item = &'a Path>) -> Self {
        let mut written: Vec<PathBuf> = roots.into_iter().map(clean).collect();
        written.sort();
        written.dedup();
        let resolved =
            written.iter().map(|root| std::fs::canonicalize(root).unwrap_or_else(|_| root.clone())).collect();
        Self { written, resolved }
    }

    /// Whether `path` (lexically clean) is within the directories by its name.
    pub(crate) fn names(&self, path: &Path) -> bool {
        self.written.iter().any(|root| path.starts_with(root))
    }

    /// Whether `path` (lexically clean) is within the directories by its name, or as the file
    /// system resolves it.
    pub(crate) fn holds(&self, path: &Path) -> bool {
        self.written.iter().any(|root| path.starts_with(root))
            || std::fs::canonicalize(path)
                .is_ok_and(|real| self.resolved.iter().any(|root| real.starts_with(root)))
    }

    /// Where `path` (lexically clean) really is, if it exists, without opening anything.
    pub(crate) fn resolve(&self, path: &Path) -> Result<Option<PathBuf>, Outside> {
        if !self.written.iter().any(|root| path.starts_with(root)) {
            return Err(Outside::ByName);
        }
        let Ok(real) = std::fs::canonicalize(path) else { return Ok(None) };
        if !self.resolved.iter().any(|root| real.starts_with(root)) {
            return Err(Outside::ThroughLink);
        }
        Ok(Some(real))
    }
}

/// Refuses a key whose packages or modules lie outside `roots`: the directories of every
/// package outside the standard library (which the key does not read), and the directory and
/// go.mod of its module and of the module's replacement.
pub(crate) fn check(packages: &[Package], roots: &[PathBuf]) -> Result<(), NoKey> {
    let within = Within::new(roots.iter().map(PathBuf::as_path));
    // A module's directory and go.mod come with each of its packages: each is resolved once.
    let mut checked = std::collections::HashSet::new();
    for package in packages.iter().filter(|package| !package.standard) {
        let module = package.module.as_ref();
        let replacement = module.and_then(|module| module.replace.as_deref());
        let places = [Some(&package.dir), module.map(|m| &m.dir), module.map(|m| &m.go_mod)]
            .into_iter()
            .chain([replacement.map(|m| &m.dir), replacement.map(|m| &m.go_mod)]);
        for place in places.flatten().filter(|place| !place.is_empty() && checked.insert(place.as_str())) {
            let path = clean(Path::new(place));
            match within.resolve(&path) {
                Ok(_) => {}
                Err(Outside::ByName) => {
                    return Err(NoKey(format!(
                        "package {} is read from {place}, outside the job's directories, which the build \
                         key does not read (a `replace` of a module by a path outside the tree?)",
                        package.import_path
                    )));
                }
                Err(Outside::ThroughLink) => {
                    return Err(NoKey(format!(
                        "package {} is read from {place}, which leads outside the job's directories through \
                         a link, which the build key does not follow",
                        package.import_path
                    )));
                }
            }
        }
    }
    Ok(())
}
