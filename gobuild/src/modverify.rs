//! Modules from the module cache checked against their go.sum checksum, as `go mod verify`
//! checks them, before a build that compiles their C, C++, assembly or cgo sources is keyed by
//! their version.
//!
//! go checks a module's files against go.sum only when it extracts them, never after, so a
//! module cache edited since (a runner's, which a job may write) still says the same version
//! and checksum. The files go lists for each package are hashed into the key
//! ([`crate::inputs`]), which is all a pure Go package reads; native sources also read headers
//! beside their package and libraries their `#cgo` flags name, anywhere in the module. Scanning
//! those as the build's own tree is scanned would refuse popular modules (go-sqlite3 includes
//! a file a macro names); the whole module directory, checked against its checksum, covers
//! every file they can read in it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::filememo::FileMemo;
use crate::includes;
use crate::inputs::{self, NoKey, Package};

/// The most a module's files may hold: go refuses to extract a larger module (its zip's
/// uncompressed limit), and the directory is read before each build.
const MAX_MODULE_BYTES: u64 = 500 << 20;
/// The most files a module directory may hold before it is taken for something go did not
/// extract.
const MAX_MODULE_FILES: usize = 100_000;

/// SHA-256 of module files: a cgo module may bundle tens of MiB of libraries, read before each
/// derivation of the key.
static MODULE_FILES: FileMemo = FileMemo::new();

/// The modules from the module cache whose directories a build's native sources may read,
/// and those sources.
#[derive(Debug, Clone, Default)]
pub(crate) struct NativeModules {
    modules: BTreeMap<PathBuf, Checked>,
    packages: Vec<includes::Sources>,
    gomodcache: PathBuf,
}

/// What a module directory must hash to.
#[derive(Debug, Clone)]
struct Checked {
    /// `path@version`, the prefix of every file's name in the hash.
    prefix: String,
    /// The `h1:` checksum `go list` gives (`Module.Sum`): the `.ziphash` go checked against
    /// go.sum when it extracted the module.
    sum: String,
}

impl NativeModules {
    pub(crate) fn of(packages: &[Package], gomodcache: &str) -> Self {
        let mut native = Self { gomodcache: PathBuf::from(gomodcache), ..Self::default() };
        for package in packages.iter().filter(|package| !package.standard) {
            let Some(module) = inputs::extracted_module(package, gomodcache) else { continue };
            let Some(sources) = inputs::include_sources(package) else { continue };
            let checked =
                Checked { prefix: format!("{}@{}", module.path, module.version), sum: module.sum.clone() };
            native.modules.insert(PathBuf::from(&module.dir), checked);
            native.packages.push(sources);
        }
        native
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Refuses a key when a module's directory is not what its checksum says, or a package's
    /// `#cgo` flags name files outside the modules checked. Reads every file of each module:
    /// run it off the async threads.
    pub(crate) fn refuse_edited(&self) -> Result<(), NoKey> {
        includes::refuse_flags_outside_modules(&self.packages, &self.gomodcache, &includes::LIMITS)?;
        for (dir, checked) in &self.modules {
            let found = dir_hash(dir, &checked.prefix)?;
            if found != checked.sum {
                return Err(NoKey(format!(
                    "the module cache's copy of {} ({}) is not what go.sum's checksum says ({}, found {found}): \
                     its files changed since go extracted them; `go mod verify` names it, and \
                     `go clean -modcache` lets go download it again",
                    checked.prefix,
                    dir.display(),
                    checked.sum
                )));
            }
        }
        Ok(())
    }
}

/// The `h1:` hash of the files under `dir` named `prefix/<path>` (golang.org/x/mod's dirhash
/// Hash1): SHA-256 of the lines `<sha256 hex>  <name>\n` of the files sorted by name.
pub(crate) fn dir_hash(dir: &Path, prefix: &str) -> Result<String, NoKey> {
    let files = module_files(dir)?;
    let paths: Vec<&Path> = files.values().map(PathBuf::as_path).collect();
    let digests = crate::filememo::digests(&MODULE_FILES, &paths, sha256_file)
        .map_err(|(path, err)| NoKey(format!("cannot read {}: {err}", path.display())))?;
    let mut summary = String::new();
    for (name, digest) in files.keys().zip(digests) {
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let _ = writeln!(summary, "{hex}  {prefix}/{name}");
    }
    let digest = Sha256::digest(summary.as_bytes());
    Ok(format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// Every file under `dir` by its name there (`/`-separated), sorted by name. A link, a
/// device, a name that is not UTF-8 or has a newline, or more than a module may hold is
/// nothing go extracts: refused.
fn module_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, NoKey> {
    let refuse = |what: String| {
        NoKey(format!("the module cache's {} holds {what}, which go never extracts", dir.display()))
    };
    let cannot = |path: &Path, err: std::io::Error| NoKey(format!("cannot list {}: {err}", path.display()));
    let mut files = BTreeMap::new();
    let mut bytes = 0u64;
    let mut dirs = vec![(dir.to_owned(), String::new())];
    while let Some((path, name)) = dirs.pop() {
        for entry in std::fs::read_dir(&path).map_err(|err| cannot(&path, err))? {
            let entry = entry.map_err(|err| cannot(&path, err))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str().filter(|text| !text.contains('\n')) else {
                return Err(refuse(format!("a file named {:?}", entry.path())));
            };
            let entry_name =
                if name.is_empty() { file_name.to_owned() } else { format!("{name}/{file_name}") };
            let meta = entry.metadata().map_err(|err| cannot(&entry.path(), err))?;
            if meta.is_dir() {
                dirs.push((entry.path(), entry_name));
            } else if meta.is_file() {
                bytes += meta.len();
                if bytes > MAX_MODULE_BYTES || files.len() >= MAX_MODULE_FILES {
                    return Err(refuse("more files than a module may".to_owned()));
                }
                files.insert(entry_name, entry.path());
            } else {
                return Err(refuse(format!("{} (a link or a special file)", entry.path().display())));
            }
        }
    }
    Ok(files)
}

/// SHA-256 of the regular file at `path`, opened without following a link.
fn sha256_file(path: &Path, buffer: &mut [u8]) -> std::io::Result<[u8; 32]> {
    let mut file = includes::open_regular(path)?;
    let mut hasher = Sha256::new();
    loop {
        match file.read(buffer) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(read) => hasher.update(&buffer[..read]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go never extracts a link: one in a module directory (to a file the job controls)
    /// gives no key, whatever it hashes to.
    #[test]
    fn a_link_in_a_module_directory_gives_no_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.h"), "#define A 1\n").unwrap();
        let before = dir_hash(dir.path(), "example.com/m@v1.0.0").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("b.h")).unwrap();
        let refused = dir_hash(dir.path(), "example.com/m@v1.0.0").unwrap_err();
        assert!(refused.0.contains("a link or a special file"), "{}", refused.0);
        std::fs::remove_file(dir.path().join("b.h")).unwrap();
        assert_eq!(dir_hash(dir.path(), "example.com/m@v1.0.0").unwrap(), before);
    }
}
