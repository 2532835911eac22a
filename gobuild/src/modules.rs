//! Module dependencies travel with a job: the `.info`, `.mod` and `.zip` files a build needs,
//! taken from the client's module cache (`$GOMODCACHE/cache/download`) and laid out the same
//! way, which is exactly the layout of a file:// module proxy. Agents then build with
//! `GOPROXY=file://<dir>` and need no network.
//!
//! Which files: `go mod download -json` lists the modules whose packages the main module's
//! packages and tests import (their zips), and `go mod graph` the module graph, whose go.mod
//! files module loading reads. A module with a `vendor/modules.txt` ships its dependencies in
//! the tree and needs none of this.
//!
//! go.sum stays the authority: [`Coverage`] says which of the files have a go.sum line, and
//! agents turn off the checksum database only when every one of them does (then it is never
//! consulted anyway). The go command checks every file against go.sum as it extracts it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use cached_client::error::{ClientError, Result};
use cached_client::tree::Tree;

/// The go command's answer for one module of `go mod download -json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Download {
    path: String,
    version: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    info: String,
    #[serde(default)]
    go_mod: String,
    #[serde(default)]
    zip: String,
}

/// What a module directory needs shipped.
#[derive(Debug, Default)]
pub struct ModuleFiles {
    /// `<escaped path>/@v/<version>.<ext>` → file in the module cache.
    pub files: BTreeMap<String, PathBuf>,
    pub modules: usize,
    /// The dependencies are vendored: nothing to ship.
    pub vendored: bool,
}

impl ModuleFiles {
    /// The proxy tree of these files.
    pub fn tree(&self) -> Result<Tree> {
        let mut tree = Tree::default();
        for (relative, source) in &self.files {
            tree.add_file(relative, source)?;
        }
        Ok(tree)
    }
}

fn go(module_dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("go")
        .args(args)
        .current_dir(module_dir)
        // The caller's GOFLAGS could say -mod=vendor or -modfile; module listing needs neither.
        .env("GOFLAGS", "-mod=mod")
        .env("GOWORK", "off")
        .output()
        .map_err(ClientError::run("go (remote builds list the module's dependencies with it)"))?;
    if !output.status.success() {
        return Err(ClientError::Failed(format!(
            "go {} in {} failed: {}",
            args.join(" "),
            module_dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout)
        .map_err(|_| ClientError::Failed(format!("go {}: output is not UTF-8", args.join(" "))))
}

/// The module cache's `cache/download` directory.
fn download_dir(module_dir: &Path) -> Result<PathBuf> {
    let modcache = go(module_dir, &["env", "GOMODCACHE"])?;
    Ok(Path::new(modcache.trim()).join("cache").join("download"))
}

/// Collects the files of every dependency of the module in `module_dir`, downloading what
/// the module cache lacks (as `go build` would).
pub fn collect(module_dir: &Path) -> Result<ModuleFiles> {
    if module_dir.join("vendor").join("modules.txt").is_file() {
        return Ok(ModuleFiles { vendored: true, ..ModuleFiles::default() });
    }
    let root = download_dir(module_dir)?;
    let mut files = BTreeMap::new();
    let mut modules = BTreeSet::new();
    let add = |files: &mut BTreeMap<String, PathBuf>, path: &str| -> Result<()> {
        if path.is_empty() {
            return Ok(());
        }
        let path = PathBuf::from(path);
        if let Ok(relative) = path.strip_prefix(&root) {
            let relative = relative
                .to_str()
                .ok_or_else(|| ClientError::Usage(format!("{}: not UTF-8", path.display())))?;
            files.insert(relative.replace('\\', "/"), path.clone());
        }
        Ok(())
    };
    let listing = go(module_dir, &["mod", "download", "-json"])?;
    for item in serde_json::Deserializer::from_str(&listing).into_iter::<Download>() {
        let module = item.map_err(|err| ClientError::Failed(format!("go mod download -json: {err}")))?;
        if !module.error.is_empty() {
            return Err(ClientError::Usage(format!(
                "module {}@{}: {}",
                module.path, module.version, module.error
            )));
        }
        modules.insert(format!("{}@{}", module.path, module.version));
        for path in [&module.info, &module.go_mod, &module.zip] {
            add(&mut files, path)?;
        }
    }
    // Module loading reads the go.mod of every module version in the (pruned) graph.
    let graph = go(module_dir, &["mod", "graph"])?;
    let versions: BTreeSet<&str> = graph
        .split_whitespace()
        .filter(|node| node.contains('@') && !node.starts_with("go@") && !node.starts_with("toolchain@"))
        .collect();
    for node in versions {
        let Some((path, version)) = node.rsplit_once('@') else { continue };
        let escaped = escape(path);
        for ext in ["mod", "info"] {
            let file = root.join(&escaped).join("@v").join(format!("{version}.{ext}"));
            if file.is_file() {
                add(&mut files, file.to_str().unwrap_or_default())?;
            }
        }
        modules.insert(node.to_owned());
    }
    Ok(ModuleFiles { files, modules: modules.len(), vendored: false })
}

/// Module path escaping of the module cache: upper case letters become `!` + lower case.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape`].
pub fn unescape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut bang = false;
    for c in path.chars() {
        if c == '!' {
            bang = true;
        } else if bang {
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Which proxy files go.sum vouches for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// `module@version` (zip) or `module@version/go.mod` entries the files need and go.sum lacks.
    pub missing: Vec<String>,
}

impl Coverage {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Checks the `.zip` and `.mod` files under a proxy layout (`relative paths`) against the
/// text of go.sum.
pub fn coverage<'a>(go_sum: &str, proxy_files: impl IntoIterator<Item = &'a str>) -> Coverage {
    let lines: BTreeSet<(&str, &str)> = go_sum
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .collect();
    let mut missing = Vec::new();
    for file in proxy_files {
        let Some((escaped, name)) = file.split_once("/@v/") else { continue };
        let module = unescape(escaped);
        let (version, wanted) = if let Some(version) = name.strip_suffix(".zip") {
            (version, version.to_owned())
        } else if let Some(version) = name.strip_suffix(".mod") {
            (version, format!("{version}/go.mod"))
        } else {
            continue;
        };
        if !lines.contains(&(module.as_str(), wanted.as_str())) {
            missing
                .push(format!("{module}@{version}{}", if name.ends_with(".mod") { "/go.mod" } else { "" }));
        }
    }
    Coverage { missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        assert_eq!(escape("github.com/BurntSushi/toml"), "github.com/!burnt!sushi/toml");
        assert_eq!(unescape("github.com/!burnt!sushi/toml"), "github.com/BurntSushi/toml");
    }

    #[test]
    fn coverage_needs_a_line_per_zip_and_go_mod() {
        let sum = "example.com/A v1.0.0 h1:abc=\nexample.com/A v1.0.0/go.mod h1:def=\nexample.com/b v0.1.0/go.mod h1:x=\n";
        let full = coverage(
            sum,
            [
                "example.com/!a/@v/v1.0.0.zip",
                "example.com/!a/@v/v1.0.0.mod",
                "example.com/b/@v/v0.1.0.mod",
                "example.com/b/@v/v0.1.0.info",
            ],
        );
        assert!(full.complete(), "{full:?}");
        let partial = coverage(sum, ["example.com/b/@v/v0.1.0.zip", "example.com/c/@v/v1.0.0.mod"]);
        assert_eq!(partial.missing, ["example.com/b@v0.1.0", "example.com/c@v1.0.0/go.mod"]);
    }
}
