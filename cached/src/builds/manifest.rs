//! Build manifests: checking them, the canonical key (docs/build-keys.md, versions 1 and 2),
//! the component difference between two manifests, and the cause categories stats count.
//!
//! The client (`cli/src/gobuild/manifest.rs`) derives the same key; both sides pin the test
//! vector of docs/build-keys.md, so they cannot drift apart.

use std::collections::BTreeMap;

use proto::v1;

use crate::error::{Error, Result};

/// The newest encoding version this server understands.
pub const MANIFEST_VERSION: u32 = 2;
/// The domain line of each version this server speaks: keys of different versions never
/// collide, so a record made under one version's rules never answers another's lookup.
/// Version 1 stays for clients not yet upgraded.
const KEY_DOMAINS: &[(u32, &[u8])] = &[(1, b"cached build key v1\n"), (2, b"cached build key v2\n")];
const MAX_COMPONENTS: usize = 200_000;
const MAX_NAME_LEN: usize = 4096;
const MAX_DISPLAY_LEN: usize = 1024;
/// Changes kept per miss in the event log; the count beyond is kept exactly.
pub const MAX_STORED_CHANGES: usize = 1000;

/// Checks a manifest's form: version, sorted unique names, 32-byte hashes, bounded sizes.
pub fn check(manifest: &v1::BuildManifest) -> Result<()> {
    if domain(manifest.version).is_none() {
        return Err(Error::invalid(format!(
            "build manifest version {} is not supported; this server speaks versions 1 to {MANIFEST_VERSION}",
            manifest.version
        )));
    }
    if manifest.components.len() > MAX_COMPONENTS {
        return Err(Error::invalid(format!(
            "build manifest has {} components; at most {MAX_COMPONENTS}",
            manifest.components.len()
        )));
    }
    let mut previous: Option<&str> = None;
    for component in &manifest.components {
        let name = component.name.as_str();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(Error::invalid(format!("build manifest component name {name:?} is not allowed")));
        }
        if previous.is_some_and(|previous| previous.as_bytes() >= name.as_bytes()) {
            return Err(Error::invalid(format!(
                "build manifest components must be sorted by name and unique; {name:?} is out of order"
            )));
        }
        if component.hash.len() != 32 {
            return Err(Error::invalid(format!(
                "component {name:?} has a hash of {} bytes, not 32",
                component.hash.len()
            )));
        }
        if component.display.len() > MAX_DISPLAY_LEN {
            return Err(Error::invalid(format!(
                "component {name:?} has a display value over {MAX_DISPLAY_LEN} bytes"
            )));
        }
        previous = Some(name);
    }
    Ok(())
}

fn domain(version: u32) -> Option<&'static [u8]> {
    KEY_DOMAINS.iter().find(|(known, _)| *known == version).map(|(_, line)| *line)
}

/// The build key of a (checked) manifest: BLAKE3 over its version's domain line and, per
/// component in name order, the name, a NUL and the 32-byte component hash.
pub fn key(manifest: &v1::BuildManifest) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain(manifest.version).unwrap_or(b"cached build key (unchecked)\n"));
    for component in &manifest.components {
        hasher.update(component.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&component.hash);
    }
    *hasher.finalize().as_bytes()
}

/// What differs from `before` to `after`, sorted by name.
pub fn diff(before: &v1::BuildManifest, after: &v1::BuildManifest) -> Vec<v1::ComponentChange> {
    let old: BTreeMap<&str, &v1::ManifestComponent> =
        before.components.iter().map(|c| (c.name.as_str(), c)).collect();
    let new: BTreeMap<&str, &v1::ManifestComponent> =
        after.components.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut changes = Vec::new();
    for (name, component) in &new {
        match old.get(name) {
            None => changes.push(change(name, "added", "", &component.display)),
            Some(previous) if previous.hash != component.hash => {
                changes.push(change(name, "changed", &previous.display, &component.display));
            }
            Some(_) => {}
        }
    }
    for (name, component) in &old {
        if !new.contains_key(name) {
            changes.push(change(name, "removed", &component.display, ""));
        }
    }
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    changes
}

fn change(name: &str, kind: &str, before: &str, after: &str) -> v1::ComponentChange {
    v1::ComponentChange {
        name: name.to_owned(),
        kind: kind.to_owned(),
        before: before.to_owned(),
        after: after.to_owned(),
    }
}

/// The cause category of a component, as stats count it and explanations group it.
pub fn category(name: &str) -> String {
    let fixed = match name {
        "go.version" => "go version",
        "go.std" => "standard library",
        "env.GOOS" => "GOOS",
        "env.GOARCH" => "GOARCH",
        "env.arch_level" => "arch level",
        "env.CGO_ENABLED" => "CGO_ENABLED",
        "env.GOFLAGS" => "GOFLAGS",
        "env.GOEXPERIMENT" => "GOEXPERIMENT",
        "flag.tags" => "build tags",
        "mod.go.mod" => "go.mod",
        "mod.go.sum" => "go.sum",
        "mod.go.work" | "mod.go.work.sum" => "go.work",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_owned();
    }
    let (prefix, rest) = name.split_once('.').unwrap_or((name, ""));
    match prefix {
        "env" if rest.starts_with("CGO_") => "cgo flags".to_owned(),
        "env" => rest.to_owned(),
        "cc" => "C toolchain".to_owned(),
        "flag" => format!("-{rest}"),
        "vcs" => "VCS stamp".to_owned(),
        "mod" => rest.to_owned(),
        "dep" => "dependencies".to_owned(),
        "file" => "source files".to_owned(),
        "path" => "paths".to_owned(),
        "pkg" => "packages".to_owned(),
        "pgo" => "PGO profile".to_owned(),
        _ => "other".to_owned(),
    }
}

/// The distinct cause categories of `changes`, in order of first appearance. An arch level
/// that changed with GOARCH is part of the GOARCH change, not a cause of its own; so are the
/// standard library files compiled, which follow the version, the platform, tags, flags and
/// the build's own imports: a cause only alone.
pub fn causes(changes: &[v1::ComponentChange]) -> Vec<String> {
    let goarch = changes.iter().any(|c| c.name == "env.GOARCH");
    let others = changes.iter().any(|c| c.name != "go.std");
    let mut causes: Vec<String> = Vec::new();
    for change in changes {
        let cause = category(&change.name);
        if (goarch && cause == "arch level") || (others && change.name == "go.std") {
            continue;
        }
        if !causes.contains(&cause) {
            causes.push(cause);
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(name: &str, value: &str, display: &str) -> v1::ManifestComponent {
        v1::ManifestComponent {
            name: name.to_owned(),
            hash: blake3::hash(value.as_bytes()).as_bytes().to_vec().into(),
            display: display.to_owned(),
        }
    }

    fn manifest(components: Vec<v1::ManifestComponent>) -> v1::BuildManifest {
        v1::BuildManifest { version: MANIFEST_VERSION, components }
    }

    /// The test vectors of docs/build-keys.md; gobuild/src/manifest.rs pins them too.
    #[test]
    fn key_matches_the_documented_vector() {
        let mut m = manifest(vec![
            component("env.GOARCH", "amd64", "amd64"),
            component("env.GOOS", "linux", "linux"),
            component("file.main.go", "package main\n", ""),
        ]);
        check(&m).unwrap();
        assert_eq!(
            blake3::Hash::from_bytes(key(&m)).to_hex().as_str(),
            "1dc2f2bfcbc87916c727c442b0c49b5c77648b56aa24ab324d913e2ed97554a5"
        );
        m.version = 1;
        check(&m).unwrap();
        assert_eq!(
            blake3::Hash::from_bytes(key(&m)).to_hex().as_str(),
            "a8fc8f7777e80175fd9589d04030a994c532aedd9f47c55f01e559f2a3ee656d"
        );
    }

    #[test]
    fn unsorted_or_duplicate_names_are_refused() {
        let m = manifest(vec![component("b", "1", ""), component("a", "1", "")]);
        assert!(check(&m).is_err());
        let m = manifest(vec![component("a", "1", ""), component("a", "2", "")]);
        assert!(check(&m).is_err());
        let mut m = manifest(vec![component("a", "1", "")]);
        m.version = 3;
        assert!(check(&m).unwrap_err().to_string().contains("version 3"));
        m.version = 0;
        assert!(check(&m).is_err());
    }

    #[test]
    fn diff_names_what_changed_and_causes_fold_the_arch_level() {
        let before = manifest(vec![
            component("env.GOARCH", "amd64", "amd64"),
            component("env.arch_level", "GOAMD64=v1", "GOAMD64=v1"),
            component("file.a.go", "a", ""),
            component("file.b.go", "b", ""),
        ]);
        let after = manifest(vec![
            component("env.GOARCH", "arm64", "arm64"),
            component("env.arch_level", "GOARM64=v8.0", "GOARM64=v8.0"),
            component("file.a.go", "a2", ""),
            component("file.c.go", "c", ""),
        ]);
        let changes = diff(&before, &after);
        let summary: Vec<(&str, &str)> = changes.iter().map(|c| (c.name.as_str(), c.kind.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("env.GOARCH", "changed"),
                ("env.arch_level", "changed"),
                ("file.a.go", "changed"),
                ("file.b.go", "removed"),
                ("file.c.go", "added")
            ]
        );
        assert_eq!(changes[0].before, "amd64");
        assert_eq!(causes(&changes), ["GOARCH", "source files"]);
        let with_std = [changes.clone(), vec![change("go.std", "changed", "", "")]].concat();
        assert_eq!(causes(&with_std), ["GOARCH", "source files"], "the platform's own files");
        assert_eq!(causes(&[change("go.std", "changed", "", "")]), ["standard library"]);
        assert_eq!(category("flag.ldflags"), "-ldflags");
        assert_eq!(category("env.CGO_CFLAGS"), "cgo flags");
        assert_eq!(category("dep.golang.org/x/mod"), "dependencies");
    }
}
