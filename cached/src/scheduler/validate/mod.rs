//! What a submitted job may ask of the agents. A job is hostile input from whoever holds a
//! `submit` token, and agents run `go build` with what it says, so everything in it is checked
//! by value, not only by name: a flag value such as `-ldflags=-extld=./x`, a CGO_LDFLAGS of
//! `-fplugin=x.so` or a `-gcflags=-cpuprofile=/path` would run programs or write files on every
//! agent. Sizes and counts are bounded too.
//!
//! By concern: [`bounds`] (sizes, characters, priority, timeout), [`paths`] (module_dir and
//! package patterns), [`flags`] (go build flags), [`toolflags`] (what `-ldflags`, `-gcflags` and
//! `-asmflags` pass to the linker, compiler and assembler), [`env`] (the environment),
//! [`cgo`] (Go's `#cgo` safe-flag rules for CGO_*FLAGS), [`quoted`] (Go's splitting of flag
//! lists), [`image`] (the image spec) and [`result`] (what agents report back).

mod bounds;

pub use bounds::PRIORITIES;
mod cgo;
mod env;
mod flags;
mod image;
mod paths;
mod result;
mod toolflags;

use proto::v1::{JobSpec, Target};
use proto::{Digest, Platform};

use self::bounds::{MAX_FLAG, MAX_FLAGS, MAX_PACKAGES, MAX_WORD, check_text, check_words};
pub use self::result::{check_for_task, check_result, check_stored};
use super::Settings;
use crate::error::{Error, Result};

/// Targets in one job.
pub const MAX_TARGETS: usize = 64;

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Checks a submitted spec and fills in defaults; `settings` gives the server's caps.
pub fn check_spec(spec: &mut JobSpec, settings: &Settings) -> Result<()> {
    check_spec_size(spec)?;
    Digest::from_wire(spec.source_root.as_ref())
        .map_err(|err| invalid(format!("source_root: {err}; upload the tree first")))?;
    if let Some(proxy) = &spec.module_proxy {
        Digest::from_wire(Some(proxy)).map_err(|err| invalid(format!("module_proxy: {err}")))?;
    }
    spec.namespace = crate::gocache::namespace(&spec.namespace)?.to_owned();
    bounds::check_priority(spec.priority).map_err(invalid)?;
    bounds::check_timeout(spec.timeout_seconds, settings.max_job_timeout).map_err(invalid)?;
    check_text("module_dir", &spec.module_dir, paths::MAX_PATTERN).map_err(invalid)?;
    paths::check_relative("module_dir", &spec.module_dir).map_err(invalid)?;
    check_packages(spec)?;
    check_targets(&spec.targets)?;
    check_build_flags(&spec.build_flags)?;
    env::check(&spec.env).map_err(invalid)?;
    check_go_version(&spec.go_version)?;
    if let Some(image) = &spec.image {
        image::check_image(image, &spec.targets)?;
    }
    Ok(())
}

/// A spec's encoded size is within bounds: checked before anything copies or reads its fields.
pub fn check_spec_size(spec: &JobSpec) -> Result<()> {
    bounds::check_spec_size(spec).map_err(invalid)
}

fn check_packages(spec: &mut JobSpec) -> Result<()> {
    if spec.packages.is_empty() {
        spec.packages.push(".".to_owned());
    }
    if spec.packages.len() > MAX_PACKAGES {
        return Err(invalid(format!(
            "at most {MAX_PACKAGES} package patterns per job, got {}",
            spec.packages.len()
        )));
    }
    for package in &spec.packages {
        check_text("package pattern", package, paths::MAX_PATTERN).map_err(invalid)?;
        paths::check_pattern(package).map_err(invalid)?;
    }
    Ok(())
}

fn check_targets(targets: &[Target]) -> Result<()> {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(invalid(format!("a job needs 1 to {MAX_TARGETS} targets, got {}", targets.len())));
    }
    let mut seen = Vec::new();
    for target in targets {
        check_target(target)?;
        let platform = Platform::from_wire(target).map_err(|err| invalid(err.to_string()))?;
        if seen.contains(&platform) {
            return Err(invalid(format!("target {platform} is listed twice")));
        }
        seen.push(platform);
    }
    Ok(())
}

fn check_target(target: &Target) -> Result<()> {
    for (what, text) in [("goos", &target.goos), ("goarch", &target.goarch), ("C compiler", &target.cc)] {
        check_text(what, text, MAX_WORD).map_err(invalid)?;
    }
    if !target.cc.is_empty() && !target.cgo {
        return Err(invalid(format!(
            "target {}/{} names a C compiler but not cgo",
            target.goos, target.goarch
        )));
    }
    // The C compiler is matched against the ones agents report by name; it is never a path
    // the submitter chooses.
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+');
    if !target.cc.chars().all(is_name_char) || target.cc.starts_with(['-', '.']) {
        return Err(invalid(format!(
            "C compiler {:?} must be a command name such as aarch64-linux-gnu-gcc",
            target.cc
        )));
    }
    Ok(())
}

fn check_build_flags(build_flags: &[String]) -> Result<()> {
    if build_flags.len() > MAX_FLAGS {
        return Err(invalid(format!("at most {MAX_FLAGS} build flags per job, got {}", build_flags.len())));
    }
    for flag in build_flags {
        check_words("build flag", flag, MAX_FLAG).map_err(invalid)?;
        flags::check(flag).map_err(|why| invalid(format!("build flag {flag}: {why}")))?;
    }
    Ok(())
}

/// What `go env GOVERSION` prints: `go1.26.8`, `go1.27rc1`; empty for any.
fn check_go_version(version: &str) -> Result<()> {
    check_text("go_version", version, MAX_WORD).map_err(invalid)?;
    let is_version_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_');
    if !version.bytes().all(is_version_char) {
        return Err(invalid(format!("go_version {version:?} is not a Go version such as go1.26.8")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
