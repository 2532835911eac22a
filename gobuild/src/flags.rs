//! The go build command line as the wrapper understands it: every flag that changes what is
//! built becomes part of the key; flags that only change how go reports its work pass through;
//! anything else makes the wrapper step aside (plain go build, with the reason).

use std::path::PathBuf;

/// The build flags that decide the outputs, after GOFLAGS and the command line are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFlags {
    pub output: Option<PathBuf>,
    /// Sorted, without duplicates.
    pub tags: Vec<String>,
    pub trimpath: bool,
    /// Every `-ldflags` given (GOFLAGS' first), in order: go keeps each with its package
    /// pattern, and a package takes the last that matches it.
    pub ldflags: Vec<String>,
    /// As `ldflags`.
    pub gcflags: Vec<String>,
    /// As `ldflags`.
    pub asmflags: Vec<String>,
    pub buildmode: String,
    pub race: bool,
    pub msan: bool,
    pub asan: bool,
    pub cover: bool,
    pub covermode: String,
    pub coverpkg: String,
    pub buildvcs: String,
    pub modmode: String,
    pub pgo: String,
    /// Where go runs (`-C dir`), relative to the starting directory.
    pub chdir: Option<PathBuf>,
    /// The flags (from the command line) that go list must see too, because they change which
    /// packages and files are in the build.
    pub list_flags: Vec<String>,
}

impl BuildFlags {
    /// Whether `-asmflags` gives the assembler include directories (`-I dir`, for all packages
    /// or a pattern's): go keys its action IDs by the flag's text, not by the headers there.
    pub fn asm_include_dirs(&self) -> bool {
        self.asmflags.iter().any(|value| names_include_dirs(value))
    }
}

/// Why `-ldflags` makes the link read what the build key does not: `-extld` names the
/// linker program, and `-extldflags` may name files (`@file` responses, specs, scripts,
/// objects, directories) in more spellings than any list of them holds, so only its words
/// known to read no file are keyed ([`extld_word_is_plain`]).
pub fn ldflags_read_files(values: &[String]) -> Option<String> {
    for words in values.iter().map(|value| per_package_words(value)) {
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let name = word.strip_prefix("--").or_else(|| word.strip_prefix('-')).unwrap_or("");
            let (name, joined) =
                name.split_once('=').map_or((name, None), |(name, value)| (name, Some(value)));
            match name {
                "extld" => return Some("-ldflags names the external linker (-extld)".to_owned()),
                "extldflags" => {
                    let value =
                        joined.map(str::to_owned).or_else(|| words.next().cloned()).unwrap_or_default();
                    if !extldflags_are_plain(&quoted_fields(&value)) {
                        return Some(
                            "-ldflags -extldflags holds a flag not known to read no file (keyed are only \
                             such as -static, -pie, -s, -pthread, -l<name>, -Wl,-z,<keyword>, -Wl,--as-needed)"
                                .to_owned(),
                        );
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// Whether every field of an `-extldflags` value is known to make the external linker (the C
/// compiler driver) read no file but the system's libraries by name.
fn extldflags_are_plain(fields: &[String]) -> bool {
    let mut fields = fields.iter().map(String::as_str);
    // What -Xlinker passes, in order, as one list: `-Xlinker -z -Xlinker now`.
    let mut linker: Vec<&str> = Vec::new();
    while let Some(field) = fields.next() {
        let plain = match field {
            "-Xlinker" => fields.next().map(|piece| linker.push(piece)).is_some(),
            "-z" => fields.next().is_some_and(is_keyword),
            _ => match field.strip_prefix("-Wl,") {
                Some(list) => linker_pieces_are_plain(&list.split(',').collect::<Vec<_>>()),
                None => extld_word_is_plain(field),
            },
        };
        if !plain {
            return false;
        }
    }
    linker_pieces_are_plain(&linker)
}

/// Compiler driver flags that read no file.
const PLAIN_EXTLD_WORDS: &[&str] = &[
    "-static",
    "-static-pie",
    "-static-libgcc",
    "-static-libstdc++",
    "-shared-libgcc",
    "-pie",
    "-no-pie",
    "-s",
    "-pthread",
    "-rdynamic",
    "-m32",
    "-m64",
    "-g",
    "-O0",
    "-O1",
    "-O2",
    "-O3",
    "-Os",
    "-fPIC",
    "-fpic",
    "-fPIE",
    "-fpie",
    "-fno-PIC",
    "-fno-pic",
    "-fno-PIE",
    "-fno-pie",
    "-nodefaultlibs",
    "-nostartfiles",
];

/// Whether one driver word reads no file: a known plain flag, or `-l<name>` (a system
/// library by name: a `-L` directory that could hold one is not plain).
fn extld_word_is_plain(word: &str) -> bool {
    PLAIN_EXTLD_WORDS.contains(&word) || word.strip_prefix("-l").is_some_and(is_library_name)
}

/// A library name `-l` searches for: not `:file` and no path.
fn is_library_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
}

/// A plain keyword value (`-z relro`, `-soname libx.so.1`): no path, no response file.
fn is_keyword(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('-') && !value.contains(['/', '@'])
}

/// Linker options that read no file.
const PLAIN_LINKER_OPTIONS: &[&str] = &[
    "--as-needed",
    "--no-as-needed",
    "--gc-sections",
    "--no-gc-sections",
    "-s",
    "--strip-all",
    "-S",
    "--strip-debug",
    "-E",
    "--export-dynamic",
    "--no-undefined",
    "-Bstatic",
    "-Bdynamic",
    "-Bsymbolic",
    "-Bsymbolic-functions",
    "--enable-new-dtags",
    "--disable-new-dtags",
    "--eh-frame-hdr",
    "--build-id",
    "-O1",
    "-O2",
    "--relax",
    "--no-relax",
    "--sort-common",
    "--fatal-warnings",
    "--warn-common",
    "-pie",
    "-static",
];
/// Linker options whose `=value` or next piece is a plain word, never read: a run path is
/// recorded in the binary, not opened.
const KEYWORD_LINKER_OPTIONS: &[&str] = &[
    "-z",
    "-rpath",
    "--rpath",
    "-soname",
    "--soname",
    "-h",
    "--build-id",
    "--hash-style",
    "--compress-debug-sections",
    "--icf",
];

/// Whether linker arguments (`-Wl,` pieces, `-Xlinker` values) read no file.
fn linker_pieces_are_plain(pieces: &[&str]) -> bool {
    let mut pieces = pieces.iter().copied();
    while let Some(piece) = pieces.next() {
        let plain = if KEYWORD_LINKER_OPTIONS.contains(&piece) && piece != "--build-id" {
            pieces
                .next()
                .is_some_and(|value| is_keyword(value) || (piece.ends_with("rpath") && !value.contains('@')))
        } else if let Some((name, value)) = piece.split_once('=') {
            KEYWORD_LINKER_OPTIONS.contains(&name)
                && (is_keyword(value) || (name.ends_with("rpath") && !value.contains('@')))
        } else {
            PLAIN_LINKER_OPTIONS.contains(&piece)
        };
        if !plain {
            return false;
        }
    }
    true
}

/// Whether an `-asmflags` value (`[pattern=]flags`) holds `-I`, in any form the assembler's
/// flag parsing takes (`-I dir`, `-I=dir`, `--I dir`, quoted).
pub fn names_include_dirs(asmflags: &str) -> bool {
    names_any_flag(asmflags, &["I"])
}

/// Compiler flags whose value is a file the compiler reads, or a directory it imports from:
/// go's action IDs hash the flag's text, not what it names.
const COMPILER_READS: &[&str] = &["pgoprofile", "importcfg", "embedcfg", "symabis", "coveragecfg", "I"];
/// Linker flags of the same kind (-extld and -extldflags: [`ldflags_read_files`]), and -o,
/// which would write the binary where the wrapper does not look.
const LINKER_READS: &[&str] = &["libgcc", "importcfg", "L", "o"];

/// Why `-gcflags` or `-ldflags` make a tool read files neither the build key nor go's cache
/// follows (`-gcflags=all=-pgoprofile=FILE`, `-ldflags=-L DIR`), if they do.
pub fn tool_flags_read_files(flags: &BuildFlags) -> Option<String> {
    if let Some(value) = flags.gcflags.iter().find(|value| names_any_flag(value, COMPILER_READS)) {
        return Some(format!("-gcflags {value:?} makes the compiler read files"));
    }
    let value = flags.ldflags.iter().find(|value| names_any_flag(value, LINKER_READS))?;
    Some(format!("-ldflags {value:?} makes the linker read or write files"))
}

/// Whether a per-package tool flag value holds one of `names`, in any form go's tools parse
/// (`-name value`, `-name=value`, `--name`, quoted).
fn names_any_flag(value: &str, names: &[&str]) -> bool {
    per_package_words(value).iter().any(|word| {
        let name = word.strip_prefix("--").or_else(|| word.strip_prefix('-')).unwrap_or("");
        names.contains(&name.split_once('=').map_or(name, |(name, _)| name))
    })
}

/// The tool flags of a per-package flag's value as go splits them: past an optional
/// `pattern=`, fields at spaces, a field that starts with a quote running to the same quote.
pub fn per_package_words(value: &str) -> Vec<String> {
    match per_package_pattern(value) {
        None => quoted_fields(value.trim()),
        Some(pattern) => quoted_fields(value.trim()[pattern.len()..].strip_prefix('=').unwrap_or("")),
    }
}

/// The `pattern` of a per-package flag's `pattern=flags` value, as go reads it: none when the
/// value starts with a flag (it applies to the packages named on the command line).
pub fn per_package_pattern(value: &str) -> Option<&str> {
    let value = value.trim();
    if value.starts_with('-') {
        None
    } else {
        Some(value.split_once('=').map_or(value, |(pattern, _)| pattern))
    }
}

/// Fields as go splits them ([`proto::quoted`]); none where go refuses the text (its build
/// fails before anything is compiled).
fn quoted_fields(text: &str) -> Vec<String> {
    proto::quoted::split(text)
        .map(|fields| fields.into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Default for BuildFlags {
    fn default() -> Self {
        Self {
            output: None,
            tags: Vec::new(),
            trimpath: false,
            ldflags: Vec::new(),
            gcflags: Vec::new(),
            asmflags: Vec::new(),
            buildmode: "default".to_owned(),
            race: false,
            msan: false,
            asan: false,
            cover: false,
            covermode: String::new(),
            coverpkg: String::new(),
            buildvcs: "auto".to_owned(),
            modmode: String::new(),
            pgo: "auto".to_owned(),
            chdir: None,
            list_flags: Vec::new(),
        }
    }
}

/// Why the wrapper does not cache a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// `go build` flags that take a value (the bridge's session keys read them too).
pub const VALUE_FLAGS: &[&str] = &[
    "o",
    "tags",
    "ldflags",
    "gcflags",
    "asmflags",
    "buildmode",
    "covermode",
    "coverpkg",
    "mod",
    "pgo",
    "C",
    "p",
    "overlay",
    "toolexec",
    "pkgdir",
    "modfile",
    "installsuffix",
    "compiler",
    "gccgoflags",
    "exec",
    "debug-actiongraph",
    "debug-runtime-trace",
    "debug-trace",
];
/// Boolean flags (`-race`, `-race=true`).
const BOOL_FLAGS: &[&str] = &[
    "a",
    "n",
    "x",
    "v",
    "race",
    "msan",
    "asan",
    "cover",
    "trimpath",
    "linkshared",
    "modcacherw",
    "work",
    "json",
    "i",
];

/// How a flag bears on the key.
fn unsupported_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "a" => "-a forces a rebuild",
        "n" => "-n only prints the commands",
        "overlay" => "-overlay replaces files the wrapper cannot see",
        "toolexec" => "-toolexec runs a program the wrapper cannot identify",
        "pkgdir" | "installsuffix" | "linkshared" => "shared or relocated package builds are not cached",
        "modfile" => "-modfile is not supported yet",
        "compiler" | "gccgoflags" => "only the gc compiler is supported",
        "exec" | "debug-actiongraph" | "debug-runtime-trace" | "debug-trace" => {
            "debugging flags are not cached"
        }
        "i" => "-i is not supported",
        _ => return None,
    })
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, Unsupported> {
    match value {
        None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") | Some("True") => Ok(true),
        Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") | Some("False") => Ok(false),
        Some(other) => Err(Unsupported(format!("-{name}={other} is not a boolean"))),
    }
}

/// Splits `tags` as go does: at commas, or into quoted fields in an old-style list (spaces or
/// quotes). Order and repeats are kept: go records the list as given in the binary. A tag with
/// a comma in it (`-tags="'a,b'"`) would key as two tags: the wrapper steps aside.
fn split_tags(text: &str) -> Result<Vec<String>, Unsupported> {
    let tags: Vec<String> = if text.contains([' ', '\'']) {
        quoted_fields(text)
    } else {
        text.split(',').filter(|tag| !tag.is_empty()).map(str::to_owned).collect()
    };
    match tags.iter().find(|tag| tag.contains(',')) {
        Some(tag) => Err(Unsupported(format!("the build tag {tag:?} holds a comma"))),
        None => Ok(tags),
    }
}

impl BuildFlags {
    /// Applies one flag. `from_goflags`: unknown flags are ignored (GOFLAGS may hold flags of
    /// other commands); on the command line they make the wrapper step aside.
    fn apply(&mut self, name: &str, value: Option<String>, from_goflags: bool) -> Result<(), Unsupported> {
        if let Some(reason) = unsupported_reason(name) {
            if from_goflags && matches!(name, "i" | "exec") {
                return Ok(());
            }
            return Err(Unsupported(format!("{reason} (flag -{name})")));
        }
        let text = || value.clone().unwrap_or_default();
        match name {
            "o" => self.output = Some(PathBuf::from(text())),
            "tags" => self.tags = split_tags(&text())?,
            "ldflags" => self.ldflags.push(text()),
            "gcflags" => self.gcflags.push(text()),
            "asmflags" => self.asmflags.push(text()),
            "buildmode" => {
                let mode = text();
                if !matches!(mode.as_str(), "default" | "exe" | "pie") {
                    return Err(Unsupported(format!(
                        "-buildmode={mode} is not cached (only exe and pie are)"
                    )));
                }
                self.buildmode = mode;
            }
            "race" => self.race = parse_bool(name, value.as_deref())?,
            "msan" => self.msan = parse_bool(name, value.as_deref())?,
            "asan" => self.asan = parse_bool(name, value.as_deref())?,
            "cover" => self.cover = parse_bool(name, value.as_deref())?,
            "trimpath" => self.trimpath = parse_bool(name, value.as_deref())?,
            "covermode" => self.covermode = text(),
            "coverpkg" => self.coverpkg = text(),
            "buildvcs" => {
                self.buildvcs = match value.as_deref() {
                    None => "true".to_owned(),
                    Some(v @ ("true" | "false" | "auto")) => v.to_owned(),
                    Some(v) => match parse_bool(name, Some(v)) {
                        Ok(b) => b.to_string(),
                        Err(err) => return Err(err),
                    },
                }
            }
            "mod" => self.modmode = text(),
            "pgo" => self.pgo = text(),
            "C" => {
                if from_goflags {
                    return Err(Unsupported("-C may not be set in GOFLAGS".to_owned()));
                }
                self.chdir = Some(PathBuf::from(text()));
            }
            // How go reports or schedules its work, not what it builds.
            "x" | "v" | "p" | "modcacherw" | "work" | "json" => {}
            other if from_goflags => {
                let _ = other;
            }
            other => return Err(Unsupported(format!("the wrapper does not know the flag -{other}"))),
        }
        // The flags that change which packages a build needs, so `go list -deps` lists what go
        // builds: -ldflags=-linkmode=external and some build modes add runtime/cgo, a cover
        // mode sync/atomic. GOFLAGS go list reads itself.
        if !from_goflags
            && matches!(
                name,
                "tags"
                    | "mod"
                    | "race"
                    | "msan"
                    | "asan"
                    | "cover"
                    | "covermode"
                    | "coverpkg"
                    | "pgo"
                    | "ldflags"
                    | "buildmode"
            )
        {
            self.list_flags.push(match value {
                Some(value) => format!("-{name}={value}"),
                None => format!("-{name}"),
            });
        }
        Ok(())
    }

    /// GOFLAGS: `-flag` or `-flag=value` fields ([`split_goflags`]), defaults for the
    /// command line.
    pub fn apply_goflags(&mut self, goflags: &str) -> Result<(), Unsupported> {
        self.apply_goflag_fields(&split_goflags(goflags)?)
    }

    /// GOFLAGS already split into its fields.
    fn apply_goflag_fields(&mut self, fields: &[String]) -> Result<(), Unsupported> {
        for word in fields {
            let word = word.as_str();
            let Some(flag) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) else {
                return Err(Unsupported(format!("GOFLAGS holds {word:?}, which is not a flag")));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            self.apply(name, value, true)?;
        }
        Ok(())
    }
}

/// GOFLAGS split into fields as go splits it ([`proto::quoted`]): read any other way, a value
/// go passes whole (`-ldflags=-X=a<NBSP>-trimpath`, `'-asmflags=-I d'`) would be taken for
/// other flags, or refused where go takes it.
pub fn split_goflags(goflags: &str) -> Result<Vec<String>, Unsupported> {
    let fields = proto::quoted::split(goflags).map_err(|err| Unsupported(format!("GOFLAGS: {err}")))?;
    Ok(fields.into_iter().map(str::to_owned).collect())
}

/// A go build command line split into its flags and its package arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// The flags as given (without `-o`, which `BuildFlags::output` holds).
    pub flags: Vec<(String, Option<String>)>,
    pub packages: Vec<String>,
}

/// Parses `go build` arguments: flags first (`-f`, `--f`, `-f=v`, `-f v`), then packages.
pub fn parse_command_line(args: &[String]) -> Result<CommandLine, Unsupported> {
    let mut line = CommandLine::default();
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            line.packages.extend(iter.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty())
        else {
            line.packages.push(arg.clone());
            line.packages.extend(iter.by_ref().cloned());
            break;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.to_owned(), None),
        };
        let value = if VALUE_FLAGS.contains(&name.as_str()) {
            match inline {
                Some(value) => Some(value),
                None => match iter.next() {
                    Some(value) => Some(value.clone()),
                    None => return Err(Unsupported(format!("flag -{name} needs a value"))),
                },
            }
        } else if BOOL_FLAGS.contains(&name.as_str()) || name == "buildvcs" {
            inline
        } else {
            return Err(Unsupported(format!("the wrapper does not know the flag -{name}")));
        };
        line.flags.push((name, value));
    }
    if line.packages.iter().any(|p| p.ends_with(".go")) {
        return Err(Unsupported(
            "building .go files named on the command line is not cached; name packages".into(),
        ));
    }
    Ok(line)
}

/// The effective build flags: GOFLAGS first, then the command line.
pub fn effective(goflags: &str, line: &CommandLine) -> Result<BuildFlags, Unsupported> {
    effective_fields(&split_goflags(goflags)?, line)
}

/// [`effective`], with GOFLAGS already split into its fields ([`split_goflags`]).
pub fn effective_fields(goflags: &[String], line: &CommandLine) -> Result<BuildFlags, Unsupported> {
    let mut flags = BuildFlags::default();
    flags.apply_goflag_fields(goflags)?;
    for (name, value) in &line.flags {
        flags.apply(name, value.clone(), false)?;
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn goflags_split_as_go_splits_them() {
        let split = |text: &str| split_goflags(text).unwrap();
        assert_eq!(split(" -a\t-b\n"), ["-a", "-b"]);
        assert_eq!(split("-ldflags=-X=a\u{a0}-trimpath"), ["-ldflags=-X=a\u{a0}-trimpath"]);
        assert_eq!(split("'-asmflags=-I d' \"-x y\""), ["-asmflags=-I d", "-x y"]);
        assert_eq!(split("'a'b"), ["a", "b"]);
        assert!(split_goflags("'-x").is_err());
        let mut flags = BuildFlags::default();
        flags.apply_goflags("-mod=mod '-asmflags=example.com/m=-I /inc'").unwrap();
        assert!(flags.asm_include_dirs(), "refused before: a quoted field");
        let mut flags = BuildFlags::default();
        flags.apply_goflags("-ldflags=-X=main.v=a\u{a0}-trimpath").unwrap();
        assert!(!flags.trimpath, "go passes -trimpath to the linker in that field");
    }

    #[test]
    fn every_per_package_flag_counts_and_is_read_as_go_splits_it() {
        let line = parse_command_line(&args("-ldflags=-X=main.v=GOOD -ldflags=fmt=-s ./cmd/app")).unwrap();
        let flags = effective("-ldflags=-w", &line).unwrap();
        assert_eq!(flags.ldflags, ["-w", "-X=main.v=GOOD", "fmt=-s"]);
        let line = parse_command_line(&args("-asmflags=-I=inc -asmflags=fmt=-S ./cmd/app")).unwrap();
        assert!(effective("", &line).unwrap().asm_include_dirs(), "an -I before another -asmflags");
        assert_eq!(per_package_words("all='-I' \"a b\" -S"), ["-I", "a b", "-S"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rsp");
        std::fs::write(&file, "-Wl,--defsym=x=1").unwrap();
        let file = file.display();
        for files in [
            format!("-extldflags=@{file}"),
            format!("-extldflags '-Wl,-T,{file}'"),
            "-extld=clang".to_owned(),
        ] {
            assert!(ldflags_read_files(std::slice::from_ref(&files)).is_some(), "{files}");
        }
        assert_eq!(ldflags_read_files(&["-s -w -extldflags=-static".to_owned()]), None);
        assert_eq!(ldflags_read_files(&["-extldflags '-static -Wl,-rpath,$ORIGIN/lib'".to_owned()]), None);
        for relative in [
            "-extldflags '-Wl,-T,link.ld'",
            "-extldflags=extra.o",
            "-extldflags=-L./lib",
            "-extldflags=-fuse-ld=gold",
            "-extldflags '-Xlinker --version-script=v.map'",
            "-extldflags '-Xlinker --script=/abs/x.ld'",
            "-extldflags=-fprofile-use=/abs/p",
        ] {
            assert!(ldflags_read_files(&[relative.to_owned()]).is_some(), "{relative}");
        }
    }

    /// Spellings a list of file-reading flags missed: only words known to read no file key.
    #[test]
    fn extldflags_key_only_words_known_to_read_no_file() {
        for reads in [
            "--specs=link.specs",
            "--prefix=tools",
            "--library-directory=lib",
            "--for-linker=--script=x.ld",
            "-Wl,--just-symbols=syms",
            "-Wl,-R,syms",
            "-Wl,--default-script=x.ld",
            "-Wl,--mri-script=x.mri",
            "-Wl,-rpath-link,lib",
            "-l:libx.a",
            "-z @rsp",
            "-Xlinker",
        ] {
            let value = format!("-linkmode=external -extldflags '{reads}'");
            assert!(ldflags_read_files(&[value]).is_some(), "{reads}");
        }
        let plain = "-extldflags '-static-pie -pthread -lm -z now -Wl,-z,relro,--as-needed,-soname,libx.so.1 \
                     -Wl,--hash-style=gnu,-rpath=/opt/lib -Xlinker -z -Xlinker noexecstack -Wl,--build-id=sha1'";
        assert_eq!(ldflags_read_files(&[plain.to_owned()]), None);
    }

    /// `-gcflags=all=-pgoprofile=FILE` made the compiler read a profile that neither the key
    /// nor go's action IDs follow: an edited profile was served stale.
    #[test]
    fn tool_flags_naming_files_are_refused() {
        let with = |gcflags: &[&str], ldflags: &[&str]| BuildFlags {
            gcflags: gcflags.iter().map(|flag| flag.to_string()).collect(),
            ldflags: ldflags.iter().map(|flag| flag.to_string()).collect(),
            ..BuildFlags::default()
        };
        for gcflags in
            ["all=-pgoprofile=/tmp/p.pgo", "-N -l -importcfg cfg", "./x=--I=/inc", "all='-symabis' s"]
        {
            assert!(tool_flags_read_files(&with(&[gcflags], &[])).is_some(), "{gcflags}");
        }
        for ldflags in ["-libgcc=/x/libgcc.a", "-L /dir", "all=-o=/tmp/elsewhere"] {
            assert!(tool_flags_read_files(&with(&[], &[ldflags])).is_some(), "{ldflags}");
        }
        assert_eq!(tool_flags_read_files(&with(&["all=-N -l", "-m"], &["-s -w", "-X main.v=1"])), None);
    }

    #[test]
    fn flags_and_packages_split_as_go_does() {
        let line =
            parse_command_line(&args("-trimpath -o bin/app -tags=netgo,osusergo --ldflags -s ./cmd/app ./x"))
                .unwrap();
        assert_eq!(line.packages, ["./cmd/app", "./x"]);
        let flags = effective("-buildvcs=false -mod=readonly -tags=ignored", &line).unwrap();
        assert!(flags.trimpath);
        assert_eq!(flags.output, Some(PathBuf::from("bin/app")));
        assert_eq!(flags.tags, ["netgo", "osusergo"]);
        assert_eq!(flags.ldflags, ["-s"]);
        assert_eq!(flags.buildvcs, "false");
        assert_eq!(flags.modmode, "readonly");
        assert_eq!(flags.list_flags, ["-tags=netgo,osusergo", "-ldflags=-s"]);
    }

    /// go records `-tags` in the binary as given: another order, or a repeat, is another binary.
    #[test]
    fn tags_keep_their_order_and_repeats() {
        let tags = |text: &str| split_tags(text).unwrap();
        assert_eq!(tags("zeta,alpha"), ["zeta", "alpha"]);
        assert_eq!(tags("alpha,zeta,alpha"), ["alpha", "zeta", "alpha"]);
        assert_eq!(tags("a b"), ["a", "b"]);
        assert!(split_tags("'a,b' c").is_err(), "one tag with a comma would key as two");
    }

    #[test]
    fn unknown_or_unsafe_flags_make_the_wrapper_step_aside() {
        for line in [
            "-frobnicate ./x",
            "-toolexec=strace ./x",
            "-a ./x",
            "-overlay o.json ./x",
            "-buildmode=plugin ./x",
        ] {
            let parsed = parse_command_line(&args(line)).and_then(|l| effective("", &l));
            assert!(parsed.is_err(), "{line}");
        }
        assert!(parse_command_line(&args("main.go")).is_err());
        assert!(effective("-toolexec=x", &CommandLine::default()).is_err());
        // GOFLAGS may carry flags of other commands; they are no reason to step aside.
        assert!(effective("-count=1 -modcacherw", &CommandLine::default()).is_ok());
        assert!(parse_command_line(&args("-o")).is_err());
    }

    #[test]
    fn booleans_take_go_spellings() {
        let line = parse_command_line(&args("-race=false -trimpath=true -buildvcs")).unwrap();
        let flags = effective("", &line).unwrap();
        assert!(!flags.race && flags.trimpath);
        assert_eq!(flags.buildvcs, "true");
        assert!(effective("", &parse_command_line(&args("-race=maybe")).unwrap()).is_err());
    }
}
