//! Digests of files kept for the life of the process while each file is as it was: a build
//! derives its key two or three times, and some inputs (the toolchain's programs, a cgo
//! module's bundled libraries) are tens of MiB that do not change between derivations.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};

/// What identifies one version of a file: device, inode, size, modification and change times
/// (the change time moves with any write and cannot be set back).
type Version = (u64, u64, u64, i64, i64, i64, i64);

fn version(path: &Path) -> std::io::Result<Version> {
    let meta = std::fs::metadata(path)?;
    Ok((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ))
}

/// Each file's digest with the version it was computed from.
type Digests = HashMap<PathBuf, (Version, [u8; 32])>;

/// Most files one memo remembers. A runner agent derives keys for task after task, each in a
/// directory of its own (its module cache too): past this the memo starts over.
const MAX_FILES: usize = 100_000;

/// One kind of digest per memo: a file's is computed once per version.
pub(crate) struct FileMemo(LazyLock<Mutex<Digests>>);

impl FileMemo {
    pub(crate) const fn new() -> Self {
        Self(LazyLock::new(Default::default))
    }

    /// The digest `compute` gives of the file at `path`, remembered only when the file did
    /// not change while it was read. Only for files outside the build's own tree: one edited
    /// within the clock tick of the last write keeps size and times.
    pub(crate) fn digest(
        &self,
        path: &Path,
        compute: impl FnOnce(&Path) -> std::io::Result<[u8; 32]>,
    ) -> std::io::Result<[u8; 32]> {
        let before = version(path)?;
        let known = self.0.lock().unwrap_or_else(PoisonError::into_inner).get(path).copied();
        if let Some((seen, digest)) = known
            && seen == before
        {
            return Ok(digest);
        }
        let digest = compute(path)?;
        if version(path)? == before {
            let mut digests = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if digests.len() >= MAX_FILES {
                digests.clear();
            }
            digests.insert(path.to_owned(), (before, digest));
        }
        Ok(digest)
    }
}

/// The digests `compute` gives of `paths` through `memo`, in order, on a few threads that each
/// take the next file: a module of a few large libraries among many small files.
pub(crate) fn digests(
    memo: &FileMemo,
    paths: &[&Path],
    compute: fn(&Path, &mut [u8]) -> std::io::Result<[u8; 32]>,
) -> Result<Vec<[u8; 32]>, (PathBuf, std::io::Error)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let next = AtomicUsize::new(0);
    let mut out = vec![[0u8; 32]; paths.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(paths.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut buffer = vec![0; 256 * 1024];
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(index) else { return Ok(done) };
                        let digest = memo
                            .digest(path, |path| compute(path, &mut buffer))
                            .map_err(|err| (path.to_path_buf(), err))?;
                        done.push((index, digest));
                    }
                })
            })
            .collect();
        for worker in workers {
            let done = worker.join().unwrap_or_else(|_| {
                Err((PathBuf::new(), std::io::Error::other("a hashing thread panicked")))
            })?;
            for (index, digest) in done {
                out[index] = digest;
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent's tasks each bring files of their own: the memo does not grow with them.
    #[test]
    fn the_memo_keeps_at_most_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let memo = FileMemo::new();
        memo.0
            .lock()
            .unwrap()
            .extend((0..MAX_FILES).map(|n| (PathBuf::from(n.to_string()), ((0, 0, 0, 0, 0, 0, 0), [0; 32]))));
        assert_eq!(memo.digest(&file, |_| Ok([1; 32])).unwrap(), [1; 32]);
        assert!(memo.0.lock().unwrap().len() <= MAX_FILES);
        assert_eq!(memo.digest(&file, |_| Ok([2; 32])).unwrap(), [1; 32], "remembered after the reset");
    }
}
