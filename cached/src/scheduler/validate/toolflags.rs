//! The values of `-ldflags`, `-gcflags` and `-asmflags`: `[pattern=]flags`, the flags going to
//! the Go linker, compiler or assembler. Parsed as the go command does (cmd/go/internal/load's
//! PerPackageFlag: a value that does not start with `-` is `pattern=flags`; the flags split with
//! cmd/internal/quoted) and then as the tool's own flag package does, so every field is known as
//! a flag or as that flag's value. Each tool gets an allow list of flags that name no file and
//! no program (from `go tool link|compile|asm -help`); anything else is refused.

use proto::quoted;

use super::paths;

/// How a flag takes its value, in Go's flag package.
#[derive(Clone, Copy)]
enum Kind {
    /// `-s`, or `-s=false`.
    Bool,
    /// `-m`, `-m=2`: a bool-like flag that counts (the compiler's CountFlag).
    Count,
    /// `-X=value` or `-X value`, checked by the function; the text says what is allowed.
    Value(fn(&str) -> bool, &'static str),
}

struct Flag {
    name: &'static str,
    kind: Kind,
}

const fn flag(name: &'static str, kind: Kind) -> Flag {
    Flag { name, kind }
}

const RUNS: &str = "runs a program of the job's choosing on the agent";
const WRITES: &str = "writes a file where the job says on the agent";
const READS: &str = "reads files the job names from outside its source tree on the agent";

/// One of the three tools, with what a job may pass it and why notable flags are refused.
pub(super) struct Tool {
    /// The go build flag that carries the tool's flags.
    go_flag: &'static str,
    name: &'static str,
    allowed: &'static [Flag],
    refused: &'static [(&'static str, &'static str)],
}

pub(super) const LINKER: Tool = Tool {
    go_flag: "-ldflags",
    name: "linker",
    allowed: &[
        flag("s", Kind::Bool),
        flag("w", Kind::Bool),
        flag("X", Kind::Value(is_definition, "importpath.name=value")),
        flag("buildid", Kind::Value(is_word, "a build id without spaces (or none)")),
        flag("B", Kind::Value(is_build_note, "gobuildid, none or 0x and an even number of hex digits")),
        flag("H", Kind::Value(is_lower_word, "a header type such as windowsgui")),
        flag("compressdwarf", Kind::Bool),
        flag("linkmode", Kind::Value(is_link_mode, "internal, external or auto")),
    ],
    refused: &[
        ("extld", RUNS),
        ("extar", RUNS),
        (
            "extldflags",
            "passes flags to the C linker that Go's cgo rules never check (-fuse-ld=, -B and -wrapper \
             run programs); set CGO_LDFLAGS instead, which goes through those rules",
        ),
        ("o", WRITES),
        ("cpuprofile", WRITES),
        ("memprofile", WRITES),
        ("benchmarkprofile", WRITES),
        ("capturehostobjs", WRITES),
        ("fipso", WRITES),
        ("tmpdir", WRITES),
        ("L", READS),
        ("importcfg", READS),
        ("libgcc", READS),
        ("linkshared", READS),
        ("I", "names the program that loads the binary (the ELF interpreter)"),
        ("r", "names the directories the binary loads libraries from"),
    ],
};

pub(super) const COMPILER: Tool = Tool {
    go_flag: "-gcflags",
    name: "compiler",
    allowed: &[
        flag("N", Kind::Bool),
        flag("l", Kind::Bool),
        flag("m", Kind::Count),
        flag("B", Kind::Bool),
        flag("C", Kind::Bool),
        flag("S", Kind::Bool),
        flag("e", Kind::Bool),
        flag("h", Kind::Bool),
        flag("w", Kind::Bool),
        flag("L", Kind::Bool),
        flag("v", Kind::Count),
        flag("smallframes", Kind::Bool),
        flag("wb", Kind::Bool),
        flag("dwarf", Kind::Bool),
        flag("dwarflocationlists", Kind::Bool),
        flag("d", Kind::Value(is_compiler_debug, "debug settings such as checkptr or nil=1 (see below)")),
        flag("spectre", Kind::Value(is_compiler_spectre, "all, index or ret, comma separated")),
    ],
    refused: &[
        ("o", WRITES),
        ("cpuprofile", WRITES),
        ("memprofile", WRITES),
        ("blockprofile", WRITES),
        ("mutexprofile", WRITES),
        ("traceprofile", WRITES),
        ("bench", WRITES),
        ("asmhdr", WRITES),
        ("linkobj", WRITES),
        ("json", WRITES),
        ("importcfg", READS),
        ("embedcfg", READS),
        ("symabis", READS),
        ("pgoprofile", READS),
        ("coveragecfg", READS),
        ("I", READS),
        ("D", READS),
    ],
};

pub(super) const ASSEMBLER: Tool = Tool {
    go_flag: "-asmflags",
    name: "assembler",
    allowed: &[
        flag("S", Kind::Bool),
        flag("e", Kind::Bool),
        flag("v", Kind::Bool),
        flag("debug", Kind::Bool),
        flag("D", Kind::Value(is_asm_define, "identifier or identifier=value")),
        flag("spectre", Kind::Value(is_asm_spectre, "all or ret, comma separated")),
    ],
    refused: &[("o", WRITES), ("gensymabis", WRITES), ("I", READS)],
};

/// `-d` keys of the compiler that switch instrumentation or print to the build log; the others
/// include ones that write files (dumpinlfuncprops, ssa/*/dump) or call a named function.
const COMPILER_DEBUG_KEYS: &[&str] = &[
    "append",
    "checkptr",
    "closure",
    "defer",
    "disablenil",
    "libfuzzer",
    "loopvar",
    "nil",
    "panic",
    "slice",
    "softfloat",
    "tailcall",
    "typeassert",
    "wb",
    "zerocopy",
];

/// Checks the value of `tool.go_flag`; the error says what was refused, why, and what is allowed.
pub(super) fn check(tool: &Tool, value: &str) -> Result<(), String> {
    let value = value.trim_matches(' ');
    let flags = if value.is_empty() || value.starts_with('-') {
        value
    } else if value.starts_with(['\'', '"']) {
        return Err(format!(
            "{value:?} starts with a quote; pass the flags as one item without shell quotes, e.g. {}=-s -w",
            tool.go_flag
        ));
    } else {
        let (pattern, flags) = value.split_once('=').ok_or_else(|| {
            format!("{value:?} is neither flags (starting with -) nor pattern=flags, e.g. all=-N")
        })?;
        paths::check_pattern(pattern.trim_matches(' '))?;
        flags
    };
    let fields = quoted::split(flags)?;
    let mut fields = fields.into_iter();
    while let Some(field) = fields.next() {
        check_field(tool, field, &mut fields)?;
    }
    Ok(())
}

fn check_field<'a>(tool: &Tool, field: &str, rest: &mut impl Iterator<Item = &'a str>) -> Result<(), String> {
    refuse_response_file(tool, field)?;
    let body = field.strip_prefix("--").or_else(|| field.strip_prefix('-'));
    let Some(body) = body.filter(|body| !body.is_empty() && !body.starts_with(['-', '='])) else {
        return Err(format!("{field:?} is not {} flag; {}", a(tool.name), allowed(tool)));
    };
    let (name, inline) = match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    };
    let Some(known) = tool.allowed.iter().find(|known| known.name == name) else {
        let why = tool
            .refused
            .iter()
            .find(|(refused, _)| *refused == name)
            .map_or(format!("is not {} flag a job may pass", a(tool.name)), |(_, why)| (*why).to_owned());
        return Err(format!("-{name} {why}; {}", allowed(tool)));
    };
    match (known.kind, inline) {
        (Kind::Bool, Some(value)) if !is_bool(value) => {
            Err(format!("-{name}={value}: -{name} takes true or false"))
        }
        (Kind::Count, Some(value)) if value != "true" && !is_digits(value) => {
            Err(format!("-{name}={value}: -{name} takes a number"))
        }
        (Kind::Value(check, what), inline) => {
            let value =
                inline.or_else(|| rest.next()).ok_or_else(|| format!("-{name} needs a value: {what}"))?;
            refuse_response_file(tool, value)?;
            if check(value) { Ok(()) } else { Err(format!("-{name} {value}: expected {what}")) }
        }
        _ => Ok(()),
    }
}

/// The tools expand any argument that starts with `@` into the lines of that file
/// (cmd/internal/objabi.Flagparse), values included: `-X @/path/to/token` would link an agent's
/// file into the binary.
fn refuse_response_file(tool: &Tool, field: &str) -> Result<(), String> {
    if field.starts_with('@') {
        return Err(format!(
            "{field}: the {} reads an argument that starts with @ as a file of more arguments on the agent",
            tool.name
        ));
    }
    Ok(())
}

/// "a job may pass -ldflags with -s, -w, -X and -buildid only".
fn allowed(tool: &Tool) -> String {
    let names: Vec<String> = tool.allowed.iter().map(|flag| format!("-{}", flag.name)).collect();
    let (last, rest) = names.split_last().expect("every tool allows some flags");
    let mut text = format!("a job may pass {} with {} and {last} only", tool.go_flag, rest.join(", "));
    if tool.go_flag == "-gcflags" {
        text.push_str(&format!(" (-d keys: {})", COMPILER_DEBUG_KEYS.join(", ")));
    }
    text
}

/// "a linker", "an assembler".
fn a(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {noun}")
}

/// strconv.ParseBool.
pub(super) fn is_bool(value: &str) -> bool {
    matches!(
        value,
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "0" | "f" | "F" | "false" | "FALSE" | "False"
    )
}

fn is_digits(value: &str) -> bool {
    !value.is_empty() && value.len() <= 9 && value.bytes().all(|b| b.is_ascii_digit())
}

fn is_identifier(value: &str) -> bool {
    value.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Empty too: `-buildid=` is the usual way to a reproducible binary.
fn is_word(value: &str) -> bool {
    !value.contains(' ')
}

fn is_lower_word(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `-X importpath.name=value` (the linker's own test: a `.` before the first `=`). The value is
/// the string the binary gets, the job's business.
fn is_definition(value: &str) -> bool {
    value.split_once('=').is_some_and(|(symbol, _)| {
        symbol.contains('.') && !symbol.contains(' ') && !symbol.starts_with(['.', '-'])
    })
}

fn is_build_note(value: &str) -> bool {
    matches!(value, "gobuildid" | "none")
        || value.strip_prefix("0x").is_some_and(|hex| {
            !hex.is_empty() && hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

fn is_link_mode(value: &str) -> bool {
    matches!(value, "internal" | "external" | "auto")
}

fn is_compiler_debug(value: &str) -> bool {
    value.split(',').all(|setting| {
        let (key, value) = setting.split_once('=').unwrap_or((setting, "1"));
        COMPILER_DEBUG_KEYS.contains(&key) && (value.is_empty() || is_identifier(value) || is_digits(value))
    })
}

fn is_compiler_spectre(value: &str) -> bool {
    value.split(',').all(|item| matches!(item, "all" | "index" | "ret"))
}

fn is_asm_spectre(value: &str) -> bool {
    value.split(',').all(|item| matches!(item, "all" | "ret"))
}

fn is_asm_define(value: &str) -> bool {
    let (name, value) = value.split_once('=').unwrap_or((value, ""));
    is_identifier(name) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linker_flags() {
        for good in [
            "",
            "-s -w",
            "-s=false -w=1",
            "--s",
            "all=-s -w",
            " all = -s ",
            "./cmd/...=-s",
            "-X main.version=1.2.3",
            "-X=main.version=1.2.3",
            "-X 'main.version=1.2.3 beta' -X \"example.com/x/y.commit=abc=def\"",
            "-X main.empty=",
            "-buildid=abc/def",
            "-buildid=",
            "-buildid abc",
            "-B gobuildid",
            "-B=0x0123abcd",
            "-H windowsgui",
            "-compressdwarf=false",
            "-linkmode=external",
            "-linkmode internal -s",
        ] {
            check(&LINKER, good).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-extld=./x", "-extld runs a program"),
            ("-extld ./x", "-extld runs a program"),
            ("all=-extld=./x", "-extld runs a program"),
            ("-s -extldflags=-fuse-ld=/tmp/x", "CGO_LDFLAGS"),
            ("-extldflags '-B /tmp/x'", "-extldflags passes flags"),
            ("-extar=./x", "runs a program"),
            ("-o=/etc/x", "writes a file"),
            ("-cpuprofile /tmp/x", "writes a file"),
            ("-capturehostobjs=/tmp", "writes a file"),
            ("-tmpdir=/tmp/x", "writes a file"),
            ("-L /usr/lib", "reads files"),
            ("-r /opt", "directories the binary loads"),
            ("-I /tmp/ld.so", "ELF interpreter"),
            ("-importcfg=/x", "reads files"),
            ("-linkshared", "reads files"),
            ("-race", "is not a linker flag a job may pass"),
            ("-X @/root/token", "starts with @"),
            ("@/root/args", "neither flags"),
            ("all=@/root/args", "starts with @"),
            ("-X", "needs a value"),
            ("-X main", "importpath.name=value"),
            ("-X -extld=x", "importpath.name=value"),
            ("-B /tmp/x", "gobuildid"),
            ("-B 0x123", "gobuildid"),
            ("-H ../x", "header type"),
            ("-linkmode=external2", "internal, external or auto"),
            ("-s=maybe", "true or false"),
            ("-s x", "not a linker flag"),
            ("-s -- -o=/x", "not a linker flag"),
            ("-s - -w", "not a linker flag"),
            ("---s", "not a linker flag"),
            ("-=s", "not a linker flag"),
            ("'-s -w'", "starts with a quote"),
            ("s", "neither flags"),
            ("=-s", "empty"),
            ("../x=-s", "inside the source tree"),
            ("-s '-w", "unterminated"),
        ] {
            let err = check(&LINKER, bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let err = check(&LINKER, "-extld=./x").unwrap_err();
        assert_eq!(
            err,
            "-extld runs a program of the job's choosing on the agent; a job may pass -ldflags with -s, -w, \
             -X, -buildid, -B, -H, -compressdwarf and -linkmode only"
        );
    }

    #[test]
    fn compiler_and_assembler_flags() {
        for good in [
            "-N -l",
            "all=-N -l",
            "-m",
            "-m=2",
            "-m -m",
            "-d=checkptr",
            "-d checkptr=0,nil=1",
            "-B -C -S -e -w -L -h",
            "-spectre=all",
            "-spectre=index,ret",
            "-dwarf=false -smallframes -wb=false -dwarflocationlists",
            "-v",
        ] {
            check(&COMPILER, good).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-cpuprofile=/tmp/x", "writes a file"),
            ("all=-memprofile /tmp/x", "writes a file"),
            ("-traceprofile=/tmp/x", "writes a file"),
            ("-json=0,file:///tmp/x", "writes a file"),
            ("-asmhdr=/tmp/x", "writes a file"),
            ("-importcfg=/etc/x", "reads files"),
            ("-embedcfg=/etc/x", "reads files"),
            ("-I=/usr/include", "reads files"),
            ("-D=/x", "reads files"),
            ("-pgoprofile=/x", "reads files"),
            ("-symabis=/x", "reads files"),
            ("-o /tmp/x", "writes a file"),
            ("-d=dumpinlfuncprops=/tmp/x", "debug settings"),
            ("-d=ssa/check/on", "debug settings"),
            ("-d=maymorestack=main.f", "debug settings"),
            ("-d=checkptr=/x", "debug settings"),
            ("-d", "needs a value"),
            ("-m=x", "takes a number"),
            ("-spectre=everything", "all, index or ret"),
            ("-race", "not a compiler flag"),
            ("-N @flags", "starts with @"),
        ] {
            let err = check(&COMPILER, bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(check(&COMPILER, "-cpuprofile=/tmp/x").unwrap_err().contains("-d keys: append"));

        for good in ["-S", "all=-D=GOOS_linux -D X=1", "-spectre=ret", "-e -v -debug"] {
            check(&ASSEMBLER, good).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-I=/usr/include", "reads files"),
            ("-o=/tmp/x", "writes a file"),
            ("-gensymabis", "writes a file"),
            ("-D=X=/etc", "identifier"),
            ("-spectre=index", "all or ret"),
            ("-trimpath=/x", "not an assembler flag"),
        ] {
            let err = check(&ASSEMBLER, bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
