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
    /// `extra` are the main module's (or workspace's) directory and the source tree.
    pub(crate) fn of(env: &GoEnv, packages: &[Package], extra: &[&Path]) -> Self {
        let gomodcache = env.get("GOMODCACHE").map_or("", String::as_str);
        let modules = packages.iter().filter(|package| !package.standard).filter_map(|package| {
            let module = package.module.as_ref()?;
            let dir = &module.replace.as_deref().unwrap_or(module).dir;
            let cached = !gomodcache.is_empty() && Path::new(dir).starts_with(gomodcache);
            (!dir.is_empty() && !cached).then(|| PathBuf::from(dir))
        });
        let named: Vec<PathBuf> = extra.iter().map(|dir| dir.to_path_buf()).chain(modules).collect();
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
/// lexical reading cannot place (`..`, /proc). `dirs` are where the toolchain runs.
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
    let unplaceable = path.components().any(|part| part == Component::ParentDir)
        || ["/proc", "/dev/fd"].iter().any(|alias| path.starts_with(alias));
    unplaceable.then(|| format!("{text}, which may lead into the build's own tree"))
}

/// Options whose value (joined, or the next word) is a word, never a file.
const WORD_OPTIONS: &[&str] = &["-D", "-U", "-x", "-std", "-z", "-MT", "-MQ"];

/// The pieces of a compiler command or flags variable that may name a file: words that are no
/// options, an option's `=value`, the rest of a joined short option, the pieces of `-Wl,`,
/// `-Wa,` and `-Wp,` lists.
fn path_like(words: &[String]) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut after_word_option = false;
    for word in words {
        if std::mem::take(&mut after_word_option) {
            continue;
        }
        if WORD_OPTIONS.contains(&word.as_str()) {
            after_word_option = true;
        } else if let Some(list) = ["-Wl,", "-Wa,", "-Wp,"].iter().find_map(|list| word.strip_prefix(list)) {
            pieces.extend(list.split(',').map(|piece| piece.split_once('=').map_or(piece, |(_, v)| v)));
        } else if !word.starts_with('-') {
            pieces.push(word.as_str());
        } else if WORD_OPTIONS.iter().any(|option| word.starts_with(option)) {
        } else if let Some((_, value)) = word.split_once('=') {
            pieces.push(value);
        } else if let Some(rest) = word.strip_prefix("-I").or_else(|| word.strip_prefix("-L")) {
            pieces.push(rest);
        } else if let Some(rest) =
            ["-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-B", "-F", "-T"]
                .iter()
                .find_map(|option| word.strip_prefix(option))
        {
            pieces.push(rest);
        }
    }
    pieces
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
}
