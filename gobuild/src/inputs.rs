//! Build inputs from the go command itself: `go env -json` for the toolchain and target, and one
//! `go list -deps -json` for every package and file in the build. They become the manifest
//! (docs/build-keys.md lists every component).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component as PathPart, Path, PathBuf};

use serde::Deserialize;

use crate::exec::{Exec, Invocation};
use crate::filememo::FileMemo;
use crate::flags::BuildFlags;
use crate::gocache::GoCache;
use crate::includes;
use crate::manifest::Manifest;
use crate::modverify::NativeModules;
use crate::own::{self, OwnDirs};

/// `go env -json`.
pub type GoEnv = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Module {
    pub path: String,
    pub version: String,
    pub main: bool,
    pub dir: String,
    pub sum: String,
    /// The go.mod go loaded the module with: none for vendored modules.
    pub go_mod: String,
    /// The `go` line of its go.mod (or of `vendor/modules.txt`): the language version go
    /// compiles the module's packages with.
    pub go_version: String,
    pub replace: Option<Box<Module>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Package {
    pub import_path: String,
    pub name: String,
    pub dir: String,
    pub standard: bool,
    pub dep_only: bool,
    pub module: Option<Module>,
    pub go_files: Vec<String>,
    pub cgo_files: Vec<String>,
    pub c_files: Vec<String>,
    #[serde(rename = "CXXFiles")]
    pub cxx_files: Vec<String>,
    pub m_files: Vec<String>,
    pub h_files: Vec<String>,
    pub f_files: Vec<String>,
    pub s_files: Vec<String>,
    pub swig_files: Vec<String>,
    #[serde(rename = "SwigCXXFiles")]
    pub swig_cxx_files: Vec<String>,
    pub syso_files: Vec<String>,
    pub embed_files: Vec<String>,
    pub cgo_pkg_config: Vec<String>,
}

/// The fields `go list` is asked for: only these are computed and printed.
const LIST_FIELDS: &str = "ImportPath,Name,Dir,Standard,DepOnly,Module,GoFiles,CgoFiles,CFiles,CXXFiles,MFiles,\
HFiles,FFiles,SFiles,SwigFiles,SwigCXXFiles,SysoFiles,EmbedFiles,CgoPkgConfig";

/// Environment variables that enter the key (besides what `go env` reports). Nothing else of
/// the environment does: no proxies, no tokens, no GOAUTH.
const ARCH_LEVELS: &[(&str, &str)] = &[
    ("amd64", "GOAMD64"),
    ("arm", "GOARM"),
    ("arm64", "GOARM64"),
    ("386", "GO386"),
    ("mips", "GOMIPS"),
    ("mipsle", "GOMIPS"),
    ("mips64", "GOMIPS64"),
    ("mips64le", "GOMIPS64"),
    ("ppc64", "GOPPC64"),
    ("ppc64le", "GOPPC64"),
    ("riscv64", "GORISCV64"),
    ("wasm", "GOWASM"),
];
const CGO_FLAG_VARS: &[&str] = &["CGO_CFLAGS", "CGO_CPPFLAGS", "CGO_CXXFLAGS", "CGO_FFLAGS", "CGO_LDFLAGS"];
/// The C toolchain's own environment: where gcc and the linker look for headers, libraries and
/// their programs, and where pkg-config looks for packages.
const COMPILER_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "LIBRARY_PATH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "PKG_CONFIG_PATH",
    "PKG_CONFIG_LIBDIR",
    "PKG_CONFIG_SYSROOT_DIR",
    "LD_RUN_PATH",
    "LD_LIBRARY_PATH",
    "LDEMULATION",
    "GNUTARGET",
];

/// Whether go may link with the C compiler without a cgo package: asked for with
/// `-linkmode=external` or GO_EXTLINK_ENABLED=1, or by build modes and instrumentation that
/// need it on some targets.
fn links_externally(flags: &BuildFlags, call: &GoCall<'_>) -> bool {
    call.build_var("GO_EXTLINK_ENABLED").is_some_and(|value| value == "1")
        || flags.ldflags.iter().any(|value| value.contains("linkmode"))
        || flags.race
        || flags.msan
        || flags.asan
        || !matches!(flags.buildmode.as_str(), "" | "default" | "exe")
}

/// Whether a per-package flag (`-gcflags=./...=-N -l`) or -coverpkg names packages by a
/// pattern relative to the directory go runs in.
fn has_relative_pattern(flags: &BuildFlags) -> bool {
    let is_local = |pattern: &str| {
        matches!(pattern, "." | "..") || pattern.starts_with("./") || pattern.starts_with("../")
    };
    let per_package = flags
        .gcflags
        .iter()
        .chain(&flags.ldflags)
        .chain(&flags.asmflags)
        .filter_map(|value| crate::flags::per_package_pattern(value));
    per_package.chain(flags.coverpkg.split(',')).any(|pattern| is_local(pattern.trim()))
}

/// The ones a binary's build info records, with cgo on and without -trimpath
/// (cmd/go/internal/load's setBuildInfo), whether or not a package uses cgo.
const RECORDED_CGO_FLAG_VARS: &[&str] = &["CGO_CFLAGS", "CGO_CPPFLAGS", "CGO_CXXFLAGS", "CGO_LDFLAGS"];

/// A package named on the command line.
#[derive(Debug, Clone)]
pub struct Root {
    pub import_path: String,
    pub is_main: bool,
    pub dir: PathBuf,
}

/// Everything derived from the inputs.
#[derive(Debug, Clone)]
pub struct Derived {
    pub manifest: Manifest,
    pub module: String,
    pub roots: Vec<Root>,
    pub goos: String,
    pub goarch: String,
    /// Files hashed by content.
    pub files: usize,
    /// Modules identified by version and go.sum hash.
    pub modules: usize,
    /// How the build may use go's cache, by whether a package reads files (through includes
    /// and `#cgo` flags) that go's own action ID for it does not hash.
    pub go_cache: GoCache,
}

/// Why no key could be derived (the wrapper then builds without the whole-build cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoKey(pub String);

impl From<String> for NoKey {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

/// What the go commands run with.
pub struct GoCall<'a> {
    pub exec: &'a dyn Exec,
    pub go: &'a Path,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
}

impl GoCall<'_> {
    fn invocation(&self, args: Vec<String>) -> Invocation {
        let mut env = self.env.to_vec();
        env.push(crate::gocache::without_module_index(self.build_var("GODEBUG")));
        Invocation {
            program: self.go.to_owned(),
            args,
            dir: self.dir.to_owned(),
            env,
            // The inputs are read with the plain go command: no cache program is needed for it.
            env_remove: vec!["GOCACHEPROG".to_owned()],
        }
    }

    /// A variable as the build's processes see it: the call's own, else the one they inherit.
    fn build_var(&self, name: &str) -> Option<String> {
        let own = self.env.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        own.or_else(|| self.exec.inherited_var(name))
    }

    /// `program` (not the go command) as the build's processes run: its directory and
    /// environment.
    pub(crate) fn invocation_of(&self, program: impl Into<PathBuf>, args: Vec<String>) -> Invocation {
        Invocation {
            program: program.into(),
            args,
            dir: self.dir.to_owned(),
            env: self.env.to_vec(),
            env_remove: Vec::new(),
        }
    }

    async fn run(&self, args: Vec<String>, what: &str) -> Result<Vec<u8>, NoKey> {
        let captured = self
            .exec
            .output(&self.invocation(args))
            .await
            .map_err(|err| NoKey(format!("cannot run {}: {err}", self.go.display())))?;
        if !captured.success() {
            return Err(NoKey(format!("{what} failed: {}", captured.first_error_line())));
        }
        Ok(captured.stdout)
    }

    /// `go env -json` and `go list -deps -json`, run at the same time.
    pub async fn read(
        &self,
        flags: &BuildFlags,
        packages: &[String],
    ) -> Result<(GoEnv, Vec<Package>), NoKey> {
        let mut list = vec!["list".to_owned(), "-deps".to_owned(), format!("-json={LIST_FIELDS}")];
        list.extend(flags.list_flags.iter().cloned());
        list.push("--".to_owned());
        if packages.is_empty() {
            list.push(".".to_owned());
        } else {
            list.extend(packages.iter().cloned());
        }
        let (env, listed) = tokio::join!(
            self.run(vec!["env".to_owned(), "-json".to_owned()], "go env -json"),
            self.run(list, "go list -deps")
        );
        let env: GoEnv =
            serde_json::from_slice(&env?).map_err(|err| NoKey(format!("cannot read go env -json: {err}")))?;
        let listed = listed?;
        let packages = serde_json::Deserializer::from_slice(&listed)
            .into_iter::<Package>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| NoKey(format!("cannot read go list -json: {err}")))?;
        Ok((env, packages))
    }
}

pub(crate) fn var<'a>(env: &'a GoEnv, name: &str) -> &'a str {
    env.get(name).map_or("", String::as_str)
}

/// `path` relative to `base`, with `/` separators (and `..` when it lies outside).
pub fn relative(path: &Path, base: &Path) -> String {
    let path_parts: Vec<PathPart<'_>> = path.components().collect();
    let base_parts: Vec<PathPart<'_>> = base.components().collect();
    let common = path_parts.iter().zip(&base_parts).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = Vec::new();
    for _ in common..base_parts.len() {
        parts.push("..".to_owned());
    }
    for part in &path_parts[common..] {
        parts.push(part.as_os_str().to_string_lossy().into_owned());
    }
    parts.join("/")
}

/// The module version `package` comes from when go extracted it into the module cache, checked
/// against go.sum then (and not since): the replacement where there is one.
pub(crate) fn extracted_module<'a>(package: &'a Package, gomodcache: &str) -> Option<&'a Module> {
    let module = package.module.as_ref()?;
    let effective = module.replace.as_deref().unwrap_or(module);
    let in_cache = !gomodcache.is_empty() && Path::new(&package.dir).starts_with(gomodcache);
    (in_cache && !effective.version.is_empty() && !effective.sum.is_empty()).then_some(effective)
}

/// Finds a VCS root from `dir` upwards: its directory and kind.
pub fn vcs_root(dir: &Path) -> Option<(PathBuf, &'static str)> {
    const KINDS: &[(&str, &str)] =
        &[(".git", "git"), (".hg", "hg"), (".svn", "svn"), (".fossil", "fossil"), (".bzr", "bzr")];
    let mut current = Some(dir);
    while let Some(path) = current {
        for (marker, kind) in KINDS {
            if path.join(marker).exists() {
                return Some((path.to_owned(), kind));
            }
        }
        current = path.parent();
    }
    None
}

/// The repository the go command stamps a binary from, found as go finds it from `dir`
/// upwards (`vcs.FromDir`): git, Mercurial, Bazaar and Subversion only by a directory of
/// their metadata, so a submodule's or worktree's `.git` file is passed over for the
/// repository above it.
fn go_vcs_root(dir: &Path) -> Option<(PathBuf, &'static str)> {
    const KINDS: &[(&str, bool, &str)] = &[
        (".hg", true, "hg"),
        (".git", true, "git"),
        (".bzr", true, "bzr"),
        (".svn", true, "svn"),
        (".fslckout", false, "fossil"),
        ("_FOSSIL_", false, "fossil"),
    ];
    let mut current = Some(dir);
    while let Some(path) = current {
        for (marker, is_dir, kind) in KINDS {
            if std::fs::metadata(path.join(marker)).is_ok_and(|meta| meta.is_dir() == *is_dir) {
                return Some((path.to_owned(), kind));
            }
        }
        current = path.parent();
    }
    None
}

/// A module's Go version as keys and explanations show it.
fn go_version_text(version: &str) -> String {
    if version.is_empty() { "no go version".to_owned() } else { format!("go {version}") }
}

/// A file to hash by content: component name and path.
type FileInput = (String, PathBuf);

/// Derives the manifest of a build from what go reported.
/// The key inputs of a build of `packages`; their includes may name files in `tree` (see
/// [`includes::inputs`]) besides their modules.
pub async fn derive(
    call: &GoCall<'_>,
    flags: &BuildFlags,
    env: &GoEnv,
    packages: &[Package],
    tree: Option<&Path>,
) -> Result<Derived, NoKey> {
    let tree = tree.map(Path::to_owned);
    let mut manifest = Manifest::default();
    let goos = var(env, "GOOS").to_owned();
    let goarch = var(env, "GOARCH").to_owned();
    let gomod = var(env, "GOMOD");
    if gomod.is_empty() || gomod == "/dev/null" || gomod == "NUL" {
        return Err(NoKey("not in a Go module (go env GOMOD is empty)".to_owned()));
    }
    refuse_lossy_paths(env, packages)?;
    let gowork = var(env, "GOWORK");
    let workspace = !gowork.is_empty() && gowork != "off";
    let base = key_base(env);
    let gomodcache = var(env, "GOMODCACHE");

    manifest.shown("go.version", var(env, "GOVERSION"));
    manifest.shown("env.GOOS", &goos);
    manifest.shown("env.GOARCH", &goarch);
    if let Some((_, level)) = ARCH_LEVELS.iter().find(|(arch, _)| *arch == goarch) {
        manifest.shown("env.arch_level", &format!("{level}={}", var(env, level)));
    }
    manifest.shown("env.CGO_ENABLED", var(env, "CGO_ENABLED"));
    manifest.shown("env.GOEXPERIMENT", var(env, "GOEXPERIMENT"));
    manifest.shown("env.GOFIPS140", var(env, "GOFIPS140"));
    manifest.hidden("env.GOFLAGS", var(env, "GOFLAGS"));
    // The same set-or-not reading for these: go passes them on to the tools it runs, and puts
    // the compiler's debug settings (GOCOMPILEDEBUG=loopvarhash=n changes loop semantics) in
    // its own action IDs.
    for name in
        ["GO_EXTLINK_ENABLED", "GODEBUG", "GOCOMPILEDEBUG", "GOCLOBBERDEADHASH", "GOSSAFUNC", "GOSSADIR"]
    {
        if let Some(value) = call.build_var(name) {
            manifest.shown(format!("env.{name}"), &value);
        }
    }

    manifest.shown("flag.tags", &flags.tags.join(","));
    manifest.shown("flag.trimpath", &flags.trimpath.to_string());
    // One value as it is (the keys of earlier versions); several joined by NULs, in order.
    manifest.hidden("flag.ldflags", &flags.ldflags.join("\0"));
    manifest.hidden("flag.gcflags", &flags.gcflags.join("\0"));
    manifest.hidden("flag.asmflags", &flags.asmflags.join("\0"));
    manifest.shown("flag.buildmode", &flags.buildmode);
    manifest.shown("flag.race", &flags.race.to_string());
    manifest.shown("flag.msan", &flags.msan.to_string());
    manifest.shown("flag.asan", &flags.asan.to_string());
    manifest.shown("flag.cover", &flags.cover.to_string());
    manifest.shown("flag.covermode", &flags.covermode);
    manifest.shown("flag.coverpkg", &flags.coverpkg);
    manifest.shown("flag.buildvcs", &flags.buildvcs);
    manifest.shown("flag.mod", &flags.modmode);
    manifest.shown("flag.pgo", &flags.pgo);
    if has_relative_pattern(flags) {
        // go matches such a pattern in the directory it runs in: the same text run elsewhere
        // in the module names other packages.
        manifest.shown("path.go_dir", &relative(call.dir, &base));
    }

    if !flags.trimpath {
        // Without -trimpath, the binary records where its sources and the toolchain were.
        manifest.shown("path.module_dir", &base.display().to_string());
        manifest.shown("path.goroot", var(env, "GOROOT"));
        manifest.shown("path.gomodcache", gomodcache);
    }

    let roots: Vec<Root> = packages
        .iter()
        .filter(|p| !p.dep_only)
        .map(|p| Root {
            import_path: p.import_path.clone(),
            is_main: p.name == "main",
            dir: PathBuf::from(&p.dir),
        })
        .collect();
    if roots.is_empty() {
        return Err(NoKey("go list named no packages".to_owned()));
    }
    let mut root_paths: Vec<&str> = roots.iter().map(|r| r.import_path.as_str()).collect();
    root_paths.sort_unstable();
    manifest.shown("pkg.roots", &root_paths.join(" "));
    let module = packages
        .iter()
        .filter(|p| !p.dep_only)
        .find_map(|p| p.module.as_ref().filter(|m| m.main).map(|m| m.path.clone()))
        .unwrap_or_default();

    let mut files: Vec<FileInput> = Vec::new();
    // Module path → (display, value) of its `dep.` component.
    let mut deps: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut from_module_cache = BTreeSet::new();
    let mut local_go_mods = BTreeSet::new();
    let mut seen_dirs = BTreeSet::new();
    let mut std_files: Vec<FileInput> = Vec::new();
    let std_root = Path::new(var(env, "GOROOT")).join("src");
    // The assembler's own headers (textflag.h, funcdata.h), which every package's assembly
    // includes through go's -I and go's action IDs do not hash.
    let asm_headers = Path::new(var(env, "GOROOT")).join("pkg").join("include");
    if let Ok(entries) = std::fs::read_dir(&asm_headers) {
        for path in entries.flatten().map(|entry| entry.path()).filter(|path| path.is_file()) {
            std_files.push((format!("{STD_PREFIX}{}", relative(&path, &std_root)), path));
        }
    }
    // First: the largest files, hashed while the rest are.
    std_files.splice(0..0, toolchain_programs(call, env));
    let include_scans = include_scans(packages, gomodcache);
    let native_modules = NativeModules::of(packages, gomodcache);
    if !include_scans.is_empty() {
        refuse_reading_flags(env)?;
    }
    let mut cgo = false;
    let (mut cxx, mut fortran) = (false, false);
    for package in packages {
        fortran |= !package.f_files.is_empty();
        cgo |= uses_cgo(package);
        cxx |= !package.cxx_files.is_empty() || !package.swig_cxx_files.is_empty();
        if package.standard {
            // Not the go version alone: a toolchain patched where it is installed (a distro's
            // security fixes) says the same version. go's own action IDs hash these too.
            if seen_dirs.insert(package.dir.clone()) {
                let dir = Path::new(&package.dir);
                let names = package_files(package).map(|name| dir.join(name));
                std_files
                    .extend(names.map(|path| (format!("{STD_PREFIX}{}", relative(&path, &std_root)), path)));
            }
            continue;
        }
        let mut in_cache = None;
        if let Some(module) = &package.module {
            // go compiles every package with its module's Go version (-lang, and its action
            // IDs say `go <version>`), so each module's is part of the key.
            let go = go_version_text(&module.go_version);
            if extracted_module(package, gomodcache).is_some() {
                let value = match &module.replace {
                    Some(to) => (
                        format!("=> {} {}", to.path, to.version),
                        format!("=> {} {} {} {go}", to.path, to.version, to.sum),
                    ),
                    None => (module.version.clone(), format!("{} {} {go}", module.version, module.sum)),
                };
                deps.insert(module.path.clone(), value);
                from_module_cache.insert(module.path.clone());
                in_cache = Some(module.path.as_str());
            } else {
                // A module outside the module cache (a main module, a local replace directory,
                // a vendored module): its files are hashed below, its go.mod as well (its go
                // and require lines change the build), and its Go version is a component.
                let origin = match &module.replace {
                    _ if module.main => "main module".to_owned(),
                    Some(to) if to.version.is_empty() => to.path.clone(),
                    Some(to) => format!("=> {} {}", to.path, to.version),
                    None => module.version.clone(),
                };
                let display = format!("{origin} ({go})");
                deps.insert(module.path.clone(), (display.clone(), display));
                if !module.go_mod.is_empty() && module.go_mod != gomod {
                    local_go_mods.insert(module.go_mod.clone());
                }
            }
        }
        if !seen_dirs.insert(package.dir.clone()) {
            continue;
        }
        let dir = Path::new(&package.dir);
        for name in package_files(package) {
            let path = dir.join(name);
            let name = match in_cache {
                // Hashed too, and folded into the module's component: the go command checks a
                // module's files against go.sum when it extracts them, never after, so the
                // version and checksum say nothing of a module cache edited since (a runner's
                // cache a job may write); go's own action IDs hash these files as well.
                Some(module) => {
                    format!("{MODULE_FILE_PREFIX}{module}\0{}", relative(&path, Path::new(gomodcache)))
                }
                None => format!("file.{}", relative(&path, &base)),
            };
            files.push((name, path));
        }
    }
    let modules = from_module_cache.len();

    files.push(("mod.go.mod".to_owned(), PathBuf::from(gomod)));
    for go_mod in local_go_mods {
        let path = PathBuf::from(go_mod);
        files.push((format!("file.{}", relative(&path, &base)), path));
    }
    // With -mod=vendor (the default when it exists) go reads the vendored modules' Go
    // versions and requirements from it.
    let modules_txt = base.join("vendor").join("modules.txt");
    if modules_txt.is_file() {
        files.push(("file.vendor/modules.txt".to_owned(), modules_txt));
    }
    let gosum = Path::new(gomod).with_file_name("go.sum");
    if gosum.exists() {
        files.push(("mod.go.sum".to_owned(), gosum));
    }
    if workspace {
        files.push(("mod.go.work".to_owned(), PathBuf::from(gowork)));
        let worksum = Path::new(gowork).with_file_name("go.work.sum");
        if worksum.exists() {
            files.push(("mod.go.work.sum".to_owned(), worksum));
        }
    }
    match flags.pgo.as_str() {
        "off" | "" => {}
        "auto" => {
            for root in roots.iter().filter(|r| r.is_main) {
                let profile = root.dir.join("default.pgo");
                if profile.is_file() {
                    files.push((format!("pgo.{}", relative(&profile, &base)), profile));
                }
            }
        }
        path => {
            let profile = call.dir.join(path);
            if !flags.trimpath {
                // go records the profile by its absolute path then: the same text and
                // contents from another directory (`-C`) is another binary.
                manifest.shown("path.pgo", &includes::clean(&profile).display().to_string());
            }
            files.push(("pgo.profile".to_owned(), profile));
        }
    }

    let cgo_on = var(env, "CGO_ENABLED") == "1";
    // The CGO_* flags as set: with cgo in use, or an external link (which builds runtime/cgo
    // and links with the C compiler), they (or go's defaults when unset) go to the C compiler
    // and linker; with cgo on and without -trimpath a binary records four of them.
    let cgo_flags = if cgo_on && (cgo || links_externally(flags, call)) {
        CGO_FLAG_VARS
    } else if cgo_on && !flags.trimpath && roots.iter().any(|r| r.is_main) {
        RECORDED_CGO_FLAG_VARS
    } else {
        &[]
    };
    if !cgo_flags.is_empty() {
        for (name, value) in cgo_flags.iter().zip(flags_as_set(call, env, cgo_flags).await?) {
            manifest.insert(format!("env.{name}"), *blake3::hash(&value).as_bytes(), String::new());
        }
    }
    // First: it refuses a toolchain in the build's own tree before anything of it runs.
    let own_dirs: Vec<&Path> = std::iter::once(base.as_path()).chain(tree.as_deref()).collect();
    let unseen_settings = unseen_settings(call, env, flags, packages, &own_dirs, &mut manifest).await?;
    if cgo && cgo_on {
        if cxx {
            compiler_identity(call, &mut manifest, "CXX", var(env, "CXX")).await?;
        }
        if fortran {
            // go env does not print FC; go reads it as set, else gfortran.
            let set = flags_as_set(call, env, &["FC"]).await?.pop().unwrap_or_default();
            let fc = String::from_utf8(set).map_err(|_| NoKey("FC is not UTF-8".to_owned()))?;
            compiler_identity(call, &mut manifest, "FC", if fc.is_empty() { "gfortran" } else { &fc })
                .await?;
        }
        manifest.shown("env.PKG_CONFIG", var(env, "PKG_CONFIG"));
    }
    // With cgo on, CC compiles the cgo packages and links every binary go links externally
    // (cgo in use, or asked for): a pure Go program linked by another compiler differs.
    if cgo_on && (cgo || links_externally(flags, call)) {
        compiler_identity(call, &mut manifest, "CC", var(env, "CC")).await?;
    }

    if flags.buildvcs != "false" && roots.iter().any(|r| r.is_main) {
        let mains: Vec<(&Path, &Path)> = packages
            .iter()
            .filter(|p| !p.dep_only && p.name == "main")
            .map(|p| {
                let module = p.module.as_ref().map_or(p.dir.as_str(), |module| module.dir.as_str());
                (Path::new(&p.dir), Path::new(module))
            })
            .collect();
        stamp(call, &mut manifest, &mains, Path::new(gomod)).await?;
    }

    let module_cache = (!gomodcache.is_empty()).then(|| PathBuf::from(gomodcache));
    let (count, unseen_by_go, hashed) = cached_client::task::spawn_blocking("hash-inputs", move || {
        std::thread::scope(|scope| {
            // Whole modules (tens of MiB for a cgo module bundling its libraries), beside the rest.
            let checked = scope.spawn(|| native_modules.refuse_edited());
            let unseen_by_go =
                add_included(&mut files, &include_scans, tree.as_deref(), module_cache.as_deref(), &base)?;
            let count = files.len();
            // The standard library's first: the toolchain's programs are the largest files.
            let mut all = std_files;
            all.append(&mut files);
            let hashed = hash_files(all)?;
            checked.join().map_err(|_| NoKey("checking the module cache panicked".to_owned()))??;
            Ok::<_, NoKey>((count, unseen_by_go, hashed))
        })
    })
    .await
    .map_err(|err| NoKey(format!("hashing failed: {err}")))??;
    let (std_hashed, hashed): (Vec<_>, Vec<_>) =
        hashed.into_iter().partition(|(name, _)| name.starts_with(STD_PREFIX));
    manifest.insert("go.std".to_owned(), std_digest(std_hashed), String::new());
    let (module_hashed, hashed): (Vec<_>, Vec<_>) =
        hashed.into_iter().partition(|(name, _)| name.starts_with(MODULE_FILE_PREFIX));
    insert_deps(&mut manifest, deps, module_hashed);
    let unseen_files = hashed.iter().filter(|(name, _)| unseen_by_go.contains(name));
    let go_cache =
        GoCache::of_unseen(unseen_files.chain(&unseen_settings).map(|(name, hash)| (name.as_str(), hash)))
            .for_go(env);
    for (name, hash) in hashed {
        manifest.insert(name, hash, String::new());
    }
    Ok(Derived { manifest, module, roots, goos, goarch, files: count, modules, go_cache })
}

/// Whether go runs cgo (and so the C compiler) for `package`.
fn uses_cgo(package: &Package) -> bool {
    !package.cgo_files.is_empty() || !package.swig_files.is_empty() || !package.swig_cxx_files.is_empty()
}

/// The settings the C toolchain reads that go's action IDs do not hash: SOURCE_DATE_EPOCH
/// (the compiler stamps __DATE__ and __TIME__ from it), the CPATH family and what `#cgo
/// pkg-config:` lines print. Each becomes a component of `manifest`; the names and hashes
/// returned salt go's cache, with a whole-build key or without one (see gocache.rs): a
/// shared go cache would otherwise serve objects compiled under other values. `own_dirs`
/// are the directories of the build's own sources. An error: what the toolchain is given
/// cannot be known, so neither a key nor a salt covers it.
pub(crate) async fn unseen_settings(
    call: &GoCall<'_>,
    env: &GoEnv,
    flags: &BuildFlags,
    packages: &[Package],
    own_dirs: &[&Path],
    manifest: &mut Manifest,
) -> Result<Vec<(String, [u8; 32])>, NoKey> {
    let cgo_on = var(env, "CGO_ENABLED") == "1";
    let cgo = packages.iter().any(uses_cgo);
    let own = OwnDirs::of(env, packages, own_dirs);
    refuse_own_toolchain(call, env, flags, packages, &own).await?;
    let mut unseen = Vec::new();
    let mut shown = |name: String, value: &str| {
        manifest.shown(name.clone(), value);
        unseen.push((name, *blake3::hash(value.as_bytes()).as_bytes()));
    };
    if cgo
        && cgo_on
        && let Some(epoch) = call.build_var("SOURCE_DATE_EPOCH")
    {
        shown("env.SOURCE_DATE_EPOCH".to_owned(), &epoch);
    }
    if cgo_on && (cgo || links_externally(flags, call)) {
        for name in COMPILER_ENV {
            if let Some(value) = call.build_var(name) {
                shown(format!("env.{name}"), &value);
            }
        }
        let (name, hash, display) = driver_programs(call, var(env, "CC")).await?;
        manifest.insert(name.clone(), hash, display);
        unseen.push((name, hash));
    }
    if cgo && cgo_on {
        let own_dirs = own.dirs();
        for package in packages.iter().filter(|package| !package.standard) {
            if let Some((name, hash, display)) =
                crate::pkgconfig::component(call, env, package, &own_dirs).await?
            {
                manifest.insert(name.clone(), hash, display);
                unseen.push((name, hash));
            }
        }
    }
    Ok(unseen)
}

/// The `cc.programs` component: the assembler, linker and collect2 the driver `cc` runs for
/// every object and link, where it finds each (`-print-prog-name`, then the first match on
/// PATH), by path and contents. gcc looks in its own directories first, then on PATH, where a
/// runner's `$GOPATH/bin` or `~/.local/bin` (which other builds on the runner may write) can
/// come first; go's action IDs know the toolchain by the compiler's version alone.
async fn driver_programs(call: &GoCall<'_>, cc: &str) -> Result<(String, [u8; 32], String), NoKey> {
    let mut words = cc.split_whitespace();
    let program = words.next().ok_or_else(|| NoKey("cgo is on but CC is empty".to_owned()))?;
    let args: Vec<String> = words.map(str::to_owned).collect();
    let find = |tool: &'static str| driver_program(call, program, &args, tool);
    let (assembler, linker, collect2) = tokio::join!(find("as"), find("ld"), find("collect2"));
    let found = [assembler, linker, collect2];
    let mut hasher = blake3::Hasher::new();
    let mut shown = Vec::new();
    let mut buffer = vec![0; HASH_BUFFER];
    for (tool, path) in ["as", "ld", "collect2"].into_iter().zip(found) {
        // One the driver cannot find makes the build fail, not differ.
        let Some(path) = path else { continue };
        let contents = PROGRAMS.digest(&path, |path| hash_file(path, &mut buffer)).map_err(|err| {
            NoKey(format!("cannot read {} ({tool} of {cc}) to key it: {err}", path.display()))
        })?;
        hasher.update(tool.as_bytes()).update(&[0]).update(path.as_os_str().as_encoded_bytes()).update(&[0]);
        hasher.update(&contents);
        shown.push(path.display().to_string());
    }
    Ok(("cc.programs".to_owned(), *hasher.finalize().as_bytes(), shown.join(" ")))
}

/// Where the driver `program` (with `args`, CC's other words) finds `tool`.
async fn driver_program(call: &GoCall<'_>, program: &str, args: &[String], tool: &str) -> Option<PathBuf> {
    let mut args = args.to_vec();
    args.push(format!("-print-prog-name={tool}"));
    let captured = call.exec.output(&call.invocation_of(program, args)).await.ok()?;
    let name = String::from_utf8_lossy(&captured.stdout).trim().to_owned();
    (captured.success() && !name.is_empty()).then(|| resolve(&name, call)).flatten()
}

/// Search paths of the C toolchain: the headers, libraries and programs found there are the
/// build's inputs, which their text does not name.
const TOOLCHAIN_SEARCH_PATHS: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "LIBRARY_PATH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
];

/// Refuses a C toolchain, or C compiler and linker settings from the environment, that reach
/// into the build's `own` directories (see own.rs): what is there changes without changing
/// the text the build key and go's action IDs hold.
async fn refuse_own_toolchain(
    call: &GoCall<'_>,
    env: &GoEnv,
    flags: &BuildFlags,
    packages: &[Package],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    let cgo = packages.iter().any(uses_cgo);
    if var(env, "CGO_ENABLED") != "1" || !(cgo || links_externally(flags, call)) {
        return Ok(());
    }
    // The C compiler runs in each cgo package's directory; go itself where it was started.
    let cgo_dirs = packages.iter().filter(|p| !p.standard && uses_cgo(p)).map(|p| Path::new(&p.dir));
    let dirs: Vec<&Path> = std::iter::once(call.dir).chain(cgo_dirs).collect();
    let search_path = call.build_var("PATH");
    let command = |name: &str, command: &str| {
        own::refuse_own_command(name, command, search_path.as_deref(), &dirs, own)
    };
    command("CC", var(env, "CC"))?;
    if cgo {
        if packages.iter().any(|p| !p.cxx_files.is_empty() || !p.swig_cxx_files.is_empty()) {
            command("CXX", var(env, "CXX"))?;
        }
        if packages.iter().any(|p| !p.f_files.is_empty()) {
            let set = flags_as_set(call, env, &["FC"]).await?.pop().unwrap_or_default();
            let fc = String::from_utf8_lossy(&set);
            command("FC", if fc.is_empty() { "gfortran" } else { &fc })?;
        }
        if packages.iter().any(|p| !p.cgo_pkg_config.is_empty()) {
            let pkg_config = var(env, "PKG_CONFIG");
            command("PKG_CONFIG", if pkg_config.is_empty() { "pkg-config" } else { pkg_config })?;
        }
    }
    for name in CGO_FLAG_VARS {
        let value = var(env, name);
        let words = proto::quoted::split(value)
            .map(|words| words.into_iter().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_else(|_| value.split_whitespace().map(str::to_owned).collect());
        own::refuse_own_flags(name, &words, &dirs, own)?;
    }
    for name in TOOLCHAIN_SEARCH_PATHS {
        if let Some(list) = call.build_var(name) {
            own::refuse_own_search_path(name, &list, &dirs, own)?;
        }
    }
    // gcc and collect2 run the assembler, linker and compiler proper by name from PATH, and
    // the loader gives every one of them the libraries these name: neither is in CC's identity.
    own::refuse_own_programs_on_path(search_path.as_deref(), &dirs, own)?;
    let library_path = call.build_var("LD_LIBRARY_PATH");
    for name in ["LD_LIBRARY_PATH", "LD_RUN_PATH"] {
        if let Some(list) = call.build_var(name) {
            own::refuse_own_library_path(name, &list, &dirs, own)?;
        }
    }
    for name in ["LD_PRELOAD", "LD_AUDIT"] {
        if let Some(list) = call.build_var(name) {
            own::refuse_own_preload(name, &list, library_path.as_deref(), &dirs, own)?;
        }
    }
    Ok(())
}

/// Where the names of standard library files start while they are hashed.
const STD_PREFIX: &str = "std.";
/// The go command prints a path that is not UTF-8 with U+FFFD in place of the bytes it cannot
/// show, so the key would hash another directory (`w\u{FFFD}`, which a tenant can make)
/// than the one go compiles (`w\xFF`).
fn refuse_lossy_paths(env: &GoEnv, packages: &[Package]) -> Result<(), NoKey> {
    let mut texts: Vec<&String> = env.values().collect();
    for package in packages {
        texts.push(&package.dir);
        texts.extend(package_files(package));
        let replace = package.module.as_ref().and_then(|module| module.replace.as_deref());
        for module in package.module.iter().chain(replace) {
            texts.extend([&module.dir, &module.go_mod]);
        }
    }
    match texts.into_iter().find(|text| text.contains('\u{FFFD}')) {
        Some(path) => Err(NoKey(format!(
            "go printed a path that is not UTF-8 ({path}): the key cannot name the files go reads; \
             rename it"
        ))),
        None => Ok(()),
    }
}

/// Where `program` is found, as a process in `dir` would find it with `path` as its PATH.
fn on_path(program: &Path, dir: &Path, path: Option<&str>) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(dir.join(program));
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Where the names of files from the module cache start while they are hashed:
/// `<prefix><module path>\0<path under GOMODCACHE>`.
const MODULE_FILE_PREFIX: &str = "modfile.";

/// A `dep.<module path>` component per module: its version (or origin) and Go version, and
/// for a module from the module cache the names and contents of its files the build compiles.
fn insert_deps(
    manifest: &mut Manifest,
    deps: BTreeMap<String, (String, String)>,
    module_hashed: Vec<(String, [u8; 32])>,
) {
    let mut files_of: BTreeMap<String, Vec<(String, [u8; 32])>> = BTreeMap::new();
    for (name, hash) in module_hashed {
        let (module, file) = name[MODULE_FILE_PREFIX.len()..].split_once('\0').unwrap_or(("", &name));
        files_of.entry(module.to_owned()).or_default().push((file.to_owned(), hash));
    }
    for (path, (display, value)) in deps {
        let mut hasher = blake3::Hasher::new();
        hasher.update(value.as_bytes());
        if let Some(files) = files_of.remove(&path) {
            hasher.update(&[0]).update(&std_digest(files));
        }
        manifest.insert(format!("dep.{path}"), *hasher.finalize().as_bytes(), display);
    }
}

/// The go command that ran and the tools it runs (`$GOTOOLDIR`: compile, link, asm, cgo,
/// ...), each as named in the key. They make the bytes, and a toolchain replaced or patched
/// where it is installed (a runner's tool cache a job may write) says the same GOVERSION.
fn toolchain_programs(call: &GoCall<'_>, env: &GoEnv) -> Vec<FileInput> {
    let go = Path::new(var(env, "GOROOT")).join("bin").join("go");
    let mut programs = Vec::new();
    // What was run as `go` when it is not that one: a wrapper, or the go that switched to
    // the toolchain GOROOT names.
    if let Some(run) = on_path(call.go, call.dir, call.build_var("PATH").as_deref())
        && std::fs::canonicalize(&run).ok() != std::fs::canonicalize(&go).ok()
    {
        programs.push((format!("{PROGRAM_PREFIX}path/go"), run));
    }
    if go.is_file() {
        programs.push((format!("{PROGRAM_PREFIX}bin/go"), go));
    }
    if let Ok(entries) = std::fs::read_dir(var(env, "GOTOOLDIR")) {
        for entry in entries.flatten().filter(|entry| entry.path().is_file()) {
            let name = format!("{PROGRAM_PREFIX}tool/{}", entry.file_name().to_string_lossy());
            programs.push((name, entry.path()));
        }
    }
    programs
}

/// Where the names of the toolchain's programs start while they are hashed (within `go.std`).
const PROGRAM_PREFIX: &str = "std.@";

/// The digests of the toolchain's programs (only the toolchain's: a file the build's own tree
/// holds is read each time).
static PROGRAMS: FileMemo = FileMemo::new();

/// Every file `go list` names for `package`'s build.
fn package_files(package: &Package) -> impl Iterator<Item = &String> {
    package
        .go_files
        .iter()
        .chain(&package.cgo_files)
        .chain(&package.c_files)
        .chain(&package.cxx_files)
        .chain(&package.m_files)
        .chain(&package.h_files)
        .chain(&package.f_files)
        .chain(&package.s_files)
        .chain(&package.swig_files)
        .chain(&package.swig_cxx_files)
        .chain(&package.syso_files)
        .chain(&package.embed_files)
}

/// One component for the standard library's files the build compiles: their names (under
/// `$GOROOT/src`) and contents.
fn std_digest(mut hashed: Vec<(String, [u8; 32])>) -> [u8; 32] {
    hashed.sort();
    let mut digest = blake3::Hasher::new();
    for (name, hash) in &hashed {
        digest.update(name.as_bytes()).update(&[0]).update(hash);
    }
    *digest.finalize().as_bytes()
}

/// The directory file names in a key are relative to: the workspace's or the main module's.
pub(crate) fn key_base(env: &GoEnv) -> PathBuf {
    let (gowork, gomod) = (var(env, "GOWORK"), var(env, "GOMOD"));
    let workspace = !gowork.is_empty() && gowork != "off";
    if workspace { Path::new(gowork) } else { Path::new(gomod) }
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// Refuses a build whose C compiler flags from the environment (or `go env -w`) change how it
/// reads sources, for the include scan of any package.
pub(crate) fn refuse_reading_flags(env: &GoEnv) -> Result<(), NoKey> {
    ["CGO_CFLAGS", "CGO_CPPFLAGS", "CGO_CXXFLAGS", "CGO_FFLAGS"]
        .iter()
        .try_for_each(|name| includes::refuse_reading_flags(var(env, name)))
}

/// What the include scan reads of `packages`: each directory once, and not the standard
/// library nor modules from the module cache (identified by version and checksum, their
/// directories checked against it: [`crate::modverify`]).
pub(crate) fn include_scans(packages: &[Package], gomodcache: &str) -> Vec<includes::Sources> {
    let mut seen_dirs = BTreeSet::new();
    packages
        .iter()
        .filter(|package| !package.standard)
        .filter(|package| extracted_module(package, gomodcache).is_none())
        .filter(|package| seen_dirs.insert(package.dir.clone()))
        .filter_map(include_sources)
        .collect()
}

/// Whether building `package` may read files `go list` does not name for it: its C-family,
/// Fortran, assembly and SWIG sources include headers, and its cgo files' `#cgo` flags name
/// directories and libraries. A pure Go package reads only its listed files.
pub(crate) fn reads_beyond_its_files(package: &Package) -> bool {
    native_files(package).next().is_some() || !package.cgo_files.is_empty()
}

fn native_files(package: &Package) -> impl Iterator<Item = &String> {
    [
        &package.c_files,
        &package.cxx_files,
        &package.m_files,
        &package.h_files,
        &package.f_files,
        &package.s_files,
        &package.swig_files,
        &package.swig_cxx_files,
    ]
    .into_iter()
    .flatten()
}

/// The files of a package whose includes and `#cgo` flags may name more inputs (none for a
/// pure Go package, which adds nothing to the key).
pub(crate) fn include_sources(package: &Package) -> Option<includes::Sources> {
    if !reads_beyond_its_files(package) {
        return None;
    }
    let native: Vec<String> = native_files(package).cloned().collect();
    let module = package.module.as_ref().map(|module| module.replace.as_deref().unwrap_or(module));
    let root = module.map(|module| module.dir.as_str()).filter(|dir| !dir.is_empty()).unwrap_or(&package.dir);
    Some(includes::Sources {
        dir: PathBuf::from(&package.dir),
        root: PathBuf::from(root),
        native,
        cgo: package.cgo_files.clone(),
    })
}

/// Adds the files the packages' includes and `#cgo` flags read to `files`, as `file.`
/// components like the files go lists; a file already there keeps its one name. Returns the
/// names of those a package reads that go's own cache does not key for it.
fn add_included(
    files: &mut Vec<FileInput>,
    scans: &[includes::Sources],
    tree: Option<&Path>,
    module_cache: Option<&Path>,
    base: &Path,
) -> Result<BTreeSet<String>, NoKey> {
    if scans.is_empty() {
        return Ok(BTreeSet::new());
    }
    let found = includes::inputs(scans, tree, module_cache, &includes::LIMITS)?;
    let keyed: BTreeMap<PathBuf, String> =
        files.iter().map(|(name, path)| (includes::clean(path), name.clone())).collect();
    for path in found.files.into_iter().filter(|path| !keyed.contains_key(path)) {
        files.push((format!("file.{}", relative(&path, base)), path));
    }
    let named =
        |path: &PathBuf| keyed.get(path).cloned().unwrap_or_else(|| format!("file.{}", relative(path, base)));
    Ok(found.unseen_by_go.iter().map(named).collect())
}

/// The values of `names` as go reads them (cmd/go/internal/cfg's Getenv): the environment
/// variable when it is not empty, else the user's go env file (`go env -w`), else
/// `$GOROOT/go.env`, else empty. Not `go env`'s: it prints go's default when one is unset and
/// re-quotes the words, while a binary records the value as set.
async fn flags_as_set(call: &GoCall<'_>, env: &GoEnv, names: &[&str]) -> Result<Vec<Vec<u8>>, NoKey> {
    // The environment go runs with is the exec's (a runner agent's is sealed), so a shell in
    // it prints the variables, each ended by a NUL.
    let script = format!(
        "printf '%s\\0' {}",
        names.iter().map(|name| format!("\"${name}\"")).collect::<Vec<_>>().join(" ")
    );
    let invocation = call.invocation_of("/bin/sh", vec!["-c".to_owned(), script]);
    let captured = call
        .exec
        .output(&invocation)
        .await
        .map_err(|err| NoKey(format!("cannot read the cgo flags: {err}")))?;
    let mut from_env: Vec<&[u8]> = captured.stdout.split(|b| *b == 0).collect();
    // Each value ends with a NUL: the last piece is the empty one after it.
    if !captured.success() || from_env.pop() != Some(&[]) || from_env.len() != names.len() {
        return Err(NoKey(format!("cannot read the cgo flags: {}", captured.first_error_line())));
    }
    let user = match var(env, "GOENV") {
        "" | "off" => BTreeMap::new(),
        file => env_file(Path::new(file))?,
    };
    let goroot = env_file(&Path::new(var(env, "GOROOT")).join("go.env"))?;
    Ok(names
        .iter()
        .zip(from_env)
        .map(|(name, value)| {
            if value.is_empty() {
                user.get(name.as_bytes()).or_else(|| goroot.get(name.as_bytes())).cloned().unwrap_or_default()
            } else {
                value.to_vec()
            }
        })
        .collect())
}

/// The most of a go env file that is read. Real ones are a few lines; the path comes from the
/// build's environment (GOENV, GOROOT), which a runner agent's tenant may point at anything,
/// and the file is parsed in memory.
const ENV_FILE_LIMIT: u64 = 1024 * 1024;

/// The settings of a go env file, read as go reads them: `NAME=value` lines whose name starts
/// with an upper-case letter, the last of a name winning; a file that cannot be read has none.
/// One larger than [`ENV_FILE_LIMIT`] gives no key: go would read all of it, and settings past
/// the limit could change the build.
pub(crate) fn env_file(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, NoKey> {
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|file| file.take(ENV_FILE_LIMIT + 1).read_to_end(&mut bytes));
    if read.is_err() {
        return Ok(BTreeMap::new());
    }
    if bytes.len() as u64 > ENV_FILE_LIMIT {
        return Err(NoKey(format!(
            "the go env file {} is larger than {} KiB",
            path.display(),
            ENV_FILE_LIMIT / 1024
        )));
    }
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|line| line.first().is_some_and(u8::is_ascii_uppercase))
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b'=')?;
            Some((line[..at].to_vec(), line[at + 1..].to_vec()))
        })
        .collect())
}

/// The C compiler's identity: its command and what `--version` prints.
async fn compiler_identity(
    call: &GoCall<'_>,
    manifest: &mut Manifest,
    var: &str,
    command: &str,
) -> Result<(), NoKey> {
    let mut words = command.split_whitespace();
    let Some(program) = words.next() else {
        return Err(NoKey(format!("cgo is on but {var} is empty")));
    };
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    args.push("--version".to_owned());
    let invocation = call.invocation_of(program, args);
    let captured = call
        .exec
        .output(&invocation)
        .await
        .map_err(|err| NoKey(format!("cannot run the C compiler {program} ({var}): {err}")))?;
    if !captured.success() {
        return Err(NoKey(format!("{program} --version failed: {}", captured.first_error_line())));
    }
    let version = String::from_utf8_lossy(&captured.stdout).into_owned();
    let resolved = resolve(program, call).ok_or_else(|| {
        NoKey(format!("cannot find the program of {var} ({program}) on PATH to key its contents"))
    })?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(command.as_bytes());
    hasher.update(b"\0");
    hasher.update(resolved.display().to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(version.as_bytes());
    // A script or driver edited in place keeps its path and may keep its version.
    for program in programs(command, call) {
        let contents = hash_file(&program, &mut vec![0; HASH_BUFFER])
            .map_err(|err| NoKey(format!("cannot read {} ({var}) to key it: {err}", program.display())))?;
        hasher.update(b"\0");
        hasher.update(&contents);
    }
    let first = version.lines().next().unwrap_or("").trim();
    manifest.insert(format!("cc.{var}"), *hasher.finalize().as_bytes(), format!("{command}: {first}"));
    Ok(())
}

/// Where `program` is: itself when it names a path, else the first match on the PATH the
/// build's processes see.
pub(crate) fn resolve(program: &str, call: &GoCall<'_>) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(call.dir.join(program)).ok();
    }
    own::resolve_program(program, call.build_var("PATH").as_deref(), Some(call.dir))
}

/// The files of a toolchain command's programs, links resolved: its first word's, and any
/// later word's found on PATH (the compiler a wrapper such as ccache runs).
fn programs(command: &str, call: &GoCall<'_>) -> Vec<PathBuf> {
    let mut words = command.split_whitespace();
    let first = words.next().and_then(|program| resolve(program, call));
    let later = words
        .filter(|word| !word.starts_with('-') && !word.contains('/'))
        .filter_map(|word| resolve(word, call));
    let mut found: Vec<PathBuf> =
        first.into_iter().chain(later).filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    found.dedup();
    found
}

/// VCS stamping: the revision, whether the tree is modified, and the tags go derives the main
/// module's version from, as go records them.
/// Keys what the go command stamps into a binary of the main packages in `mains` (their
/// directories and their modules'): the repository of the directory go runs in, as go finds
/// it, when the packages and their modules are in that same repository.
async fn stamp(
    call: &GoCall<'_>,
    manifest: &mut Manifest,
    mains: &[(&Path, &Path)],
    gomod: &Path,
) -> Result<(), NoKey> {
    let Some((root, kind)) = go_vcs_root(call.dir) else { return Ok(()) };
    let elsewhere = mains
        .iter()
        .flat_map(|(dir, module)| [dir, module])
        .find(|dir| go_vcs_root(dir).map(|(found, _)| found).as_ref() != Some(&root));
    if let Some(dir) = elsewhere {
        return Err(NoKey(format!(
            "{} is not in the repository of the directory go runs in ({}); whether and what go stamps \
             then is not followed by the build key; build with -buildvcs=false",
            dir.display(),
            root.display()
        )));
    }
    if kind != "git" {
        return Err(NoKey(format!(
            "VCS stamping of {kind} checkouts is not supported; build with -buildvcs=false"
        )));
    }
    let git = |args: &[&str]| Invocation::new("git", args, root.clone());
    let (revision, status, tags) = (
        // As go reads the revision and its time: a replaced commit (`git replace`) keeps its
        // hash and takes the replacement's time.
        git(&["-c", "log.showsignature=false", "log", "-1", "--format=%H:%ct"]),
        git(&["status", "--porcelain"]),
        // What go reads for the version (modfetch's codeRepo.convert in local mode): the tags
        // at HEAD (`git log --format=%D`) and the tags HEAD descends from
        // (`git for-each-ref --merged`); the latter hold the former.
        git(&[
            "for-each-ref",
            "--merged=HEAD",
            "--format=%(refname) %(objectname) %(*objectname)",
            "refs/tags",
        ]),
    );
    let (revision, status, tags) =
        tokio::join!(call.exec.output(&revision), call.exec.output(&status), call.exec.output(&tags));
    match (revision, status, tags) {
        (Ok(revision), Ok(status), Ok(tags)) if revision.success() && status.success() && tags.success() => {
            let printed = String::from_utf8_lossy(&revision.stdout).trim().to_owned();
            let (revision, time) = printed.split_once(':').unwrap_or((&printed, ""));
            manifest.shown("vcs.revision", revision);
            manifest.shown("vcs.time", time);
            manifest.shown("vcs.modified", &(!status.stdout.is_empty()).to_string());
            let (value, display) = version_tags(&String::from_utf8_lossy(&tags.stdout), revision);
            manifest.summarized("vcs.tags", &value, &display);
            // go finds the module's place in the repository from the module path in the go.mod
            // at the repository's root, as it is on disk (ignored or untracked, it changes no
            // status): that decides which tags are the module's.
            let root_go_mod = root.join("go.mod");
            if root_go_mod != gomod {
                // This go.mod is the tree's too, so it is streamed like every input; one that
                // cannot be read hashes as empty, as it always has.
                let hash = hash_file(&root_go_mod, &mut vec![0; HASH_BUFFER])
                    .unwrap_or_else(|_| *blake3::hash(b"").as_bytes());
                manifest.insert("vcs.root_go.mod".to_owned(), hash, String::new());
            }
            Ok(())
        }
        // go build fails the same way (it stamps by default), so nothing is cached.
        _ => Err(NoKey(format!("cannot read the git status of {} for VCS stamping", root.display()))),
    }
}

/// Of `git for-each-ref --format='%(refname) %(objectname) %(*objectname)'` output, the tags
/// that may be module versions: their last `/` element (a tag is `<module dir>/<version>`)
/// starts with `v` and a digit. The value is those lines, sorted; the display names the tags
/// at `head` and counts the others.
fn version_tags(listing: &str, head: &str) -> (String, String) {
    let mut lines: Vec<&str> = listing
        .lines()
        .filter(|line| {
            let name = line.split(' ').next().unwrap_or("");
            let version = name.rsplit('/').next().unwrap_or("");
            let mut chars = version.chars();
            chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    lines.sort_unstable();
    let mut at_head = Vec::new();
    let mut earlier = 0;
    for line in &lines {
        let mut words = line.split(' ');
        let name = words.next().unwrap_or("").trim_start_matches("refs/tags/");
        // A lightweight tag names the commit; an annotated one names a tag object whose
        // commit is the third word.
        if words.any(|object| !object.is_empty() && object == head) {
            at_head.push(name);
        } else {
            earlier += 1;
        }
    }
    let display = match (at_head.is_empty(), earlier) {
        (true, 0) => "none".to_owned(),
        (true, n) => format!("none at HEAD, {n} earlier"),
        (false, 0) => at_head.join(", "),
        (false, n) => format!("{} at HEAD, {n} earlier", at_head.join(", ")),
    };
    (lines.join("\n"), display)
}

/// How much of a file is held at once while hashing it. Input files come from the build's
/// sources, which on a runner agent are a tenant's: a file (a `//go:embed` one, say) may be any
/// size, so hashing must not hold it whole. A few of these per hashing thread is all.
pub(crate) const HASH_BUFFER: usize = 64 * 1024;

/// BLAKE3 of everything `reader` yields, read through `buffer`. The digest is the one of the
/// whole contents at once (keys recorded before hashing streamed still hit).
fn hash_reader(mut reader: impl Read, buffer: &mut [u8]) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    loop {
        match reader.read(buffer) {
            Ok(0) => return Ok(*hasher.finalize().as_bytes()),
            Ok(read) => {
                hasher.update(&buffer[..read]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// BLAKE3 of the contents of the file at `path`.
/// Opened without waiting on a FIFO, and only a regular file: the sources may be a tenant's.
pub(crate) fn hash_file(path: &Path, buffer: &mut [u8]) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    hash_reader(file, buffer)
}

/// BLAKE3 of each file's contents, on a few threads, each taking the next file when done
/// (the toolchain's programs are a few large files among many small ones).
pub(crate) fn hash_files(files: Vec<FileInput>) -> Result<Vec<(String, [u8; 32])>, NoKey> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(files.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut buffer = vec![0; HASH_BUFFER];
                    let mut hashed = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, path)) = files.get(index) else { break };
                        let hash = if name.starts_with(PROGRAM_PREFIX) {
                            PROGRAMS.digest(path, |path| hash_file(path, &mut buffer))
                        } else {
                            hash_file(path, &mut buffer)
                        };
                        let hash =
                            hash.map_err(|err| NoKey(format!("cannot read {}: {err}", path.display())))?;
                        hashed.push((index, name.clone(), hash));
                    }
                    Ok::<_, NoKey>(hashed)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for worker in workers {
            out.extend(worker.join().map_err(|_| NoKey("a hashing thread panicked".to_owned()))??);
        }
        // In the order given.
        out.sort_unstable_by_key(|(index, ..)| *index);
        Ok(out.into_iter().map(|(_, name, hash)| (name, hash)).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Processes;
    use crate::flags;
    use crate::testing::{module_cache_and_app, module_cache_with_cgo, run, write};

    /// The go command's settings for these tests: nothing of this machine's go configuration,
    /// no network, no toolchain switch; `env` on top.
    fn go_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
        let base = [
            ("GOFLAGS", ""),
            ("GOENV", "off"),
            ("GOWORK", ""),
            ("GOPROXY", "off"),
            ("GOTOOLCHAIN", "local"),
            ("GOTELEMETRY", "off"),
            ("CGO_ENABLED", "0"),
        ];
        base.iter().chain(env).map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// The manifest `cachectl go build <args>` derives in `dir`, with the real go command.
    async fn derive_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Manifest {
        derive_with(&Processes::default(), dir, args, env).await
    }

    /// [`derive_in`], its commands run by `exec`.
    async fn derive_with(exec: &Processes, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Manifest {
        try_derive_with(exec, dir, args, env).await.unwrap().manifest
    }

    /// What [`derive_in`] derives, or why there is no key.
    async fn try_derive_with(
        exec: &Processes,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Derived, NoKey> {
        let env = go_env(env);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let line = flags::parse_command_line(&args).unwrap();
        let call = GoCall { exec, go: Path::new("go"), dir, env: &env };
        let (go_env, packages) =
            call.read(&flags::effective("", &line).unwrap(), &line.packages).await.unwrap();
        let flags = flags::effective(go_env.get("GOFLAGS").map_or("", String::as_str), &line).unwrap();
        derive(&call, &flags, &go_env, &packages, None).await
    }

    /// Closures made in a `for i` loop: a module at go 1.21 shares one `i` (the program prints
    /// [3 3 3]), at go 1.22 each iteration has its own ([0 1 2]).
    const LOOP_LIB: &str = "package lib\n\nfunc Values() []int {\n\tvar fs []func() int\n\tfor i := 0; i < 3; i++ {\n\t\tfs = append(fs, func() int { return i })\n\t}\n\tvar out []int\n\tfor _, f := range fs {\n\t\tout = append(out, f())\n\t}\n\treturn out\n}\n";
    const LOOP_MAIN: &str = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/lib\"\n)\n\nfunc main() { fmt.Println(lib.Values()) }\n";

    /// Replaces `from` with `to` in the file at `path`.
    fn edit(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{} lacks {from:?}", path.display());
        std::fs::write(path, text.replace(from, to)).unwrap();
    }

    /// A module with one main package, in a new directory.
    fn main_module() -> tempfile::TempDir {
        let repo = tempfile::tempdir().unwrap();
        write(
            repo.path(),
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        repo
    }

    /// git `args` in `dir` as user t, with none of this machine's configuration (no signing,
    /// no hooks) and commits dated `date`; it must succeed. What it printed.
    fn git_in(dir: &Path, date: &str, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .envs([("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_CONFIG_NOSYSTEM", "1")])
            .env("GIT_COMMITTER_DATE", date)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// go stamps vcs.time from `git log`, which a `git replace` of HEAD changes while the
    /// revision stays: the time is keyed as go reads it.
    #[tokio::test]
    async fn a_replaced_head_with_another_time_is_another_build() {
        let repo = main_module();
        let git = |date: &str, args: &[&str]| git_in(repo.path(), date, args);
        let date = "2001-01-01T00:00:00Z";
        git(date, &["init", "-q"]);
        git(date, &["add", "."]);
        git(date, &["commit", "-q", "-m", "one"]);
        let head = git(date, &["rev-parse", "HEAD"]);
        let before = derive_in(repo.path(), &["."], &[]).await;
        let tree = git(date, &["rev-parse", "HEAD^{tree}"]);
        let later = git("2002-01-01T00:00:00Z", &["commit-tree", &tree, "-m", "one"]);
        git(date, &["replace", &head, &later]);
        let after = derive_in(repo.path(), &["."], &[]).await;
        assert_eq!(after.get("vcs.revision").unwrap().display, head);
        assert_ne!(before.key(), after.key(), "the replaced commit's time was not keyed");
    }

    /// go (1.24 on) stamps the main module's version from git tags: a version tag at HEAD is
    /// the version, else the highest version tag HEAD descends from is the base of a
    /// pseudo-version. Tags that are no version change nothing.
    #[tokio::test]
    async fn the_git_tags_that_decide_the_stamped_version_are_keyed() {
        let repo = main_module();
        let git = |args: &[&str]| {
            git_in(repo.path(), "2001-01-01T00:00:00Z", args);
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "one"]);
        git(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let untagged = derive_in(repo.path(), &["."], &[]).await.key();
        git(&["tag", "deploy-1"]);
        assert_eq!(derive_in(repo.path(), &["."], &[]).await.key(), untagged, "a tag that is no version");

        let mut same = Vec::new();
        let mut keys = vec![untagged];
        for (what, tag) in [
            // v0.0.0-<time>-<hash> → v1.0.1-0.<time>-<hash>
            ("a version tag HEAD descends from", &["tag", "v1.0.0", "HEAD~1"][..]),
            // → v1.2.3
            ("a version tag at HEAD", &["tag", "v1.2.3"]),
            // → v1.3.0
            ("an annotated version tag at HEAD", &["tag", "-a", "-m", "release", "v1.3.0"]),
        ] {
            git(tag);
            let key = derive_in(repo.path(), &["."], &[]).await.key();
            if keys.contains(&key) {
                same.push(what);
            }
            keys.push(key);
        }
        assert!(same.is_empty(), "the key missed {same:?}");
    }

    /// A submodule's `.git` is a file, which the go command passes over: it stamps the
    /// superproject's revision, so a commit there alone changes the binary and the key.
    #[tokio::test]
    async fn a_submodule_is_stamped_from_the_repository_go_stamps() {
        let git = |dir: &Path, args: &[&str]| {
            let mut command = vec!["git", "-c", "user.name=t", "-c", "user.email=t@example.com"];
            command.extend_from_slice(args);
            run(dir, &command, &[("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_CONFIG_NOSYSTEM", "1")]);
        };
        let (module, superproject) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(
            module.path(),
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        git(module.path(), &["init", "-q"]);
        git(module.path(), &["add", "."]);
        git(module.path(), &["commit", "-q", "-m", "module"]);
        git(superproject.path(), &["init", "-q"]);
        let source = module.path().display().to_string();
        git(
            superproject.path(),
            &["-c", "protocol.file.allow=always", "submodule", "add", "-q", &source, "sub"],
        );
        git(superproject.path(), &["commit", "-q", "-m", "with the submodule"]);
        let sub = superproject.path().join("sub");
        let before = derive_in(&sub, &["."], &[]).await;
        git(superproject.path(), &["commit", "-q", "--allow-empty", "-m", "elsewhere"]);
        let after = derive_in(&sub, &["."], &[]).await;
        assert_ne!(after.key(), before.key(), "{:?}", after.get("vcs.revision"));
    }

    #[test]
    fn version_tags_are_those_that_may_name_a_version() {
        let head = "c0ffee";
        let listing = "refs/tags/deploy-1 c0ffee \nrefs/tags/sub/v2.0.0 aaaa \nrefs/tags/v1.3.0 7a9 c0ffee\nrefs/tags/v1.0.0 bbbb \nrefs/tags/vendor c0ffee \n";
        let (value, display) = version_tags(listing, head);
        assert_eq!(value, "refs/tags/sub/v2.0.0 aaaa \nrefs/tags/v1.0.0 bbbb \nrefs/tags/v1.3.0 7a9 c0ffee");
        assert_eq!(display, "v1.3.0 at HEAD, 2 earlier");
        assert_eq!(version_tags("refs/tags/v0.1.0 dd \n", head).1, "none at HEAD, 1 earlier");
        assert_eq!(version_tags("", head), (String::new(), "none".to_owned()));
    }

    /// With cgo on and without -trimpath, go writes CGO_CFLAGS, CGO_CPPFLAGS, CGO_CXXFLAGS and
    /// CGO_LDFLAGS into every binary's build info, as set (the environment, else `go env -w`),
    /// even when no package uses cgo.
    #[tokio::test]
    async fn the_cgo_flags_a_binary_records_are_keyed_without_cgo_packages() {
        let module = tempfile::tempdir().unwrap();
        write(
            module.path(),
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        let config = module.path().join("go-env");
        std::fs::write(&config, "CGO_CPPFLAGS=-DFROM_GO_ENV_W\n").unwrap();
        let dir = module.path();
        let key = |flags: &'static [&'static str], env: Vec<(&str, &str)>| {
            let mut all = vec![
                ("CGO_ENABLED", "1"),
                ("CGO_CFLAGS", ""),
                ("CGO_CPPFLAGS", ""),
                ("CGO_CXXFLAGS", ""),
                ("CGO_LDFLAGS", ""),
            ];
            all.extend(env);
            let all: Vec<(String, String)> =
                all.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
            async move {
                let all: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                derive_in(dir, flags, &all).await.key()
            }
        };
        const PLAIN: &[&str] = &["-buildvcs=false", "."];
        let base = key(PLAIN, vec![]).await;
        let mut same = Vec::new();
        for (what, env) in [
            // go env says -O2 -g either way; the binary says CGO_CFLAGS= or CGO_CFLAGS="-O2 -g".
            ("CGO_CFLAGS set to go's default", vec![("CGO_CFLAGS", "-O2 -g")]),
            ("CGO_CFLAGS spaced differently", vec![("CGO_CFLAGS", "-O2  -g")]),
            ("CGO_CPPFLAGS", vec![("CGO_CPPFLAGS", "-DX")]),
            ("CGO_CXXFLAGS", vec![("CGO_CXXFLAGS", "-O3")]),
            ("CGO_LDFLAGS", vec![("CGO_LDFLAGS", "-L/opt/lib")]),
            ("CGO_CPPFLAGS from go env -w", vec![("GOENV", config.to_str().unwrap())]),
        ] {
            if key(PLAIN, env).await == base {
                same.push(what);
            }
        }
        assert!(same.is_empty(), "the key missed {same:?}");

        // A pure Go program linked externally is linked by CC, whatever it is, under the C
        // toolchain's own environment.
        const EXTERNAL: &[&str] = &["-buildvcs=false", "-trimpath", "-ldflags=-linkmode=external", "."];
        let external = key(EXTERNAL, vec![("CC", "gcc")]).await;
        assert_ne!(key(EXTERNAL, vec![("CC", "gcc -static")]).await, external, "CC of an external link");
        assert_ne!(key(EXTERNAL, vec![("CC", "gcc"), ("LIBRARY_PATH", "/opt/lib")]).await, external);
        assert_ne!(key(EXTERNAL, vec![("CC", "gcc"), ("LD_RUN_PATH", "/tmp/evil")]).await, external);
        const PURE: &[&str] = &["-buildvcs=false", "-trimpath", "."];
        let forced = |cc: &'static str| key(PURE, vec![("CC", cc), ("GO_EXTLINK_ENABLED", "1")]);
        assert_ne!(
            forced("gcc").await,
            forced("gcc -static").await,
            "CC of a link GO_EXTLINK_ENABLED forces"
        );

        // Where go records none of them, none is keyed.
        const TRIMPATH: &[&str] = &["-buildvcs=false", "-trimpath", "."];
        assert_eq!(key(TRIMPATH, vec![("CGO_LDFLAGS", "-L/opt/lib")]).await, key(TRIMPATH, vec![]).await);
        assert_eq!(
            key(PLAIN, vec![("CGO_ENABLED", "0"), ("CGO_LDFLAGS", "-L/opt/lib")]).await,
            key(PLAIN, vec![("CGO_ENABLED", "0")]).await
        );
    }

    /// The C compiler stamps `__DATE__` and `__TIME__` from SOURCE_DATE_EPOCH, whether the
    /// build's own variables set it or it runs in an environment of its own (an agent's task).
    #[tokio::test]
    async fn source_date_epoch_is_keyed_where_a_c_compiler_reads_it() {
        let module = tempfile::tempdir().unwrap();
        write(
            module.path(),
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                (
                    "main.go",
                    "package main\n\n// const char *built(void) { return __DATE__ \" \" __TIME__; }\nimport \"C\"\n\nfunc main() { println(C.GoString(C.built())) }\n",
                ),
            ],
        );
        let dir = module.path();
        let args = &["-buildvcs=false", "-trimpath", "."];
        let cgo = |epoch: Option<&'static str>| {
            let mut env = vec![("CGO_ENABLED", "1")];
            env.extend(epoch.map(|epoch| ("SOURCE_DATE_EPOCH", epoch)));
            env
        };
        let unset = derive_in(dir, args, &cgo(None)).await.key();
        let old = derive_in(dir, args, &cgo(Some("1000000000"))).await.key();
        let new = derive_in(dir, args, &cgo(Some("1700000000"))).await.key();
        assert!(unset != old && old != new, "the build's SOURCE_DATE_EPOCH is not keyed");

        // Commands that run in an environment of their own read it there, not in this process.
        let sealed = |epoch: &str| {
            let mut env: Vec<(String, String)> =
                std::env::vars().filter(|(name, _)| name != "SOURCE_DATE_EPOCH").collect();
            env.push(("SOURCE_DATE_EPOCH".to_owned(), epoch.to_owned()));
            Processes { clean_env: Some(env), ..Processes::default() }
        };
        let old = derive_with(&sealed("1000000000"), dir, args, &cgo(None)).await.key();
        let new = derive_with(&sealed("1700000000"), dir, args, &cgo(None)).await.key();
        assert_ne!(old, new, "the SOURCE_DATE_EPOCH of the build's own environment is not keyed");

        // Without cgo no C compiler runs, and the key stays as it was.
        let plain = tempfile::tempdir().unwrap();
        write(
            plain.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        assert_eq!(
            derive_in(plain.path(), args, &[("SOURCE_DATE_EPOCH", "1")]).await.key(),
            derive_in(plain.path(), args, &[]).await.key()
        );
    }

    /// GODEBUG reaches the go command and the tools it runs (a job may set it): a build with
    /// another one is another build.
    #[tokio::test]
    async fn godebug_as_set_is_keyed() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        let args = &["-trimpath", "."];
        let unset = derive_in(dir.path(), args, &[]).await;
        let set = derive_in(dir.path(), args, &[("GODEBUG", "gctrace=1")]).await;
        assert_ne!(unset.key(), set.key());
        assert_eq!(set.get("env.GODEBUG").unwrap().display, "gctrace=1");
        // The compiler's debug settings: loopvarhash=n gives a go 1.22 module go 1.21 loops.
        let compile_debug = derive_in(dir.path(), args, &[("GOCOMPILEDEBUG", "loopvarhash=n")]).await;
        assert_ne!(unset.key(), compile_debug.key(), "GOCOMPILEDEBUG was not keyed");
        let clobber = derive_in(dir.path(), args, &[("GOCLOBBERDEADHASH", "1")]).await;
        assert_ne!(unset.key(), clobber.key());
    }

    /// A package with Fortran sources is compiled by FC (gfortran when unset): another
    /// compiler is another build. Stand-in compilers print their versions.
    #[tokio::test]
    async fn the_fortran_compiler_is_keyed() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                (
                    "main.go",
                    "package main\n\n// int fval_(void);\nimport \"C\"\n\nfunc main() { println(C.fval_()) }\n",
                ),
                ("val.f", "      integer function fval()\n      fval = 1\n      end\n"),
            ],
        );
        let compilers = tempfile::tempdir().unwrap();
        for (name, version) in [("fc1", "Fortran 1"), ("fc2", "Fortran 2")] {
            let path = compilers.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let args = &["-trimpath", "."];
        let fc = |name: &str| compilers.path().join(name).display().to_string();
        let (fc1, fc2) = (fc("fc1"), fc("fc2"));
        let first = derive_in(dir.path(), args, &[("CGO_ENABLED", "1"), ("FC", &fc1)]).await;
        let second = derive_in(dir.path(), args, &[("CGO_ENABLED", "1"), ("FC", &fc2)]).await;
        assert!(first.get("cc.FC").is_some(), "FC was not keyed");
        assert_ne!(first.key(), second.key());
        // Edited in place, with the same path and version: its contents are keyed too.
        let script = std::fs::read_to_string(&fc1).unwrap();
        std::fs::write(&fc1, format!("{script}# -DV=2\n")).unwrap();
        let edited = derive_in(dir.path(), args, &[("CGO_ENABLED", "1"), ("FC", &fc1)]).await;
        assert_ne!(first.key(), edited.key(), "a compiler edited in place kept its key");
    }

    /// gcc runs the assembler and linker it finds on PATH when its own directories have none,
    /// and go's action IDs know the toolchain by the compiler's version alone: an `as` in a
    /// runner's `$GOPATH/bin` rewrote the objects and the key (and go's cache) took them.
    #[tokio::test]
    async fn the_assembler_the_driver_runs_is_keyed_and_salts_gos_cache() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                (
                    "main.go",
                    "package main\n\n// int val(void) { return 42; }\nimport \"C\"\n\nfunc main() { println(C.val()) }\n",
                ),
            ],
        );
        let bin = tempfile::tempdir().unwrap();
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
        let flags = ["-trimpath", "-buildvcs=false", "."];
        let derive = |path: String| {
            let dir = dir.path().to_owned();
            async move {
                let env = [("CGO_ENABLED", "1"), ("PATH", path.as_str())];
                try_derive_with(&Processes::default(), &dir, &flags, &env).await.unwrap()
            }
        };
        let plain = derive(path.clone()).await;
        assert!(plain.manifest.get("cc.programs").is_some_and(|programs| programs.display.contains("/as")));
        let assembler = bin.path().join("as");
        std::fs::write(&assembler, "#!/bin/sh\nexec /usr/bin/as \"$@\"\n").unwrap();
        std::fs::set_permissions(&assembler, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let wrapped = derive(path.clone()).await;
        assert_ne!(wrapped.manifest.key(), plain.manifest.key(), "the assembler on PATH took the key");
        assert!(matches!(wrapped.go_cache, GoCache::Salted(_)), "{:?}", wrapped.go_cache);
        assert_ne!(wrapped.go_cache, plain.go_cache);
        std::fs::write(&assembler, "#!/bin/sh\n# rewrites the objects\nexec /usr/bin/as \"$@\"\n").unwrap();
        let edited = derive(path).await;
        assert_ne!(edited.manifest.key(), wrapped.manifest.key());
        assert_ne!(edited.go_cache, wrapped.go_cache);
    }

    /// go keeps an index of each package in its GOCACHE, keyed by the files' names, sizes and
    /// times, not their contents: another tree at the same path with files of the same names,
    /// sizes and times (a pull request's, on a runner whose GOCACHE builds share) made `go
    /// list` report that tree's files, and the key of this one missed a file.
    #[tokio::test]
    async fn the_key_reads_no_package_index_another_tree_left_in_gocache() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tree = |constraint: &str| {
            let extra = format!("//go:build {constraint}\n\npackage main\n\nfunc init() {{ println(2) }}\n");
            write(
                dir.path(),
                &[
                    ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                    ("main.go", "package main\n\nfunc main() {}\n"),
                    ("extra.go", &extra),
                ],
            );
            // As `cachectl restore-mtimes` leaves a clone: the times of the commit.
            let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            for name in ["go.mod", "main.go", "extra.go"] {
                let file = std::fs::File::options().write(true).open(dir.path().join(name)).unwrap();
                file.set_modified(when).unwrap();
            }
        };
        let flags = ["-trimpath", "-buildvcs=false", "."];
        let derive = |cache: &Path| {
            let (dir, cache) = (dir.path().to_owned(), cache.to_str().unwrap().to_owned());
            async move { derive_in(&dir, &flags, &[("GOCACHE", &cache)]).await }
        };
        tree("!nope1");
        let other = derive(shared.path()).await;
        tree("ignore");
        let honest = derive(fresh.path()).await;
        assert_ne!(other.key(), honest.key(), "extra.go is compiled in one tree only");
        assert_eq!(derive(shared.path()).await.key(), honest.key(), "the key read the other tree's files");
    }

    /// go checks a module's files against go.sum when it extracts them, never after: a module
    /// cache edited since (a runner's, which a job may write) still says the same version and
    /// checksum, and its build took the key of the honest files.
    #[tokio::test]
    async fn a_module_cache_edited_since_it_was_extracted_is_another_key() {
        let root = tempfile::tempdir().unwrap();
        let (cache, app) = module_cache_and_app(root.path());
        let env = [("GOMODCACHE", cache.to_str().unwrap())];
        let honest = derive_in(&app, &["-trimpath", "."], &env).await;
        let dep = cache.join("example.com/dep@v1.0.0/dep.go");
        std::fs::set_permissions(&dep, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        edit(&dep, "honest", "EVIL");
        let edited = derive_in(&app, &["-trimpath", "."], &env).await;
        assert_eq!(edited.get("dep.example.com/dep").unwrap().display, "v1.0.0");
        assert_ne!(edited.key(), honest.key(), "the edited module cache took the honest key");

        // Where the cache is does not matter with -trimpath.
        let moved = root.path().join("elsewhere");
        std::fs::rename(&cache, &moved).unwrap();
        edit(&moved.join("example.com/dep@v1.0.0/dep.go"), "EVIL", "honest");
        let elsewhere =
            derive_in(&app, &["-trimpath", "."], &[("GOMODCACHE", moved.to_str().unwrap())]).await;
        assert_eq!(elsewhere.key(), honest.key());
    }

    /// A header edited in a runner's module cache since go extracted the module took the key
    /// of the honest header: a module whose native sources the build compiles is checked
    /// against its go.sum checksum.
    #[tokio::test]
    async fn a_header_edited_in_the_module_cache_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        let (cache, app) = module_cache_with_cgo(root.path());
        let env = [("GOMODCACHE", cache.to_str().unwrap()), ("CGO_ENABLED", "1")];
        let (exec, flags) = (Processes::default(), ["-trimpath", "."]);
        let honest = try_derive_with(&exec, &app, &flags, &env).await.unwrap().manifest;
        let header = cache.join("example.com/dep@v1.0.0/inc/value.h");
        std::fs::set_permissions(&header, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        edit(&header, "VALUE 1", "VALUE 666");
        let refused =
            try_derive_with(&exec, &app, &flags, &env).await.expect_err("the edited header took a key");
        assert!(refused.0.contains("is not what go.sum's checksum says"), "{}", refused.0);

        // Restored and moved: the same key, wherever the cache is.
        edit(&header, "VALUE 666", "VALUE 1");
        let moved = root.path().join("elsewhere");
        std::fs::rename(&cache, &moved).unwrap();
        let env = [("GOMODCACHE", moved.to_str().unwrap()), ("CGO_ENABLED", "1")];
        assert_eq!(derive_in(&app, &flags, &env).await.key(), honest.key());
    }

    /// A module-cache package's `#cgo` flags could name another module's directory
    /// (`-I${SRCDIR}/../../sibling@v1.0.0/include`), which no checksum covered: an edited
    /// header there kept the key.
    #[tokio::test]
    async fn cgo_flags_of_a_module_reaching_outside_it_give_no_key() {
        let root = tempfile::tempdir().unwrap();
        let cgo_package = "package c\n\n// #cgo CFLAGS: -I${SRCDIR}/../../sibling@v1.0.0/include\n// #include <value.h>\nimport \"C\"\n\nfunc Value() int { return int(C.VALUE) }\n";
        let main = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/dep/c\"\n)\n\nfunc main() { fmt.Println(c.Value()) }\n";
        let (cache, app) =
            crate::testing::module_cache_and_app_of(root.path(), &[("c/c.go", cgo_package)], main);
        write(&cache, &[("example.com/sibling@v1.0.0/include/value.h", "#define VALUE 1\n")]);
        let env = [("GOMODCACHE", cache.to_str().unwrap()), ("CGO_ENABLED", "1")];
        let refused = try_derive_with(&Processes::default(), &app, &["-trimpath", "."], &env)
            .await
            .expect_err("a header outside the module took a key");
        assert!(refused.0.contains("outside its modules"), "{}", refused.0);
    }

    /// `CGO_CFLAGS=-I$GOMODCACHE/<module>@<version>/include` names headers in the module cache
    /// that no checksum covered (the module has no native package in the build): an edited
    /// header there kept the key.
    #[tokio::test]
    async fn a_compiler_setting_naming_the_module_cache_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        let main =
            "package main\n\n// #include <value.h>\nimport \"C\"\n\nfunc main() { println(C.VALUE) }\n";
        let (cache, app) = crate::testing::module_cache_and_app_of(
            root.path(),
            &[("include/value.h", "#define VALUE 1\n")],
            main,
        );
        let include = format!("-I{}", cache.join("example.com/dep@v1.0.0/include").display());
        let env =
            [("GOMODCACHE", cache.to_str().unwrap()), ("CGO_ENABLED", "1"), ("CGO_CFLAGS", include.as_str())];
        let refused = try_derive_with(&Processes::default(), &app, &["-trimpath", "."], &env)
            .await
            .expect_err("a header in the module cache took a key");
        assert!(refused.0.contains("CGO_CFLAGS names"), "{}", refused.0);
    }

    /// The same path written out in a `#cgo` line of the build's own package: the scan took it
    /// for the machine's, like /usr/include, and an edited header there kept the key.
    #[tokio::test]
    async fn a_cgo_line_naming_the_module_cache_in_full_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        let include = root.path().join("modcache/example.com/dep@v1.0.0/include");
        let main = format!(
            "package main\n\n// #cgo CFLAGS: -I{}\n// #include <value.h>\nimport \"C\"\n\nfunc main() {{ println(C.VALUE) }}\n",
            include.display()
        );
        let (cache, app) = crate::testing::module_cache_and_app_of(
            root.path(),
            &[("include/value.h", "#define VALUE 1\n")],
            &main,
        );
        let env = [("GOMODCACHE", cache.to_str().unwrap()), ("CGO_ENABLED", "1")];
        let refused = try_derive_with(&Processes::default(), &app, &["-trimpath", "."], &env)
            .await
            .expect_err("a header in the module cache took a key");
        assert!(refused.0.contains("inside the module cache"), "{}", refused.0);
    }

    /// The directory hash is the one `go mod verify` checks a module cache against: it passes
    /// for the fixture's module and fails, like the key, once a file is added.
    #[test]
    fn the_module_hash_is_the_one_go_mod_verify_checks() {
        let root = tempfile::tempdir().unwrap();
        let (cache, app) = module_cache_with_cgo(root.path());
        let verify = || {
            std::process::Command::new("go")
                .args(["mod", "verify"])
                .current_dir(&app)
                .envs(go_env(&[("GOMODCACHE", cache.to_str().unwrap()), ("GOSUMDB", "off")]))
                .output()
                .unwrap()
        };
        let verified = verify();
        assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
        let dep = cache.join("example.com/dep@v1.0.0");
        std::fs::set_permissions(&dep, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(dep.join("inc/value.h.gch"), "precompiled").unwrap();
        assert!(!verify().status.success(), "go mod verify took the added file");
        assert_ne!(
            crate::modverify::dir_hash(&dep, "example.com/dep@v1.0.0").unwrap(),
            std::fs::read_to_string(cache.join("cache/download/example.com/dep/@v/v1.0.0.ziphash"))
                .unwrap()
                .trim()
        );
    }

    /// A GOROOT of links to this machine's, but for `tool`, a copy of the real one with
    /// `extra` bytes at its end (it still runs).
    fn goroot_with_tool(root: &Path, tool: &str, extra: &[u8]) -> PathBuf {
        let go_env_var = |name: &str| {
            let output = std::process::Command::new("go").args(["env", name]).output().unwrap();
            PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        };
        let (real, tooldir) = (go_env_var("GOROOT"), go_env_var("GOTOOLDIR"));
        let fake = root.join("goroot");
        let link_all_but = |from: &Path, to: &Path, but: &str| {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap().flatten() {
                if entry.file_name() != but {
                    std::os::unix::fs::symlink(entry.path(), to.join(entry.file_name())).unwrap();
                }
            }
        };
        link_all_but(&real, &fake, "pkg");
        link_all_but(&real.join("pkg"), &fake.join("pkg"), "tool");
        let host = tooldir.file_name().unwrap();
        link_all_but(&real.join("pkg/tool"), &fake.join("pkg/tool"), host.to_str().unwrap());
        let fake_tools = fake.join("pkg/tool").join(host);
        link_all_but(&tooldir, &fake_tools, tool);
        let mut bytes = std::fs::read(tooldir.join(tool)).unwrap();
        bytes.extend_from_slice(extra);
        std::fs::write(fake_tools.join(tool), bytes).unwrap();
        std::fs::set_permissions(fake_tools.join(tool), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        fake
    }

    /// The go version says nothing of a linker replaced where it is installed (a runner's tool
    /// cache a job may write): the programs of the toolchain are keyed by their contents.
    #[tokio::test]
    async fn a_replaced_toolchain_program_is_another_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        let roots = tempfile::tempdir().unwrap();
        let same = goroot_with_tool(&roots.path().join("same"), "link", b"");
        let patched = goroot_with_tool(&roots.path().join("patched"), "link", b"\0patched");
        let flags = ["-trimpath", "-buildvcs=false", "."];
        let same = derive_in(dir.path(), &flags, &[("GOROOT", same.to_str().unwrap())]).await;
        let patched = derive_in(dir.path(), &flags, &[("GOROOT", patched.to_str().unwrap())]).await;
        let real = derive_in(dir.path(), &flags, &[]).await;
        assert_eq!(same.key(), real.key(), "a GOROOT of links is the same toolchain");
        assert_ne!(patched.get("go.std").unwrap().hash, same.get("go.std").unwrap().hash);
        assert_ne!(patched.key(), same.key(), "the patched linker took the toolchain's key");
    }

    /// go prints a path that is not UTF-8 with U+FFFD for the bytes: the key would have hashed
    /// the files of another directory, which a tenant can make.
    #[tokio::test]
    async fn a_path_that_is_not_utf8_gives_no_key() {
        use std::os::unix::ffi::OsStrExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(std::ffi::OsStr::from_bytes(b"w\xff"));
        write(
            &dir,
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                ("main.go", "package main\n\nfunc main() {}\n"),
            ],
        );
        let exec = Processes::default();
        let env = go_env(&[]);
        let call = GoCall { exec: &exec, go: Path::new("go"), dir: &dir, env: &env };
        let line = crate::flags::parse_command_line(&["-trimpath".to_owned(), ".".to_owned()]).unwrap();
        let flags = crate::flags::effective("", &line).unwrap();
        let (go_env, packages) = call.read(&flags, &line.packages).await.unwrap();
        let refused = derive(&call, &flags, &go_env, &packages, None).await.unwrap_err();
        assert!(refused.0.contains("not UTF-8"), "{refused:?}");
    }

    /// A C compiler in the module can change without changing its command or version: no key.
    #[tokio::test]
    async fn a_compiler_in_the_module_gives_no_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("go.mod", "module example.com/p\n\ngo 1.22\n"),
                ("main.go", "package main\n\n// int v(void) { return 1; }\nimport \"C\"\n\nfunc main() {}\n"),
                ("tools/cc.sh", "#!/bin/sh\nexec gcc \"$@\"\n"),
            ],
        );
        let cc = dir.path().join("tools/cc.sh");
        std::fs::set_permissions(&cc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let exec = Processes::default();
        let env = go_env(&[("CGO_ENABLED", "1"), ("CC", cc.to_str().unwrap())]);
        let call = GoCall { exec: &exec, go: Path::new("go"), dir: dir.path(), env: &env };
        let line = crate::flags::parse_command_line(&["-trimpath".to_owned(), ".".to_owned()]).unwrap();
        let flags = crate::flags::effective("", &line).unwrap();
        let (go_env, packages) = call.read(&flags, &line.packages).await.unwrap();
        let refused = derive(&call, &flags, &go_env, &packages, None).await.unwrap_err();
        assert!(refused.0.contains("CC=") && refused.0.contains("tools/cc.sh"), "{refused:?}");
    }

    /// go compiles each module's packages with that module's Go version (-lang), so a change
    /// of it in a local `replace` directory, a vendored module or a workspace module is a
    /// different build.
    #[tokio::test]
    async fn the_go_version_of_every_module_is_keyed() {
        let flags = ["-buildvcs=false", "."];
        let mut same = Vec::new();
        let lib_mod = "module example.com/lib\n\ngo 1.21\n";

        // A local replace directory.
        let replaced = tempfile::tempdir().unwrap();
        write(
            replaced.path(),
            &[
                (
                    "go.mod",
                    "module example.com/m\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => ./lib\n",
                ),
                ("main.go", LOOP_MAIN),
                ("lib/go.mod", lib_mod),
                ("lib/lib.go", LOOP_LIB),
            ],
        );
        let before = derive_in(replaced.path(), &flags, &[]).await;
        edit(&replaced.path().join("lib/go.mod"), "go 1.21", "go 1.22");
        let after = derive_in(replaced.path(), &flags, &[]).await;
        if before.key() == after.key() {
            same.push("lib/go.mod's go version");
        }

        // The same module vendored: the go version is the `## explicit; go 1.21` line.
        edit(&replaced.path().join("lib/go.mod"), "go 1.22", "go 1.21");
        run(
            replaced.path(),
            &["go", "mod", "vendor"],
            &[("GOFLAGS", ""), ("GOPROXY", "off"), ("GOWORK", "off")],
        );
        let modules_txt = replaced.path().join("vendor/modules.txt");
        assert!(std::fs::read_to_string(&modules_txt).unwrap().contains("## explicit; go 1.21"));
        let before = derive_in(replaced.path(), &flags, &[]).await;
        edit(&modules_txt, "## explicit; go 1.21", "## explicit; go 1.22");
        let after = derive_in(replaced.path(), &flags, &[]).await;
        if before.key() == after.key() {
            same.push("vendor/modules.txt's go version");
        }

        // A workspace module.
        let workspace = tempfile::tempdir().unwrap();
        write(
            workspace.path(),
            &[
                ("go.work", "go 1.22\n\nuse (\n\t./app\n\t./lib\n)\n"),
                ("app/go.mod", "module example.com/app\n\ngo 1.22\n"),
                ("app/main.go", LOOP_MAIN),
                ("lib/go.mod", lib_mod),
                ("lib/lib.go", LOOP_LIB),
            ],
        );
        let app = workspace.path().join("app");
        let before = derive_in(&app, &flags, &[]).await;
        edit(&workspace.path().join("lib/go.mod"), "go 1.21", "go 1.22");
        let after = derive_in(&app, &flags, &[]).await;
        if before.key() == after.key() {
            same.push("a workspace module's go version");
        }
        assert!(same.is_empty(), "the key missed {same:?}");
    }

    /// A Go assembly file that includes a header from outside its package, as go builds it:
    /// the header's `VALUE` is what the binary prints.
    fn write_included_value(dir: &Path) {
        write(
            dir,
            &[
                ("go.mod", "module example.com/m\n\ngo 1.22\n"),
                (
                    "cmd/app/main.go",
                    "package main\n\nimport \"fmt\"\n\nfunc value() int\n\nfunc main() { fmt.Println(value()) }\n",
                ),
                (
                    "cmd/app/value_stub.go",
                    "//go:build !amd64\n\npackage main\n\nfunc value() int { return 0 }\n",
                ),
                (
                    "cmd/app/val_amd64.s",
                    "#include \"textflag.h\"\n#include \"../../inc/val.h\"\n\nTEXT ·value(SB), NOSPLIT, $0-8\n\tMOVQ $VALUE, ret+0(FP)\n\tRET\n",
                ),
                ("inc/val.h", "#define VALUE 1\n"),
            ],
        );
    }

    /// go's own cache misses this header (its action IDs hash only the files go list names):
    /// a key that missed it would restore a binary printing 1 after the header says 666.
    #[tokio::test]
    async fn a_header_an_assembly_file_includes_from_outside_its_package_is_keyed() {
        let module = tempfile::tempdir().unwrap();
        write_included_value(module.path());
        let flags = ["-buildvcs=false", "-trimpath", "./cmd/app"];
        let env = [("GOARCH", "amd64")];
        let before = derive_in(module.path(), &flags, &env).await;
        edit(&module.path().join("inc/val.h"), "VALUE 1", "VALUE 666");
        let after = derive_in(module.path(), &flags, &env).await;
        assert_ne!(before.key(), after.key(), "the key missed a change of inc/val.h");
        assert!(after.get("file.inc/val.h").is_some(), "the change is not named file.inc/val.h");
    }

    /// Keys recorded before includes were followed still hit when the includes name nothing
    /// outside what go lists: system and toolchain headers, and the package's own `.h` files.
    #[tokio::test]
    async fn builds_without_outside_includes_keep_their_components() {
        let module = tempfile::tempdir().unwrap();
        write_included_value(module.path());
        write(
            module.path(),
            &[
                (
                    "cmd/app/val_amd64.s",
                    "#include \"textflag.h\"\n#include \"go_asm.h\"\n#include \"val.h\"\n\nTEXT ·value(SB), NOSPLIT, $0-8\n\tMOVQ $VALUE, ret+0(FP)\n\tRET\n",
                ),
                ("cmd/app/val.h", "#define VALUE 1\n"),
            ],
        );
        let manifest =
            derive_in(module.path(), &["-buildvcs=false", "./cmd/app"], &[("GOARCH", "amd64")]).await;
        let files: Vec<&str> =
            manifest.components().map(|c| c.name.as_str()).filter(|name| name.starts_with("file.")).collect();
        assert_eq!(files, ["file.cmd/app/main.go", "file.cmd/app/val.h", "file.cmd/app/val_amd64.s"]);
    }

    #[test]
    fn relative_package_patterns_are_told_from_others() {
        let with = |gcflags: &[&str], coverpkg: &str| BuildFlags {
            gcflags: gcflags.iter().map(|value| (*value).to_owned()).collect(),
            coverpkg: coverpkg.to_owned(),
            ..BuildFlags::default()
        };
        assert!(has_relative_pattern(&with(&["./...=-N -l"], "")));
        assert!(has_relative_pattern(&with(&[" ..=-m"], "")));
        assert!(has_relative_pattern(&with(&[], "example.com/m/...,./internal/...")));
        assert!(!has_relative_pattern(&with(
            &["-N -l", "all=-N -l", "example.com/m/...=-m"],
            "example.com/m"
        )));
        assert!(!has_relative_pattern(&with(&["-d=x=./y"], "")), "a flag's own = is no pattern");
    }

    #[test]
    fn relative_paths_use_slashes_and_dots() {
        assert_eq!(relative(Path::new("/m/cmd/app/main.go"), Path::new("/m")), "cmd/app/main.go");
        assert_eq!(relative(Path::new("/lib/x.go"), Path::new("/m/sub")), "../../lib/x.go");
    }

    #[test]
    fn go_list_output_parses_as_a_stream() {
        let text = r#"{"ImportPath":"fmt","Standard":true,"DepOnly":true,"GoFiles":["print.go"]}
{"ImportPath":"example.com/m","Name":"main","Dir":"/m","Module":{"Path":"example.com/m","Main":true},"GoFiles":["main.go"],"CXXFiles":["x.cc"]}"#;
        let packages: Vec<Package> = serde_json::Deserializer::from_str(text)
            .into_iter::<Package>()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(packages.len(), 2);
        assert!(packages[0].standard && packages[0].dep_only);
        assert!(packages[1].module.as_ref().unwrap().main);
        assert_eq!(packages[1].cxx_files, ["x.cc"]);
    }

    /// `len` bytes that differ from one buffer to the next, so a misplaced chunk changes the
    /// digest.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8).collect()
    }

    /// Serves `data`, as much as each read asks for, and remembers the largest read asked
    /// for: how much of the input the hasher holds at once.
    struct Recording {
        data: Vec<u8>,
        at: usize,
        largest_read: usize,
    }

    impl Read for Recording {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.largest_read = self.largest_read.max(buf.len());
            let n = buf.len().min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn hashing_holds_a_bounded_part_of_a_large_input() {
        let len = 16 * 1024 * 1024;
        let mut reader = Recording { data: pattern(len), at: 0, largest_read: 0 };
        let hash = hash_reader(&mut reader, &mut vec![0; HASH_BUFFER]).unwrap();
        assert_eq!(reader.at, len, "the whole input is hashed");
        assert!(
            reader.largest_read <= HASH_BUFFER,
            "a read of {} bytes for a {len}-byte input",
            reader.largest_read
        );
        assert_eq!(hash, *blake3::hash(&reader.data).as_bytes());
    }

    /// Keys must not change: recorded builds still hit only if the streamed digest of every
    /// input is the digest of its whole contents, whatever its size against the buffer.
    #[test]
    fn streamed_digests_are_those_of_the_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0, 1, HASH_BUFFER - 1, HASH_BUFFER, HASH_BUFFER + 1, 3 * HASH_BUFFER + 7, 5 << 20];
        let files: Vec<FileInput> = sizes
            .iter()
            .map(|size| {
                let path = dir.path().join(format!("f{size}"));
                std::fs::write(&path, pattern(*size)).unwrap();
                (format!("file.f{size}"), path)
            })
            .collect();
        let hashed = hash_files(files.clone()).unwrap();
        assert_eq!(hashed.len(), sizes.len());
        for ((name, hash), (expected_name, path)) in hashed.iter().zip(&files) {
            assert_eq!(name, expected_name);
            let whole = std::fs::read(path).unwrap();
            assert_eq!(hash, blake3::hash(&whole).as_bytes(), "{name}");
        }
        let missing = dir.path().join("missing");
        let err = hash_files(vec![("file.missing".to_owned(), missing.clone())]).unwrap_err();
        assert!(err.0.starts_with(&format!("cannot read {}", missing.display())), "{}", err.0);
    }

    #[test]
    fn a_go_env_file_past_the_limit_gives_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let mut text = b"CGO_CFLAGS=-O1\n".to_vec();
        text.resize(usize::try_from(ENV_FILE_LIMIT).unwrap(), b'#');
        std::fs::write(&path, &text).unwrap();
        assert_eq!(env_file(&path).unwrap()[b"CGO_CFLAGS".as_slice()], b"-O1");
        text.push(b'#');
        std::fs::write(&path, &text).unwrap();
        assert!(env_file(&path).unwrap_err().0.contains("larger than 1024 KiB"));
        assert!(env_file(&dir.path().join("missing")).unwrap().is_empty());
    }
}
