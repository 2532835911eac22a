//! Miss explanations in plain words: the server's component difference, grouped by cause.
//! `summary` is what the wrapper prints before it builds; `full` is `cachectl explain`.

use proto::v1;

use crate::manifest::hex;

/// Files or modules named in one summary line before "and N more".
const NAMED: usize = 5;

/// The first 12 hex digits of a key, as messages show it.
pub fn short(key: &[u8]) -> String {
    let mut text = hex(key);
    text.truncate(12);
    text
}

/// `example.com/m/cmd/app (linux/amd64)`.
pub fn target_text(target: &v1::BuildTarget) -> String {
    format!("{} ({}/{})", target.package, target.goos, target.goarch)
}

/// How long ago `time_ms` was, roughly.
pub fn ago(time_ms: i64, now_ms: i64) -> String {
    let seconds = (now_ms - time_ms).max(0) / 1000;
    match seconds {
        0..=59 => format!("{seconds}s ago"),
        60..=3599 => format!("{}m ago", seconds / 60),
        3600..=86_399 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// Components whose values are never shown: contents, and flags that may carry secrets.
fn hidden(name: &str) -> bool {
    matches!(name, "flag.ldflags" | "flag.gcflags" | "flag.asmflags" | "env.GOFLAGS")
        || (name.starts_with("env.CGO_") && name != "env.CGO_ENABLED")
        || name.starts_with("mod.")
        || name.starts_with("file.")
        || name.starts_with("pgo.")
        || name == "vcs.root_go.mod"
        || name == "go.std"
}

/// The label of a component in explanations.
fn label(name: &str) -> String {
    match name {
        "go.version" => "go version".to_owned(),
        "go.std" => "the Go toolchain (its programs or standard library sources)".to_owned(),
        "env.arch_level" => "arch level".to_owned(),
        "vcs.revision" => "VCS revision".to_owned(),
        "vcs.time" => "VCS commit time".to_owned(),
        "vcs.modified" => "VCS modified".to_owned(),
        "vcs.tags" => "VCS version tags".to_owned(),
        "vcs.root_go.mod" => "go.mod at the repository root".to_owned(),
        "path.module_dir" => "module directory".to_owned(),
        "path.goroot" => "GOROOT".to_owned(),
        "path.gomodcache" => "GOMODCACHE".to_owned(),
        "path.pgo" => "PGO profile path".to_owned(),
        "pkg.roots" => "packages".to_owned(),
        "flag.tags" => "build tags".to_owned(),
        "cc.CC" => "C compiler".to_owned(),
        "cc.CXX" => "C++ compiler".to_owned(),
        _ => {
            let (prefix, rest) = name.split_once('.').unwrap_or(("", name));
            match prefix {
                "flag" => format!("-{rest}"),
                "mod" | "env" => rest.to_owned(),
                "pgo" => format!("PGO profile {rest}"),
                _ => name.to_owned(),
            }
        }
    }
}

fn value(text: &str) -> &str {
    if text.is_empty() { "(none)" } else { text }
}

fn tags(text: &str) -> Vec<&str> {
    text.split(',').filter(|t| !t.is_empty()).collect()
}

fn listed(names: &[String]) -> String {
    let mut text = names.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > NAMED {
        text.push_str(&format!(", … and {} more", names.len() - NAMED));
    }
    text
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// One line per cause: `GOOS: linux → windows`, `build tags: +netgo`, `-ldflags changed`,
/// `3 source files changed: a.go, b.go, c.go`.
pub fn summary(explanation: &v1::MissExplanation) -> Vec<String> {
    let changes = &explanation.changes;
    let goarch_changed = changes.iter().any(|c| c.name == "env.GOARCH");
    let cgo_changed = changes.iter().any(|c| c.name == "env.CGO_ENABLED");
    // Which standard library files are compiled follows the version, the platform, tags,
    // flags and the imports of the build's own sources: its line says something only alone.
    let others_changed = changes.iter().any(|c| c.name != "go.std");
    let mut lines = Vec::new();
    let mut files: [(Vec<String>, &str); 3] =
        [(Vec::new(), "changed"), (Vec::new(), "added"), (Vec::new(), "removed")];
    let mut deps = Vec::new();
    for change in changes {
        let name = change.name.as_str();
        if let Some(path) = name.strip_prefix("file.") {
            if let Some((list, _)) = files.iter_mut().find(|(_, kind)| *kind == change.kind) {
                list.push(path.to_owned());
            }
            continue;
        }
        if let Some(module) = name.strip_prefix("dep.") {
            deps.push(match change.kind.as_str() {
                "added" => format!("{module} added ({})", change.after),
                "removed" => format!("{module} removed (was {})", change.before),
                _ => format!("{module} {} → {}", change.before, change.after),
            });
            continue;
        }
        if (name == "env.arch_level" && goarch_changed) || (name == "go.std" && others_changed) {
            continue;
        }
        // The cgo flags and the C toolchain enter or leave the key with CGO_ENABLED.
        let with_cgo = (name.starts_with("env.CGO_") || name.starts_with("cc.") || name == "env.PKG_CONFIG")
            && name != "env.CGO_ENABLED";
        if with_cgo && cgo_changed && change.kind != "changed" {
            continue;
        }
        let line = if name == "flag.tags" {
            let (before, after) = (tags(&change.before), tags(&change.after));
            let mut parts: Vec<String> =
                after.iter().filter(|t| !before.contains(t)).map(|t| format!("+{t}")).collect();
            parts.extend(before.iter().filter(|t| !after.contains(t)).map(|t| format!("-{t}")));
            format!("build tags: {}", parts.join(" "))
        } else if hidden(name) {
            match change.kind.as_str() {
                "added" => format!("{} added", label(name)),
                "removed" => format!("{} removed", label(name)),
                _ => format!("{} changed", label(name)),
            }
        } else {
            format!("{}: {} → {}", label(name), value(&change.before), value(&change.after))
        };
        lines.push(line);
    }
    for (list, kind) in &files {
        if !list.is_empty() {
            lines.push(format!(
                "{} {kind}: {}",
                plural(list.len(), "source file", "source files"),
                listed(list)
            ));
        }
    }
    if !deps.is_empty() {
        lines.push(format!(
            "{}: {}",
            plural(deps.len(), "dependency changed", "dependencies changed"),
            listed(&deps)
        ));
    }
    if explanation.changes_omitted > 0 {
        lines.push(format!("… and {} more changes the server did not keep", explanation.changes_omitted));
    }
    lines
}

/// The headline of a miss and the lines under it, as the wrapper prints them.
pub fn miss_lines(
    target: &v1::BuildTarget,
    key: &[u8],
    explanation: &v1::MissExplanation,
    now_ms: i64,
) -> Vec<String> {
    let head = format!("cache miss for {}, key {}", target_text(target), short(key));
    match explanation.basis.as_str() {
        "first_build" => vec![format!("{head}: first build of this target")],
        "evicted" => {
            vec![format!("{head}: this build was cached, but its outputs have been evicted since")]
        }
        "not_explained" => {
            vec![format!("{head}: not explained (the server was explaining many other misses)")]
        }
        basis => {
            let relation = if basis == "same_package" {
                let other = explanation
                    .nearest_target
                    .as_ref()
                    .map_or(String::new(), |t| format!(" on {}/{}", t.goos, t.goarch));
                format!("the same package{other}")
            } else {
                "this target".to_owned()
            };
            let mut lines = vec![format!(
                "{head}; compared with the build of {relation} {} (key {}):",
                ago(explanation.nearest_time_unix_ms, now_ms),
                short(&explanation.nearest_key)
            )];
            lines.extend(summary(explanation).into_iter().map(|line| format!("  {line}")));
            lines
        }
    }
}

/// Every differing component, one per line (`cachectl explain`).
pub fn full(explanation: &v1::MissExplanation) -> Vec<String> {
    explanation
        .changes
        .iter()
        .map(|change| {
            let name = &change.name;
            if hidden(name) {
                format!("{name}: {}", change.kind)
            } else {
                match change.kind.as_str() {
                    "added" => format!("{name}: added ({})", value(&change.after)),
                    "removed" => format!("{name}: removed (was {})", value(&change.before)),
                    _ => format!("{name}: {} → {}", value(&change.before), value(&change.after)),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, kind: &str, before: &str, after: &str) -> v1::ComponentChange {
        v1::ComponentChange {
            name: name.into(),
            kind: kind.into(),
            before: before.into(),
            after: after.into(),
        }
    }

    #[test]
    fn summaries_read_as_the_issue_asks() {
        let explanation = v1::MissExplanation {
            basis: "same_target".into(),
            changes: vec![
                change("env.CGO_CFLAGS", "added", "", ""),
                change("env.CGO_ENABLED", "changed", "0", "1"),
                change("env.CGO_LDFLAGS", "added", "", ""),
                change("env.GOARCH", "changed", "amd64", "arm64"),
                change("env.arch_level", "changed", "GOAMD64=v1", "GOARM64=v8.0"),
                change("file.a.go", "changed", "", ""),
                change("file.b.go", "changed", "", ""),
                change("file.c.go", "added", "", ""),
                change("flag.ldflags", "changed", "", ""),
                change("flag.tags", "changed", "", "netgo"),
                change("go.version", "changed", "go1.26.7", "go1.26.8"),
                change("go.std", "changed", "", ""),
                change("mod.go.sum", "changed", "", ""),
                change("dep.golang.org/x/mod", "changed", "v0.1.0", "v0.2.0"),
            ],
            ..Default::default()
        };
        assert_eq!(
            summary(&explanation),
            [
                "CGO_ENABLED: 0 → 1",
                "GOARCH: amd64 → arm64",
                "-ldflags changed",
                "build tags: +netgo",
                "go version: go1.26.7 → go1.26.8",
                "go.sum changed",
                "2 source files changed: a.go, b.go",
                "1 source file added: c.go",
                "1 dependency changed: golang.org/x/mod v0.1.0 → v0.2.0",
            ]
        );
        let full = full(&explanation);
        assert!(full.contains(&"flag.ldflags: changed".to_owned()), "{full:?}");
        assert!(full.contains(&"env.CGO_CFLAGS: added".to_owned()), "{full:?}");
        let flags_only = v1::MissExplanation {
            basis: "same_target".into(),
            changes: vec![change("env.CGO_LDFLAGS", "changed", "", "")],
            ..Default::default()
        };
        assert_eq!(summary(&flags_only), ["CGO_LDFLAGS changed"]);
        let patched_toolchain = v1::MissExplanation {
            basis: "same_target".into(),
            changes: vec![change("go.std", "changed", "", "")],
            ..Default::default()
        };
        assert_eq!(
            summary(&patched_toolchain),
            ["the Go toolchain (its programs or standard library sources) changed"]
        );
        assert!(full.contains(&"env.GOARCH: amd64 → arm64".to_owned()));
    }

    #[test]
    fn first_builds_and_long_lists() {
        let target = v1::BuildTarget {
            module: "m".into(),
            package: "m/cmd/app".into(),
            goos: "linux".into(),
            goarch: "amd64".into(),
        };
        let first = v1::MissExplanation { basis: "first_build".into(), ..Default::default() };
        assert_eq!(
            miss_lines(&target, &[0xab; 32], &first, 0),
            ["cache miss for m/cmd/app (linux/amd64), key abababababab: first build of this target"]
        );
        let many = v1::MissExplanation {
            basis: "same_target".into(),
            changes: (0..7).map(|i| change(&format!("file.f{i}.go"), "changed", "", "")).collect(),
            ..Default::default()
        };
        assert_eq!(
            summary(&many),
            ["7 source files changed: f0.go, f1.go, f2.go, f3.go, f4.go, … and 2 more"]
        );
    }
}
