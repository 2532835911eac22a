//! What `#cgo pkg-config:` lines hand the C compiler and the linker. go runs pkg-config for a
//! package as it builds it, in the package's directory, and hashes none of what it prints into
//! its action IDs: a `.pc` file edited (or another one found on PKG_CONFIG_PATH) changes the
//! objects and the binary, not go's cache keys. So the printed flags are a component of the
//! build key and salt go's shared cache. Flags that point into the build's own tree name
//! headers and libraries the include scan does not follow: such a build gets no key.

use std::path::Path;

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
        printed.push(text);
    }
    let hash = *blake3::hash(printed.join("\0").as_bytes()).as_bytes();
    let shown = names.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(" ");
    Ok(Some((format!("cgo.pkg-config.{}", package.import_path), hash, shown)))
}

/// Refuses flags that name a path in the build's own tree, or a relative one (the compiler
/// runs in the package's directory).
fn refuse_own_paths(flags: &str, own_dirs: &[&Path]) -> Result<(), NoKey> {
    let mut words = flags.split_whitespace();
    while let Some(word) = words.next() {
        let paths: Vec<&str> = if let Some(list) = word.strip_prefix("-Wl,") {
            list.split(',').filter(|piece| piece.starts_with(['/', '.'])).collect()
        } else if let Some(flag) = PATH_FLAGS.iter().find(|flag| word.starts_with(**flag)) {
            let joined = word[flag.len()..].trim_start_matches('=');
            vec![if joined.is_empty() { words.next().unwrap_or("") } else { joined }]
        } else if word.starts_with('-') {
            Vec::new()
        } else {
            vec![word]
        };
        for path in paths {
            let own = !path.starts_with('/') || own_dirs.iter().any(|dir| Path::new(path).starts_with(dir));
            if own {
                return Err(NoKey(format!(
                    "pkg-config points the C compiler or linker at {path} in the build's own tree, which the build \
                     key does not follow"
                )));
            }
        }
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
}
