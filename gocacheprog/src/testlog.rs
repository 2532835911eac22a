//! Test results the go command keys by file times, which an untrusted session must not take.
//!
//! With every result cached, `go test` first looks up the test's ID, whose body is the log of
//! what the test's last run read (`# test log` and a line per `getenv`, `open`, `stat` and
//! `chdir`), then the result keyed by that ID and the inputs the log names. A file is keyed
//! by its size and modification time, not its content: `cachectl restore-mtimes` makes times
//! agree across clones, but a pull request chooses its commit's time and can grind a content
//! of the same size whose nanoseconds match (30 bits, minutes of CPU), and would then be told
//! main's run passed. So a session that trusts none of its own work (`--read-only`) takes no
//! such log from any record, its own scope's included (an earlier push's list of files would
//! compute main's inputs from the forged times): the test runs. A log of environment reads
//! only is keyed by the values and stays a hit.

use std::io::Read;

/// What the go command writes first in a test's input log (`testlogMagic`).
const MAGIC: &[u8] = b"# test log\n";

/// Past this a log is not read through; it is taken to name files.
const MAX_LOG: u64 = 4 << 20;

/// Whether a body of `size` bytes, read from its start, is a test input log that names files
/// or directories, whose cached result is keyed by their times. A body that cannot be read
/// counts as one: the answer must err on the side of running the test.
pub fn body_keys_files_by_time(mut file: impl Read, size: u64) -> bool {
    if size < MAGIC.len() as u64 {
        return false;
    }
    let mut head = [0u8; MAGIC.len()];
    if file.read_exact(&mut head).is_err() {
        return true;
    }
    if head != MAGIC {
        return false;
    }
    if size > MAX_LOG {
        return true;
    }
    let mut log = Vec::with_capacity(size as usize);
    if file.read_to_end(&mut log).is_err() {
        return true;
    }
    names_files(&log)
}

/// Whether a log (after its magic line) has a line other than an environment read.
fn names_files(log: &[u8]) -> bool {
    log.split(|&byte| byte == b'\n').any(|line| !line.is_empty() && !line.starts_with(b"getenv "))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn body(text: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        std::fs::write(&path, text).unwrap();
        (dir, path, text.len() as u64)
    }

    #[test]
    fn logs_that_name_files_are_keyed_by_time_and_others_are_not() {
        for (text, by_time) in [
            (&b"# test log\nopen testdata/limits.txt\n"[..], true),
            (b"# test log\ngetenv HOME\nstat go.mod\n", true),
            (b"# test log\nchdir /src/x\n", true),
            (b"# test log\ngetenv HOME\ngetenv GOFLAGS\n", false),
            (b"# test log\n", false),
            (b"!<arch>\n__.PKGDEF", false),
            (b"", false),
        ] {
            let (_dir, path, size) = body(text);
            let file = File::open(&path).unwrap();
            assert_eq!(body_keys_files_by_time(file, size), by_time, "{}", String::from_utf8_lossy(text));
        }
        assert!(body_keys_files_by_time(&b"# test"[..], 100), "a body cut short counts as one");
    }
}
