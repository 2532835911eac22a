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

/// `command` on PATH.
pub fn which(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|candidate| candidate.is_file())
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
