//! The environment a job may set for its builds, by name and by value. The target gives GOOS,
//! GOARCH, the level variable, CGO_ENABLED and CC; the agent gives everything else.

use proto::v1::EnvVar;

use super::bounds::{MAX_FLAG, MAX_WORD, check_text, check_words};
use super::{cgo, flags};

/// Variables in one job (each allowed name at most once).
pub(super) const MAX_ENV: usize = 16;

const ALLOWED: &[&str] = &[
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

/// Checks the job's variables; the error names the variable, what was wrong and what is allowed.
pub(super) fn check(env: &[EnvVar]) -> Result<(), String> {
    if env.len() > MAX_ENV {
        return Err(format!("at most {MAX_ENV} environment variables per job, got {}", env.len()));
    }
    for (index, var) in env.iter().enumerate() {
        check_text("environment variable name", &var.name, MAX_WORD)?;
        check_words(&format!("environment {}", var.name), &var.value, MAX_FLAG)?;
        check_name(&var.name)?;
        if env[..index].iter().any(|earlier| earlier.name == var.name) {
            return Err(format!("environment variable {} is set twice", var.name));
        }
        check_value(&var.name, &var.value)
            .map_err(|why| format!("environment {}={}: {why}", var.name, var.value))?;
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if ALLOWED.contains(&name) {
        return Ok(());
    }
    if name.starts_with("CGO_") && (name.ends_with("_ALLOW") || name.ends_with("_DISALLOW")) {
        return Err(format!(
            "environment variable {name} widens Go's safe-flag rules for cgo; a job may not set it"
        ));
    }
    Err(format!("environment variable {name:?} is not allowed in a job; allowed: {}", ALLOWED.join(", ")))
}

fn check_value(name: &str, value: &str) -> Result<(), String> {
    match name {
        "GOFLAGS" => proto::quoted::split(value)?.into_iter().try_for_each(flags::check),
        "GOEXPERIMENT" => check_experiments(value),
        "GODEBUG" => check_godebug(value),
        "SOURCE_DATE_EPOCH" => match value.parse::<u64>() {
            Ok(_) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err("expected seconds since 1970 in decimal digits".to_owned()),
        },
        _ if cgo::is_cgo_flags(name) => cgo::check(name, &proto::quoted::split(value)?),
        _ => Ok(()),
    }
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `fieldtrack,noregabi`: experiment names, each perhaps negated with `no`.
fn check_experiments(value: &str) -> Result<(), String> {
    match value.split(',').filter(|item| !item.is_empty()).find(|item| !is_identifier(item)) {
        Some(bad) => {
            Err(format!("{bad:?} is not an experiment name; expected names such as rangefunc or noregabi"))
        }
        None => Ok(()),
    }
}

/// GODEBUG keys the go command reads for itself, refused. A job's GODEBUG reaches the build's
/// processes only (the go command, compiler and linker; a built program's defaults come from
/// go.mod's `godebug` lines and `//go:debug`), so what a job may honestly tune is those
/// processes' runtime (`gctrace`, `madvdontneed`, ...): a list of every such key would refuse
/// settings for no reason and lag every Go release. What must not reach the agent is the go
/// command's own switches, which change what it reads, writes or runs: tracing every file it
/// touches into a file (`gofsystrace`, `gofsystracelog`), following links out of embed patterns
/// (`embedfollowsymlinks`), several VCS in one tree (`allowmultiplevcs`), toolchain switching,
/// cache checks that rebuild everything. These are the keys of `cmd/go` in the go command's
/// sources (`godebug.New` in cmd/go, `internal/godebugs`), Go 1.21 to 1.26.
const GO_COMMAND_KEYS: &[&str] = &[
    "allowmultiplevcs",
    "cmdgonetlimit",
    "embedfollowsymlinks",
    "gocachehash",
    "gocachetest",
    "gocacheverify",
    "gofsystrace",
    "gofsystracelog",
    "gofsystracestack",
    "goindex",
    "gotestjsonbuildtext",
    "gotoolchainexec",
    "installgoroot",
    "toolchaintrace",
];

/// `http2client=0,gctrace=1`: settings of simple words, none of the go command's own.
fn check_godebug(value: &str) -> Result<(), String> {
    let is_key =
        |key: &str| !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b));
    let is_value = |value: &str| value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    for setting in value.split(',').filter(|setting| !setting.is_empty()) {
        match setting.split_once('=') {
            Some((key, _)) if GO_COMMAND_KEYS.contains(&key) => {
                return Err(format!(
                    "{key} is a setting of the go command itself, which changes what it reads, writes \
                     or runs on the agent; a job may set GODEBUG only for the build's runtime (e.g. gctrace)"
                ));
            }
            Some((key, value)) if is_key(key) && is_value(value) => {}
            _ => {
                return Err(format!(
                    "{setting:?} is not a setting; expected name=value with letters, digits, _ . and -"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.into(), value: value.into() }
    }

    #[test]
    fn allowed_values() {
        let good = [
            var("GOFLAGS", "-trimpath '-ldflags=-s -w' -tags=netgo"),
            var("GOEXPERIMENT", "rangefunc,noregabi"),
            var("GODEBUG", "http2client=0,gctrace=1,cpu.avx2=off"),
            var("SOURCE_DATE_EPOCH", "1700000000"),
            var("CGO_CFLAGS", "-O2 -g -I/usr/include/x -DNDEBUG=1"),
            var("CGO_CPPFLAGS", "-DX"),
            var("CGO_CXXFLAGS", "-std=c++17"),
            var("CGO_FFLAGS", "-O2"),
            var("CGO_LDFLAGS", "-static -lm -Wl,--as-needed"),
        ];
        check(&good).unwrap();
        check(&[var("GOEXPERIMENT", ""), var("GODEBUG", "")]).unwrap();
    }

    #[test]
    fn refused_values() {
        for (bad, says) in [
            (var("CC", "sh"), "not allowed in a job"),
            (var("GOTOOLCHAIN", "go1.99"), "not allowed in a job"),
            (var("CGO_LDFLAGS_ALLOW", ".*"), "widens Go's safe-flag rules"),
            (var("CGO_CFLAGS_DISALLOW", "x"), "widens Go's safe-flag rules"),
            (var("GOFLAGS", "-trimpath -toolexec=x"), "-toolexec runs a program"),
            (var("GOFLAGS", "'-ldflags=-s -extld=./x'"), "-extld runs a program"),
            (var("GOFLAGS", "-ldflags=-s -w"), "-w is not allowed in a job"),
            (var("GOFLAGS", "'-ldflags=-s"), "unterminated"),
            (var("GOEXPERIMENT", "a b"), "not an experiment"),
            (var("GOEXPERIMENT", "x=1"), "not an experiment"),
            (var("GODEBUG", "gctrace"), "not a setting"),
            (var("GODEBUG", "a=b;c"), "not a setting"),
            (var("GODEBUG", "a=$(x)"), "not a setting"),
            (
                var("GODEBUG", "gofsystrace=1,gofsystracelog=trace.log"),
                "gofsystrace is a setting of the go command",
            ),
            (
                var("GODEBUG", "gctrace=1,gofsystracelog=trace.log"),
                "gofsystracelog is a setting of the go command",
            ),
            (var("GODEBUG", "allowmultiplevcs=1"), "allowmultiplevcs is a setting of the go command"),
            (var("GODEBUG", "embedfollowsymlinks=1"), "embedfollowsymlinks is a setting of the go command"),
            (var("GODEBUG", "gotoolchainexec=0"), "only for the build's runtime"),
            (var("SOURCE_DATE_EPOCH", "-1"), "decimal digits"),
            (var("SOURCE_DATE_EPOCH", "+1"), "decimal digits"),
            (var("SOURCE_DATE_EPOCH", ""), "decimal digits"),
            (var("SOURCE_DATE_EPOCH", "99999999999999999999"), "decimal digits"),
            (var("CGO_CFLAGS", "-fplugin=./x.so"), "#cgo CFLAGS"),
            (var("CGO_CXXFLAGS", "-wrapper /bin/sh"), "#cgo CFLAGS"),
            (var("CGO_CPPFLAGS", "@/tmp/args"), "read more flags"),
            (var("CGO_FFLAGS", "-B/tmp"), "not among"),
            (var("CGO_LDFLAGS", "-Wl,-plugin=/tmp/x.so"), "#cgo LDFLAGS"),
            (var("CGO_LDFLAGS", "'-fuse-ld=/tmp/ld"), "unterminated"),
        ] {
            let err = check(std::slice::from_ref(&bad)).expect_err(&bad.name);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let err = check(&[var("GODEBUG", "a=1"), var("GODEBUG", "b=1")]).unwrap_err();
        assert!(err.contains("set twice"), "{err}");
        let many: Vec<EnvVar> = (0..=MAX_ENV).map(|_| var("GODEBUG", "")).collect();
        assert!(check(&many).unwrap_err().contains("at most"));
    }
}
