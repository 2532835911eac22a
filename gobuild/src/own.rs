//! The C toolchain settings that name the build's own tree. go's action IDs know the C
//! compiler by its command and `--version` output, and the `-I` directories of CGO_CFLAGS by
//! their text: a compiler script, a specs file or a header in the module, the source tree or
//! a local replace or workspace directory can change between two builds without changing
//! either, and the build key would restore one build's binary (and go's cache serve its
//! objects) to the other. So a setting that reaches into those directories gives no key, and
//! its build uses no shared go cache: the refusal is an error of the C toolchain's settings,
//! which both the keyed and the unkeyed build read (`inputs::unseen_settings`).

use std::path::{Component, Path, PathBuf};

use crate::includes;
use crate::inputs::{GoEnv, NoKey, Package};

/// The directories the build's own sources control, as named and with links resolved.
pub(crate) struct OwnDirs(Vec<PathBuf>);

impl OwnDirs {
    /// The directories of every module whose files are not from the module cache (local
    /// replaces, workspace modules), and `extra`.
    /// `extra` are the main module's (or workspace's) directory and the source tree. The
    /// module cache counts too: the key reads its modules only as go lists their packages
    /// (checked against go.sum, [`crate::modverify`]), and other builds on a runner may have
    /// changed a directory a setting names there (`CGO_CFLAGS=-I$GOMODCACHE/x@v1/include`).
    pub(crate) fn of(env: &GoEnv, packages: &[Package], extra: &[&Path]) -> Self {
        let gomodcache = env.get("GOMODCACHE").map_or("", String::as_str);
        let modules = packages.iter().filter(|package| !package.standard).filter_map(|package| {
            let module = package.module.as_ref()?;
            let dir = &module.replace.as_deref().unwrap_or(module).dir;
            let cached = !gomodcache.is_empty() && Path::new(dir).starts_with(gomodcache);
            (!dir.is_empty() && !cached).then(|| PathBuf::from(dir))
        });
        let module_cache = Some(PathBuf::from(gomodcache)).filter(|dir| dir.is_absolute());
        let named: Vec<PathBuf> =
            extra.iter().map(|dir| dir.to_path_buf()).chain(modules).chain(module_cache).collect();
        let resolved = named.iter().filter_map(|dir| std::fs::canonicalize(dir).ok());
        let mut dirs: Vec<PathBuf> = named.iter().map(|dir| includes::clean(dir)).chain(resolved).collect();
        dirs.retain(|dir| dir.is_absolute() && dir.parent().is_some());
        dirs.sort();
        dirs.dedup();
        Self(dirs)
    }

    pub(crate) fn dirs(&self) -> Vec<&Path> {
        self.0.iter().map(PathBuf::as_path).collect()
    }

    /// The own directory `path` (absolute) is in, by its name or its target.
    fn holding(&self, path: &Path) -> Option<&Path> {
        let resolved = std::fs::canonicalize(path).ok();
        let named = includes::clean(path);
        self.0
            .iter()
            .find(|dir| named.starts_with(dir) || resolved.as_ref().is_some_and(|r| r.starts_with(dir)))
            .map(PathBuf::as_path)
    }
}

/// Why `text`, a path the toolchain is given through `var`, may be the build's own: one in
/// an own directory, a relative one (the compiler runs in the package's directory) or one a
/// lexical reading cannot place (`..`, /proc, a link to it). `dirs` are where the toolchain runs.
fn own_path(text: &str, dirs: &[&Path], own: &OwnDirs) -> Option<String> {
    let path = Path::new(text.trim_matches(['"', '\'']));
    // The loader's token for the binary's own directory (an rpath), not a path read now.
    let origin = ["$ORIGIN", "${ORIGIN}"].iter().any(|token| text.starts_with(token));
    if path.as_os_str().is_empty() || origin {
        return None;
    }
    if !path.is_absolute() {
        let exists = dirs.iter().any(|dir| dir.join(path).exists());
        return (text.contains('/') || exists).then(|| format!("{text}, a path relative to the package"));
    }
    if let Some(dir) = own.holding(path) {
        return Some(format!("{text}, inside {}", dir.display()));
    }
    may_lead_anywhere(path).then(|| format!("{text}, which may lead into the build's own tree"))
}

/// Whether `path` (absolute) is one a lexical reading cannot place: it has a `..` component
/// (after a link, the link target's parent), or it is under `/proc` or `/dev/fd` by its name
/// or through links on the way (`/proc/self/cwd` is the directory the tool runs in: the
/// package's, to the C compiler; the agent's own, to the agent).
pub(crate) fn may_lead_anywhere(path: &Path) -> bool {
    path.components().any(|part| part == Component::ParentDir) || through_proc(path)
}

/// Whether `path` (absolute) reaches `/proc` or `/dev/fd`, by its name or through the links
/// its parts are, followed one part at a time as the kernel resolves them (a link's `..` is
/// its target's parent). Past 40 links it counts as reaching them.
fn through_proc(path: &Path) -> bool {
    let aliases = |path: &Path| ["/proc", "/dev/fd"].iter().any(|alias| path.starts_with(alias));
    let mut rest: Vec<std::ffi::OsString> =
        path.components().rev().map(|part| part.as_os_str().to_owned()).collect();
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = rest.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => resolved = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(_)) => {
                let next = resolved.join(&part);
                if aliases(&next) {
                    return true;
                }
                match std::fs::read_link(&next) {
                    Ok(target) => {
                        links += 1;
                        if links > 40 {
                            return true;
                        }
                        if target.is_absolute() {
                            resolved = PathBuf::from("/");
                        }
                        rest.extend(target.components().rev().map(|part| part.as_os_str().to_owned()));
                    }
                    Err(_) => resolved = next,
                }
            }
            _ => {}
        }
    }
    false
}

/// Options whose value (joined, or the next word) is a word, never a file.
const WORD_OPTIONS: &[&str] = &["-D", "-U", "-x", "-std", "-z", "-MT", "-MQ"];

/// Options whose value maps path prefixes (`old=new`) in what the compiler writes: it reads
/// nothing there, and `-ffile-prefix-map=$PWD/=` is how reproducible builds drop the tree.
const MAP_OPTIONS: &[&str] =
    &["-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=", "-fprofile-prefix-map="];

/// Options that hand the next word to the linker, assembler or preprocessor as it is.
const PASS_OPTIONS: &[&str] = &["-Xlinker", "-Xassembler", "-Xpreprocessor"];

/// Options whose joined rest names a file or directory. Longest first where one name starts
/// another: `-iwithprefixbefore<dir>` read as `-iwithprefix` would offer `before<dir>`.
const JOINED_PATH_OPTIONS: &[&str] = &[
    "-iwithprefixbefore",
    "-iwithprefix",
    "-iprefix",
    "-isysroot",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-iframeworkwithsysroot",
    "-iframework",
    "-imultilib",
    "-imultiarch",
    "-iplugindir",
    "-include",
    "-imacros",
    "-I",
    "-L",
    "-B",
    "-F",
    "-T",
];

/// The pieces of a compiler command or flags variable that may name a file: words that are no
/// options, an option's `=value`, the rest of a joined option, response files (`@file`), and
/// what `-Wl,`, `-Wa,`, `-Wp,` and `-Xlinker` (...) pass on.
pub(crate) fn path_like(words: &[String]) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut after_word_option = false;
    let mut after_pass_option = false;
    for word in words {
        if std::mem::take(&mut after_word_option) {
            continue;
        }
        if std::mem::take(&mut after_pass_option) {
            passed_on(word, &mut pieces);
        } else if let Some(file) = word.strip_prefix('@') {
            pieces.push(file);
        } else if WORD_OPTIONS.contains(&word.as_str()) {
            after_word_option = true;
        } else if PASS_OPTIONS.contains(&word.as_str()) {
            after_pass_option = true;
        } else if let Some(list) = ["-Wl,", "-Wa,", "-Wp,"].iter().find_map(|list| word.strip_prefix(list)) {
            list.split(',').for_each(|piece| passed_on(piece, &mut pieces));
        } else if !word.starts_with('-') {
            pieces.push(word.as_str());
        } else if WORD_OPTIONS.iter().chain(MAP_OPTIONS).any(|option| word.starts_with(option)) {
        } else {
            if let Some((_, value)) = word.split_once('=') {
                pieces.push(value);
            }
            // A directory named `inc=x` is one too: the rest of a joined option counts whole.
            let joined = JOINED_PATH_OPTIONS.iter().find_map(|option| word.strip_prefix(option));
            // An `-i` option not listed (gcc adds them) may take a path as well.
            if let Some(rest) = joined.or_else(|| word.strip_prefix("-i")) {
                pieces.push(rest.strip_prefix('=').unwrap_or(rest));
            }
        }
    }
    pieces
}

/// The pieces of `piece`, a word the compiler hands to the linker, assembler or preprocessor,
/// that may name a file. Their short options take joined values (`-Rsyms.o`, `-Tx.ld`,
/// `-l:x.a`, `-dTx.ld`) that no list of options keeps up with, so the rest after any one
/// letter counts; own_path passes over a word that names no file.
fn passed_on<'a>(piece: &'a str, pieces: &mut Vec<&'a str>) {
    if let Some(file) = piece.strip_prefix('@') {
        pieces.push(file);
    } else if !piece.starts_with('-') {
        pieces.push(piece);
    } else {
        if let Some((_, value)) = piece.split_once('=') {
            pieces.push(value);
        }
        if let Some(option) = piece.strip_prefix('-').filter(|option| !option.starts_with('-')) {
            let rest = option.get(option.chars().next().map_or(0, char::len_utf8)..).unwrap_or_default();
            pieces.push(rest.strip_prefix(':').unwrap_or(rest));
            if let Some(script) = option.strip_prefix("dT") {
                pieces.push(script);
            }
        }
    }
}

/// Refuses a C toolchain command (`CC`, `CXX`, `FC`, `PKG_CONFIG`) any of whose words
/// reaches into the build's own tree: its program or another found on `search_path` (a
/// wrapper's compiler), a specs or config file, a sysroot.
pub(crate) fn refuse_own_command(
    var: &str,
    command: &str,
    search_path: Option<&str>,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    let programs = words.iter().filter(|word| !word.starts_with('-') && !word.contains('/'));
    let found = programs.filter_map(|word| resolve_program(word, search_path, dirs.first().copied()));
    let reason = found
        .filter_map(|program| {
            own.holding(&program).map(|dir| format!("{}, inside {}", program.display(), dir.display()))
        })
        .chain(path_like(&words).into_iter().filter_map(|text| own_path(text, dirs, own)))
        .next();
    match reason {
        None => Ok(()),
        Some(reason) => Err(NoKey(format!(
            "{var}={command:?} runs or reads {reason}, which the build's own sources control: go's cache and \
             the build key know a C toolchain only by its command and version; set {var} to a program outside \
             the module and source tree"
        ))),
    }
}

/// Refuses C compiler or linker flags from the environment (`CGO_CFLAGS`, ...) that name
/// the build's own tree: the build key keys their text, not the headers or libraries there.
pub(crate) fn refuse_own_flags(
    var: &str,
    words: &[String],
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    match path_like(words).into_iter().find_map(|text| own_path(text, dirs, own)) {
        None => Ok(()),
        Some(reason) => Err(NoKey(format!(
            "{var} names {reason}, whose files neither the build key nor go's cache reads; name the \
             directory in the package's #cgo lines with ${{SRCDIR}} instead"
        ))),
    }
}

/// Refuses a search path of the C toolchain (`CPATH`, `LIBRARY_PATH`, `COMPILER_PATH`, ...)
/// that holds the build's own tree, or a relative or empty entry (the current directory).
pub(crate) fn refuse_own_search_path(
    var: &str,
    list: &str,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    let reason = list.split(':').find_map(|entry| match entry {
        "" => Some("an empty entry, the directory the compiler runs in".to_owned()),
        entry if !entry.starts_with('/') => Some(format!("{entry}, a path relative to the package")),
        entry => own_path(entry, dirs, own),
    });
    match reason {
        None => Ok(()),
        Some(reason) => Err(NoKey(format!(
            "{var} holds {reason}, whose files neither the build key nor go's cache reads; point it outside \
             the module and source tree"
        ))),
    }
}

/// Where `program` (a name without `/`) is found on `search_path`, relative entries taken
/// from `dir`.
pub(crate) fn resolve_program(
    program: &str,
    search_path: Option<&str>,
    dir: Option<&Path>,
) -> Option<PathBuf> {
    let entries = std::env::split_paths(search_path?);
    entries
        .map(|entry| match dir {
            Some(dir) if entry.is_relative() => dir.join(entry),
            _ => entry,
        })
        .map(|entry| entry.join(program))
        .find(|candidate| candidate.is_file())
}

/// Programs gcc, clang, collect2 and go's cgo step run by name, found on PATH when not in the
/// compiler's own directories: the assembler, linkers (`-fuse-ld=`), compiler proper and LTO
/// parts, drivers and wrappers, binutils, pkg-config. A target prefix (`x86_64-linux-gnu-`) or
/// version suffix (`-12`) may be added; `ld.<name>` is any `-fuse-ld=<name>`.
const TOOLCHAIN_PROGRAMS: &[&str] = &[
    "as",
    "ld",
    "real-ld",
    "collect-ld",
    "collect2",
    "lto-wrapper",
    "lto1",
    "lto-dump",
    "cc1",
    "cc1plus",
    "cc1obj",
    "cc1objplus",
    "f951",
    "cpp",
    "gcc",
    "cc",
    "c++",
    "g++",
    "clang",
    "clang++",
    "gfortran",
    "lld",
    "ld64.lld",
    "mold",
    "gold",
    "objcopy",
    "objdump",
    "strip",
    "nm",
    "ar",
    "ranlib",
    "dsymutil",
    "pkg-config",
    "pkgconf",
    "ccache",
    "sccache",
    "distcc",
];

/// Whether the C toolchain may run a program called `name` from PATH.
fn toolchain_program(name: &str) -> bool {
    let is = |name: &str| {
        let unversioned = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        [name, unversioned.strip_suffix('-').unwrap_or(unversioned)].iter().any(|base| {
            TOOLCHAIN_PROGRAMS.contains(base) || base.starts_with("ld.") || base.starts_with("llvm-")
        })
    };
    is(name) || name.match_indices('-').any(|(at, _)| is(&name[at + 1..]))
}

/// The directories of `list`, a search path split at `separators`, that the build's own
/// sources may control, each with its entry as given: an entry inside `own`, or one a
/// lexical reading cannot place, or a relative or empty one, taken from each of `dirs`. The
/// loader's search paths (`loader`) may start with `$ORIGIN`, the directory of the program
/// it loads for, which is no directory of the tree (CC is refused there).
fn own_entries<'a>(
    list: &'a str,
    separators: &[char],
    loader: bool,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Vec<(&'a str, PathBuf)> {
    let mut found = Vec::new();
    for entry in list.split(separators) {
        let path = Path::new(entry);
        if loader && ["$ORIGIN", "${ORIGIN}"].iter().any(|token| entry.starts_with(token)) {
        } else if !path.is_absolute() {
            found.extend(dirs.iter().map(|dir| (entry, dir.join(path))));
        } else if own_path(entry, dirs, own).is_some() {
            found.push((entry, path.to_owned()));
        }
    }
    found
}

/// How `entry` of a search path reads in a message.
fn entry_text(entry: &str) -> String {
    match entry {
        "" => "an empty entry (the directory the program runs in)".to_owned(),
        entry if !entry.starts_with('/') => format!("{entry}, relative to the directory the program runs in"),
        entry => entry.to_owned(),
    }
}

/// The first (by name) file of `dir` whose name `wanted` accepts.
fn files_in(dir: &Path, wanted: impl Fn(&str) -> bool) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| wanted(name) && dir.join(name).is_file())
        .min()
}

/// Refuses a `PATH` whose entry inside the build's own tree, relative or empty holds a
/// program the C compiler or linker runs by name (`as`, `ld.gold`, `collect2`, `cc1` ...):
/// go and the build key know the toolchain by CC's program and version, not by what gcc
/// finds on PATH, so a script there can change the objects without changing the key. An
/// entry with only other tools (`bin/mytool`) is keyed as before.
pub(crate) fn refuse_own_programs_on_path(
    path: Option<&str>,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    let Some(path) = path else { return Ok(()) };
    for (entry, dir) in own_entries(path, &[':'], false, dirs, own) {
        if let Some(program) = files_in(&dir, toolchain_program) {
            return Err(NoKey(format!(
                "PATH holds {}, which the build's own sources control, and gcc or the linker would run its \
                 {program} ({}): go's cache and the build key do not read the programs the C toolchain \
                 finds on PATH; take that directory off PATH for the build, or move {program} out of it",
                entry_text(entry),
                dir.join(&program).display()
            )));
        }
    }
    Ok(())
}

/// Refuses a library search path of the loader or linker (`LD_LIBRARY_PATH`, `LD_RUN_PATH`)
/// whose entry inside the build's own tree, relative or empty holds a shared library: cc1,
/// as and ld load theirs through it, and ld resolves libraries' dependencies there. An entry
/// that holds none (a trailing `:` with no library in the package) is harmless.
pub(crate) fn refuse_own_library_path(
    var: &str,
    list: &str,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    for (entry, dir) in own_entries(list, &[':', ';'], true, dirs, own) {
        // `$LIB` and `$PLATFORM` expand to directories this name does not show.
        let library = if entry.contains('$') {
            Some("the libraries its expansion names".to_owned())
        } else {
            files_in(&dir, |name| name.contains(".so")).map(|name| dir.join(name).display().to_string())
        };
        if let Some(library) = library {
            return Err(NoKey(format!(
                "{var} holds {}, which the build's own sources control, and the C toolchain's programs \
                 would load {library} from it: neither the build key nor go's cache reads it; point {var} \
                 outside the module and source tree for the build",
                entry_text(entry)
            )));
        }
    }
    Ok(())
}

/// Refuses libraries the loader puts into every program of the C toolchain (`LD_PRELOAD`,
/// `LD_AUDIT`) that the build's own sources control: one inside the tree, a relative one, or
/// a name the loader finds in the package's directory or on an `LD_LIBRARY_PATH` into the tree.
pub(crate) fn refuse_own_preload(
    var: &str,
    list: &str,
    library_path: Option<&str>,
    dirs: &[&Path],
    own: &OwnDirs,
) -> Result<(), NoKey> {
    let library_dirs =
        library_path.map(|list| own_entries(list, &[':', ';'], true, dirs, own)).unwrap_or_default();
    let reason = list.split([':', ' ']).filter(|entry| !entry.is_empty()).find_map(|entry| {
        own_path(entry, dirs, own).or_else(|| {
            let found = library_dirs
                .iter()
                .map(|(_, dir)| dir.join(entry))
                .find(|file| !entry.contains('/') && file.is_file());
            found.map(|file| format!("{entry}, found at {} on LD_LIBRARY_PATH", file.display()))
        })
    });
    match reason {
        None => Ok(()),
        Some(reason) => Err(NoKey(format!(
            "{var} loads {reason} into the C toolchain's programs, which the build's own sources \
             control: neither the build key nor go's cache reads it; load a library outside the module \
             and source tree, or unset {var} for the build"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(dir: &Path) -> OwnDirs {
        OwnDirs(vec![dir.to_owned()])
    }

    #[test]
    fn a_toolchain_command_into_the_tree_gives_no_key() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("tools")).unwrap();
        std::fs::write(root.join("tools/evilcc"), "").unwrap();
        std::fs::write(root.join("link.specs"), "").unwrap();
        let tools = root.join("tools").display().to_string();
        let dirs = [root];
        let refused = |command: &str, search: Option<&str>| {
            refuse_own_command("CC", command, search, &dirs, &own(root)).is_err()
        };
        assert!(!refused("gcc", Some("/usr/bin")));
        assert!(!refused("gcc -m64 -O2 --sysroot=/opt/sys", Some("/usr/bin")));
        assert!(refused("evilcc", Some(&format!("{tools}:/usr/bin"))));
        assert!(refused("ccache evilcc", Some(&format!("/usr/bin:{tools}"))));
        assert!(refused(&format!("gcc --config={tools}/x.cfg"), None));
        assert!(refused("gcc -specs=link.specs", None), "a file in the directory it runs in");
        assert!(refused("gcc --sysroot=sub/sys", None));
        assert!(refused("gcc -B tools", None));
        assert!(refused(&format!("gcc -Wl,--script={tools}/x.ld"), None));
        assert!(refused("evilcc", Some("tools:/usr/bin")), "a relative PATH entry");
    }

    #[test]
    fn flags_and_search_paths_into_the_tree_give_no_key() {
        let root = Path::new("/src/app");
        let dirs = [root];
        let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let refused = |text: &str| refuse_own_flags("CGO_CFLAGS", &words(text), &dirs, &own(root)).is_err();
        assert!(!refused("-O2 -g -D X=a/b -DY=/src/app -I/usr/include/x -L/opt/lib -lfoo -Wl,-z,relro"));
        assert!(!refused("-Wl,-rpath,$ORIGIN/../lib -Wl,-rpath,${ORIGIN}/lib"));
        for text in
            ["-I/src/app/include", "-I /src/app/inc", "-Iinclude/x", "-isystem=/src/app/x", "-L../lib"]
        {
            assert!(refused(text), "{text}");
        }
        assert!(refused("-Wl,-rpath,/src/app/lib") && refused("-I/usr/../src/app/inc"));
        let search = |list: &str| refuse_own_search_path("CPATH", list, &dirs, &own(root)).is_err();
        assert!(!search("/usr/local/include:/opt/include"));
        assert!(
            search("/src/app/include")
                && search("inc")
                && search("/usr/include:")
                && search("/proc/self/cwd")
        );
    }

    /// A link outside the tree to /proc/self/cwd (or /dev/fd) is the tool's directory too:
    /// it counts as /proc, whose link the agent would resolve to its own directory.
    #[test]
    fn a_link_to_proc_leads_anywhere() {
        let elsewhere = tempfile::tempdir().unwrap();
        let cwd = elsewhere.path().join("cwd");
        std::os::unix::fs::symlink("/proc/self/cwd", &cwd).unwrap();
        std::os::unix::fs::symlink("./cwd", elsewhere.path().join("again")).unwrap();
        std::os::unix::fs::symlink("/dev/fd", elsewhere.path().join("fd")).unwrap();
        std::os::unix::fs::symlink("loop", elsewhere.path().join("loop")).unwrap();
        for path in ["cwd/inc", "again/inc", "fd/3", "loop/x"] {
            assert!(may_lead_anywhere(&elsewhere.path().join(path)), "{path}");
        }
        for path in ["/proc/self/cwd/inc", "/dev/fd/3", "/usr/../src"] {
            assert!(may_lead_anywhere(Path::new(path)), "{path}");
        }
        assert!(!may_lead_anywhere(Path::new("/usr/include")) && !may_lead_anywhere(elsewhere.path()));
        let root = Path::new("/src/app");
        let words = vec![format!("-I{}", cwd.join("inc").display())];
        assert!(refuse_own_flags("CGO_CFLAGS", &words, &[root], &own(root)).is_err());
    }

    /// A tree with `files` (empty), and its path.
    fn tree_with(files: &[&str]) -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        for file in files {
            let path = tree.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        tree
    }

    #[test]
    fn a_search_path_entry_holding_a_program_gcc_runs_gives_no_key() {
        let tree =
            tree_with(&["bin/mytool", "as/as", "ld/ld.gold", "cross/x86_64-linux-gnu-gcc-12", "pkg/cc1"]);
        let root = tree.path();
        let pkg = root.join("pkg");
        let dirs = [root, pkg.as_path()];
        let refused = |path: &str| refuse_own_programs_on_path(Some(path), &dirs, &own(root)).is_err();
        let entry = |dir: &str| format!("{}:/usr/bin", root.join(dir).display());
        assert!(!refused("/usr/local/bin:/usr/bin"));
        assert!(!refused(&entry("bin")), "only an unrelated tool there");
        assert!(!refused("bin:/usr/bin") && !refused("/usr/bin:nothing"));
        assert!(refused(&entry("as")), "gcc runs as from PATH");
        assert!(refused(&entry("ld")), "-fuse-ld=gold runs ld.gold from PATH");
        assert!(refused(&entry("cross")));
        assert!(refused("as:/usr/bin"), "a relative entry, from the directory go runs in");
        assert!(refused("/usr/bin:"), "an empty entry: the package's directory holds cc1");
        let message = refuse_own_programs_on_path(Some(&entry("as")), &dirs, &own(root)).unwrap_err().0;
        assert!(message.contains("PATH") && message.contains("as/as"), "{message}");
    }

    #[test]
    fn loader_settings_into_the_tree_give_no_key() {
        let tree = tree_with(&["lib/libhook.so.1", "plain/notes.txt", "pkg/libz.so", "pkg/hook"]);
        let root = tree.path();
        let pkg = root.join("pkg");
        let dirs = [root, pkg.as_path()];
        let library =
            |list: &str| refuse_own_library_path("LD_LIBRARY_PATH", list, &dirs, &own(root)).is_err();
        let at = |dir: &str| root.join(dir).display().to_string();
        assert!(!library("/usr/lib:/opt/lib") && !library(&at("plain")) && !library("/usr/lib:nothing"));
        assert!(library(&at("lib")) && library("lib") && library("/usr/lib:") && library("/usr/lib::/opt"));
        let preload = |list: &str, library_path: Option<&str>| {
            refuse_own_preload("LD_PRELOAD", list, library_path, &dirs, &own(root)).is_err()
        };
        assert!(!preload("/usr/lib/libjemalloc.so.2 libeatmydata.so", None));
        assert!(!preload("$ORIGIN/libx.so", None));
        assert!(preload(&at("lib/libhook.so.1"), None));
        assert!(preload("/usr/lib/libc.so.6:lib/libhook.so.1", None), "relative to the directory it runs in");
        assert!(preload("hook", None), "a file of the package's directory");
        assert!(preload("libhook.so.1", Some(&at("lib"))), "found on LD_LIBRARY_PATH in the tree");
    }

    #[test]
    fn joined_options_passed_on_and_response_files_are_paths() {
        let tree = tree_with(&["pkg/syms.o", "pkg/x.ld", "pkg/args"]);
        let root = tree.path();
        let pkg = root.join("pkg");
        let dirs = [pkg.as_path()];
        let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let refused = |text: &str| refuse_own_flags("CGO_LDFLAGS", &words(text), &dirs, &own(root)).is_err();
        let r = root.display();
        for text in [
            format!("-iprefix{r}/inc/ -iwithprefixx"),
            format!("-iwithprefixbefore{r}/inc"),
            format!("-iwithprefix{r}/inc"),
            format!("-isysroot{r}/sys"),
            format!("-imultilib{r}/m"),
            format!("-iplugindir={r}/plugins"),
            format!("-inewoption{r}/x"),
            format!("-I{r}/inc=x"),
            "-Wl,-Rsyms.o".to_owned(),
            "-Wl,-Tx.ld".to_owned(),
            "-Wl,-dTx.ld".to_owned(),
            "-Wl,-l:syms.o".to_owned(),
            "-Xlinker -Rsyms.o".to_owned(),
            "-Xassembler -Rsyms.o".to_owned(),
            "-Wl,@args".to_owned(),
            "-Xlinker @args".to_owned(),
            "-Wa,@args".to_owned(),
            "@args".to_owned(),
            format!("@{r}/elsewhere"),
        ] {
            assert!(refused(&text), "{text}");
        }
        assert!(!refused("-O2 -g -Wl,-O1,--as-needed,-z,relro,-Bsymbolic -Wl,--sysroot=/opt/sys -lm"));
        assert!(!refused(
            "-iplugindir=/usr/lib/gcc/plugin -isysroot/opt/sys -Xlinker -Rfoo.o -Wl,@/etc/args"
        ));
        assert!(!refused(&format!(
            "-ffile-prefix-map={r}/=  -fdebug-prefix-map={r}=/src -fmacro-prefix-map={r}=."
        )));
        assert!(!refused(&format!("-fprofile-prefix-map={r}=/p")));
    }
}
