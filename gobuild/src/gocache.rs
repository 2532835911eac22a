//! How a build may use go's own cache (the bridge's, shared through cached). The go command's
//! action ID for a package hashes the files `go list` names for it, not a header its C or
//! assembly sources include from elsewhere, nor `.incbin` data: for a build that reads such
//! files, an entry of the shared cache may hold an object built from other versions of them,
//! and a build that writes one puts it under an ID honest builds of other contents look up.
//! So the include scan decides: a build whose every read file go keys shares the cache as it
//! is; one that reads others keys its entries apart under a salt of those files' contents
//! (`CACHED_ACTION_SALT`); one whose reads are not known uses no shared cache at all.

use std::path::{Path, PathBuf};

use cached_client::error::ClientError;

use crate::build::BridgeEnv;
use crate::exec::{Exec, Invocation};
use crate::flags::BuildFlags;
use crate::inputs::{self, GoCall, GoEnv, Package};
use crate::modverify::NativeModules;
use crate::{flags, includes};

/// The go command from which GOCACHEPROG is on without an experiment.
const CACHEPROG_SINCE: (u32, u32) = (1, 24);
/// Where the bridge reads the salt.
const SALT_VAR: &str = "CACHED_ACTION_SALT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoCache {
    /// go's action IDs hash every file the build reads: the shared cache as it is.
    Shared,
    /// Some package reads files its action ID misses: every entry keyed under this salt of
    /// their names and contents.
    Salted([u8; 32]),
    /// Which files the build reads is not known, or the go command cannot key the cache apart
    /// (it ignores GOCACHEPROG): nothing of a shared cache is read or written, and every
    /// package is compiled (`go build -a`).
    Off,
}

impl GoCache {
    /// `salt` as the go command of `env` can use it: a salt needs the bridge, which a go
    /// command older than 1.24 runs only with GOEXPERIMENT=cacheprog.
    pub fn for_go(self, env: &GoEnv) -> Self {
        match self {
            Self::Salted(_) if !runs_cache_program(env) => Self::Off,
            other => other,
        }
    }

    /// As go will use it: a salt is read by a cache program only, so where none runs
    /// (`program_runs` false) go would read its own GOCACHE, and no cache is used.
    pub fn with_program(self, program_runs: bool) -> Self {
        match self {
            Self::Salted(_) if !program_runs => Self::Off,
            other => other,
        }
    }

    /// Sets up `env` (a command's own, over what it inherits) for go to use its cache as this
    /// says, with `bridge` (its environment, and the variables to remove) when cached is
    /// reached; returns the variables to remove. Without a bridge of the wrapper's, one the
    /// environment already names (an agent's task has one) is held to this as well. `Off`
    /// also needs `-a` on go's command line.
    pub fn apply(self, bridge: Option<BridgeEnv>, env: &mut Vec<(String, String)>) -> Vec<String> {
        let mut remove = vec![SALT_VAR.to_owned()];
        env.retain(|(name, _)| name != SALT_VAR);
        if self == Self::Off {
            // go then uses its own GOCACHE, which -a neither reads nor trusts.
            env.retain(|(name, _)| name != "GOCACHEPROG");
            remove.push("GOCACHEPROG".to_owned());
            return remove;
        }
        if let Some((bridge, bridge_remove)) = bridge {
            env.extend(bridge);
            remove.extend(bridge_remove);
        }
        if let Self::Salted(salt) = self {
            env.push((SALT_VAR.to_owned(), crate::manifest::hex(&salt)));
        }
        remove
    }

    /// From the names and hashes of the files go's action IDs miss (none: shared).
    pub(crate) fn of_unseen<'a>(unseen: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>) -> Self {
        let mut named: Vec<_> = unseen.into_iter().collect();
        if named.is_empty() {
            return Self::Shared;
        }
        named.sort();
        let mut salt = blake3::Hasher::new();
        salt.update(b"cached go cache salt\0");
        for (name, hash) in named {
            salt.update(name.as_bytes()).update(&[0]).update(hash);
        }
        Self::Salted(*salt.finalize().as_bytes())
    }
}

/// Keeps the go command of an `Off` build (`invocation`, set up by [`GoCache::apply`]) from
/// the module index in its own GOCACHE ([`without_module_index`]) and from a
/// cache program its env file names: removing GOCACHEPROG from the environment does not reach
/// one `go env -w` wrote there (a developer's machine; agents run with GOENV=off), and through
/// it go would write objects built from unkeyed files under the IDs honest builds look up. The
/// file then gives way to its other settings, set as variables where the environment sets none
/// (go reads the environment first), and GOENV=off.
pub async fn keep_off(exec: &dyn Exec, go: &Path, invocation: &mut Invocation) -> Result<(), ClientError> {
    without_own_index(exec, invocation);
    let known = go_env(exec, go, invocation).await?;
    let (file, program) = (inputs::var(&known, "GOENV"), inputs::var(&known, "GOCACHEPROG"));
    if program.is_empty() {
        return Ok(());
    }
    let unset_hint = "; remove the setting with `go env -u GOCACHEPROG`";
    let settings =
        inputs::env_file(Path::new(&file)).map_err(|err| off_failed(&format!("{}{unset_hint}", err.0)))?;
    for (name, value) in settings {
        let (Ok(name), Ok(value)) = (String::from_utf8(name), String::from_utf8(value)) else {
            return Err(off_failed(&format!("{file} holds a setting that is not UTF-8{unset_hint}")));
        };
        // Only what go takes from the file: its own variables (some, CGO_CFLAGS_ALLOW or FC,
        // go env does not print), not GODEBUG (the environment's alone) nor anything else a
        // hand-edited file holds (PATH, LD_LIBRARY_PATH).
        let own = known.contains_key(&name) || GO_VARIABLES.contains(&name.as_str());
        let taken = own && !matches!(name.as_str(), "GOCACHEPROG" | "GOENV" | "GODEBUG");
        if taken && effective_var(exec, invocation, &name).is_empty() {
            invocation.env.push((name, value));
        }
    }
    invocation.env.push(("GOENV".to_owned(), "off".to_owned()));
    let after = go_env(exec, go, invocation).await?;
    let program = inputs::var(&after, "GOCACHEPROG");
    if !program.is_empty() {
        return Err(off_failed(&format!("GOCACHEPROG={program} is set in $GOROOT/go.env; remove it there")));
    }
    Ok(())
}

/// `GODEBUG` (as the build has it, `godebug`) for a go command that reads its own GOCACHE:
/// without go's module index. go keeps there what each package's files are, their build
/// constraints, imports and `#cgo` lines, keyed by the package directory and its files' names,
/// sizes and times (a module-cache module by its directory alone), never by contents: on a
/// runner whose GOCACHE other builds share, a pull request's tree of the same names, sizes and
/// times (its commit time chosen, a content of the same size ground to match) or an edited
/// module cache would decide which files the key reads and an `Off` build compiles. The last
/// setting of a name wins, so the build's own GODEBUG stays as it is otherwise.
pub(crate) fn without_module_index(godebug: Option<String>) -> (String, String) {
    let value = match godebug.filter(|value| !value.is_empty()) {
        Some(value) if value.ends_with(NO_INDEX) => value,
        Some(value) => format!("{value},{NO_INDEX}"),
        None => NO_INDEX.to_owned(),
    };
    ("GODEBUG".to_owned(), value)
}

const NO_INDEX: &str = "goindex=0";

/// Has the go command of `invocation`, which reads its own GOCACHE (no cache program runs),
/// read it without go's module index ([`without_module_index`]).
pub fn without_own_index(exec: &dyn Exec, invocation: &mut Invocation) {
    let godebug = effective_var(exec, invocation, "GODEBUG");
    invocation.env.push(without_module_index(Some(godebug)));
}

/// The variables go reads from its env file as well as the environment (cmd/go's
/// cfg.KnownEnv), beside those `go env -json` prints.
const GO_VARIABLES: &[&str] = &[
    "AR",
    "CC",
    "CGO_CFLAGS",
    "CGO_CFLAGS_ALLOW",
    "CGO_CFLAGS_DISALLOW",
    "CGO_CPPFLAGS",
    "CGO_CPPFLAGS_ALLOW",
    "CGO_CPPFLAGS_DISALLOW",
    "CGO_CXXFLAGS",
    "CGO_CXXFLAGS_ALLOW",
    "CGO_CXXFLAGS_DISALLOW",
    "CGO_ENABLED",
    "CGO_FFLAGS",
    "CGO_FFLAGS_ALLOW",
    "CGO_FFLAGS_DISALLOW",
    "CGO_LDFLAGS",
    "CGO_LDFLAGS_ALLOW",
    "CGO_LDFLAGS_DISALLOW",
    "CXX",
    "FC",
    "GCCGO",
    "GO111MODULE",
    "GO386",
    "GOAMD64",
    "GOARCH",
    "GOARM",
    "GOARM64",
    "GOAUTH",
    "GOBIN",
    "GOCACHE",
    "GOCOVERDIR",
    "GOEXPERIMENT",
    "GOFIPS140",
    "GOFLAGS",
    "GOINSECURE",
    "GOLOONG64",
    "GOMIPS",
    "GOMIPS64",
    "GOMODCACHE",
    "GONOPROXY",
    "GONOSUMDB",
    "GOOS",
    "GOPATH",
    "GOPPC64",
    "GOPRIVATE",
    "GOPROXY",
    "GORISCV64",
    "GOROOT",
    "GOSUMDB",
    "GOTMPDIR",
    "GOTOOLCHAIN",
    "GOVCS",
    "GOWASM",
    "GO_EXTLINK_ENABLED",
    "PKG_CONFIG",
];

/// Every variable of go's as go sees it in `invocation`'s environment (as JSON: a value may
/// hold a line end).
async fn go_env(exec: &dyn Exec, go: &Path, invocation: &Invocation) -> Result<GoEnv, ClientError> {
    let mut probe = invocation.clone();
    probe.program = go.to_path_buf();
    probe.args = ["env", "-json"].map(str::to_owned).to_vec();
    let printed = exec.output(&probe).await.map_err(ClientError::run(go.display().to_string()))?;
    let values: Option<GoEnv> =
        printed.success().then(|| serde_json::from_slice(&printed.stdout).ok()).flatten();
    values.ok_or_else(|| off_failed(&format!("go env failed: {}", printed.first_error_line())))
}

/// The value go sees of `name` in `invocation`'s environment (empty: unset).
fn effective_var(exec: &dyn Exec, invocation: &Invocation, name: &str) -> String {
    let own = invocation.env.iter().rev().find(|(set, _)| set == name).map(|(_, value)| value.clone());
    let removed = invocation.env_remove.iter().any(|removed| removed == name);
    own.or_else(|| if removed { None } else { exec.inherited_var(name) }).unwrap_or_default()
}

fn off_failed(why: &str) -> ClientError {
    ClientError::Usage(format!("this build must run without go's cache program, and cannot: {why}"))
}

/// Whether the go command of `env` runs GOCACHEPROG.
fn runs_cache_program(env: &GoEnv) -> bool {
    let experiment = env.get("GOEXPERIMENT").map_or("", String::as_str);
    if experiment.split(',').any(|name| name.trim() == "cacheprog") {
        return true;
    }
    let version = env.get("GOVERSION").map_or("", String::as_str);
    let mut numbers = version.strip_prefix("go").unwrap_or("").split(['.', 'r', 'b', '-', ' ']);
    let mut next = || numbers.next().and_then(|n| n.parse::<u32>().ok());
    matches!((next(), next()), (Some(major), Some(minor)) if (major, minor) >= CACHEPROG_SINCE)
}

/// The go cache a build without a whole-build key may use, run as `call` with its effective
/// `flags`: salted as a keyed build would be, by the files the include scan finds for the
/// packages `go list` named and by the C toolchain's settings go does not hash; none where
/// either is not known.
pub async fn for_unkeyed(
    call: &GoCall<'_>,
    env: &GoEnv,
    flags: &BuildFlags,
    packages: &[Package],
    tree: Option<&Path>,
) -> GoCache {
    let base = inputs::key_base(env);
    let own_dirs: Vec<&Path> = std::iter::once(base.as_path()).chain(tree).collect();
    let mut unkept = crate::manifest::Manifest::default();
    let settings = inputs::unseen_settings(call, env, flags, packages, &own_dirs, &mut unkept).await;
    let (Ok(settings), Some(files)) = (settings, unseen_files(env, packages, tree).await) else {
        return GoCache::Off;
    };
    GoCache::of_unseen(files.iter().chain(&settings).map(|(name, hash)| (name.as_str(), hash))).for_go(env)
}

/// The names and hashes of the files `packages` read that go's action IDs miss, as the
/// include scan finds them (none: not known).
async fn unseen_files(
    env: &GoEnv,
    packages: &[Package],
    tree: Option<&Path>,
) -> Option<Vec<(String, [u8; 32])>> {
    let gomodcache = env.get("GOMODCACHE").cloned().unwrap_or_default();
    let scans = inputs::include_scans(packages, &gomodcache);
    let native_modules = NativeModules::of(packages, &gomodcache);
    if scans.is_empty() && native_modules.is_empty() {
        return Some(Vec::new());
    }
    if !scans.is_empty() {
        inputs::refuse_reading_flags(env).ok()?;
    }
    let base = inputs::key_base(env);
    let tree = tree.map(Path::to_owned);
    let scanned = cached_client::task::spawn_blocking("scan-includes", move || {
        // Objects compiled from an edited module would go under the honest action IDs.
        native_modules.refuse_edited()?;
        if scans.is_empty() {
            return Ok(Vec::new());
        }
        let module_cache = (!gomodcache.is_empty()).then(|| Path::new(&gomodcache));
        let found = includes::inputs(&scans, tree.as_deref(), module_cache, &includes::LIMITS)?;
        let files = found
            .unseen_by_go
            .iter()
            .map(|path| (format!("file.{}", inputs::relative(path, &base)), path.clone()));
        inputs::hash_files(files.collect())
    })
    .await;
    scanned.ok()?.ok()
}

/// The go cache `go test <args>`, started in `dir`, may use: the include scan over every
/// package a test there could build (`go list -deps all` and the packages named), listed where
/// go runs (`-C`) and with the build flags that choose packages and files (`-modfile`, `-mod`,
/// `-tags`, ...), and the C toolchain's settings. Test files cannot use cgo, so a package's
/// test build reads the files its build does.
pub async fn for_test(exec: &dyn Exec, dir: &Path, args: &[String], tree: Option<&Path>) -> GoCache {
    let line = test_build_line(args);
    let Some(list) = TestList::of(dir, &line) else { return GoCache::Off };
    let call = GoCall { exec, go: Path::new("go"), dir: &list.dir, env: &[] };
    let Ok((env, packages)) = call.read(&list.flags, &list.patterns).await else { return GoCache::Off };
    // GOFLAGS as go sees it: the environment's, or the user's go env file.
    let goflags = env.get("GOFLAGS").map_or("", String::as_str);
    match test_flags(goflags, &line) {
        Some(flags) => for_unkeyed(&call, &env, &flags, &packages, tree).await,
        None => GoCache::Off,
    }
}

/// The build flags a go test runs with, GOFLAGS' and then the command line's (`line`) as go
/// combines them; none where they compile files the scan does not read, or make a tool read
/// files neither the scan nor go's action IDs follow (`-gcflags=all=-pgoprofile=FILE`,
/// `-ldflags=-extldflags=@FILE`), from either place. `-modfile` (which the scan's go list
/// takes), `-a` and `-n` change what go reads or whether it compiles, not which files
/// the compiler reads.
fn test_flags(goflags: &str, line: &flags::CommandLine) -> Option<BuildFlags> {
    // -overlay, -toolexec and the flags go build's wrapper refuses fail `effective`.
    let from_goflags: Vec<String> = flags::split_goflags(goflags)
        .ok()?
        .into_iter()
        .filter(|field| !is_unkeyed_test_flag(flag_name(field)))
        .collect();
    let command_line: Vec<_> =
        line.flags.iter().filter(|(name, _)| !is_unkeyed_test_flag(name)).cloned().collect();
    let line = flags::CommandLine { flags: command_line, packages: Vec::new() };
    let effective = flags::effective_fields(&from_goflags, &line).ok()?;
    let reads_files = flags::tool_flags_read_files(&effective).is_some()
        || flags::ldflags_read_files(&effective.ldflags).is_some();
    (!reads_files && !effective.asm_include_dirs()).then_some(effective)
}

/// Build flags a go test may take that `cachectl go build` refuses, and that change neither
/// what the compiler reads nor how go's cache keys it.
fn is_unkeyed_test_flag(name: &str) -> bool {
    matches!(name, "modfile" | "a" | "n")
}

/// The name of a GOFLAGS field (`-name=value`, `--name`).
fn flag_name(field: &str) -> &str {
    let flag = field.strip_prefix("--").or_else(|| field.strip_prefix('-')).unwrap_or(field);
    flag.split_once('=').map_or(flag, |(name, _)| name)
}

/// The `go list` that names what a go test may build.
struct TestList {
    /// Where go runs the tests.
    dir: PathBuf,
    flags: flags::BuildFlags,
    patterns: Vec<String>,
}

impl TestList {
    /// For the build flags and packages of a go test command line (`line`) started in `dir`;
    /// none where the scan cannot tell what the tests compile.
    fn of(dir: &Path, line: &flags::CommandLine) -> Option<Self> {
        // .go files named on the command line make a package `all` does not hold.
        if compiles_unscanned_files(&line.flags) || line.packages.iter().any(|p| p.ends_with(".go")) {
            return None;
        }
        // -modfile, which go build's parsing refuses, is handed to go list as it is; -a and -n
        // change whether go compiles, not what it reads.
        let (modfile, chosen): (Vec<_>, Vec<_>) = line
            .flags
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "a" | "n"))
            .cloned()
            .partition(|(name, _)| name == "modfile");
        let mut flags =
            flags::effective("", &flags::CommandLine { flags: chosen, packages: Vec::new() }).ok()?;
        if let Some((_, Some(modfile))) = modfile.last() {
            flags.list_flags.push(format!("-modfile={modfile}"));
        }
        // A package that does not load fails its own tests and its dependents'; what the
        // others read is still known.
        flags.list_flags.push("-e".to_owned());
        let dir = flags.chdir.as_ref().map_or_else(|| dir.to_owned(), |chdir| dir.join(chdir));
        let patterns = std::iter::once("all".to_owned()).chain(line.packages.iter().cloned()).collect();
        Some(Self { dir, flags, patterns })
    }
}

/// Whether build flags (`line.flags` of [`test_build_line`]) have go compile other files than
/// those the include scan reads: an overlay's, whatever a -toolexec program runs, headers
/// from the assembler's include directories.
fn compiles_unscanned_files(flags: &[(String, Option<String>)]) -> bool {
    flags.iter().any(|(name, value)| {
        let value = value.as_deref().unwrap_or("");
        match name.as_str() {
            "overlay" | "toolexec" => !value.is_empty(),
            "asmflags" => flags::names_include_dirs(value),
            _ => false,
        }
    })
}

/// Flags of go test's own and of the test binary's (also as `-test.name`) that take a value.
const TEST_VALUE_FLAGS: &[&str] = &[
    "bench",
    "benchtime",
    "blockprofile",
    "blockprofilerate",
    "count",
    "coverprofile",
    "cpu",
    "cpuprofile",
    "exec",
    "fuzz",
    "fuzzminimizetime",
    "fuzztime",
    "list",
    "memprofile",
    "memprofilerate",
    "mutexprofile",
    "mutexprofilefraction",
    "o",
    "outputdir",
    "parallel",
    "run",
    "shuffle",
    "skip",
    "timeout",
    "trace",
    "vet",
];
/// Boolean flags of go test's own and of the test binary's.
const TEST_BOOL_FLAGS: &[&str] =
    &["artifacts", "benchmem", "c", "failfast", "fullpath", "json", "short", "v"];
/// Boolean build flags of go test (`-race`, `-race=false`).
const BUILD_BOOL_FLAGS: &[&str] = &[
    "a",
    "n",
    "x",
    "asan",
    "msan",
    "race",
    "linkshared",
    "trimpath",
    "work",
    "modcacherw",
    "cover",
    "buildvcs",
];

/// How go test takes a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestFlag {
    /// A build flag, which `go build` takes too.
    Build { takes_value: bool },
    /// Its own, or the test binary's.
    Test { takes_value: bool },
    /// One go test passes to the test binary without knowing it.
    Unknown,
}

/// Test flags first: go test takes `-o`, `-exec`, `-v` and `-json` as its own.
fn test_flag(name: &str) -> TestFlag {
    let test_name = name.strip_prefix("test.").unwrap_or(name);
    if TEST_VALUE_FLAGS.contains(&name) || TEST_VALUE_FLAGS.contains(&test_name) {
        TestFlag::Test { takes_value: true }
    } else if TEST_BOOL_FLAGS.contains(&name) || TEST_BOOL_FLAGS.contains(&test_name) {
        TestFlag::Test { takes_value: false }
    } else if BUILD_BOOL_FLAGS.contains(&name) {
        TestFlag::Build { takes_value: false }
    } else if flags::VALUE_FLAGS.contains(&name) {
        TestFlag::Build { takes_value: true }
    } else {
        TestFlag::Unknown
    }
}

/// The build flags (in order) and the packages of a go test command line (or of GOFLAGS'
/// fields), split as go test splits it: flags and packages may come in any order, but the
/// packages in one run; an unknown flag goes to the test binary, with the word after it when
/// it has no `=value`; `-args` or `--` ends what go reads.
fn test_build_line(args: &[String]) -> flags::CommandLine {
    let mut line = flags::CommandLine::default();
    let (mut packages_seen, mut in_packages, mut after_bare_unknown) = (false, false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value_of_unknown = std::mem::take(&mut after_bare_unknown);
        if arg == "--" {
            break;
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty())
        else {
            if packages_seen && !in_packages {
                if value_of_unknown {
                    continue;
                }
                break;
            }
            (packages_seen, in_packages) = (true, true);
            line.packages.push(arg.clone());
            continue;
        };
        in_packages = false;
        let (name, inline) = flag.split_once('=').map_or((flag, None), |(name, value)| (name, Some(value)));
        let inline = inline.map(str::to_owned);
        match test_flag(name) {
            TestFlag::Build { takes_value } => {
                let value = if takes_value { inline.or_else(|| args.next().cloned()) } else { inline };
                line.flags.push((name.to_owned(), value));
            }
            TestFlag::Test { takes_value } => {
                if takes_value && inline.is_none() {
                    args.next();
                }
            }
            TestFlag::Unknown if name == "args" => break,
            TestFlag::Unknown => {
                packages_seen = true;
                after_bare_unknown = inline.is_none();
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> GoEnv {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_salt_needs_a_go_command_that_runs_the_bridge() {
        let salted = GoCache::Salted([1; 32]);
        for (version, experiment, kept) in [
            ("go1.26.8", "", true),
            ("go1.24rc1", "", true),
            ("go1.23.4", "", false),
            ("go1.23.4", "cacheprog,rangefunc", true),
            ("devel go1.25-abc", "", false),
            ("", "", false),
        ] {
            let go = env(&[("GOVERSION", version), ("GOEXPERIMENT", experiment)]);
            assert_eq!(salted.for_go(&go) == salted, kept, "{version} {experiment}");
            assert_eq!(GoCache::Shared.for_go(&go), GoCache::Shared);
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    fn build_flags(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter().map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned))).collect()
    }

    #[test]
    fn a_test_command_line_splits_into_build_flags_and_packages_as_go_test_splits_it() {
        let line = test_build_line(&args(&[
            "-C",
            "sub",
            "-run",
            "X",
            "-tags=a,b",
            "./...",
            "-count",
            "1",
            "-v",
            "--modfile",
            "alt.mod",
            "-race",
            "-args",
            "-tags=x",
        ]));
        assert_eq!(line.packages, ["./..."]);
        let expected =
            [("C", Some("sub")), ("tags", Some("a,b")), ("modfile", Some("alt.mod")), ("race", None)];
        assert_eq!(line.flags, build_flags(&expected));
        // The packages come in one run; an unknown flag without `=value` takes the next word.
        let line = test_build_line(&args(&["./a", "./b", "-custom", "value", "-overlay=o.json", "./c"]));
        assert_eq!(line.packages, ["./a", "./b"]);
        assert_eq!(line.flags, build_flags(&[("overlay", Some("o.json"))]));
        let line =
            test_build_line(&args(&["-test.run", "X", "-exec", "sudo", "-o", "t.test", "./a", "--", "-a"]));
        assert_eq!((line.packages, line.flags), (args(&["./a"]), Vec::new()));
    }

    /// The scan's go list runs where go runs the tests (`-C`), with the go.mod they use.
    #[test]
    fn the_scan_lists_where_and_as_the_tests_build() {
        let line = test_build_line(&args(&[
            "-C",
            "sub",
            "-modfile=alt.mod",
            "-mod=mod",
            "-tags",
            "t",
            "-a",
            "-count=1",
            "./pkg",
        ]));
        let list = TestList::of(Path::new("/m"), &line).unwrap();
        assert_eq!(list.dir, Path::new("/m/sub"));
        assert_eq!(list.flags.list_flags, ["-mod=mod", "-tags=t", "-modfile=alt.mod", "-e"]);
        assert_eq!(list.patterns, ["all", "./pkg"]);
    }

    /// go compiles what the scan does not read: no list, so no shared cache.
    #[test]
    fn flags_that_compile_unscanned_files_leave_nothing_to_scan() {
        for line in [
            &["-overlay=o.json", "./..."][..],
            &["./...", "-count=1", "-toolexec", "strace"],
            &["-asmflags=-I=../inc", "./..."],
            &["--asmflags", "all=-I ../inc", "./..."],
            &["-asmflags=--I=../inc", "./..."],
            &["-asmflags=all='-I' ../inc", "./..."],
            &["-asmflags", "-trimpath=x -I=../inc", "./..."],
            &["-linkshared", "./..."],
            &["value_test.go", "value.go"],
        ] {
            assert!(TestList::of(Path::new("/m"), &test_build_line(&args(line))).is_none(), "{line:?}");
        }
        for line in [
            &["-asmflags=-trimpath", "./...", "-args", "-asmflags=-I=x"][..],
            &["-gcflags=all=-N -l", "./..."],
        ] {
            assert!(TestList::of(Path::new("/m"), &test_build_line(&args(line))).is_some(), "{line:?}");
        }
        let goflags = flags::split_goflags("-mod=mod '-toolexec=strace -f'").unwrap();
        assert!(compiles_unscanned_files(&test_build_line(&goflags).flags));
        assert!(!compiles_unscanned_files(&test_build_line(&args(&["-modfile=alt.mod", "-count=1"])).flags));
    }

    /// Flags that make a tool read files went unchecked in GOFLAGS (and -ldflags everywhere):
    /// with `GOFLAGS=-gcflags=all=-pgoprofile=FILE`, an edited profile was served stale.
    #[test]
    fn flags_naming_files_in_goflags_or_on_the_command_line_give_no_shared_cache() {
        let flags_of = |goflags: &str, line: &[&str]| test_flags(goflags, &test_build_line(&args(line)));
        for (goflags, line) in [
            ("-gcflags=all=-pgoprofile=/tmp/p.pgo", &["./..."][..]),
            ("", &["-gcflags=all=-pgoprofile=/tmp/p.pgo", "./..."]),
            ("-mod=mod '-ldflags=-extldflags=@/tmp/args'", &["./..."]),
            ("", &["-ldflags", "-extld=/tmp/cc", "./..."]),
            ("-ldflags=-L=/tmp", &["-count=1", "./..."]),
            ("-asmflags=-I=/inc", &["./..."]),
            ("-toolexec=strace", &["./..."]),
            ("-count=1 '-x", &["./..."]),
        ] {
            assert!(flags_of(goflags, line).is_none(), "{goflags} {line:?}");
        }
        let flags =
            flags_of("-modfile=alt.mod -a -count=1 -gcflags=all=-N", &["-ldflags=-s -w", "-n", "./..."]);
        let flags = flags.expect("flags that read nothing");
        assert_eq!((flags.gcflags, flags.ldflags), (args(&["all=-N"]), args(&["-s -w"])));
    }

    /// One broken package in the module leaves the others' tests their shared cache.
    #[tokio::test]
    async fn a_broken_package_does_not_turn_the_tests_cache_off() {
        let module = tempfile::tempdir().unwrap();
        crate::testing::write(
            module.path(),
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                ("good/good.go", "package good\n\nfunc Two() int { return 2 }\n"),
                ("bad/bad.go", "package bad\n\nimport _ \"example.com/nowhere\"\n"),
            ],
        );
        let exec = crate::exec::Processes::default();
        let args = ["./good".to_owned()];
        assert_eq!(for_test(&exec, module.path(), &args, None).await, GoCache::Shared);
    }

    /// go's action IDs hash a cgo package's own files, not a header beside it: objects built
    /// from a module cache edited since go extracted it would go under the honest IDs.
    #[tokio::test]
    async fn an_edited_module_cache_turns_the_shared_cache_off() {
        let root = tempfile::tempdir().unwrap();
        let (cache, app) = crate::testing::module_cache_with_cgo(root.path());
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        let settings = [("GOMODCACHE", cache.to_str().unwrap()), ("CGO_ENABLED", "1"), ("GOPROXY", "off")];
        env.extend(settings.map(|(name, value)| (name.to_owned(), value.to_owned())));
        env.extend(
            [("GOENV", "off"), ("GOFLAGS", ""), ("GOWORK", "off")].map(|(n, v)| (n.to_owned(), v.to_owned())),
        );
        let exec = crate::exec::Processes { clean_env: Some(env), ..Default::default() };
        let args = ["./...".to_owned()];
        assert_ne!(for_test(&exec, &app, &args, None).await, GoCache::Off);
        let header = cache.join("example.com/dep@v1.0.0/inc/value.h");
        std::fs::set_permissions(&header, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::write(&header, "#define VALUE 666\n").unwrap();
        assert_eq!(for_test(&exec, &app, &args, None).await, GoCache::Off);
    }

    #[test]
    fn off_removes_the_cache_program_and_salted_passes_the_salt() {
        let bridge =
            || Some((vec![("GOCACHEPROG".to_owned(), "cachectl gocacheprog".to_owned())], Vec::new()));
        let mut env = vec![("GOCACHEPROG".to_owned(), "inherited".to_owned())];
        let remove = GoCache::Off.apply(bridge(), &mut env);
        assert!(env.is_empty() && remove.contains(&"GOCACHEPROG".to_owned()), "{env:?} {remove:?}");
        let mut env = Vec::new();
        GoCache::Salted([0xab; 32]).apply(None, &mut env);
        assert_eq!(env, [(SALT_VAR.to_owned(), "ab".repeat(32))]);
        let mut env = vec![(SALT_VAR.to_owned(), "cd".repeat(32))];
        let remove = GoCache::Shared.apply(bridge(), &mut env);
        assert_eq!(env, [("GOCACHEPROG".to_owned(), "cachectl gocacheprog".to_owned())]);
        assert!(remove.contains(&SALT_VAR.to_owned()));
    }

    #[test]
    fn the_salt_is_the_files_names_and_contents() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(GoCache::of_unseen([]), GoCache::Shared);
        let one = GoCache::of_unseen([("file.inc/a.h", &a), ("file.inc/b.h", &b)]);
        assert_eq!(one, GoCache::of_unseen([("file.inc/b.h", &b), ("file.inc/a.h", &a)]), "order");
        assert_ne!(one, GoCache::of_unseen([("file.inc/a.h", &b), ("file.inc/b.h", &a)]), "contents");
        assert_ne!(one, GoCache::of_unseen([("file.inc/a.h", &a), ("file.inc/c.h", &b)]), "names");
    }
}
