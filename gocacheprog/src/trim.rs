//! The local tier's trim policy: which files go, and in what order. Both a trim of an
//! over-size tier (`disk.rs`) and making room on a full disk (`room.rs`) use it; it knows the
//! tier's layout (`o/`, `a/`, temp files) but nothing of reading or writing entries.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A directory of the tier that could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ListError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Files used more recently than this are never trimmed: a concurrent build may hold their
/// paths. Twice the disk tier's `TOUCH_AFTER`, because a used file's mtime may lag its use by that much.
pub const TRIM_PROTECT: Duration = Duration::from_secs(2 * 3600);
/// Names of files being written; never a 64-hex-digit entry name.
pub(crate) const TEMP_PREFIX: &str = ".part-";
/// Where earlier versions wrote temporary files; trimming still clears it.
pub(crate) const LEGACY_TEMP_DIR: &str = "tmp";

/// What a removal freed.
#[derive(Debug, Default)]
pub struct Freed {
    pub files: u64,
    pub bytes: u64,
}

/// Removes the least recently used half (by bytes) of the tier at `root`, and its abandoned
/// temp files, sparing whatever was used after `protect_after`.
pub(crate) fn forget_oldest_half(root: &Path, protect_after: SystemTime) -> Result<Freed, ListError> {
    let mut freed = Freed::default();
    let files = list_entries(root, protect_after, &mut freed)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let oldest = remove_oldest(files, total.div_ceil(2), protect_after);
    Ok(Freed { files: freed.files + oldest.files, bytes: freed.bytes + oldest.bytes })
}

/// The tier's bodies and records. Temp files abandoned before `protect_after` are removed on
/// the way, and counted in `temps_removed`.
pub(crate) fn list_entries(
    root: &Path,
    protect_after: SystemTime,
    temps_removed: &mut Freed,
) -> Result<Vec<FileInfo>, ListError> {
    let mut listed = Vec::new();
    for sub in ["o", "a"] {
        list_files(&root.join(sub), 2, &mut listed)?;
    }
    let legacy = root.join(LEGACY_TEMP_DIR);
    list_files(&legacy, 1, &mut listed)?;
    let (temps, files): (Vec<_>, Vec<_>) = listed.into_iter().partition(|file| {
        let name = file.path.file_name().and_then(|name| name.to_str()).unwrap_or("");
        name.starts_with(TEMP_PREFIX) || file.path.parent() == Some(legacy.as_path())
    });
    for temp in temps.iter().filter(|f| f.modified <= protect_after) {
        if remove(&temp.path) {
            temps_removed.files += 1;
            temps_removed.bytes += temp.size;
        }
    }
    Ok(files)
}

/// Removes files, least recently used first, until `want` bytes are gone or the next one was
/// used after `protect_after`.
pub(crate) fn remove_oldest(mut files: Vec<FileInfo>, want: u64, protect_after: SystemTime) -> Freed {
    files.sort_by_key(|f| f.modified);
    let mut freed = Freed::default();
    for file in files.iter().take_while(|f| f.modified <= protect_after) {
        if freed.bytes >= want {
            break;
        }
        if remove(&file.path) {
            freed.files += 1;
            freed.bytes += file.size;
        }
    }
    freed
}

pub(crate) struct FileInfo {
    path: PathBuf,
    pub(crate) size: u64,
    modified: SystemTime,
}

/// Lists regular files `depth` directory levels below `dir` (1: its own files).
fn list_files(dir: &Path, depth: u32, out: &mut Vec<FileInfo>) -> Result<(), ListError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ListError { path: dir.to_owned(), source }),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Another process may remove files while we list: skip what vanished.
        let Ok(metadata) = entry.metadata() else { continue };
        if depth > 1 && metadata.is_dir() {
            list_files(&path, depth - 1, out)?;
        } else if depth == 1 && metadata.is_file() {
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(FileInfo { path, size: metadata.len(), modified });
        }
    }
    Ok(())
}

/// Removes a file; true when this call removed it (a concurrent trim may have been first).
fn remove(path: &Path) -> bool {
    fs::remove_file(path).is_ok()
}
