//! What the local tier does when the disk under it is full.
//!
//! The go command needs every output as a file, and some of its puts are not optional: when
//! the module index cannot be stored, `go test` fails with "package testing is not in std",
//! not a word about the disk. So a write that finds no space has the tier forget its least
//! recently used half (a cache may forget) and is tried once more. Files used within
//! `TRIM_PROTECT` stay, because a concurrent build may hold their paths. One warning line per
//! session says what happened and, when nothing could be removed, what to do.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use super::trim::{self, Freed, TRIM_PROTECT};
use cached_client::size;

pub struct Room {
    root: PathBuf,
    /// Rounds of room-making so far. A write that failed before the latest round ended tries
    /// again without starting another.
    rounds: AtomicU64,
    /// Held during a round, so writers that run out of space together wait for one round.
    making: Mutex<()>,
    /// A round found nothing it may remove: later failures do not list the tier again.
    exhausted: AtomicBool,
    warned: AtomicBool,
}

impl Room {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            rounds: AtomicU64::new(0),
            making: Mutex::new(()),
            exhausted: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Runs `op`; if it fails for want of space and room can be made, runs it once more.
    /// `op` must be safe to repeat after failing partway.
    pub fn retry<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let round = self.rounds.load(Ordering::Acquire);
        match op() {
            Err(err) if is_out_of_space(&err) && self.make(round, &err) => op(),
            result => result,
        }
    }

    /// Whether there may be room now: made by this call or by a round that ended after the
    /// failed write began.
    fn make(&self, failed_in_round: u64, err: &io::Error) -> bool {
        let _round = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if self.rounds.load(Ordering::Acquire) != failed_in_round {
            return true;
        }
        if self.exhausted.load(Ordering::Relaxed) {
            return false;
        }
        let protect_after = SystemTime::now().checked_sub(TRIM_PROTECT).unwrap_or(SystemTime::UNIX_EPOCH);
        let freed = trim::forget_oldest_half(&self.root, protect_after).unwrap_or_default();
        self.exhausted.store(freed.bytes == 0, Ordering::Relaxed);
        self.rounds.fetch_add(1, Ordering::Release);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{}", self.warning(err, &freed));
        }
        freed.bytes > 0
    }

    fn warning(&self, err: &io::Error, freed: &Freed) -> String {
        let full = format!("no space left for the local tier at {} ({err})", self.root.display());
        if freed.bytes > 0 {
            return format!(
                "{full}; removed its {} least recently used files ({}) to make room",
                freed.files,
                size::human(freed.bytes)
            );
        }
        format!(
            "{full}, and none of its files is unused long enough to remove (files used in the last \
             {} hours stay for builds that may read them). Outputs that do not fit are not cached and \
             the go command may fail: free space there, or point --dir (CACHED_GOCACHE_DIR) at a disk \
             with room",
            TRIM_PROTECT.as_secs() / 3600
        )
    }
}

fn is_out_of_space(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::time::Duration;

    use super::*;

    fn full() -> io::Error {
        io::Error::from(io::ErrorKind::StorageFull)
    }

    /// Writes `count` files of `size` bytes into the tier's body shards, last used `age` ago.
    fn bodies(
        root: &std::path::Path,
        prefix: &str,
        count: usize,
        size: usize,
        age: Duration,
    ) -> Vec<PathBuf> {
        let shard = root.join("o").join("ab");
        fs::create_dir_all(&shard).unwrap();
        (0..count)
            .map(|i| {
                let path = shard.join(format!("{prefix}{i:0>60}"));
                fs::write(&path, vec![7u8; size]).unwrap();
                // Older files first: i = 0 is the least recently used.
                let used = SystemTime::now() - age + Duration::from_secs(i as u64);
                File::options().write(true).open(&path).unwrap().set_modified(used).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn a_full_disk_forgets_the_oldest_half_and_retries_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = bodies(dir.path(), "aaaa", 4, 1000, 3 * TRIM_PROTECT);
        let recent = bodies(dir.path(), "bbbb", 2, 1000, Duration::from_secs(60));
        let room = Room::new(dir.path().to_owned());
        let mut attempts = 0;
        let result = room.retry(|| {
            attempts += 1;
            if attempts == 1 { Err(full()) } else { Ok(attempts) }
        });
        assert_eq!(result.unwrap(), 2);
        // Half of 6000 bytes: the three oldest go; the fourth old one and recent ones stay.
        let exists: Vec<bool> = old.iter().map(|path| path.exists()).collect();
        assert_eq!(exists, [false, false, false, true]);
        assert!(recent.iter().all(|path| path.exists()));
    }

    #[test]
    fn with_nothing_old_enough_the_failure_stands_and_the_tier_is_not_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let recent = bodies(dir.path(), "cccc", 3, 1000, Duration::from_secs(60));
        let room = Room::new(dir.path().to_owned());
        let mut attempts = 0;
        let mut failing = || {
            attempts += 1;
            Err::<(), _>(full())
        };
        assert!(room.retry(&mut failing).is_err());
        assert!(room.retry(&mut failing).is_err());
        assert_eq!(attempts, 2, "no second attempt when no room was made");
        assert_eq!(room.rounds.load(Ordering::Relaxed), 1, "an exhausted tier is listed once");
        assert!(recent.iter().all(|path| path.exists()));
        assert!(room.warning(&full(), &Freed::default()).contains("--dir (CACHED_GOCACHE_DIR)"));
    }

    #[test]
    fn other_errors_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let old = bodies(dir.path(), "dddd", 2, 1000, 3 * TRIM_PROTECT);
        let room = Room::new(dir.path().to_owned());
        let mut attempts = 0;
        let denied = room.retry(|| {
            attempts += 1;
            Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
        });
        assert!(denied.is_err());
        assert_eq!(attempts, 1);
        assert!(old.iter().all(|path| path.exists()));
    }
}
