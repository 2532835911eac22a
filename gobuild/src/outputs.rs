//! Where go build writes its outputs, and moving them to and from the cache.

use std::io::Read;
use std::path::{Path, PathBuf};

use proto::Digest;

use crate::inputs::Root;
use cached_client::connect::Client;
use cached_client::error::{ClientError, Result};
use cached_client::transfer;

/// zstd level for output uploads: the build waits for them, and level 1 costs a third less
/// than 3 for a few percent of ratio on Go binaries.
const UPLOAD_LEVEL: i32 = 1;
/// Mode of restored executables.
pub const EXECUTABLE: u32 = 0o755;

/// One file go build writes: the package it is the binary of, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub package: String,
    pub path: PathBuf,
}

/// Whether `elem` is a major-version suffix (`v2`, `v10`) as go's DefaultExecName sees it:
/// not `v1`, nor one with a leading zero (`v0`, `v05`), which name the binary themselves.
fn is_version_element(elem: &str) -> bool {
    let Some(digits) = elem.strip_prefix('v') else { return false };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
        && digits != "1"
}

/// Whether go takes the -o path for its null device and writes nothing (cmd/go's base.IsNull).
fn is_null_device(output: &Path) -> bool {
    if cfg!(windows) {
        output.as_os_str().eq_ignore_ascii_case("NUL")
    } else {
        output == Path::new("/dev/null")
    }
}

/// The executable name go gives a main package: its last path element (the one before a
/// major-version suffix), with `.exe` for Windows.
pub fn exe_name(import_path: &str, goos: &str) -> String {
    let mut parts = import_path.rsplit('/');
    let mut name = parts.next().unwrap_or(import_path);
    if name != import_path && is_version_element(name) {
        name = parts.next().unwrap_or(name);
    }
    if goos == "windows" { format!("{name}.exe") } else { name.to_owned() }
}

/// The files a build writes, or why the wrapper cannot tell (then it does not cache).
pub fn plan(
    output: Option<&Path>,
    roots: &[Root],
    goos: &str,
    dir: &Path,
) -> std::result::Result<Vec<Planned>, String> {
    let mains: Vec<&Root> = roots.iter().filter(|r| r.is_main).collect();
    let planned = |root: &Root, path: PathBuf| Planned { package: root.import_path.clone(), path };
    match output {
        // go builds and discards: nothing to record or to restore.
        Some(output) if is_null_device(output) => Ok(Vec::new()),
        Some(output) => {
            let path = dir.join(output);
            let text = output.to_string_lossy();
            if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
                return Ok(mains
                    .iter()
                    .map(|root| planned(root, path.join(exe_name(&root.import_path, goos))))
                    .collect());
            }
            match (roots.len(), mains.first()) {
                (1, Some(root)) => Ok(vec![planned(root, path)]),
                (1, None) => {
                    Err("-o with a non-main package writes an archive, which is not cached".to_owned())
                }
                _ => Err("-o names a file but several packages are built".to_owned()),
            }
        }
        None => match (roots.len(), mains.first()) {
            (1, Some(root)) => Ok(vec![planned(root, dir.join(exe_name(&root.import_path, goos)))]),
            // Several packages, or a library: go checks that they build and writes nothing.
            _ => Ok(Vec::new()),
        },
    }
}

/// The first bytes of the files go overwrites with a build's output (cmd/go's objectMagic):
/// archives, ELF, Mach-O, PE, Plan 9, wasm, XCOFF.
const OBJECT_MAGIC: &[&[u8]] = &[
    b"!<arch>\n",
    b"<bigaf>\n",
    b"\x7fELF",
    &[0xFE, 0xED, 0xFA, 0xCE],
    &[0xFE, 0xED, 0xFA, 0xCF],
    &[0xCE, 0xFA, 0xED, 0xFE],
    &[0xCF, 0xFA, 0xED, 0xFE],
    &[0x4d, 0x5a, 0x90, 0x00, 0x03, 0x00],
    &[0x4d, 0x5a, 0x78, 0x00, 0x01, 0x00],
    &[0x00, 0x00, 0x01, 0xEB],
    &[0x00, 0x00, 0x8a, 0x97],
    &[0x00, 0x00, 0x06, 0x47],
    &[0x00, 0x61, 0x73, 0x6D],
    &[0x01, 0xDF],
    &[0x01, 0xF7],
];

/// Whether go would write a build's output over what is at `path` (cmd/go's
/// checkDstOverwrite): nothing, or an empty file or an object file; not a directory, nor a
/// file of anything else (a script named like the binary), which go refuses to replace and
/// fails the build on.
pub fn go_would_overwrite(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return true };
    if meta.is_dir() {
        return false;
    }
    if !meta.is_file() || meta.len() == 0 {
        return true;
    }
    let mut start = Vec::with_capacity(64);
    let read = std::fs::File::open(path).and_then(|file| file.take(64).read_to_end(&mut start));
    read.is_ok() && OBJECT_MAGIC.iter().any(|magic| start.starts_with(magic))
}

/// The mode go gives a binary it writes (0777 less the umask), so a hit writes what a build
/// would: under `umask 077`, a binary others may not run.
#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o777 & !process_umask();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(ClientError::file(path))
}

/// The process's umask as Linux reports it (`Umask:` in /proc/self/status), else the usual
/// 022. Setting it to read it back would race with every other thread creating files.
#[cfg(unix)]
fn process_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let reported = status.lines().find_map(|line| line.strip_prefix("Umask:"));
    reported.and_then(|mask| u32::from_str_radix(mask.trim(), 8).ok()).unwrap_or(0o022)
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

/// Downloads each recorded output to its planned path (verified, atomic, with go's mode).
pub async fn restore(
    client: &Client,
    planned: &[Planned],
    recorded: &[proto::v1::BuildOutput],
) -> Result<Vec<(PathBuf, Digest)>> {
    let mut written = Vec::with_capacity(planned.len());
    for output in planned {
        let stored = recorded.iter().find(|r| r.path == output.package).ok_or_else(|| {
            ClientError::Server(format!("the cached build has no output for {}", output.package))
        })?;
        let digest =
            Digest::from_wire(stored.digest.as_ref()).map_err(|err| ClientError::Server(err.to_string()))?;
        if let Some(parent) = output.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(ClientError::file(parent))?;
        }
        // The download renames its file over the path: never over a device, a FIFO or a
        // directory, which go would not have replaced.
        if let Ok(meta) = std::fs::symlink_metadata(&output.path)
            && !(meta.is_file() || meta.file_type().is_symlink())
        {
            return Err(not_a_file(&output.path, "replace it with the build's output"));
        }
        // Nor over a file go would refuse to overwrite: go build fails there.
        if !go_would_overwrite(&output.path) {
            return Err(ClientError::Local {
                what: format!(
                    "{} already exists and is not an object file, so go would not replace it",
                    output.path.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists).into(),
            });
        }
        transfer::download_to_file(client, digest, &output.path).await?;
        make_executable(&output.path)?;
        written.push((output.path.clone(), digest));
    }
    Ok(written)
}

/// Uploads the outputs the build wrote; returns them with their digests. Each must be a
/// regular file (the planned outputs were removed before the build, so one is what go wrote).
pub async fn upload(client: &Client, planned: &[Planned]) -> Result<Vec<(Planned, Digest)>> {
    for output in planned {
        if !std::fs::symlink_metadata(&output.path).is_ok_and(|meta| meta.is_file()) {
            return Err(not_a_file(&output.path, "record it as the build's output"));
        }
    }
    let paths: Vec<PathBuf> = planned.iter().map(|p| p.path.clone()).collect();
    let digests = transfer::upload_files(client, &paths, UPLOAD_LEVEL).await?;
    Ok(planned.iter().cloned().zip(digests).collect())
}

fn not_a_file(path: &Path, what: &str) -> ClientError {
    ClientError::Local {
        what: format!(
            "{} is not a regular file written by the build, so the wrapper will not {what}",
            path.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput).into(),
    }
}

/// The digests of the outputs without uploading them (no server).
pub async fn hash(planned: &[Planned]) -> Vec<(PathBuf, Digest)> {
    let paths: Vec<PathBuf> = planned.iter().map(|p| p.path.clone()).collect();
    cached_client::task::spawn_blocking("hash-outputs", move || {
        paths
            .into_iter()
            .filter_map(|path| transfer::hash_file(&path).ok().map(|digest| (path, digest)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(path: &str, main: bool) -> Root {
        Root { import_path: path.to_owned(), is_main: main, dir: PathBuf::from("/m") }
    }

    #[test]
    fn names_follow_go() {
        assert_eq!(exe_name("example.com/m/cmd/app", "linux"), "app");
        assert_eq!(exe_name("example.com/tool/v2", "linux"), "tool");
        assert_eq!(exe_name("example.com/m/cmd/app", "windows"), "app.exe");
        assert_eq!(exe_name("app", "linux"), "app");
        assert_eq!(exe_name("example.com/x/v1", "linux"), "v1");
        // go's isVersionElement: a leading zero is a name, not a major version.
        assert_eq!(exe_name("example.com/m/cmd/app/v05", "linux"), "v05");
        assert_eq!(exe_name("example.com/m/cmd/app/v0", "linux"), "v0");
        assert_eq!(exe_name("example.com/m/cmd/app/v10", "linux"), "app");
    }

    #[test]
    fn plans_cover_files_directories_and_libraries() {
        let dir = Path::new("/work");
        let app = [root("m/cmd/app", true)];
        assert_eq!(plan(None, &app, "linux", dir).unwrap()[0].path, Path::new("/work/app"));
        assert_eq!(
            plan(Some(Path::new("bin/x")), &app, "linux", dir).unwrap()[0].path,
            Path::new("/work/bin/x")
        );
        let two = [root("m/cmd/a", true), root("m/cmd/b", true), root("m/lib", false)];
        let planned = plan(Some(Path::new("out/")), &two, "windows", dir).unwrap();
        assert_eq!(
            planned.iter().map(|p| p.path.clone()).collect::<Vec<_>>(),
            [Path::new("/work/out/a.exe"), Path::new("/work/out/b.exe")]
        );
        assert!(plan(None, &two, "linux", dir).unwrap().is_empty());
        assert!(plan(Some(Path::new("x.a")), &[root("m/lib", false)], "linux", dir).is_err());
        // go builds for -o /dev/null and writes nothing; recording /dev/null's nothing as the
        // binary served it to later builds of the same key.
        assert!(plan(Some(Path::new("/dev/null")), &app, "linux", dir).unwrap().is_empty());
    }
}
