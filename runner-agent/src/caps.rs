//! What this machine can build: the Go version and host platform (`go env`), and the C
//! compilers on PATH for cgo targets (the host's own `gcc`/`cc`, Debian's cross compilers such
//! as `aarch64-linux-gnu-gcc`, MinGW), plus any given with `--cc goos/goarch=command`.

use std::path::{Path, PathBuf};
use std::process::Command;

use proto::v1::CCompiler;

/// Cross compilers by the target they build for, in the names Debian and Ubuntu ship.
const CROSS: &[(&str, &str, &str)] = &[
    ("linux", "amd64", "x86_64-linux-gnu-gcc"),
    ("linux", "arm64", "aarch64-linux-gnu-gcc"),
    ("linux", "arm", "arm-linux-gnueabihf-gcc"),
    ("linux", "386", "i686-linux-gnu-gcc"),
    ("linux", "riscv64", "riscv64-linux-gnu-gcc"),
    ("linux", "ppc64le", "powerpc64le-linux-gnu-gcc"),
    ("linux", "s390x", "s390x-linux-gnu-gcc"),
    ("windows", "amd64", "x86_64-w64-mingw32-gcc"),
    ("windows", "386", "i686-w64-mingw32-gcc"),
];

#[derive(Debug, Clone)]
pub struct GoInfo {
    pub version: String,
    pub goos: String,
    pub goarch: String,
}

/// `go env GOVERSION GOHOSTOS GOHOSTARCH`.
pub fn go_info(go: &Path) -> Result<GoInfo, String> {
    let output = Command::new(go)
        .args(["env", "GOVERSION", "GOHOSTOS", "GOHOSTARCH"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|err| format!("cannot run {}: {err}; runner-agent needs the go command", go.display()))?;
    if !output.status.success() {
        return Err(format!("go env failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().map(str::trim);
    match (lines.next(), lines.next(), lines.next()) {
        (Some(version), Some(goos), Some(goarch)) if !version.is_empty() => {
            Ok(GoInfo { version: version.to_owned(), goos: goos.to_owned(), goarch: goarch.to_owned() })
        }
        _ => Err(format!("unexpected go env output: {text:?}")),
    }
}

/// The PATH used when PATH is not set.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The PATH builds run with: the agent's own, its absolute entries only. An empty, `.` or
/// relative entry names a directory relative to wherever a program runs, and the go command
/// and the C compiler run programs inside the job's tree (gcc looks `as` up on PATH from the
/// package directory): a job would ship an `as` that runs with the task's rights.
pub fn build_path() -> String {
    absolute_entries(&std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
}

/// The entries of the agent's PATH that [`build_path`] leaves out, to say so at start.
pub fn relative_path_entries() -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.is_absolute())
        .map(|dir| format!("{:?}", dir.display().to_string()))
        .collect()
}

fn absolute_entries(path: &std::ffi::OsStr) -> String {
    let kept: Vec<PathBuf> = std::env::split_paths(path).filter(|dir| dir.is_absolute()).collect();
    std::env::join_paths(kept)
        .ok()
        .and_then(|joined| joined.into_string().ok())
        .filter(|joined| !joined.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// `command` on the PATH builds run with.
pub fn which(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&build_path()).map(|dir| dir.join(command)).find(|candidate| candidate.is_file())
}

/// The C compilers found on PATH, plus `extra` (`goos/goarch=command`), which win.
pub fn c_compilers(host: &GoInfo, extra: &[String]) -> Result<Vec<CCompiler>, String> {
    let mut found: Vec<CCompiler> = Vec::new();
    let mut add = |goos: &str, goarch: &str, cc: String| {
        found.retain(|c| !(c.goos == goos && c.goarch == goarch));
        found.push(CCompiler { goos: goos.to_owned(), goarch: goarch.to_owned(), cc });
    };
    if let Some(native) = ["gcc", "cc", "clang"].into_iter().find(|cc| which(cc).is_some()) {
        add(&host.goos, &host.goarch, native.to_owned());
    }
    for (goos, goarch, cc) in CROSS {
        if (*goos, *goarch) != (host.goos.as_str(), host.goarch.as_str()) && which(cc).is_some() {
            add(goos, goarch, (*cc).to_owned());
        }
    }
    for spec in extra {
        let (platform, cc) =
            spec.split_once('=').ok_or_else(|| format!("--cc {spec:?}: expected goos/goarch=command"))?;
        let platform: proto::Platform = platform.parse().map_err(|err| format!("--cc {spec:?}: {err}"))?;
        if which(cc).is_none() {
            return Err(format!("--cc {spec:?}: {cc} is not on PATH"));
        }
        add(&platform.goos, &platform.goarch, cc.to_owned());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_get_only_the_absolute_entries_of_path() {
        let entries = |path: &str| absolute_entries(std::ffi::OsStr::new(path));
        assert_eq!(
            entries(":/usr/local/go/bin::.:bin:./node_modules/.bin:/usr/bin"),
            "/usr/local/go/bin:/usr/bin"
        );
        assert_eq!(entries(""), DEFAULT_PATH);
        assert_eq!(entries(".:vendor/bin"), DEFAULT_PATH);
    }
}
