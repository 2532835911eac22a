//! What `#cgo pkg-config:` lines hand the C compiler and the linker. go runs pkg-config for a
//! package as it builds it, in the package's directory, and hashes none of what it prints into
//! its action IDs: a `.pc` file edited (or another one found on PKG_CONFIG_PATH) changes the
//! objects and the binary, not go's cache keys. So the printed flags are a component of the
//! build key and salt go's shared cache. Flags that point into the build's own tree name
//! headers and libraries the include scan does not follow: such a build gets no key, nor does
//! one whose flags name paths through `..` or /proc, which a lexical reading cannot place.

use std::path::{Component, Path};

use crate::inputs::{GoCall, GoEnv, NoKey, Package, var};

/// Flags whose value is a path the compiler or linker reads in.
const PATH_FLAGS: &[&str] = &[
    "-isystem",
    "-iquote",
    "-idirafter",
    "-include",
    "-imacros",
    "-isysroot",
    "--sysroot",
    "-I",
    "-L",
    "-F",
    "-B",
    "-T",
];

/// The component of `package`'s pkg-config flags, if it has `#cgo pkg-config:` lines: its
/// name, the hash of what pkg-config printed, and the packages asked for. `own_dirs` are the
/// directories of the build's own sources (the module root, the source tree).
pub(crate) async fn component(
    call: &GoCall<'_>,
    env: &GoEnv,
    package: &Package,
    own_dirs: &[&Path],
) -> Result<Option<(String, [u8; 32], String)>, NoKey> {
    if package.cgo_pkg_config.is_empty() {
        return Ok(None);
    }
    // As go does: options anywhere in the list go before the packages, and its own `--`.
    let (options, names): (Vec<&String>, Vec<&String>) =
        package.cgo_pkg_config.iter().filter(|arg| *arg != "--").partition(|arg| arg.starts_with("--"));
    // Options (`--with-path=DIR`, `--define-variable=...`) would have pkg-config read .pc
    // files from wherever a job names, with the rights of whoever derives the key (an agent).
    if let Some(option) = options.first() {
        return Err(NoKey(format!(
            "the #cgo pkg-config lines of {} pass pkg-config the option {option}, which the build key does not follow",
            package.import_path
        )));
    }
    let configured = var(env, "PKG_CONFIG");
    let program = configured.split_whitespace().next().unwrap_or("pkg-config");
    let mut printed = Vec::new();
    for what in ["--cflags", "--libs"] {
        let mut args = vec![what.to_owned()];
        args.push("--".to_owned());
        args.extend(names.iter().map(|name| name.to_string()));
        let mut invocation = call.invocation_of(program, args);
        invocation.dir = package.dir.clone().into();
        let captured = call.exec.output(&invocation).await.map_err(|err| {
            NoKey(format!(
                "cannot run {program} for the #cgo pkg-config lines of {}: {err}",
                package.import_path
            ))
        })?;
        if !captured.success() {
            return Err(NoKey(format!("{program} {what} failed: {}", captured.first_error_line())));
        }
        let text = String::from_utf8(captured.stdout)
            .map_err(|_| NoKey(format!("{program} {what} printed flags that are not UTF-8")))?;
        refuse_own_paths(&text, own_dirs)?;
        crate::includes::refuse_reading_flags(&text)?;
        printed.push(text);
    }
    // Its program too: one edited in place may print other flags to go than to the key.
    let resolved = crate::inputs::resolve(program, call).ok_or_else(|| {
        NoKey(format!("cannot find the program of PKG_CONFIG ({program}) on PATH to key it"))
    })?;
    let contents = crate::inputs::hash_file(&resolved, &mut vec![0; crate::inputs::HASH_BUFFER])
        .map_err(|err| NoKey(format!("cannot read {} (PKG_CONFIG) to key it: {err}", resolved.display())))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(printed.join("\0").as_bytes()).update(b"\0").update(&contents);
    let hash = *hasher.finalize().as_bytes();
    let shown = names.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(" ");
    Ok(Some((format!("cgo.pkg-config.{}", package.import_path), hash, shown)))
}

/// Refuses flags that name a path in the build's own tree, or a relative one (the compiler
/// runs in the package's directory), or one whose place a lexical reading cannot tell.
fn refuse_own_paths(flags: &str, own_dirs: &[&Path]) -> Result<(), NoKey> {
    named_paths(flags).into_iter().try_for_each(|path| refuse_own_path(path, own_dirs))
}

/// The paths pkg-config's flags hand the C compiler or the linker.
fn named_paths(flags: &str) -> Vec<&str> {
    let (mut paths, mut linker_args) = (Vec::new(), Vec::new());
    let mut words = flags.split_whitespace();
    while let Some(word) = words.next() {
        if let Some(list) = word.strip_prefix("-Wl,") {
            paths.extend(linker_paths(&list.split(',').collect::<Vec<_>>()));
        } else if word == "-Xlinker" {
            linker_args.extend(words.next());
        } else if let Some(flag) = PATH_FLAGS.iter().find(|flag| word.starts_with(**flag)) {
            let joined = word[flag.len()..].trim_start_matches('=');
            paths.push(if joined.is_empty() { words.next().unwrap_or("") } else { joined });
        } else if !word.starts_with('-') {
            paths.push(word);
        } else if let Some((_, value)) =
            word.split_once('=').filter(|(_, value)| value.starts_with(['/', '.']))
        {
            // `-fplugin=/dir/p.so`, `-specs=./s`: a value that is a path.
            paths.push(value);
        }
    }
    paths.extend(linker_paths(&linker_args));
    paths
}

/// Linker options whose value is a path.
const LINKER_PATH_OPTIONS: &[&str] = &[
    "-rpath",
    "--rpath",
    "-rpath-link",
    "--rpath-link",
    "-R",
    "--just-symbols",
    "-T",
    "--script",
    "--default-script",
    "--version-script",
    "--dynamic-list",
    "-L",
    "--library-path",
    "-Map",
    "--Map",
    "--retain-symbols-file",
    "--sysroot",
    "-plugin",
    "--plugin",
];
/// Linker options whose value is a plain word (`-z relro`, `-soname libx.so.1`).
const LINKER_WORD_OPTIONS: &[&str] =
    &["-z", "-soname", "--soname", "-h", "--build-id", "-O", "-e", "--entry", "--exclude-libs", "-m"];

/// The paths among the linker's arguments (the comma pieces of `-Wl,` options, or
/// `-Xlinker` values): a piece that is not an option is an input file or the value of the
/// option before it, a path unless that option takes a plain word; an option's `=value` is a
/// path for options that take one, or when it looks like one; `-L`, `-R` and `-T` take theirs
/// joined too.
fn linker_paths<'a>(pieces: &[&'a str]) -> Vec<&'a str> {
    let mut paths = Vec::new();
    for (at, piece) in pieces.iter().enumerate() {
        let before = if at > 0 { pieces[at - 1] } else { "" };
        if !piece.starts_with('-') {
            if !LINKER_WORD_OPTIONS.contains(&before) {
                paths.push(*piece);
            }
        } else if let Some((name, value)) = piece.split_once('=') {
            if LINKER_PATH_OPTIONS.contains(&name) || value.starts_with('.') || value.contains('/') {
                paths.push(value);
            }
        } else if let Some(joined) = ["-L", "-R", "-T"].iter().find_map(|flag| piece.strip_prefix(flag))
            && !joined.is_empty()
            && !joined.starts_with('-')
        {
            paths.push(joined);
        }
    }
    paths
}

/// Refuses `path` if it is relative, in one of `own_dirs`, or placed where a lexical reading
/// cannot tell: through `..` (past a symbolic link it climbs out of somewhere else) or
/// through /proc (`/proc/self/cwd` is wherever the compiler runs).
fn refuse_own_path(path: &str, own_dirs: &[&Path]) -> Result<(), NoKey> {
    let named = Path::new(path);
    // Path's components drop repeated separators and `.` past the start.
    let unplaceable = named.components().any(|part| part == Component::ParentDir)
        || ["/proc", "/dev/fd"].iter().any(|alias| named.starts_with(alias));
    if unplaceable {
        return Err(NoKey(format!(
            "pkg-config points the C compiler or linker at {path}, a path through .. or /proc that may lead \
             into the build's own tree, which the build key does not follow"
        )));
    }
    if !named.is_absolute() || own_dirs.iter().any(|dir| named.starts_with(dir)) {
        return Err(NoKey(format!(
            "pkg-config points the C compiler or linker at {path} in the build's own tree, which the build \
             key does not follow"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_into_the_tree_or_relative_give_no_key() {
        let tree = Path::new("/src/app");
        let system = "-I/usr/include/libpng16 -DPNG=1 -L/usr/lib -lpng16 -lz -pthread -Wl,-rpath,/opt/lib";
        assert!(refuse_own_paths(system, &[tree]).is_ok());
        for own in [
            "-I/src/app/third_party/png",
            "-I /src/app/inc",
            "-Iinclude",
            "-L../lib",
            "/src/app/lib/libx.a",
            "-Wl,-rpath,/src/app/lib",
            "-include ./config.h",
            "--sysroot=/src/app/sysroot",
            "-isystem=../sys",
        ] {
            assert!(refuse_own_paths(own, &[tree]).is_err(), "{own}");
        }
    }

    /// The check compared text: `..`, `/proc/self/cwd` (the compiler runs in the package's
    /// directory) and `-Wl,` pieces that do not start with `/` or `.` reached the tree.
    #[test]
    fn paths_into_the_tree_by_any_spelling_give_no_key() {
        let tree = Path::new("/src/app");
        for own in [
            "-I/usr/../src/app/inc",
            "-I/usr/include/../../src/app/inc",
            "-I/proc/self/cwd/inc",
            "-L/proc/1/root/src/app/lib",
            "-I/dev/fd/3",
            "-I//src//app/./inc",
            "-Wl,-R,file",
            "-Wl,-R,/src/app/lib",
            "-Wl,-Rlib",
            "-Wl,--version-script=v.map",
            "-Wl,--just-symbols,syms",
            "-Wl,-T,ld.script",
            "-Wl,@args",
            "-Wl,--as-needed,obj.o",
            "-Xlinker -R -Xlinker file",
            "-fplugin=/src/app/plugin.so",
        ] {
            assert!(refuse_own_paths(own, &[tree]).is_err(), "{own}");
        }
        let system = "-Wl,-z,relro -Wl,-soname,libx.so.1 -Wl,--hash-style=gnu -Wl,-rpath=/opt/lib \
                      -Wl,--as-needed -Wl,-R/usr/lib -Xlinker -z -Xlinker now -I/usr/include/./x";
        assert!(refuse_own_paths(system, &[tree]).is_ok());
    }
}
