//! The go build flags a job may pass, one per `build_flags` item or as a GOFLAGS field, each
//! with only the values that name no file and no program. A flag that takes a value must carry
//! it after `=` in the same item: otherwise go would take the next item (or the first package
//! pattern) as its value.

use super::paths;
use super::toolflags::{self, Tool};

enum Value {
    /// `-race`, `-race=false`.
    Bool,
    /// `=false` only; the text says why.
    False(&'static str),
    /// One of the words; the text says why no other.
    OneOf(&'static [&'static str], &'static str),
    /// The flags of a Go tool, `[pattern=]flags`.
    Tool(&'static Tool),
    /// Build tags.
    Tags,
    /// Comma-separated package patterns.
    Patterns,
}

const ALLOWED: &[(&str, Value)] = &[
    ("trimpath", Value::Bool),
    ("ldflags", Value::Tool(&toolflags::LINKER)),
    ("gcflags", Value::Tool(&toolflags::COMPILER)),
    ("asmflags", Value::Tool(&toolflags::ASSEMBLER)),
    ("tags", Value::Tags),
    ("buildmode", Value::OneOf(&["default", "exe", "pie"], "a job builds self-contained executables")),
    (
        "buildvcs",
        Value::False(
            "agents never run version control on a job's tree (a .git/config in it could name \
             commands for git to run); they build with -buildvcs=false, so drop the flag or set it \
             to false",
        ),
    ),
    ("race", Value::Bool),
    ("msan", Value::Bool),
    ("asan", Value::Bool),
    ("cover", Value::Bool),
    ("covermode", Value::OneOf(&["set", "count", "atomic"], "go knows no other")),
    ("coverpkg", Value::Patterns),
    ("v", Value::Bool),
    ("x", Value::Bool),
    ("a", Value::Bool),
    (
        "pgo",
        Value::OneOf(
            &["off", "auto"],
            "a profile path would make the build read a file of the job's choosing",
        ),
    ),
];

/// Why notable flags are refused; the rest are simply not on the list.
const REFUSED: &[(&str, &str)] = &[
    ("toolexec", "runs a program of the job's choosing on the agent"),
    ("exec", "runs a program of the job's choosing on the agent"),
    ("overlay", "replaces source files with files the job names on the agent"),
    ("o", "writes a file where the job says on the agent"),
    ("pkgdir", "writes files where the job says on the agent"),
    ("work", "keeps the build's temporary directory on the agent"),
    ("C", "changes the directory go runs in"),
    ("mod", "the agent chooses the module mode (it serves the dependencies the job shipped)"),
    ("modfile", "the agent builds with the module's own go.mod"),
    ("modcacherw", "the agent sets it"),
];

/// Checks one go build flag; the error says what was refused, why, and what is allowed.
pub(super) fn check(flag: &str) -> Result<(), String> {
    let body = flag.strip_prefix("--").or_else(|| flag.strip_prefix('-'));
    let Some(body) = body.filter(|body| !body.is_empty() && !body.starts_with(['-', '='])) else {
        return Err(format!("{flag:?} is not a flag; {}", allowed()));
    };
    let (name, value) = match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    };
    let Some((_, kind)) = ALLOWED.iter().find(|(allowed, _)| *allowed == name) else {
        let why =
            REFUSED.iter().find(|(refused, _)| *refused == name).map_or("is not allowed in a job", |r| r.1);
        return Err(format!("-{name} {why}; {}", allowed()));
    };
    let Some(value) = value else {
        return match kind {
            Value::Bool => Ok(()),
            Value::False(why) => {
                Err(format!("-{name} alone means -{name}=true, and -{name} may be false only: {why}"))
            }
            _ => Err(format!("-{name} takes its value after = in the same item, e.g. -{name}=...")),
        };
    };
    match kind {
        Value::Bool if !toolflags::is_bool(value) => Err(format!("-{name} takes true or false")),
        Value::False(why) if value != "false" => Err(format!("-{name} may be false only: {why}")),
        Value::OneOf(words, why) if !words.contains(&value) => {
            Err(format!("-{name} may be {} only: {why}", words.join(", ")))
        }
        Value::Tool(tool) => toolflags::check(tool, value),
        Value::Tags => check_tags(value),
        Value::Patterns => value.split(',').filter(|p| !p.is_empty()).try_for_each(paths::check_pattern),
        _ => Ok(()),
    }
}

fn allowed() -> String {
    let names: Vec<String> = ALLOWED.iter().map(|(name, _)| format!("-{name}")).collect();
    format!("allowed build flags: {} (with =value where go takes one)", names.join(" "))
}

/// Comma-separated tags, or space-separated (with quotes) as go still accepts for Go 1.12's
/// sake (cmd/go's tagsFlag). A tag is what a build constraint can name.
fn check_tags(value: &str) -> Result<(), String> {
    let tags =
        if value.contains([' ', '\'']) { proto::quoted::split(value)? } else { value.split(',').collect() };
    for tag in tags.into_iter().filter(|tag| !tag.is_empty()) {
        if !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            return Err(format!("build tag {tag:?} may hold letters, digits, _ and . only"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn go_flags() {
        for good in [
            "-trimpath",
            "--trimpath=true",
            "-race=false",
            "-v",
            "-x",
            "-a",
            "-cover",
            "-covermode=atomic",
            "-coverpkg=./...,example.com/x/...",
            "-coverpkg=",
            "-tags=netgo,osusergo",
            "-tags=netgo osusergo",
            "-tags='netgo' osusergo",
            "-tags=",
            "--tags=netgo",
            "-buildmode=pie",
            "-buildmode=exe",
            "-buildmode=default",
            "-buildvcs=false",
            "-pgo=off",
            "-pgo=auto",
            "-ldflags=-s -w",
            "-ldflags=all=-s -w -X main.v=1",
            "-gcflags=all=-N -l",
            "-asmflags=-S",
        ] {
            check(good).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-toolexec=/bin/sh", "-toolexec runs a program"),
            ("-exec", "-exec runs a program"),
            ("-overlay=x.json", "replaces source files"),
            ("-o=/etc/passwd", "writes a file"),
            ("-mod=mod", "module mode"),
            ("-modfile=/x/go.mod", "own go.mod"),
            ("-C=/", "changes the directory"),
            ("-work", "temporary directory"),
            ("-json", "not allowed"),
            ("-pgo=/x.pprof", "off, auto only: a profile path"),
            ("-pgo", "after ="),
            ("-ldflags", "after ="),
            ("-buildmode=c-shared", "default, exe, pie only"),
            ("-buildmode=plugin", "self-contained executables"),
            ("-buildmode=shared", "self-contained"),
            ("-covermode=fast", "set, count, atomic"),
            ("-coverpkg=/etc/...", "inside the source tree"),
            ("-coverpkg=-x", "read it as a flag"),
            ("-buildvcs=maybe", "false only: agents never run version control"),
            ("-buildvcs", "alone means -buildvcs=true"),
            ("-buildvcs=auto", "-buildvcs=false, so drop the flag"),
            ("-buildvcs=true", "a .git/config in it could name commands"),
            ("-race=yes", "true or false"),
            ("-tags=a;b", "letters, digits"),
            ("-tags=a,$(x)", "letters, digits"),
            ("-tags='a", "unterminated"),
            ("-ldflags=-extld=./x", "-extld runs a program"),
            ("-gcflags=-cpuprofile=/tmp/x", "-cpuprofile writes a file"),
            ("-asmflags=-I=/usr", "-I reads files"),
            ("trimpath", "is not a flag"),
            ("-", "is not a flag"),
            ("--", "is not a flag"),
            ("---trimpath", "is not a flag"),
            ("-=x", "is not a flag"),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.len() < 2048, "{bad:?}: messages stay short");
        }
    }
}
