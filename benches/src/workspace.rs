//! Files and modules for the drivers that build real Go programs.

use std::path::{Path, PathBuf};

/// The module cache the gopls benchmarks share (`BENCH_GOMODCACHE`, or one under the user's
/// cache directory), so only the first run downloads.
pub fn gomodcache() -> PathBuf {
    std::env::var_os("BENCH_GOMODCACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::home_dir().unwrap_or_else(std::env::temp_dir).join(".cache/cached/bench-gomodcache")
    })
}

/// The environment of a sealed go command: everything under `scratch` but the shared module
/// cache and `gocache`, no workspace or toolchain switch, no telemetry, no cgo, modules from
/// `proxy` without checksum-database lookups, and the caller's PATH.
pub fn sealed_go_env(
    scratch: &Path,
    gomodcache: &Path,
    gocache: &Path,
    proxy: &str,
) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut env = vec![
        ("HOME".to_owned(), path(&scratch.join("home"))),
        ("GOCACHE".to_owned(), path(gocache)),
        ("GOPATH".to_owned(), path(&scratch.join("gopath"))),
        ("GOMODCACHE".to_owned(), path(gomodcache)),
        ("GOENV".to_owned(), "off".to_owned()),
        // Module files writable, so the module cache can be removed like any directory.
        ("GOFLAGS".to_owned(), "-modcacherw".to_owned()),
        ("GOTOOLCHAIN".to_owned(), "local".to_owned()),
        ("GOWORK".to_owned(), "off".to_owned()),
        ("GOTELEMETRY".to_owned(), "off".to_owned()),
        ("CGO_ENABLED".to_owned(), "0".to_owned()),
        ("GOPROXY".to_owned(), proxy.to_owned()),
        ("GOSUMDB".to_owned(), "off".to_owned()),
        ("TMPDIR".to_owned(), path(&std::env::temp_dir())),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        env.push(("PATH".to_owned(), path.to_string_lossy().into_owned()));
    }
    env
}

/// The module proxy the drivers download from: `GOPROXY`, or the public one.
pub fn proxy() -> String {
    std::env::var("GOPROXY").unwrap_or_else(|_| "https://proxy.golang.org".to_owned())
}

/// `given` if it is a file, or else the binary `name` built next to this one (same target
/// directory and profile); an error says what to build.
pub fn sibling_or(given: Option<PathBuf>, name: &str) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe().map_err(|err| err.to_string())?.with_file_name(name),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it in the same profile as this benchmark (cargo build --release -p {name})",
            path.display()
        ))
    }
}

/// Copies a tree, leaving every file writable (module cache files are read-only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            let mut permissions = std::fs::metadata(&target).expect("metadata").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions).expect("chmod");
        }
    }
}

/// Removes a directory tree if it is there.
pub fn wipe(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => panic!("removing {}: {err}", dir.display()),
    }
}
