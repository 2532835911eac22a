//! The agent's store of extracted module zips. Each task starts with an empty module cache
//! (GOMODCACHE), and the go command would extract every dependency's zip from the job's proxy
//! again for every task: for crane, 113 MB in 2,801 files, about 3 s per task on a 2-core VM,
//! mostly the kernel creating files. Instead the agent extracts each zip once into
//! `<work-dir>/modules/<zip digest>/` (private to the agent, files read-only) and hard-links the
//! files into a task's module cache beside the zip's `.ziphash`, before anything of the build
//! runs. The go command then finds the module extracted and checks the hash against go.sum, as
//! it does its own extractions.
//!
//! The store is keyed by the zip's content digest, never by module and version: a job ships its
//! own proxy and go.sum, so two jobs may ship different bytes under one version, and a task only
//! ever gets the extraction of the very zip it shipped. The files stay the agent's: a build user
//! can read its links but not change them. A zip that the agent would not extract exactly as the
//! go command does (a name outside `<module>@<version>/`, an unusual file name, a directory or
//! link entry, a nested module or vendor directory, more than 500 MiB) is left to the go
//! command.
//!
//! Extraction is only a speed-up: whatever the store does not lay out, the go command extracts
//! itself, and only the modules the build needs. A job's proxy, though, may hold zips its build
//! never opens, each up to 500 MiB extracted from half a MiB of zip. So one task makes the agent
//! extract at most [`TASK_EXTRACTION`] (or an eighth of the store's cap, if less); the next task
//! of the same modules links those and extracts the next share. The store holds at most its cap,
//! counting the trees running tasks have linked: a task's hard links keep a tree's blocks in use
//! however the store forgets it, so a tree stays in the store, and in its count, until every task
//! that linked it has ended. Room is made before an extraction, by dropping the least recently
//! used trees no running task holds, for the bytes the zip declares (its files rounded up to
//! whole blocks); an extraction that finds no room, or that would pass its task's share, is left
//! to the go command, and one that writes more than its zip declared is stopped there. The store
//! is emptied when the agent starts.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use proto::Digest;
use sha2::{Digest as _, Sha256};

use crate::TaskError;
use crate::sandbox::{self, Owner};

/// The go command's limit on a module zip's extracted size (golang.org/x/mod/zip).
const MAX_EXTRACTED: u64 = 500 << 20;

/// The most one task makes the agent extract (of trees the store lacks). Large enough for the
/// dependencies of most modules at once (crane's are 113 MB), small beside the store's cap.
pub const TASK_EXTRACTION: u64 = 1 << 30;

/// What a file or directory costs on disk at least: a file's bytes are rounded up to it.
const BLOCK: u64 = 4096;

/// A module zip of a job's proxy: where the blob cache holds it, and the module it is of.
#[derive(Debug, Clone)]
pub struct ModuleZip {
    pub digest: Digest,
    /// The zip in the agent's blob cache.
    pub file: PathBuf,
    /// Module path and version as the proxy and the module cache spell them (escaped).
    pub escaped_path: String,
    pub escaped_version: String,
}

impl ModuleZip {
    /// The zip a proxy-tree path names (`<escaped module>/@v/<escaped version>.zip`), if it is one.
    pub fn from_proxy_path(path: &str, digest: Digest, file: PathBuf) -> Option<Self> {
        let (module, file_name) = path.rsplit_once("/@v/")?;
        let version = file_name.strip_suffix(".zip")?;
        let plain = |element: &str| !element.is_empty() && element != "." && element != "..";
        (module.split('/').all(plain) && plain(version) && !version.contains('/')).then(|| Self {
            digest,
            file,
            escaped_path: module.to_owned(),
            escaped_version: version.to_owned(),
        })
    }

    /// `<module>@<version>/`, the prefix of every name in the zip.
    fn prefix(&self) -> Option<String> {
        Some(format!("{}@{}/", unescape(&self.escaped_path)?, unescape(&self.escaped_version)?))
    }
}

/// The agent's extracted modules, shared by its tasks.
#[derive(Debug, Clone)]
pub struct ModuleStore {
    dir: PathBuf,
    books: Arc<Mutex<Books>>,
}

/// Refused zips remembered (32 bytes each) before the list starts over.
const REFUSED_REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
struct Books {
    cap: u64,
    /// What one task may make the agent extract.
    task_share: u64,
    /// Bytes of the trees in the store (as [`charge`] counts them), held or not.
    total: u64,
    /// Bytes set aside for extractions under way.
    reserved: u64,
    clock: u64,
    /// zip digest → extracted tree
    trees: HashMap<Digest, Tree>,
    /// Zips found not to extract as the go command would: left to it.
    refused: HashSet<Digest>,
    /// Trees running tasks have linked (or are linking), and how many such tasks: never
    /// dropped, their blocks stay in use through the tasks' links.
    in_use: HashMap<Digest, usize>,
}

impl Books {
    fn remember_refused(&mut self, digest: Digest) {
        // Forgetting costs one more attempt at a zip; remembering every distinct one a
        // tenant sends would grow without bound.
        if self.refused.len() >= REFUSED_REMEMBERED {
            self.refused.clear();
        }
        self.refused.insert(digest);
    }

    /// Sets `bytes` aside for an extraction, first dropping the least recently used trees no
    /// task holds as far as needed; `None` when even that leaves too little room. The trees
    /// dropped are returned, for their directories to be removed.
    fn reserve(&mut self, bytes: u64) -> Option<Vec<Digest>> {
        let fits = |books: &Self| books.total + books.reserved + bytes <= books.cap;
        let mut unheld: Vec<(u64, Digest, u64)> = self
            .trees
            .iter()
            .filter(|(digest, _)| !self.in_use.contains_key(*digest))
            .map(|(digest, tree)| (tree.used, *digest, tree.size))
            .collect();
        let freeable: u64 = unheld.iter().map(|(_, _, size)| size).sum();
        if self.total - freeable + self.reserved + bytes > self.cap {
            return None;
        }
        unheld.sort();
        let mut victims = Vec::new();
        for (_, digest, size) in unheld {
            if fits(self) {
                break;
            }
            self.trees.remove(&digest);
            self.total -= size;
            victims.push(digest);
        }
        self.reserved += bytes;
        Some(victims)
    }

    fn hold(&mut self, digest: Digest) {
        *self.in_use.entry(digest).or_default() += 1;
    }
}

/// What disk an extraction of files of these sizes, in these directories, takes at least.
fn charge(sizes: impl Iterator<Item = u64>, directories: usize) -> u64 {
    let files: u64 = sizes.map(|size| size.div_ceil(BLOCK).max(1) * BLOCK).sum();
    files + directories as u64 * BLOCK
}

#[derive(Debug, Clone)]
struct Tree {
    /// Paths relative to the module's directory; shared, so handing a tree to a task is cheap.
    files: Arc<[String]>,
    /// `h1:` of the zip, as go.sum has it.
    hash: String,
    /// Its cost on disk, as [`charge`] counts it.
    size: u64,
    used: u64,
}

/// The trees a task linked into its module cache, held in the store (and in its count) until
/// this is dropped: drop it once the task's directory is removed.
#[derive(Debug)]
pub struct Linked {
    books: Arc<Mutex<Books>>,
    digests: Vec<Digest>,
}

impl Drop for Linked {
    fn drop(&mut self) {
        let mut books = self.books.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for digest in &self.digests {
            release(&mut books, *digest);
        }
    }
}

fn release(books: &mut Books, digest: Digest) {
    if let Some(count) = books.in_use.get_mut(&digest) {
        *count -= 1;
        if *count == 0 {
            books.in_use.remove(&digest);
        }
    }
}

/// What a task got from the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub linked: usize,
    pub extracted: usize,
    pub left_to_go: usize,
}

impl ModuleStore {
    /// The store in `dir`, emptied, holding at most `cap` bytes of trees, those running tasks
    /// hold included.
    pub fn open(dir: PathBuf, cap: u64) -> Result<Self, TaskError> {
        let failed = |err: std::io::Error| TaskError::Infrastructure(format!("{}: {err}", dir.display()));
        if dir.exists() {
            crate::taskdir::remove_tree(&dir).map_err(failed)?;
        }
        std::fs::create_dir_all(&dir).map_err(failed)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
        let task_share = TASK_EXTRACTION.min(cap / 8);
        Ok(Self { dir, books: Arc::new(Mutex::new(Books { cap, task_share, ..Books::default() })) })
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tree_dir(&self, digest: Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Lays the zips of `zips` out in the module cache `gomodcache` (the task's, empty, nothing
    /// of the build running yet), extracting those the store lacks within the task's share and
    /// the store's room. The trees stay held until the [`Linked`] is dropped. Blocking.
    pub fn prepare(&self, zips: &[ModuleZip], gomodcache: &Path, owner: Option<Owner>) -> (Prepared, Linked) {
        let mut prepared = Prepared::default();
        let mut linked = Linked { books: Arc::clone(&self.books), digests: Vec::new() };
        let mut share = self.books().task_share;
        for zip in zips {
            let tree = match self.tree(zip, share) {
                Ok(Some((tree, extracted))) => {
                    if extracted {
                        prepared.extracted += 1;
                        share = share.saturating_sub(tree.size);
                    }
                    tree
                }
                Ok(None) => {
                    prepared.left_to_go += 1;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(zip = %zip.file.display(), error = %err, "module zip left to the go command");
                    prepared.left_to_go += 1;
                    continue;
                }
            };
            // Held from here: even a half-made module directory's links keep the tree's blocks.
            linked.digests.push(zip.digest);
            match self.link(zip, &tree, gomodcache, owner) {
                Ok(()) => prepared.linked += 1,
                Err(err) => {
                    // A half-made module directory would be taken for an extraction: remove it.
                    let _ = crate::taskdir::remove_tree(&module_dir(gomodcache, zip));
                    tracing::warn!(module = %zip.escaped_path, error = %err, "module left to the go command");
                    prepared.left_to_go += 1;
                }
            }
        }
        (prepared, linked)
    }

    /// The zip's tree, held (counted once more in `in_use`) for the caller; `None` if it is left
    /// to the go command. The flag says whether it was extracted now, within `share` bytes.
    fn tree(&self, zip: &ModuleZip, share: u64) -> Result<Option<(Tree, bool)>, String> {
        {
            let mut books = self.books();
            if books.refused.contains(&zip.digest) {
                return Ok(None);
            }
            books.clock += 1;
            let clock = books.clock;
            if let Some(tree) = books.trees.get_mut(&zip.digest) {
                tree.used = clock;
                let tree = tree.clone();
                books.hold(zip.digest);
                return Ok(Some((tree, false)));
            }
        }
        if share == 0 {
            return Ok(None);
        }
        let Some(prefix) = zip.prefix() else { return self.refuse(zip, "its module path does not unescape") };
        let contents = match inspect(&zip.file, &prefix)? {
            Inspection::Extractable(contents) => contents,
            Inspection::LeftToGo(why) => return self.refuse(zip, &why),
        };
        if contents.charge > share {
            tracing::info!(module = %zip.escaped_path, version = %zip.escaped_version, bytes = contents.charge,
                "module zip left to the go command: past what one task may have the agent extract");
            return Ok(None);
        }
        let Some(victims) = self.books().reserve(contents.charge) else {
            tracing::info!(module = %zip.escaped_path, version = %zip.escaped_version, bytes = contents.charge,
                "module zip left to the go command: the store is full of trees running tasks hold");
            return Ok(None);
        };
        self.remove_trees(victims);
        let staging = self.staging(zip);
        let extracted = self.extract_reserved(zip, &contents, &staging);
        let mut books = self.books();
        books.reserved -= contents.charge;
        let (files, hash) = match extracted {
            Ok(Some(done)) => done,
            Ok(None) => {
                drop(books);
                return self.refuse(zip, "its files hold more than the sizes it declares");
            }
            Err(err) => return Err(err),
        };
        if let Some(tree) = books.trees.get(&zip.digest).cloned() {
            // Another task extracted it meanwhile.
            books.hold(zip.digest);
            drop(books);
            let _ = crate::taskdir::remove_tree(&staging);
            return Ok(Some((tree, false)));
        }
        let dir = self.tree_dir(zip.digest);
        if let Err(err) = std::fs::rename(&staging, &dir) {
            drop(books);
            let _ = crate::taskdir::remove_tree(&staging);
            return Err(format!("{}: {err}", dir.display()));
        }
        books.clock += 1;
        let tree = Tree { files: files.into(), hash, size: contents.charge, used: books.clock };
        books.total += tree.size;
        books.trees.insert(zip.digest, tree.clone());
        books.hold(zip.digest);
        Ok(Some((tree, true)))
    }

    /// A new directory name to extract `zip` into before its tree goes into the store.
    fn staging(&self, zip: &ModuleZip) -> PathBuf {
        static STAGING: AtomicU64 = AtomicU64::new(0);
        let attempt = STAGING.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}.{attempt}.partial", zip.digest.hex()))
    }

    /// Extracts `zip` into `staging`; `None` (and nothing left behind) when its files hold more
    /// than they declare.
    fn extract_reserved(
        &self,
        zip: &ModuleZip,
        contents: &Contents,
        staging: &Path,
    ) -> Result<Option<(Vec<String>, String)>, String> {
        let _ = crate::taskdir::remove_tree(staging);
        match write_out(&zip.file, contents, staging) {
            Ok(Some(hash)) => {
                let files = contents.names.iter().map(|(_, relative)| relative.clone()).collect();
                Ok(Some((files, hash)))
            }
            outcome => {
                let _ = crate::taskdir::remove_tree(staging);
                outcome.map(|_| None)
            }
        }
    }

    fn remove_trees(&self, digests: Vec<Digest>) {
        for digest in digests {
            let dir = self.tree_dir(digest);
            if let Err(err) = crate::taskdir::remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot remove an extracted module");
            }
        }
    }

    fn refuse(&self, zip: &ModuleZip, why: &str) -> Result<Option<(Tree, bool)>, String> {
        tracing::info!(module = %zip.escaped_path, version = %zip.escaped_version, why, "module zip left to the go command");
        self.books().remember_refused(zip.digest);
        Ok(None)
    }

    /// The module directory and its `.ziphash`, as the go command leaves them after extracting:
    /// the module's directories and files (linked from the store) the agent's, so the build
    /// reads them and can change none; the directories above it and the download directory the
    /// build user's (the go command writes `.mod`, `.info` and lock files there, and extracts
    /// other modules).
    fn link(
        &self,
        zip: &ModuleZip,
        tree: &Tree,
        gomodcache: &Path,
        owner: Option<Owner>,
    ) -> Result<(), String> {
        let from = self.tree_dir(zip.digest);
        let to = module_dir(gomodcache, zip);
        let failed = |path: &Path, err: std::io::Error| format!("{}: {err}", path.display());
        // The parents are the build user's, as the go command makes them: it extracts the
        // modules left to it beside these.
        let parent = to.parent().ok_or_else(|| format!("{} has no parent", to.display()))?;
        make_dirs(gomodcache, parent, owner)?;
        make_dirs(parent, &to, None)?;
        let mut made = HashSet::new();
        for file in tree.files.iter() {
            let target = to.join(file);
            if let Some(parent) = target.parent()
                && made.insert(parent.to_owned())
            {
                make_dirs(&to, parent, None)?;
            }
            std::fs::hard_link(from.join(file), &target).map_err(|err| failed(&target, err))?;
        }
        let download = gomodcache.join("cache/download").join(&zip.escaped_path).join("@v");
        make_dirs(gomodcache, &download, owner)?;
        let ziphash = download.join(format!("{}.ziphash", zip.escaped_version));
        let mut file = std::fs::File::create_new(&ziphash).map_err(|err| failed(&ziphash, err))?;
        file.write_all(tree.hash.as_bytes()).map_err(|err| failed(&ziphash, err))?;
        Ok(())
    }
}

fn module_dir(gomodcache: &Path, zip: &ModuleZip) -> PathBuf {
    gomodcache.join(format!("{}@{}", zip.escaped_path, zip.escaped_version))
}

/// Creates `dir` and its missing parents below `base` (which exists), owned by `owner` (or the
/// agent). Nothing of the build runs yet, so no path can have been swapped.
fn make_dirs(base: &Path, dir: &Path, owner: Option<Owner>) -> Result<(), String> {
    let relative =
        dir.strip_prefix(base).map_err(|_| format!("{} is outside {}", dir.display(), base.display()))?;
    let mut path = base.to_owned();
    for part in relative.components() {
        path.push(part);
        match std::fs::create_dir(&path) {
            Ok(()) => {
                if let Some(owner) = owner {
                    rustix::fs::chown(&path, Some(sandbox::uid(owner.uid)), Some(sandbox::gid(owner.gid)))
                        .map_err(|err| format!("chown {}: {err}", path.display()))?;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(err) => return Err(format!("{}: {err}", path.display())),
        }
    }
    Ok(())
}

/// The module path or version a proxy and a module cache spell with `!x` for each capital X.
fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

/// What a zip holds, as far as extracting it goes.
#[derive(Debug)]
struct Contents {
    /// Each file's name in the zip and its path in the module directory, in the zip's order.
    names: Vec<(String, String)>,
    /// Each file's size as the zip declares it, in the same order.
    sizes: Vec<u64>,
    /// What extracting it takes on disk, at least (see [`charge`]).
    charge: u64,
}

enum Inspection {
    Extractable(Contents),
    LeftToGo(String),
}

/// Reads the names and declared sizes of the module zip `zip` (every name under `prefix`),
/// writing nothing: whether the agent extracts it as the go command would, and what that takes.
fn inspect(zip: &Path, prefix: &str) -> Result<Inspection, String> {
    let file = std::fs::File::open(zip).map_err(|err| format!("{}: {err}", zip.display()))?;
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(err) => return Ok(Inspection::LeftToGo(format!("not a zip the agent reads: {err}"))),
    };
    let mut names = Vec::with_capacity(archive.len());
    let mut sizes = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|err| err.to_string())?;
        let Ok(name) = std::str::from_utf8(entry.name_raw()) else {
            return Ok(Inspection::LeftToGo("a name is not UTF-8".into()));
        };
        if entry.is_dir() || entry.is_symlink() {
            return Ok(Inspection::LeftToGo(format!("{name:?} is not a regular file")));
        }
        let Some(relative) = name.strip_prefix(prefix) else {
            return Ok(Inspection::LeftToGo(format!("{name:?} is outside {prefix}")));
        };
        if let Err(why) = check_file_path(relative) {
            return Ok(Inspection::LeftToGo(format!("{name:?}: {why}")));
        }
        sizes.push(entry.size());
        names.push((name.to_owned(), relative.to_owned()));
    }
    let mut folded = HashSet::new();
    if let Some((name, _)) = names.iter().find(|(name, _)| !folded.insert(name.to_lowercase())) {
        return Ok(Inspection::LeftToGo(format!("{name:?} differs from another name only in case")));
    }
    let declared = sizes.iter().try_fold(0u64, |sum, size| sum.checked_add(*size));
    if declared.is_none_or(|declared| declared > MAX_EXTRACTED) {
        return Ok(Inspection::LeftToGo("more than 500 MiB extracted".into()));
    }
    let directories: HashSet<&str> =
        names.iter().filter_map(|(_, relative)| relative.rsplit_once('/').map(|(dir, _)| dir)).collect();
    let charge = charge(sizes.iter().copied(), directories.len() + 1);
    Ok(Inspection::Extractable(Contents { names, sizes, charge }))
}

/// Extracts the files of `contents` from `zip` into `dest` (new), files 0444, and returns the
/// zip's `h1:` hash as the go command computes it (SHA-256 over the sorted lines
/// `<SHA-256 of the file>  <name>`); `None` as soon as a file holds more than the zip declares
/// (the go command refuses such a zip too).
fn write_out(zip: &Path, contents: &Contents, dest: &Path) -> Result<Option<String>, String> {
    let file = std::fs::File::open(zip).map_err(|err| format!("{}: {err}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| format!("{}: {err}", zip.display()))?;
    std::fs::create_dir(dest).map_err(|err| format!("{}: {err}", dest.display()))?;
    let mut lines = Vec::with_capacity(contents.names.len());
    let mut buffer = vec![0u8; 64 << 10];
    for (index, ((name, relative), declared)) in contents.names.iter().zip(&contents.sizes).enumerate() {
        let mut entry = archive.by_index(index).map_err(|err| format!("{name}: {err}"))?;
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
        }
        let mut out =
            std::fs::File::create_new(&target).map_err(|err| format!("{}: {err}", target.display()))?;
        let mut hasher = Sha256::new();
        let mut limited = (&mut entry).take(declared + 1);
        let mut size = 0u64;
        loop {
            let read = limited.read(&mut buffer).map_err(|err| format!("{name}: {err}"))?;
            if read == 0 {
                break;
            }
            size += read as u64;
            if size > *declared {
                return Ok(None);
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read]).map_err(|err| format!("{}: {err}", target.display()))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(|err| format!("{}: {err}", target.display()))?;
        lines.push(format!("{:x}  {name}\n", hasher.finalize()));
    }
    lines.sort_by(|a, b| line_name(a).cmp(line_name(b)));
    let summary = Sha256::digest(lines.concat().as_bytes());
    Ok(Some(format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(summary))))
}

/// Inspects and extracts `zip` into `dest`, as the store does.
#[cfg(test)]
fn extract(zip: &Path, prefix: &str, dest: &Path) -> Result<Option<(Contents, String)>, String> {
    match inspect(zip, prefix)? {
        Inspection::Extractable(contents) => {
            Ok(write_out(zip, &contents, dest)?.map(|hash| (contents, hash)))
        }
        Inspection::LeftToGo(_) => Ok(None),
    }
}

/// The name a hash line is of (after the 64 hex digits and two spaces).
fn line_name(line: &str) -> &str {
    &line[66..]
}

/// Names the go command extracts as they are (golang.org/x/mod/module.CheckFilePath, and what
/// a module zip may not hold): anything else is left to it.
fn check_file_path(path: &str) -> Result<(), String> {
    let elements: Vec<&str> = path.split('/').collect();
    for element in &elements {
        if element.is_empty() || *element == "." || *element == ".." {
            return Err("an empty, `.` or `..` path element".into());
        }
        if !element.chars().all(|c| c.is_ascii_alphanumeric() || "-._~+@,=#%&()[]{}^!$' ".contains(c)) {
            return Err("a character the agent does not extract".into());
        }
        let stem = element.split('.').next().unwrap_or_default().to_ascii_lowercase();
        let reserved = ["con", "prn", "aux", "nul"].contains(&stem.as_str())
            || (stem.len() == 4
                && (stem.starts_with("com") || stem.starts_with("lpt"))
                && stem.ends_with(|c: char| c.is_ascii_digit()));
        if reserved {
            return Err("a name Windows reserves".into());
        }
    }
    if is_vendored_package(path) {
        return Err("a file of a vendored package".into());
    }
    if elements.len() > 1 && elements.last() == Some(&"go.mod") {
        return Err("a nested module".into());
    }
    Ok(())
}

/// A file below a directory of a `vendor` directory, which module zips never hold (a file
/// directly in one, like `vendor/modules.txt`, they may).
fn is_vendored_package(path: &str) -> bool {
    let rest = match path.strip_prefix("vendor/") {
        Some(rest) => rest,
        None => match path.find("/vendor/") {
            Some(at) => &path[at + "/vendor/".len()..],
            None => return false,
        },
    };
    rest.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_zips_remembered_are_bounded() {
        let mut books = Books::default();
        let digests: Vec<Digest> =
            (0..=REFUSED_REMEMBERED as u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        for digest in &digests {
            books.remember_refused(*digest);
            assert!(books.refused.len() <= REFUSED_REMEMBERED);
        }
        let last = digests.last().unwrap();
        assert!(books.refused.contains(last), "the newest refusal is remembered");
        assert_eq!(books.refused.len(), 1, "the list started over once full");
    }

    #[test]
    fn proxy_paths_name_module_zips() {
        let digest = Digest::of(b"zip");
        let zip =
            ModuleZip::from_proxy_path("github.com/!burnt!sushi/toml/@v/v1.3.2.zip", digest, "z".into())
                .unwrap();
        assert_eq!(
            (zip.escaped_path.as_str(), zip.escaped_version.as_str()),
            ("github.com/!burnt!sushi/toml", "v1.3.2")
        );
        assert_eq!(zip.prefix().unwrap(), "github.com/BurntSushi/toml@v1.3.2/");
        for other in [
            "example.com/m/@v/v1.0.0.mod",
            "example.com/m/@v/list",
            "v1.0.0.zip",
            "/@v/v1.zip",
            "a/../b/@v/v1.zip",
            "a/@v/...zip",
        ] {
            assert!(ModuleZip::from_proxy_path(other, digest, "z".into()).is_none(), "{other}");
        }
        assert_eq!(unescape("github.com/!x"), Some("github.com/X".into()));
        for bad in ["a/B", "a/!", "a/!1"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn unusual_names_are_left_to_the_go_command() {
        for fine in [
            "go.mod",
            "a/b.go",
            ".gitignore",
            "testdata/x_y-z.txt",
            "LICENSE",
            "vendor/modules.txt",
            "comb.go",
            "lpt.go",
        ] {
            assert!(check_file_path(fine).is_ok(), "{fine}");
        }
        for odd in [
            "",
            "a//b",
            "../x",
            "a/./b",
            "a/..",
            "con.go",
            "a/LPT1",
            "vendor/x/y.go",
            "sub/go.mod",
            "a\\b",
            "tab\t",
        ] {
            assert!(check_file_path(odd).is_err(), "{odd}");
        }
    }

    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut writer = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, content) in entries {
            let options = zip::write::SimpleFileOptions::default();
            writer.start_file(*name, options).unwrap();
            writer.write_all(content).unwrap();
        }
        writer.finish().unwrap();
    }

    #[test]
    fn a_zip_is_extracted_read_only_with_the_go_commands_hash() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("m.zip");
        write_zip(
            &zip,
            &[
                ("example.com/m@v1.0.0/go.mod", b"module example.com/m\n"),
                ("example.com/m@v1.0.0/m.go", b"package m\n"),
            ],
        );
        let dest = dir.path().join("out");
        let (contents, hash) = extract(&zip, "example.com/m@v1.0.0/", &dest).unwrap().expect("left to go");
        let files: Vec<&str> = contents.names.iter().map(|(_, relative)| relative.as_str()).collect();
        assert_eq!(files, ["go.mod", "m.go"]);
        assert_eq!(contents.sizes, [21, 10]);
        assert_eq!(contents.charge, 3 * BLOCK, "two files of a block each, in one directory");
        assert_eq!(std::fs::read(dest.join("m.go")).unwrap(), b"package m\n");
        assert_eq!(std::fs::metadata(dest.join("m.go")).unwrap().permissions().mode() & 0o777, 0o444);
        // dirhash.Hash1's formula written out; that the go command agrees is checked end to end
        // (tests/tests/remote.rs: it verifies the hash against go.sum before building).
        let lines = format!(
            "{:x}  example.com/m@v1.0.0/go.mod\n{:x}  example.com/m@v1.0.0/m.go\n",
            Sha256::digest(b"module example.com/m\n"),
            Sha256::digest(b"package m\n")
        );
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(lines.as_bytes()));
        assert_eq!(hash, format!("h1:{expected}"));
    }

    #[test]
    fn a_task_gets_the_module_linked_and_its_hash_and_the_next_task_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let zip_file = dir.path().join("m.zip");
        write_zip(
            &zip_file,
            &[
                ("example.com/M@v1.0.0/go.mod", b"module example.com/M\n"),
                ("example.com/M@v1.0.0/sub/x.go", b"package sub\n"),
            ],
        );
        let zip = ModuleZip::from_proxy_path("example.com/!m/@v/v1.0.0.zip", Digest::of(b"m.zip"), zip_file)
            .unwrap();
        let odd = dir.path().join("odd.zip");
        write_zip(&odd, &[("elsewhere/x.go", b"x")]);
        let odd =
            ModuleZip::from_proxy_path("example.com/odd/@v/v1.0.0.zip", Digest::of(b"odd"), odd).unwrap();
        let store = ModuleStore::open(dir.path().join("store"), 1 << 20).unwrap();
        let zips = [zip, odd];
        for (task, extracted) in [("one", 1), ("two", 0)] {
            let cache = dir.path().join(task);
            std::fs::create_dir(&cache).unwrap();
            let (prepared, _linked) = store.prepare(&zips, &cache, None);
            assert_eq!(prepared, Prepared { linked: 1, extracted, left_to_go: 1 });
            let module = cache.join("example.com/!m@v1.0.0");
            assert_eq!(std::fs::read(module.join("sub/x.go")).unwrap(), b"package sub\n");
            let hash = std::fs::read_to_string(cache.join("cache/download/example.com/!m/@v/v1.0.0.ziphash"))
                .unwrap();
            assert!(hash.starts_with("h1:") && !hash.ends_with('\n'), "{hash}");
            assert!(!cache.join("example.com/odd@v1.0.0").exists(), "the odd zip was laid out");
        }
        // For a build user: what the go command writes in is the build user's, the module the
        // agent's.
        if rustix::process::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let cache = dir.path().join("as-user");
            std::fs::create_dir(&cache).unwrap();
            let owner = Owner { uid: 65534, gid: 65534 };
            let _linked = store.prepare(&zips, &cache, Some(owner));
            let uid = |path: &str| std::fs::metadata(cache.join(path)).unwrap().uid();
            assert_eq!(uid("example.com"), 65534);
            assert_eq!(uid("cache/download/example.com/!m/@v"), 65534);
            assert_eq!(uid("example.com/!m@v1.0.0"), 0);
            assert_eq!(uid("example.com/!m@v1.0.0/sub/x.go"), 0);
        }
        // A store without room extracts nothing.
        let none = ModuleStore::open(dir.path().join("store0"), 0).unwrap();
        let cache = dir.path().join("budget");
        std::fs::create_dir(&cache).unwrap();
        assert_eq!(none.prepare(&zips, &cache, None).0, Prepared { linked: 0, extracted: 0, left_to_go: 2 });
    }

    #[test]
    fn room_is_made_from_the_least_recently_used_trees_no_task_holds() {
        let tree = |size, used| Tree { files: Arc::from([]), hash: String::new(), size, used };
        let (old, new, held) = (Digest::of(b"old"), Digest::of(b"new"), Digest::of(b"held"));
        let mut books = Books { cap: 100, total: 90, ..Books::default() };
        books.trees.insert(old, tree(30, 1));
        books.trees.insert(new, tree(30, 2));
        books.trees.insert(held, tree(30, 0));
        books.hold(held);
        assert_eq!(books.reserve(40), Some(vec![old]), "the oldest unheld tree goes, and only it");
        assert_eq!((books.total, books.reserved), (60, 40));
        assert_eq!(books.reserve(40), None, "the held tree is never dropped: no room");
        assert_eq!((books.total, books.reserved, books.trees.len()), (60, 40, 2), "nothing changed");
        release(&mut books, held);
        assert_eq!(books.reserve(40).map(|victims| victims.len()), Some(2), "released, it may go");
        assert_eq!((books.total, books.reserved), (0, 80));
    }

    #[test]
    fn zips_the_agent_would_extract_differently_are_left_to_the_go_command() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[(&str, &[u8])]; 3] = [
            &[("example.com/m@v1.0.0/a.go", b"a"), ("elsewhere/b.go", b"b")],
            &[("example.com/m@v1.0.0/A.go", b"a"), ("example.com/m@v1.0.0/a.go", b"b")],
            &[("example.com/m@v1.0.0/../../escape", b"x")],
        ];
        for (index, entries) in cases.iter().enumerate() {
            let zip = dir.path().join(format!("{index}.zip"));
            write_zip(&zip, entries);
            let dest = dir.path().join(format!("out{index}"));
            let outcome = extract(&zip, "example.com/m@v1.0.0/", &dest).unwrap();
            assert!(outcome.is_none(), "case {index}");
            assert!(!dest.exists(), "case {index} wrote files");
        }
    }
}
