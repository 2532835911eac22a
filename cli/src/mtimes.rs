//! Stable modification times for a git checkout, so that `go test` results hit the cache on a
//! fresh clone.
//!
//! The go command keys a cached test result by the files and directories the test opened, by
//! their size and modification time rather than their content, and a clone stamps every file
//! with the time of the clone: on a fresh runner every test that reads a file (`testdata/`,
//! golden files, embedded fixtures opened at run time) misses. This sets each tracked file to
//! the time of the last commit on the first-parent line that changed it, plus a nanosecond
//! part taken from its content (the blob ID), so two runners at the same commit agree, a file
//! keeps its time across commits that do not change it, and two different contents committed
//! in the same second almost never share a time. Directories get the latest time of the files
//! below them. Whoever commits chooses the time and can grind a content to 30 bits of
//! nanoseconds, so untrusted sessions take no result keyed by times (gocacheprog's testlog).
//!
//! Only what matches HEAD is touched: a tracked file with changes (staged or not) keeps its
//! time, so a test that read it is not taken for one that read the committed content.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, FileTimes};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use cached_client::error::{ClientError, Result};

/// What [`restore`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub files: usize,
    pub dirs: usize,
    /// Tracked files with changes against HEAD, left as they were.
    pub changed: usize,
}

/// Sets the times of the git work tree that holds `dir`.
pub fn restore(dir: &Path) -> Result<Restored> {
    let toplevel = git(dir, &["rev-parse", "--show-toplevel"])?;
    let root = PathBuf::from(OsString::from_vec(toplevel.strip_suffix(b"\n").unwrap_or(&toplevel).to_vec()));
    let mut wanted = tracked_files(&root)?;
    let changed = git(&root, &["diff", "--name-only", "--no-renames", "-z", "HEAD"])?;
    let changed = split_nul(&changed).filter(|path| wanted.remove(*path).is_some()).count();
    let times = last_change_times(&root, wanted)?;
    let mut restored = Restored { changed, ..Restored::default() };
    let mut dirs: BTreeMap<PathBuf, SystemTime> = BTreeMap::new();
    for (path, time) in &times {
        // Removed since git listed it: nothing to date.
        if !set_time(&root.join(path), *time)? {
            continue;
        }
        restored.files += 1;
        for parent in path.ancestors().skip(1) {
            let latest = dirs.entry(parent.to_owned()).or_insert(*time);
            *latest = (*latest).max(*time);
        }
    }
    for (path, time) in &dirs {
        restored.dirs += usize::from(set_time(&root.join(path), *time)?);
    }
    Ok(restored)
}

/// Regular files in the index at stage 0 (not symlinks, submodules or conflicts), with the
/// nanoseconds their blob IDs give them. Files marked assume-unchanged or skip-worktree are
/// left out: git does not report their changes, so their content may not be HEAD's.
fn tracked_files(root: &Path) -> Result<HashMap<Vec<u8>, u32>> {
    let listing = git(root, &["ls-files", "--stage", "-v", "-z"])?;
    let mut files = HashMap::new();
    for entry in split_nul(&listing) {
        // `<tag> <mode> <blob> <stage>\t<path>`; `H` is a plain tracked file.
        let Some(tab) = entry.iter().position(|&b| b == b'\t') else { continue };
        let fields: Vec<&[u8]> = entry[..tab].split(|&b| b == b' ').collect();
        let [b"H", mode, blob, b"0"] = fields.as_slice() else { continue };
        if matches!(*mode, b"100644" | b"100755")
            && let Some(nanos) = nanos_of(blob)
        {
            files.insert(entry[tab + 1..].to_vec(), nanos);
        }
    }
    Ok(files)
}

/// A time's nanosecond part from a blob ID (hex): the content's, so that it differs between
/// contents even within one second.
fn nanos_of(blob: &[u8]) -> Option<u32> {
    let hex = std::str::from_utf8(blob.get(..8)?).ok()?;
    Some(u32::from_str_radix(hex, 16).ok()? % 1_000_000_000)
}

/// Walks the history from HEAD along first parents until every wanted file has the time of
/// the newest commit that changed it. A file the walk never meets keeps its time; in a shallow
/// clone there is none, as its oldest commit lists the whole tree.
fn last_change_times(root: &Path, mut wanted: HashMap<Vec<u8>, u32>) -> Result<Vec<(PathBuf, SystemTime)>> {
    let args = [
        "log",
        "-z",
        "--name-only",
        "--no-renames",
        "--first-parent",
        "--diff-merges=first-parent",
        "--format=%x01%ct",
        "HEAD",
    ];
    let mut child = git_command(root, &args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| ClientError::Failed(format!("running git: {err}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let times = read_times(BufReader::new(stdout), &mut wanted)
        .map_err(|err| ClientError::Failed(format!("reading git log: {err}")))?;
    if !wanted.is_empty() {
        // The whole history was read: git must have finished well for it to be all.
        let status =
            child.wait().map_err(|err| ClientError::Failed(format!("waiting for git log: {err}")))?;
        if !status.success() {
            return Err(ClientError::Failed(format!(
                "git {} in {} failed ({status})",
                args.join(" "),
                root.display()
            )));
        }
        return Ok(times);
    }
    // Every file has its time: the rest of the history is not needed.
    let _ = child.kill();
    let _ = child.wait();
    Ok(times)
}

/// Reads `git log -z --name-only --format=%x01%ct` until every wanted file has a time, taking
/// each file out of `wanted` as it gets one.
fn read_times(
    log: impl BufRead,
    wanted: &mut HashMap<Vec<u8>, u32>,
) -> std::io::Result<Vec<(PathBuf, SystemTime)>> {
    let mut times = Vec::new();
    let mut commit_time = None;
    for token in log.split(0) {
        if wanted.is_empty() {
            break;
        }
        let token = token?;
        if let Some(seconds) = token.strip_prefix(b"\x01") {
            commit_time = std::str::from_utf8(seconds).ok().and_then(|s| s.trim().parse::<u64>().ok());
            continue;
        }
        let path = token.strip_prefix(b"\n").unwrap_or(&token);
        if let (Some(seconds), Some(nanos)) = (commit_time, wanted.remove(path)) {
            let time = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
            times.push((PathBuf::from(OsString::from_vec(path.to_vec())), time));
        }
    }
    Ok(times)
}

/// Sets a file's or directory's times; false if it does not exist.
fn set_time(path: &Path, time: SystemTime) -> Result<bool> {
    let set =
        File::open(path).and_then(|f| f.set_times(FileTimes::new().set_modified(time).set_accessed(time)));
    match set {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ClientError::File { path: path.to_owned(), source }),
    }
}

fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command.arg("-C").arg(dir).args(args).stdin(Stdio::null());
    command
}

/// Runs git, returning its output; its error output, when it fails, says why.
fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = git_command(dir, args).stderr(Stdio::piped()).output().map_err(|err| {
        ClientError::Failed(format!("running git: {err}; restore-mtimes needs git on the PATH"))
    })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(ClientError::Usage(format!(
            "git {} in {} failed: {said}\n  restore-mtimes works in a git clone with at least one commit",
            args.join(" "),
            dir.display()
        )));
    }
    Ok(output.stdout)
}

fn split_nul(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == 0).filter(|part| !part.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let status = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap();
        assert!(status.success(), "{script}");
    }

    fn mtime(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    /// A new git repository, set up by `script` (run in it after `git init`).
    fn repository(script: &str) -> tempfile::TempDir {
        let repo = tempfile::tempdir().unwrap();
        sh(
            repo.path(),
            &format!("git init -q && git config user.email t@t && git config user.name t && {script}"),
        );
        repo
    }

    /// Whether a file kept a time of today rather than one of the test commits (2023).
    fn is_undated(path: &Path) -> bool {
        mtime(path) > SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_001_000)
    }

    fn at(seconds: u64, path: &Path, root: &Path) -> SystemTime {
        let blob = git(root, &["rev-parse", &format!("HEAD:{}", path.display())]).unwrap();
        SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos_of(&blob).unwrap())
    }

    #[test]
    fn files_take_their_last_commit_time_and_changed_files_keep_theirs() {
        let repo = repository(
            "mkdir -p pkg/testdata && echo a > pkg/testdata/a && echo b > top \
             && git add . && GIT_COMMITTER_DATE=@1700000000 git commit -qm one \
             && echo a2 > pkg/testdata/a && echo c > 'pkg/with space' \
             && git add . && GIT_COMMITTER_DATE=@1700000500 git commit -qm two \
             && echo b2 > top && ln -s top link",
        );
        let root = repo.path();
        let restored = restore(&root.join("pkg")).unwrap();
        assert_eq!(restored, Restored { files: 2, dirs: 3, changed: 1 });
        let a = at(1_700_000_500, Path::new("pkg/testdata/a"), root);
        assert_eq!(mtime(&root.join("pkg/testdata/a")), a);
        assert_eq!(mtime(&root.join("pkg/with space")), at(1_700_000_500, Path::new("pkg/with space"), root));
        // The changed file is not dated back to the commit it no longer matches.
        assert!(is_undated(&root.join("top")));
        // Directories: the latest time below them.
        assert_eq!(mtime(&root.join("pkg/testdata")), a);
        assert!(mtime(&root.join("pkg")) >= a);
        // Run again: the same times.
        assert_eq!(restore(root).unwrap(), restored);
        assert_eq!(mtime(&root.join("pkg/testdata/a")), a);
    }

    #[test]
    fn files_whose_changes_git_would_not_report_are_left_alone() {
        let repo = repository(
            "echo a > kept && echo b > left-out && echo c > assumed && git add . \
             && GIT_COMMITTER_DATE=@1700000000 git commit -qm one \
             && git update-index --skip-worktree left-out && rm left-out \
             && git update-index --assume-unchanged assumed && echo edited > assumed",
        );
        let root = repo.path();
        assert_eq!(restore(root).unwrap(), Restored { files: 1, dirs: 1, changed: 0 });
        assert!(is_undated(&root.join("assumed")));
    }

    #[test]
    fn outside_a_clone_the_error_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = restore(dir.path()).unwrap_err().to_string();
        assert!(err.contains("restore-mtimes works in a git clone"), "{err}");
    }

    #[test]
    fn blob_ids_give_nanoseconds() {
        assert_eq!(nanos_of(b"00000001ffff"), Some(1));
        assert_eq!(nanos_of(b"ffffffff"), Some(294_967_295));
        assert_eq!(nanos_of(b"xyz"), None);
    }
}
