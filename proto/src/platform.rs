//! Target platforms of a build matrix: `goos/goarch[/level][+cgo]`, e.g. `linux/amd64`,
//! `linux/amd64/v3`, `linux/arm64+cgo`. With cgo off a target is only part of the build key, so
//! any agent builds it; with cgo on it needs an agent with a C compiler for it.

use std::fmt;
use std::str::FromStr;

use crate::v1;

/// `go tool dist list` of Go 1.24-1.26 (first-class and secondary ports).
const PORTS: &[(&str, &str)] = &[
    ("aix", "ppc64"),
    ("android", "386"),
    ("android", "amd64"),
    ("android", "arm"),
    ("android", "arm64"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
    ("dragonfly", "amd64"),
    ("freebsd", "386"),
    ("freebsd", "amd64"),
    ("freebsd", "arm"),
    ("freebsd", "arm64"),
    ("freebsd", "riscv64"),
    ("illumos", "amd64"),
    ("ios", "amd64"),
    ("ios", "arm64"),
    ("js", "wasm"),
    ("linux", "386"),
    ("linux", "amd64"),
    ("linux", "arm"),
    ("linux", "arm64"),
    ("linux", "loong64"),
    ("linux", "mips"),
    ("linux", "mips64"),
    ("linux", "mips64le"),
    ("linux", "mipsle"),
    ("linux", "ppc64"),
    ("linux", "ppc64le"),
    ("linux", "riscv64"),
    ("linux", "s390x"),
    ("netbsd", "386"),
    ("netbsd", "amd64"),
    ("netbsd", "arm"),
    ("netbsd", "arm64"),
    ("openbsd", "386"),
    ("openbsd", "amd64"),
    ("openbsd", "arm"),
    ("openbsd", "arm64"),
    ("openbsd", "ppc64"),
    ("openbsd", "riscv64"),
    ("plan9", "386"),
    ("plan9", "amd64"),
    ("plan9", "arm"),
    ("solaris", "amd64"),
    ("wasip1", "wasm"),
    ("windows", "386"),
    ("windows", "amd64"),
    ("windows", "arm64"),
];

/// One target of a matrix, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub goos: String,
    pub goarch: String,
    /// GOAMD64, GOARM, GOARM64, GO386, ... value; empty for Go's default.
    pub level: String,
    pub cgo: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error(
        "target {0:?} is not of the form goos/goarch[/level][+cgo], e.g. linux/arm64 or linux/amd64/v3+cgo"
    )]
    Malformed(String),
    #[error("{goos}/{goarch} is not a Go port (see `go tool dist list`)")]
    UnknownPort { goos: String, goarch: String },
}

impl Platform {
    pub fn new(goos: &str, goarch: &str) -> Result<Self, PlatformError> {
        if !PORTS.iter().any(|(os, arch)| *os == goos && *arch == goarch) {
            return Err(PlatformError::UnknownPort { goos: goos.to_owned(), goarch: goarch.to_owned() });
        }
        Ok(Self { goos: goos.to_owned(), goarch: goarch.to_owned(), level: String::new(), cgo: false })
    }

    /// `linux_arm64`: the directory name outputs are downloaded to.
    pub fn dir_name(&self) -> String {
        match self.level.as_str() {
            "" => format!("{}_{}", self.goos, self.goarch),
            level => format!("{}_{}_{level}", self.goos, self.goarch),
        }
    }

    /// The environment variable that holds the architecture level of `goarch`, if it has one.
    pub fn level_variable(goarch: &str) -> Option<&'static str> {
        Some(match goarch {
            "amd64" => "GOAMD64",
            "arm" => "GOARM",
            "arm64" => "GOARM64",
            "386" => "GO386",
            "mips" | "mipsle" => "GOMIPS",
            "mips64" | "mips64le" => "GOMIPS64",
            "ppc64" | "ppc64le" => "GOPPC64",
            "riscv64" => "GORISCV64",
            "wasm" => "GOWASM",
            _ => return None,
        })
    }

    pub fn to_wire(&self, cc: &str) -> v1::Target {
        v1::Target {
            goos: self.goos.clone(),
            goarch: self.goarch.clone(),
            arch_level: self.level.clone(),
            cgo: self.cgo,
            cc: cc.to_owned(),
        }
    }

    /// Checks a target from the wire.
    pub fn from_wire(target: &v1::Target) -> Result<Self, PlatformError> {
        let mut platform = Self::new(&target.goos, &target.goarch)?;
        if !target.arch_level.is_empty() {
            if Self::level_variable(&target.goarch).is_none() || !is_word(&target.arch_level) {
                return Err(PlatformError::Malformed(label(target)));
            }
            platform.level = target.arch_level.clone();
        }
        platform.cgo = target.cgo;
        Ok(platform)
    }
}

fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 16
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b',')
}

/// `linux/arm64+cgo`, for messages and tables.
pub fn label(target: &v1::Target) -> String {
    let mut text = format!("{}/{}", target.goos, target.goarch);
    if !target.arch_level.is_empty() {
        text = format!("{text}/{}", target.arch_level);
    }
    if target.cgo {
        text.push_str("+cgo");
    }
    text
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || PlatformError::Malformed(text.to_owned());
        let (body, cgo) = match text.trim().strip_suffix("+cgo") {
            Some(body) => (body, true),
            None => (text.trim(), false),
        };
        let mut parts = body.split('/');
        let (Some(goos), Some(goarch)) = (parts.next(), parts.next()) else { return Err(malformed()) };
        let level = parts.next().unwrap_or("");
        if parts.next().is_some() {
            return Err(malformed());
        }
        let wire = v1::Target {
            goos: goos.to_owned(),
            goarch: goarch.to_owned(),
            arch_level: level.to_owned(),
            cgo,
            cc: String::new(),
        };
        Self::from_wire(&wire).map_err(|err| match err {
            PlatformError::Malformed(_) => malformed(),
            other => other,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&label(&self.to_wire("")))
    }
}

/// Bytes in one file name: NAME_MAX of Linux and the BSDs, and what NTFS and APFS hold.
pub const MAX_NAME: usize = 255;

/// Checks one name of a source tree entry: one path component of at most [`MAX_NAME`] bytes,
/// no NUL, not `.` or `..`.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("{name:?} is not a valid file name in a source tree"));
    }
    if name.len() > MAX_NAME {
        return Err(format!("a file name of {} bytes is longer than {MAX_NAME} bytes", name.len()));
    }
    Ok(())
}

/// Device names Windows reserves in every directory, whatever the extension or case.
const WINDOWS_RESERVED: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

/// Checks the name of a build output (what agents report, what `image.binary` names): a
/// portable file name, on top of [`check_entry_name`].
///
/// Outputs get a check of their own, stricter than source tree entries', because they land on
/// the submitter's machine, which may run Windows: there `a\..\..\x` climbs out of the output
/// directory, `app:x` writes an NTFS alternate data stream, `CON` or `lpt1.exe` open a device,
/// and a trailing dot or space is silently dropped, so two outputs could collide. Go itself
/// never names a binary so (a binary is named after its package's import path, whose elements
/// golang.org/x/mod/module.CheckImportPath restricts to letters, digits and `-._~`), so only a
/// misbehaving agent or server would send one. Source tree entries keep the plain rule: agents
/// materialise trees on Unix, where these names are harmless, and a module may hold such files
/// (say testdata named with a timestamp) and build locally, although Go's module zips
/// (module.CheckFilePath) would refuse to publish them.
pub fn check_output_name(name: &str) -> Result<(), String> {
    check_entry_name(name)?;
    let refuse = |why: &str| Err(format!("output name {name:?} {why}"));
    if let Some(bad) = name.chars().find(|&c| c.is_control() || "\\:*?\"<>|".contains(c)) {
        return refuse(&format!("holds {bad:?}, which is not portable to Windows"));
    }
    if name.ends_with(['.', ' ']) {
        return refuse("ends in a dot or space, which Windows drops");
    }
    // Windows looks at the part before the first dot, without trailing spaces.
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let numbered = |prefix: &str| {
        stem.get(..3).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            && matches!(
                &stem[3..],
                "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
            )
    };
    if WINDOWS_RESERVED.iter().any(|reserved| stem.eq_ignore_ascii_case(reserved))
        || numbered("COM")
        || numbered("LPT")
    {
        return refuse("is a device name Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        let plain: Platform = "linux/amd64".parse().unwrap();
        assert_eq!((plain.goos.as_str(), plain.goarch.as_str(), plain.cgo), ("linux", "amd64", false));
        assert_eq!(plain.dir_name(), "linux_amd64");
        let cgo: Platform = "linux/arm64+cgo".parse().unwrap();
        assert!(cgo.cgo);
        assert_eq!(cgo.to_string(), "linux/arm64+cgo");
        let level: Platform = "linux/amd64/v3".parse().unwrap();
        assert_eq!(level.level, "v3");
        assert_eq!(level.dir_name(), "linux_amd64_v3");
        assert!(matches!("linux".parse::<Platform>(), Err(PlatformError::Malformed(_))));
        assert!(matches!("linux/amd64/v3/x".parse::<Platform>(), Err(PlatformError::Malformed(_))));
        assert!(matches!("darwin/386".parse::<Platform>(), Err(PlatformError::UnknownPort { .. })));
        assert!(matches!("linux/s390x/v9".parse::<Platform>(), Err(PlatformError::Malformed(_))));
    }

    #[test]
    fn entry_names_are_one_component() {
        assert!(check_entry_name("main.go").is_ok());
        assert!(check_entry_name(&"a".repeat(MAX_NAME)).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b", &"a".repeat(MAX_NAME + 1)] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
        // Names that are ordinary on Unix stay valid in trees.
        for unix in ["a:b", "a\\b", "CON", "aux.go", "x."] {
            assert!(check_entry_name(unix).is_ok(), "{unix:?}");
        }
    }

    #[test]
    fn output_names_are_portable() {
        for good in
            ["app", "app.exe", "gopls_v0.21", "console", "com10", "lpt", "auxiliary.exe", "nul-x", "été"]
        {
            assert!(check_output_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "..",
            "a/b",
            "..\\..\\evil.exe",
            "a\\b",
            "app:stream",
            "C:app",
            "a*b",
            "a?b",
            "a\"b",
            "a<b",
            "a>b",
            "a|b",
            "a\tb",
            "a\nb",
            "a\u{7f}b",
            "a\u{85}b",
            "app.",
            "app ",
            "CON",
            "con",
            "Con.exe",
            "con.tar.gz",
            "CON .txt",
            "PRN",
            "aux.exe",
            "NUL",
            "nul.txt",
            "COM0",
            "com1.exe",
            "COM9",
            "COM¹",
            "LPT1",
            "lpt9.log",
            "LPT³",
            "CONIN$",
            &"a".repeat(MAX_NAME + 1),
        ] {
            assert!(check_output_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_output_name("aux.exe").unwrap_err().contains("device name"));
        assert!(check_output_name("a:b").unwrap_err().contains("':'"));
    }
}
