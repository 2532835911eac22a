//! What a submitted job may ask of the agents. Agents run `go build` with what a job says, so
//! flags and environment are allow-listed: `-toolexec`, `-exec`, `-overlay` or a `CC` of the
//! submitter's choosing would run arbitrary programs on every agent.

use proto::v1::{JobSpec, Target};
use proto::{Digest, Platform};

use crate::error::{Error, Result};

/// Targets in one job.
pub const MAX_TARGETS: usize = 64;
const MAX_PACKAGES: usize = 256;
const MAX_FLAGS: usize = 64;

/// `go build` flags a job may pass, with or without `=value`.
const ALLOWED_FLAGS: &[&str] = &[
    "-trimpath",
    "-ldflags",
    "-gcflags",
    "-asmflags",
    "-tags",
    "-buildmode",
    "-buildvcs",
    "-race",
    "-msan",
    "-asan",
    "-cover",
    "-covermode",
    "-coverpkg",
    "-v",
    "-x",
    "-a",
    "-pgo",
];

/// Environment variables a job may set for its builds. The target's GOOS, GOARCH, level
/// variable, CGO_ENABLED and CC come from the target, the rest from the agent.
const ALLOWED_ENV: &[&str] = &[
    "GOFLAGS",
    "GOEXPERIMENT",
    "GODEBUG",
    "CGO_CFLAGS",
    "CGO_CPPFLAGS",
    "CGO_CXXFLAGS",
    "CGO_FFLAGS",
    "CGO_LDFLAGS",
    "SOURCE_DATE_EPOCH",
];

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Checks one build flag.
pub fn check_flag(flag: &str) -> Result<()> {
    let name = flag.split_once('=').map_or(flag, |(name, _)| name);
    let name = name.strip_prefix('-').map_or(name, |rest| if rest.starts_with('-') { rest } else { name });
    if !ALLOWED_FLAGS.contains(&name) {
        return Err(invalid(format!(
            "build flag {flag:?} is not allowed in a job; allowed: {} (with =value where go takes one)",
            ALLOWED_FLAGS.join(" ")
        )));
    }
    // A profile path would read a file of the submitter's choosing on the agent.
    if name == "-pgo" && !matches!(flag.split_once('=').map(|(_, v)| v), Some("off" | "auto")) {
        return Err(invalid(format!("build flag {flag:?}: only -pgo=off and -pgo=auto")));
    }
    Ok(())
}

fn check_relative(what: &str, path: &str) -> Result<()> {
    if path.starts_with('/') || path.split('/').any(|part| part == ".." || part.contains('\0')) {
        return Err(invalid(format!("{what} {path:?} must be a relative path inside the source tree")));
    }
    Ok(())
}

/// Checks a submitted spec and fills in defaults.
pub fn check_spec(spec: &mut JobSpec) -> Result<()> {
    Digest::from_wire(spec.source_root.as_ref())
        .map_err(|err| invalid(format!("source_root: {err}; upload the tree first")))?;
    if let Some(proxy) = &spec.module_proxy {
        Digest::from_wire(Some(proxy)).map_err(|err| invalid(format!("module_proxy: {err}")))?;
    }
    if spec.image.is_some() {
        return Err(Error::FailedPrecondition(
            "image specs are not built by runner agents yet; build the image with `cachectl image` from the outputs"
                .to_owned(),
        ));
    }
    check_relative("module_dir", &spec.module_dir)?;
    if spec.packages.is_empty() {
        spec.packages.push(".".to_owned());
    }
    if spec.packages.len() > MAX_PACKAGES {
        return Err(invalid(format!("at most {MAX_PACKAGES} package patterns per job")));
    }
    for package in &spec.packages {
        if package.is_empty() || package.starts_with('-') || package.contains('\0') {
            return Err(invalid(format!("{package:?} is not a package pattern")));
        }
        if package.starts_with('.') || package.starts_with('/') {
            check_relative("package", package.trim_start_matches("./"))?;
        }
    }
    if spec.targets.is_empty() || spec.targets.len() > MAX_TARGETS {
        return Err(invalid(format!("a job needs 1 to {MAX_TARGETS} targets, got {}", spec.targets.len())));
    }
    let mut seen = Vec::new();
    for target in &spec.targets {
        check_target(target)?;
        let platform = Platform::from_wire(target).map_err(|err| invalid(err.to_string()))?;
        if seen.contains(&platform) {
            return Err(invalid(format!("target {platform} is listed twice")));
        }
        seen.push(platform);
    }
    if spec.build_flags.len() > MAX_FLAGS {
        return Err(invalid(format!("at most {MAX_FLAGS} build flags per job")));
    }
    for flag in &spec.build_flags {
        check_flag(flag)?;
    }
    for var in &spec.env {
        if !ALLOWED_ENV.contains(&var.name.as_str()) {
            return Err(invalid(format!(
                "environment variable {} is not allowed in a job; allowed: {}",
                var.name,
                ALLOWED_ENV.join(", ")
            )));
        }
        if var.name == "GOFLAGS" {
            for flag in var.value.split_whitespace() {
                check_flag(flag)?;
            }
        }
    }
    if spec.go_version.len() > 64 || spec.go_version.contains(char::is_whitespace) {
        return Err(invalid(format!("go_version {:?} is not a Go version", spec.go_version)));
    }
    Ok(())
}

fn check_target(target: &Target) -> Result<()> {
    if !target.cc.is_empty() && !target.cgo {
        return Err(invalid(format!(
            "target {}/{} names a C compiler but not cgo",
            target.goos, target.goarch
        )));
    }
    // The C compiler is matched against the ones agents report by name; it is never a path
    // the submitter chooses.
    if target.cc.contains('/') || target.cc.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "C compiler {:?} must be a command name such as aarch64-linux-gnu-gcc",
            target.cc
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::EnvVar;

    fn spec() -> JobSpec {
        JobSpec {
            source_root: Some(Digest::of(b"tree").to_wire()),
            targets: vec!["linux/amd64".parse::<Platform>().unwrap().to_wire("")],
            ..JobSpec::default()
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let mut ok = spec();
        check_spec(&mut ok).unwrap();
        assert_eq!(ok.packages, ["."]);

        let mut flags = spec();
        flags.build_flags = vec!["-trimpath".into(), "-ldflags=-s -w".into(), "--tags=netgo".into()];
        check_spec(&mut flags).unwrap();
        for bad in
            ["-toolexec=/bin/sh", "-exec", "-overlay=x.json", "-o=/etc/passwd", "-mod=mod", "-pgo=/x.pprof"]
        {
            let mut job = spec();
            job.build_flags = vec![bad.to_owned()];
            assert!(check_spec(&mut job).is_err(), "{bad}");
        }
        let mut env = spec();
        env.env = vec![EnvVar { name: "GOFLAGS".into(), value: "-trimpath -toolexec=x".into() }];
        assert!(check_spec(&mut env).is_err());
        env.env = vec![EnvVar { name: "CC".into(), value: "sh".into() }];
        assert!(check_spec(&mut env).is_err());

        let mut twice = spec();
        twice.targets.push(twice.targets[0].clone());
        assert!(check_spec(&mut twice).unwrap_err().to_string().contains("twice"));
        let mut escape = spec();
        escape.module_dir = "../x".into();
        assert!(check_spec(&mut escape).is_err());
        let mut package = spec();
        package.packages = vec!["-toolexec=x".into()];
        assert!(check_spec(&mut package).is_err());
        let mut none = spec();
        none.source_root = None;
        assert!(check_spec(&mut none).is_err());
    }
}
