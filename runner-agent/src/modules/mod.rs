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
//! command; so is, unparsed, a zip past what parsing its central directory may take (see
//! `extract::inspect`): that takes memory for every entry, and a small zip can hold millions.
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

mod books;
mod extract;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::Digest;

pub use self::books::Linked;
use self::books::{Books, Tree};
use self::extract::{Contents, Inspection, inspect, unescape, write_out};
use crate::TaskError;
use crate::sandbox::{self, Owner};

/// The most one task makes the agent extract (of trees the store lacks). Large enough for the
/// dependencies of most modules at once (crane's are 113 MB), small beside the store's cap.
pub const TASK_EXTRACTION: u64 = 1 << 30;

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
        self.prepare_unless(zips, gomodcache, owner, &|| false)
    }

    /// [`ModuleStore::prepare`], given up between zips, and between a zip's files, once
    /// `stopped` says so (the task was aborted): what was laid out by then stays held.
    pub fn prepare_unless(
        &self,
        zips: &[ModuleZip],
        gomodcache: &Path,
        owner: Option<Owner>,
        stopped: &dyn Fn() -> bool,
    ) -> (Prepared, Linked) {
        let mut prepared = Prepared::default();
        let mut linked = Linked { books: Arc::clone(&self.books), digests: Vec::new() };
        let mut share = self.books().task_share;
        for zip in zips.iter().take_while(|_| !stopped()) {
            let tree = match self.tree(zip, share, stopped) {
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
                Err(_) if stopped() => break,
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
    fn tree(
        &self,
        zip: &ModuleZip,
        share: u64,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Option<(Tree, bool)>, String> {
        let task_share = {
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
            books.task_share
        };
        if share == 0 {
            return Ok(None);
        }
        let Some(prefix) = zip.prefix() else { return self.refuse(zip, "its module path does not unescape") };
        let contents = match inspect(&zip.file, &prefix, task_share)? {
            Inspection::Extractable(contents) => contents,
            Inspection::LeftToGo(why) => return self.refuse(zip, &why),
        };
        if contents.charge > task_share {
            return self.refuse(zip, "it takes more than one task may have the agent extract");
        }
        if contents.charge > share {
            // Not remembered: a later task, its share whole, extracts it.
            tracing::info!(module = %zip.escaped_path, version = %zip.escaped_version, bytes = contents.charge,
                "module zip left to the go command: past what is left of this task's share");
            return Ok(None);
        }
        let Some(victims) = self.books().reserve(contents.charge) else {
            tracing::info!(module = %zip.escaped_path, version = %zip.escaped_version, bytes = contents.charge,
                "module zip left to the go command: the store is full of trees running tasks hold");
            return Ok(None);
        };
        self.remove_trees(victims);
        let staging = self.staging(zip);
        let extracted = self.extract_reserved(zip, &contents, &staging, stopped);
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
        stopped: &dyn Fn() -> bool,
    ) -> Result<Option<(Vec<String>, String)>, String> {
        let _ = crate::taskdir::remove_tree(staging);
        match write_out(&zip.file, contents, staging, stopped) {
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

#[cfg(test)]
mod tests {
    use super::extract::tests::write_zip;
    use super::*;

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
    }

    /// A zip no task's share could ever extract is parsed once, not by every task of the job.
    #[test]
    fn zips_past_a_whole_tasks_share_are_remembered_as_refused() {
        let dir = tempfile::tempdir().unwrap();
        let share = 256 * extract::BLOCK;
        let many_names: Vec<String> = (0..300).map(|i| format!("example.com/many@v1.0.0/{i}")).collect();
        let many: Vec<(&str, &[u8])> = many_names.iter().map(|name| (name.as_str(), &b""[..])).collect();
        let large = vec![0u8; share as usize + 1];
        let zips: Vec<ModuleZip> =
            [("many", many), ("large", vec![("example.com/large@v1.0.0/big", &large[..])])]
                .into_iter()
                .map(|(module, entries)| {
                    let file = dir.path().join(format!("{module}.zip"));
                    write_zip(&file, &entries);
                    let path = format!("example.com/{module}/@v/v1.0.0.zip");
                    ModuleZip::from_proxy_path(&path, Digest::of(module.as_bytes()), file).unwrap()
                })
                .collect();
        let store = ModuleStore::open(dir.path().join("store"), 8 * share).unwrap();
        assert_eq!(store.books().task_share, share);
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let (prepared, _linked) = store.prepare(&zips, &cache, None);
        assert_eq!(prepared, Prepared { linked: 0, extracted: 0, left_to_go: 2 });
        for zip in &zips {
            assert!(store.books().refused.contains(&zip.digest), "{} not remembered", zip.escaped_path);
        }
    }

    #[test]
    fn an_aborted_task_has_no_more_zips_extracted_or_linked() {
        let dir = tempfile::tempdir().unwrap();
        let zips: Vec<ModuleZip> = (0..3)
            .map(|i| {
                let file = dir.path().join(format!("m{i}.zip"));
                let (name, body) =
                    (format!("example.com/m{i}@v1.0.0/go.mod"), format!("module example.com/m{i}\n"));
                write_zip(&file, &[(name.as_str(), body.as_bytes())]);
                let path = format!("example.com/m{i}/@v/v1.0.0.zip");
                ModuleZip::from_proxy_path(&path, Digest::of(body.as_bytes()), file).unwrap()
            })
            .collect();
        let store = ModuleStore::open(dir.path().join("store"), 1 << 20).unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        // Aborted once the first module is in place.
        let stopped = || cache.join("example.com/m0@v1.0.0/go.mod").exists();
        let (prepared, _linked) = store.prepare_unless(&zips, &cache, None, &stopped);
        assert_eq!(prepared, Prepared { linked: 1, extracted: 1, left_to_go: 0 });
        assert!(!cache.join("example.com/m1@v1.0.0").exists(), "a module laid out after the abort");
        let extracted = std::fs::read_dir(dir.path().join("store")).unwrap().count();
        assert_eq!(extracted, 1, "zips extracted after the abort");
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
}
