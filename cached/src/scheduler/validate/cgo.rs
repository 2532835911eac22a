//! The CGO_CFLAGS, CGO_CPPFLAGS, CGO_CXXFLAGS, CGO_FFLAGS and CGO_LDFLAGS a job sets, checked
//! with Go's own safe-flag rules for `#cgo` lines.
//!
//! The go command checks the flags of `#cgo` lines against allow lists, because flags such as
//! `-fplugin=`, `-wrapper`, `-B` or `@file` make the C compiler or linker run programs or read
//! files; it never checks these environment variables, which it trusts as the user's own. A job
//! is not the agent's user, so its variables get the `#cgo` rules here.
//!
//! The lists below are Go's, entry for entry and in Go's order, from
//! src/cmd/go/internal/work/security.go (go1.26), so a reviewer can hold them side by side:
//! `validCompilerFlags`, `validCompilerFlagsWithNextArg`, `invalidLinkerFlags`,
//! `validLinkerFlags`, `validLinkerFlagsWithNextArg`. The character rule is go/build's
//! `safeCgoName`, the next-argument rule cmd/go/internal/load's `SafeArg`. The checking is
//! ours and follows Go's `checkFlags`, except that a job cannot widen the lists: the
//! CGO_*_ALLOW and CGO_*_DISALLOW variables are not among those a job may set.
//!
//! Like Go, these rules let flags name files to read (`-I/usr/include`, `libfoo.a`): C source
//! can `#include` any path anyway, so what a build may read is the agent sandbox's business.

use std::sync::LazyLock;

use regex::Regex;

/// Flags of the C compiler (and preprocessor, C++ and Fortran compilers) Go accepts in `#cgo`
/// CFLAGS, CPPFLAGS, CXXFLAGS and FFLAGS lines.
const COMPILER: &[&str] = &[
    r"-D([A-Za-z_][A-Za-z0-9_]*)(=[^@\-]*)?",
    r"-U([A-Za-z_][A-Za-z0-9_]*)",
    r"-F([^@\-].*)",
    r"-I([^@\-].*)",
    r"-O",
    r"-O([^@\-].*)",
    r"-W",
    r"-W([^@,]+)",
    r"-Wa,-mbig-obj",
    r"-Wp,-D([A-Za-z_][A-Za-z0-9_]*)(=[^@,\-]*)?",
    r"-Wp,-U([A-Za-z_][A-Za-z0-9_]*)",
    r"-ansi",
    r"-f(no-)?asynchronous-unwind-tables",
    r"-f(no-)?blocks",
    r"-f(no-)builtin-[a-zA-Z0-9_]*",
    r"-f(no-)?common",
    r"-f(no-)?constant-cfstrings",
    r"-fdebug-prefix-map=([^@]+)=([^@]+)",
    r"-fdiagnostics-show-note-include-stack",
    r"-ffile-prefix-map=([^@]+)=([^@]+)",
    r"-fno-canonical-system-headers",
    r"-f(no-)?eliminate-unused-debug-types",
    r"-f(no-)?exceptions",
    r"-f(no-)?fast-math",
    r"-f(no-)?inline-functions",
    r"-finput-charset=([^@\-].*)",
    r"-f(no-)?fat-lto-objects",
    r"-f(no-)?keep-inline-dllexport",
    r"-f(no-)?lto",
    r"-fmacro-backtrace-limit=(.+)",
    r"-fmessage-length=(.+)",
    r"-f(no-)?modules",
    r"-f(no-)?objc-arc",
    r"-f(no-)?objc-nonfragile-abi",
    r"-f(no-)?objc-legacy-dispatch",
    r"-f(no-)?omit-frame-pointer",
    r"-f(no-)?openmp(-simd)?",
    r"-f(no-)?permissive",
    r"-f(no-)?(pic|PIC|pie|PIE)",
    r"-f(no-)?plt",
    r"-f(no-)?rtti",
    r"-f(no-)?split-stack",
    r"-f(no-)?stack-(.+)",
    r"-f(no-)?strict-aliasing",
    r"-f(un)signed-char",
    r"-f(no-)?use-linker-plugin",
    r"-f(no-)?visibility-inlines-hidden",
    r"-fsanitize=(.+)",
    r"-fsanitize-undefined-strip-path-components=(-)?[0-9]+",
    r"-ftemplate-depth-(.+)",
    r"-ftls-model=(global-dynamic|local-dynamic|initial-exec|local-exec)",
    r"-fvisibility=(.+)",
    r"-g([^@\-].*)?",
    r"-m32",
    r"-m64",
    r"-m(abi|arch|cpu|fpu|simd|tls-dialect|tune)=([^@\-].*)",
    r"-m(no-)?v?aes",
    r"-marm",
    r"-mcmodel=[0-9a-z-]+",
    r"-mfloat-abi=([^@\-].*)",
    r"-m(soft|single|double)-float",
    r"-mfpmath=[0-9a-z,+]*",
    r"-m(no-)?avx[0-9a-z.]*",
    r"-m(no-)?ms-bitfields",
    r"-m(no-)?stack-(.+)",
    r"-mmacosx-(.+)",
    r"-m(no-)?relax",
    r"-m(no-)?strict-align",
    r"-m(no-)?(lsx|lasx|frecipe|div32|lam-bh|lamcas|ld-seq-sa)",
    r"-mios-simulator-version-min=(.+)",
    r"-miphoneos-version-min=(.+)",
    r"-mlarge-data-threshold=[0-9]+",
    r"-mtvos-simulator-version-min=(.+)",
    r"-mtvos-version-min=(.+)",
    r"-mwatchos-simulator-version-min=(.+)",
    r"-mwatchos-version-min=(.+)",
    r"-mnop-fun-dllimport",
    r"-m(no-)?sse[0-9.]*",
    r"-m(no-)?ssse3",
    r"-mthumb(-interwork)?",
    r"-mthreads",
    r"-mwindows",
    r"-no-canonical-prefixes",
    r"--param=ssp-buffer-size=[0-9]*",
    r"-pedantic(-errors)?",
    r"-pipe",
    r"-pthread",
    r"--static",
    r"-?-std=([^@\-].*)",
    r"-?-stdlib=([^@\-].*)",
    r"--sysroot=([^@\-].*)",
    r"-w",
    r"-x([^@\-].*)",
    r"-v",
];

/// Compiler flags whose value may be the next field.
const COMPILER_WITH_NEXT_ARG: &[&str] = &[
    "-arch",
    "-D",
    "-U",
    "-I",
    "-F",
    "-framework",
    "-include",
    "-isysroot",
    "-isystem",
    "--sysroot",
    "-target",
    "-x",
];

/// Refused before the linker list is consulted: on macOS the linker loads and runs the library
/// it names, and `-l` would otherwise let it through.
const LINKER_REFUSED: &[&str] = &[r"-lto_library"];

/// Flags of the C linker Go accepts in `#cgo LDFLAGS` lines. A wildcard inside `-Wl,` never
/// matches a comma: `-Wl,` splits at commas, so one would smuggle further linker arguments.
const LINKER: &[&str] = &[
    r"-F([^@\-].*)",
    r"-l([^@\-].*)",
    r"-L([^@\-].*)",
    r"-O",
    r"-O([^@\-].*)",
    r"-f(no-)?(pic|PIC|pie|PIE)",
    r"-f(no-)?openmp(-simd)?",
    r"-fsanitize=([^@\-].*)",
    r"-flat_namespace",
    r"-g([^@\-].*)?",
    r"-headerpad_max_install_names",
    r"-m(abi|arch|cpu|fpu|simd|tls-dialect|tune)=([^@\-].*)",
    r"-mcmodel=[0-9a-z-]+",
    r"-mfloat-abi=([^@\-].*)",
    r"-m(soft|single|double)-float",
    r"-m(no-)?relax",
    r"-m(no-)?strict-align",
    r"-m(no-)?(lsx|lasx|frecipe|div32|lam-bh|lamcas|ld-seq-sa)",
    r"-mmacosx-(.+)",
    r"-mios-simulator-version-min=(.+)",
    r"-miphoneos-version-min=(.+)",
    r"-mthreads",
    r"-mwindows",
    r"-(pic|PIC|pie|PIE)",
    r"-pthread",
    r"-rdynamic",
    r"-shared",
    r"-?-static([-a-z0-9+]*)",
    r"-?-stdlib=([^@\-].*)",
    r"-v",
    r"-Wl,--(no-)?allow-multiple-definition",
    r"-Wl,--(no-)?allow-shlib-undefined",
    r"-Wl,--(no-)?as-needed",
    r"-Wl,-Bdynamic",
    r"-Wl,-berok",
    r"-Wl,-Bstatic",
    r"-Wl,-Bsymbolic-functions",
    r"-Wl,-O[0-9]+",
    r"-Wl,-d[ny]",
    r"-Wl,--disable-new-dtags",
    r"-Wl,-e[=,][a-zA-Z0-9]+",
    r"-Wl,--enable-new-dtags",
    r"-Wl,--end-group",
    r"-Wl,--(no-)?export-dynamic",
    r"-Wl,-E",
    r"-Wl,-framework,[^,@\-][^,]*",
    r"-Wl,--hash-style=(sysv|gnu|both)",
    r"-Wl,-headerpad_max_install_names",
    r"-Wl,--no-undefined",
    r"-Wl,--pop-state",
    r"-Wl,--push-state",
    r"-Wl,-R,?([^@\-,][^,@]*$)",
    r"-Wl,--just-symbols[=,]([^,@\-][^,@]*)",
    r"-Wl,-rpath(-link)?[=,]([^,@\-][^,]*)",
    r"-Wl,-s",
    r"-Wl,-search_paths_first",
    r"-Wl,-sectcreate,([^,@\-][^,]*),([^,@\-][^,]*),([^,@\-][^,]*)",
    r"-Wl,--start-group",
    r"-Wl,-?-static",
    r"-Wl,-?-subsystem,(native|windows|console|posix|xbox)",
    r"-Wl,-syslibroot[=,]([^,@\-][^,]*)",
    r"-Wl,-undefined[=,]([^,@\-][^,]*)",
    r"-Wl,-?-unresolved-symbols=[^,]+",
    r"-Wl,--(no-)?warn-([^,]+)",
    r"-Wl,-?-wrap[=,][^,@\-][^,]*",
    r"-Wl(,-z,(relro|now|(no)?execstack))+",
    r"[a-zA-Z0-9_/].*\.(a|o|obj|dll|dylib|so|tbd)",
    r"\./.*\.(a|o|obj|dll|dylib|so|tbd)",
];

/// Linker flags whose value may be the next field.
const LINKER_WITH_NEXT_ARG: &[&str] = &[
    "-arch",
    "-F",
    "-l",
    "-L",
    "-framework",
    "-isysroot",
    "--sysroot",
    "-target",
    "-Wl,-framework",
    "-Wl,-rpath",
    "-Wl,-R",
    "-Wl,--just-symbols",
    "-Wl,-undefined",
];

struct Rules {
    refused: Vec<Regex>,
    allowed: Vec<Regex>,
    with_next_arg: &'static [&'static str],
}

fn compile(patterns: &[&str]) -> Vec<Regex> {
    patterns.iter().map(|pattern| Regex::new(pattern).expect("Go's patterns are valid regexes")).collect()
}

static COMPILER_RULES: LazyLock<Rules> = LazyLock::new(|| Rules {
    refused: Vec::new(),
    allowed: compile(COMPILER),
    with_next_arg: COMPILER_WITH_NEXT_ARG,
});

static LINKER_RULES: LazyLock<Rules> = LazyLock::new(|| Rules {
    refused: compile(LINKER_REFUSED),
    allowed: compile(LINKER),
    with_next_arg: LINKER_WITH_NEXT_ARG,
});

/// Which rules a variable goes through, if it is one of the five.
pub(super) fn is_cgo_flags(name: &str) -> bool {
    matches!(name, "CGO_CFLAGS" | "CGO_CPPFLAGS" | "CGO_CXXFLAGS" | "CGO_FFLAGS" | "CGO_LDFLAGS")
}

/// Checks the fields of one CGO_*FLAGS variable (split as go splits it).
pub(super) fn check(variable: &str, fields: &[&str]) -> Result<(), String> {
    let rules = if variable == "CGO_LDFLAGS" { &*LINKER_RULES } else { &*COMPILER_RULES };
    let kind = if variable == "CGO_LDFLAGS" { "LDFLAGS" } else { "CFLAGS" };
    let refusal = |field: &str, why: &str| {
        format!(
            "{field:?} {why}; a job's CGO_* flags follow Go's rules for #cgo {kind} lines \
             (https://go.dev/s/invalidflag)"
        )
    };
    for field in fields {
        if field.is_empty() {
            return Err(refusal(field, "is an empty argument"));
        }
        // GNU tools read `@file` as more arguments from that file, wherever it stands.
        if field.starts_with('@') {
            return Err(refusal(field, "makes the compiler read more flags from that file on the agent"));
        }
        if let Some(bad) = field.bytes().find(|&b| b.is_ascii() && !is_safe_char(b)) {
            return Err(refusal(field, &format!("holds {:?}, which Go refuses in #cgo flags", bad as char)));
        }
    }
    let mut index = 0;
    while index < fields.len() {
        let field = fields[index];
        let refuse = |why: &str| Err(refusal(field, why));
        if !rules.refused.iter().any(|rule| matches_whole(rule, field)) {
            if is_allowed(rules, field) {
                index += 1;
                continue;
            }
            if rules.with_next_arg.contains(&field) {
                match fields.get(index + 1) {
                    Some(next) if next_arg_ok(field, next) => {
                        index += 2;
                        continue;
                    }
                    Some(next) => {
                        return refuse(&format!("takes {next:?}, which Go refuses as its argument"));
                    }
                    None => return refuse("needs an argument"),
                }
            }
        }
        return refuse("is not among the flags Go allows");
    }
    Ok(())
}

/// Go takes a rule as matching when the regex's leftmost-first match is the whole argument
/// (`FindString(arg) == arg`), which is what `find` gives here too; an anchored match would
/// accept a few arguments Go refuses (`x.obj`, where Go's match stops at `x.o`).
fn matches_whole(rule: &Regex, field: &str) -> bool {
    rule.find(field).is_some_and(|found| found.start() == 0 && found.end() == field.len())
}

/// An allowed flag, or `-Wl,--push-state,...` whose every part is an allowed `-Wl,` flag.
fn is_allowed(rules: &Rules, field: &str) -> bool {
    if rules.allowed.iter().any(|rule| matches_whole(rule, field)) {
        return true;
    }
    let Some(parts) = field.strip_prefix("-Wl,--push-state,") else { return false };
    ["--push-state"].into_iter().chain(parts.split(',')).all(|part| {
        let part = format!("-Wl,{part}");
        rules.allowed.iter().any(|rule| matches_whole(rule, &part))
            && !rules.refused.iter().any(|rule| matches_whole(rule, &part))
    })
}

/// The argument of a flag that takes the next field: a plain word or path (Go's SafeArg), a
/// `-Wl,` word after a `-Wl,` flag, or `=dir` / `$SYSROOT...` after `-I`.
fn next_arg_ok(flag: &str, next: &str) -> bool {
    if is_safe_arg(next) {
        return true;
    }
    if flag.starts_with("-Wl,")
        && let Some(word) = next.strip_prefix("-Wl,")
    {
        return is_safe_arg(word) && !word.contains(',');
    }
    flag == "-I" && (next.starts_with('=') || next.starts_with("$SYSROOT")) && is_safe_arg(&next[1..])
}

/// cmd/go/internal/load.SafeArg: starts with a letter, digit, `.`, `_`, `/` or non-ASCII.
fn is_safe_arg(arg: &str) -> bool {
    arg.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/') || b >= 0x80)
}

/// go/build's safeCgoName characters (non-ASCII passes too).
fn is_safe_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"+-.,/=:$@%! ~^_".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::check;

    fn split(text: &str) -> Vec<&str> {
        proto::quoted::split(text).unwrap()
    }

    #[test]
    fn compiler_flags_as_go_allows_them() {
        // Among them the accepted examples of Go's security_test.go.
        for good in [
            "-DFOO",
            "-Dfoo=bar",
            "-D FOO",
            "-F/Qt",
            "-F /Qt",
            "-I/",
            "-I/etc/passwd",
            "-I.",
            "-I /usr/include",
            "-I =/usr/include",
            "-I $SYSROOT/include",
            "-O",
            "-O2",
            "-Osmall",
            "-W",
            "-Wall",
            "-Wp,-Dfoo=bar",
            "-Wp,-Ufoo",
            "-fobjc-arc",
            "-fno-objc-arc",
            "-fomit-frame-pointer",
            "-fpic",
            "-fno-pic",
            "-fsanitize=hands",
            "-g",
            "-ggdb",
            "-march=souza",
            "-mcpu=123",
            "-mfpu=123",
            "-mtune=happybirthday",
            "-mstack-overflow",
            "-mno-stack-overflow",
            "-mmacosx-version",
            "-mnop-fun-dllimport",
            "-pthread",
            "-std=c99",
            "-xc",
            "-x c",
            "-v",
            "-O2 -g -Wall -DNDEBUG",
            "-framework Chocolate",
            "-include stdio.h",
            "-isystem /usr/include",
        ] {
            check("CGO_CFLAGS", &split(good)).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-fplugin=./x.so", "not among the flags"),
            ("-wrapper /bin/sh,-c", "not among the flags"),
            ("-B/tmp/evil", "not among the flags"),
            ("-B /tmp/evil", "not among the flags"),
            ("-specs=/tmp/x", "not among the flags"),
            ("-save-temps", "not among the flags"),
            ("-MF /tmp/x", "not among the flags"),
            ("-o /tmp/x", "not among the flags"),
            ("@/tmp/args", "read more flags"),
            ("-I @foo", "read more flags"),
            ("-I ''", "empty argument"),
            ("-I a;b", "holds ';'"),
            ("-I -foo", "takes \"-foo\""),
            ("-D", "needs an argument"),
            ("-I@foo", "not among"),
            ("-D@X", "not among"),
            ("-Dfoo=-x", "not among"),
            ("-Wa,-m,foo", "not among"),
            ("-Wl,-foo", "not among"),
            ("-Wp,-DX,-Y", "not among"),
            ("-fdebug-prefix-map=@a=b", "not among"),
            ("-x@c", "not among"),
            ("-DX=\"a\"", "holds '\"'"),
            ("-DX=`id`", "holds '`'"),
            ("-DX=a;b", "holds ';'"),
            ("-std=@c99", "not among"),
        ] {
            let err = check("CGO_CFLAGS", &split(bad)).expect_err(bad);
            assert!(err.contains(says) && err.contains("#cgo CFLAGS"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn linker_flags_as_go_allows_them() {
        for good in [
            "-Fbar",
            "-lbar",
            "-Lbar",
            "-fpic",
            "-fno-pic",
            "-fPIC",
            "-fsanitize=hands",
            "-g",
            "-ggdb",
            "-march=souza",
            "-pthread",
            "-static",
            "--static",
            "-static-libgcc",
            "-rdynamic",
            "-Wl,--hash-style=both",
            "-Wl,-rpath,foo",
            "-Wl,-rpath,$ORIGIN/foo",
            "-Wl,-R,foo",
            "-Wl,-Rfoo",
            "-Wl,--just-symbols=foo",
            "-Wl,--no-warn-error",
            "-Wl,-s",
            "-Wl,-z,relro,-z,now",
            "-Wl,--push-state,--as-needed",
            "-Wl,--push-state,--no-as-needed,-Bstatic",
            "-Wl,--wrap=malloc",
            "-Wl,-wrap,malloc",
            "-Wl,-framework -Wl,Chocolate",
            "-Wl,-undefined -Wl,dynamic_lookup",
            "-framework Chocolate",
            "-l foo",
            "-L /usr/lib",
            "foo.o",
            "libcgotbdtest.tbd",
            "./libfoo.a",
            "_foo.o",
        ] {
            check("CGO_LDFLAGS", &split(good)).unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
        for (bad, says) in [
            ("-fplugin=./x.so", "not among"),
            ("-wrapper /bin/sh,-c", "not among"),
            ("-fuse-ld=/tmp/ld", "not among"),
            ("-B/tmp", "not among"),
            ("-lto_library /tmp/x.dylib", "not among"),
            ("-lto_library", "not among"),
            ("-Wl,-plugin=/tmp/x.so", "not among"),
            ("-Wl,--plugin,/tmp/x.so", "not among"),
            ("-Wl,-rpath,foo,-plugin,x", "not among"),
            ("-Wl,--push-state,--as-needed,-plugin=x", "not among"),
            ("-Wl,--wrap=@x", "not among"),
            ("-Wl,-framework,-x", "not among"),
            ("-Wl,-framework -Wl,a,b", "takes"),
            ("-Wl,-R,-foo", "not among"),
            ("-Wl,-e=x,y", "not among"),
            ("-l -foo", "takes"),
            ("-L", "needs an argument"),
            ("@/tmp/args", "read more flags"),
            ("x.obj", "not among"),
            ("-x.o", "not among"),
            ("@x.o", "read more flags"),
            ("-Wl,-T,/tmp/script", "not among"),
        ] {
            let err = check("CGO_LDFLAGS", &split(bad)).expect_err(bad);
            assert!(err.contains(says) && err.contains("#cgo LDFLAGS"), "{bad:?}: {err}");
        }
    }
}
