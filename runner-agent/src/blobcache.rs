//! The agent's blob cache: every file of a task's trees goes through it
//! (`<work-dir>/blobs/<hash>`, read-only, the directory private to the agent) and is
//! hard-linked into place, so inputs that repeat across tasks (the same sources for every
//! target, the same module zips for every job) are downloaded once.
//!
//! The cache is capped (`--cache-size`), each entry counted as the whole blocks it takes (one
//! at least): past the cap, the least recently used entries are removed until it is back under
//! 90% of it. Entries a running task uses are pinned for the
//! task's life ([`Pins`], taken before they are fetched) and never removed; the cap counts the
//! cache's own entries (a removed entry that a task directory still links stays on disk until
//! that directory goes, as hard links do). So the cache may stay over the cap while everything
//! in it is in use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cached_client::connect::Client;
use cached_client::transfer;
use proto::Digest;

use crate::TaskError;
use crate::taskdir::file_cost;

fn io_error(what: &str, path: &Path, err: std::io::Error) -> TaskError {
    TaskError::Infrastructure(format!("{what} {}: {err}", path.display()))
}
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
    lru: Arc<Mutex<Lru>>,
}

/// What the cache holds, by file name, in order of last use.
#[derive(Debug, Default)]
struct Lru {
    cap: u64,
    total: u64,
    clock: u64,
    /// name → (disk it takes, last use)
    entries: HashMap<String, (u64, u64)>,
    /// last use → name
    order: BTreeMap<u64, String>,
    /// name → tasks using it
    pins: HashMap<String, usize>,
}

impl Lru {
    fn touch(&mut self, name: &str) {
        self.clock += 1;
        if let Some((_, used)) = self.entries.get_mut(name) {
            self.order.remove(used);
            *used = self.clock;
            self.order.insert(self.clock, name.to_owned());
        }
    }

    /// Records an entry of `size` bytes (once, however many tasks downloaded it) as just used.
    /// It counts the whole blocks it takes, one at least: a job of many tiny files takes a
    /// block and an inode for each, which counting bytes would let fill the disk under the cap.
    fn admit(&mut self, name: &str, size: u64) {
        if !self.entries.contains_key(name) {
            let disk = file_cost(size);
            self.entries.insert(name.to_owned(), (disk, 0));
            self.total += disk;
        }
        self.touch(name);
    }

    /// Past the cap, the least recently used unpinned entries until under 90% of it: their
    /// names, removed from the books (the caller removes the files).
    fn trim(&mut self) -> Vec<String> {
        let mut removed = Vec::new();
        if self.total <= self.cap {
            return removed;
        }
        let target = self.cap - self.cap / 10;
        let victims: Vec<(u64, String)> = self
            .order
            .iter()
            .filter(|(_, name)| !self.pins.contains_key(*name))
            .map(|(used, name)| (*used, name.clone()))
            .collect();
        for (used, name) in victims {
            if self.total <= target {
                break;
            }
            self.order.remove(&used);
            if let Some((size, _)) = self.entries.remove(&name) {
                self.total -= size;
            }
            removed.push(name);
        }
        removed
    }
}

/// Entries a task uses: never trimmed while this lives.
pub struct Pins {
    cache: BlobCache,
    names: Vec<String>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pins({} entries)", self.names.len())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut lru = self.cache.lock();
        for name in &self.names {
            if let Some(count) = lru.pins.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    lru.pins.remove(name);
                }
            }
        }
        let removed = lru.trim();
        drop(lru);
        self.cache.remove(&removed);
    }
}

/// `<64 hex>` or `<64 hex>-x`: an entry; anything else in the directory is not.
fn is_entry(name: &str) -> bool {
    let hex = name.strip_suffix("-x").unwrap_or(name);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

impl BlobCache {
    /// Opens the cache in `dir` with a cap of `cap` bytes: the entries already there count,
    /// oldest first (by when they were downloaded), and the cache is trimmed to the cap.
    /// Leftover partial downloads are removed.
    pub fn open(dir: PathBuf, cap: u64) -> Result<Self, TaskError> {
        std::fs::create_dir_all(&dir).map_err(|err| io_error("creating", &dir, err))?;
        // Builds reach their files through hard links in their task directories, never here.
        set_mode(&dir, 0o700)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|err| io_error("reading", &dir, err))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(metadata) = entry.metadata() else { continue };
            if !is_entry(&name) {
                if name.starts_with(".tmp") && metadata.is_file() {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, name, metadata.len()));
        }
        found.sort();
        let mut lru = Lru { cap, ..Lru::default() };
        for (_, name, size) in found {
            lru.admit(&name, size);
        }
        let removed = lru.trim();
        let cache = Self { dir, lru: Arc::new(Mutex::new(lru)) };
        cache.remove(&removed);
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directory of the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An entry's file name in [`BlobCache::dir`].
    pub fn name(digest: Digest, executable: bool) -> String {
        format!("{}{}", digest.hex(), if executable { "-x" } else { "" })
    }

    pub fn path(&self, digest: Digest, executable: bool) -> PathBuf {
        self.dir.join(Self::name(digest, executable))
    }

    fn remove(&self, names: &[String]) {
        for name in names {
            let path = self.dir.join(name);
            if let Err(err) = std::fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %err, "cannot trim the blob cache");
            }
        }
        if !names.is_empty() {
            tracing::debug!(removed = names.len(), "blob cache trimmed");
        }
    }

    /// Pins entries (present or not yet) for as long as the guard lives.
    pub fn pin(&self, entries: impl IntoIterator<Item = (Digest, bool)>) -> Pins {
        let names: Vec<String> = entries.into_iter().map(|(d, x)| Self::name(d, x)).collect();
        let mut lru = self.lock();
        for name in &names {
            *lru.pins.entry(name.clone()).or_default() += 1;
        }
        drop(lru);
        Pins { cache: self.clone(), names }
    }

    /// Disk the cache's entries take, as the cap counts it (whole blocks).
    pub fn size(&self) -> u64 {
        self.lock().total
    }

    /// Records a new entry and trims the cache.
    fn admit(&self, name: &str, size: u64) {
        let mut lru = self.lock();
        lru.admit(name, size);
        let removed = lru.trim();
        drop(lru);
        self.remove(&removed);
    }

    /// The cached copy of a blob, downloading (and verifying) it first if needed. Pin it
    /// first ([`BlobCache::pin`]) to keep it until it is linked.
    pub async fn fetch(
        &self,
        client: &Client,
        digest: Digest,
        executable: bool,
    ) -> Result<PathBuf, TaskError> {
        if let Some(path) = self.cached(digest, executable)? {
            return Ok(path);
        }
        let name = Self::name(digest, executable);
        let path = self.dir.join(&name);
        transfer::download_to_file(client, digest, &path).await?;
        set_mode(&path, if executable { 0o555 } else { 0o444 })?;
        self.admit(&name, digest.size);
        Ok(path)
    }
}

impl BlobCache {
    /// The cached copy of a blob, if there is one. Entries are named by hash alone, so a
    /// digest whose size is not its bytes' (which no blob has) is refused rather than answered
    /// with the file of that hash: a job's tree could otherwise understate what it takes.
    fn cached(&self, digest: Digest, executable: bool) -> Result<Option<PathBuf>, TaskError> {
        let name = Self::name(digest, executable);
        let path = self.dir.join(&name);
        let Some(metadata) = std::fs::metadata(&path).ok().filter(std::fs::Metadata::is_file) else {
            return Ok(None);
        };
        if metadata.len() != digest.size {
            return Err(TaskError::Build(format!(
                "the job names blob {} as {} bytes, but the blob of that hash is {} bytes: a \
                 digest's size is part of it; give each file's true size",
                digest.hex(),
                digest.size,
                metadata.len()
            )));
        }
        self.lock().touch(&name);
        Ok(Some(path))
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), TaskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| io_error("chmod", path, err))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), TaskError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = crate::taskdir::ENTRY_COST;

    fn blob(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK as usize]
    }

    /// An entry as a download leaves it.
    fn put(cache: &BlobCache, bytes: &[u8]) -> PathBuf {
        let digest = Digest::of(bytes);
        let path = cache.path(digest, false);
        std::fs::write(&path, bytes).unwrap();
        cache.admit(&BlobCache::name(digest, false), digest.size);
        path
    }

    #[test]
    fn a_digest_with_another_size_than_its_blobs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().to_owned(), 1 << 20).unwrap();
        let path = put(&cache, &[b'a'; 100]);
        let digest = Digest::of(&[b'a'; 100]);
        assert_eq!(cache.cached(digest, false).unwrap(), Some(path));
        let understated = Digest { size: 1, ..digest };
        let err = cache.cached(understated, false).unwrap_err();
        assert!(matches!(&err, TaskError::Build(why) if why.contains("100 bytes")), "{err:?}");
        assert_eq!(cache.cached(Digest::of(b"absent"), false).unwrap(), None);
    }

    /// Files of a few bytes take a block and an inode each: a job of many tiny files would
    /// otherwise fill the disk while the cache counts a few KiB.
    #[test]
    fn tiny_blobs_count_a_block_each_against_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().to_owned(), 10 * BLOCK).unwrap();
        let blobs: Vec<PathBuf> = (0..20u8).map(|i| put(&cache, &[i; 7])).collect();
        assert!(cache.size() <= 10 * BLOCK, "{} bytes counted", cache.size());
        assert!(!blobs[0].exists(), "the oldest tiny blob stayed");
        assert!(blobs[19].is_file(), "the newest tiny blob went");
        let entries = || std::fs::read_dir(dir.path()).unwrap().count() as u64;
        assert_eq!(cache.size(), entries() * BLOCK);

        // Reopened, the entries there count a block each too (which go first is the other
        // test's: these were written within the file system's clock tick).
        let reopened = BlobCache::open(dir.path().to_owned(), 4 * BLOCK).unwrap();
        assert!(reopened.size() <= 4 * BLOCK, "{} bytes counted", reopened.size());
        assert_eq!(reopened.size(), entries() * BLOCK);
    }

    /// Entries of a block each: the cap counts their bytes.
    #[test]
    fn the_cache_trims_least_recently_used_entries_but_never_pinned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().to_owned(), 5 * BLOCK / 2).unwrap();
        let a = put(&cache, &blob(b'a'));
        let pinned = cache.pin([(Digest::of(&blob(b'a')), false)]);
        let b = put(&cache, &blob(b'b'));
        assert_eq!(cache.size(), 2 * BLOCK);
        // Over the cap: the oldest entry is pinned, so the next oldest goes.
        let c = put(&cache, &blob(b'c'));
        assert!(a.is_file() && !b.exists() && c.is_file());
        assert_eq!(cache.size(), 2 * BLOCK);

        // Use makes an entry recent; unpinned, the least recently used goes next.
        cache.lock().touch(&BlobCache::name(Digest::of(&blob(b'a')), false));
        drop(pinned);
        let d = put(&cache, &blob(b'd'));
        assert!(a.is_file() && !c.exists() && d.is_file());

        // Everything pinned: the cache stays over its cap rather than pull a file from a task.
        let all = cache.pin([(Digest::of(&blob(b'a')), false), (Digest::of(&blob(b'd')), false)]);
        cache.lock().cap = 3 * BLOCK / 2;
        let e = cache.pin([(Digest::of(&blob(b'e')), false)]);
        let e_path = put(&cache, &blob(b'e'));
        assert!(a.is_file() && d.is_file() && e_path.is_file());
        assert_eq!(cache.size(), 3 * BLOCK);
        // Unpinned, it comes down under the cap at once, least recently used first.
        drop(all);
        assert!(!a.exists() && !d.exists() && e_path.is_file());
        drop(e);
        assert_eq!(cache.size(), BLOCK);

        // Reopened with a smaller cap, the oldest downloads go first; partial downloads too.
        cache.lock().cap = 10 * BLOCK;
        std::fs::write(dir.path().join(".tmpXYZ"), b"partial").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = put(&cache, &blob(b'f'));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let g = put(&cache, &blob(b'g'));
        let reopened = BlobCache::open(dir.path().to_owned(), 3 * BLOCK / 2).unwrap();
        assert_eq!(reopened.size(), BLOCK);
        assert!(!e_path.exists() && !f.exists() && g.is_file());
        assert!(!dir.path().join(".tmpXYZ").exists());
    }
}
