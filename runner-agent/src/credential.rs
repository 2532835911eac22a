//! The lease's cache credential, for the build's GOCACHEPROG bridge and nothing else of the
//! build.
//!
//! The credential (`TaskLease.cache_token`) writes the job's namespace's action cache
//! (`ac-write`), which whoever submitted the job must not hold: with it a pull request could map
//! `main`'s action IDs to bodies of its choosing. The go command hands its environment to every
//! tool it runs (compile, asm, cgo's C compiler and assembler, the linker), and a job's sources
//! name files those tools read (`.include`, `.incbin`, `#include` of `/proc/self/environ`). In
//! an environment variable, or in any file the build uid may read, the credential would be the
//! job's to copy into an object file, which the go command puts in the namespace's cache, and
//! into its binary.
//!
//! So the agent serves it on a Unix socket in the task's directory ([`serve`]), which only the
//! agent and the task's build uid reach, the socket itself the build user's with mode 0600.
//! Opening a socket fails (ENXIO): no tool's file read gets the credential, only a process that
//! connects, and the only one of the build that does is the bridge, this binary's `gocacheprog`
//! subcommand ([`fetch`]). The go command's environment holds the socket's path
//! ([`SOCKET_ENV`]). The bridge makes itself undumpable before it connects (its memory and
//! environment under /proc are then root's, not the build uid's to read) and keeps the
//! credential in memory: never in its environment, never passed on.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cached_client::Secret;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::sandbox::{self, Owner};

/// The go command's environment variable that names the socket.
pub const SOCKET_ENV: &str = "CACHED_TOKEN_SOCKET";

/// The socket's name in the task's directory.
const SOCKET_NAME: &str = "cache-token";

/// The most a socket address holds of a path (`sun_path` less its closing NUL).
const MAX_ADDRESS: usize = 107;

/// The longest answer the bridge takes (a lease credential is a few hundred bytes).
const MAX_CREDENTIAL: u64 = 16 << 10;

/// How long one connection may take to be answered, or the bridge to read its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The credential served to the task's build; the socket goes when this is dropped.
#[derive(Debug)]
pub struct Served {
    path: PathBuf,
    answering: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Where the bridge connects.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.answering.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves `credential` on a socket in the task directory `dir` (which only the agent and the
/// task's build user reach) to `owner`'s processes: each connection gets it once, then is
/// closed. Call before anything of the build runs.
pub fn serve(dir: &Path, owner: Option<Owner>, credential: String) -> Result<Served, String> {
    let path = dir.join(SOCKET_NAME);
    let failed =
        |err: std::io::Error| format!("serving the lease's cache credential at {}: {err}", path.display());
    let (address, _dir) = addressable(&path).map_err(failed)?;
    let listener = UnixListener::bind(&address).map_err(failed)?;
    // Nothing runs as the build user yet: the socket cannot have been swapped.
    if let Some(owner) = owner {
        rustix::fs::chown(&path, Some(sandbox::uid(owner.uid)), Some(sandbox::gid(owner.gid)))
            .map_err(|err| failed(err.into()))?;
    }
    sandbox::set_mode(&path, 0o600).map_err(|err| failed(std::io::Error::other(err)))?;
    let answering = cached_client::task::spawn("cache-credential", answer(listener, credential));
    Ok(Served { path, answering })
}

async fn answer(listener: UnixListener, credential: String) {
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                // A few hundred bytes fit the socket's buffer: no reader holds the loop up.
                let sent = async {
                    stream.write_all(credential.as_bytes()).await?;
                    stream.shutdown().await
                };
                match tokio::time::timeout(ANSWER_TIMEOUT, sent).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "a connection to the cache credential's socket")
                    }
                    Err(_) => tracing::debug!(
                        "a connection to the cache credential's socket was not answered in time"
                    ),
                }
            }
            Err(err) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tracing::warn!(error = %err, "cannot accept on the cache credential's socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The bridge's side: makes this process undumpable, then reads the credential served at
/// `path`. An empty answer is no credential.
pub fn fetch(path: &Path) -> Result<Option<Secret>, String> {
    // Before the credential is in memory: the build's tools run as the same uid, and an
    // undumpable process's /proc files (mem, environ) are root's.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|err| format!("cannot make the bridge undumpable before it takes a credential: {err}"))?;
    read(path)
}

/// Reads the credential served at `path`.
fn read(path: &Path) -> Result<Option<Secret>, String> {
    let failed =
        |err: std::io::Error| format!("reading the lease's cache credential from {}: {err}", path.display());
    let (address, _dir) = addressable(path).map_err(failed)?;
    let stream = std::os::unix::net::UnixStream::connect(&address).map_err(failed)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(failed)?;
    let mut answer = String::new();
    stream.take(MAX_CREDENTIAL).read_to_string(&mut answer).map_err(failed)?;
    Ok((!answer.is_empty()).then(|| Secret::new(answer)))
}

/// `path` as a socket address can name it: itself, or, when longer than an address holds (a
/// long `--work-dir`), through a descriptor of its directory, which the caller holds while it
/// binds or connects.
pub(crate) fn addressable(path: &Path) -> std::io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() <= MAX_ADDRESS {
        return Ok((path.to_owned(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file's path"));
    };
    use rustix::fs::{Mode, OFlags};
    let dir = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let address = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    Ok((address, Some(dir)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    async fn read_off_runtime(path: PathBuf) -> Result<Option<Secret>, String> {
        cached_client::task::spawn_blocking("read-credential", move || read(&path)).await.unwrap()
    }

    #[tokio::test]
    async fn the_credential_goes_to_whoever_connects_never_to_a_file_read() {
        let dir = tempfile::tempdir().unwrap();
        let served = serve(dir.path(), None, "cached_lease.claims.mac".into()).unwrap();
        let metadata = std::fs::symlink_metadata(served.path()).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.mode() & 0o777, 0o600);
        // What `#include`, `.incbin` and `cat` do.
        let err = std::fs::read(served.path()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::NXIO.raw_os_error()), "{err}");
        for _ in 0..2 {
            let path = served.path().to_owned();
            let fetched = read_off_runtime(path).await.unwrap();
            assert_eq!(fetched.unwrap().expose(), "cached_lease.claims.mac");
        }
        let path = served.path().to_owned();
        drop(served);
        assert!(!path.exists(), "the socket outlived the task");
        assert!(read(&path).is_err());
    }

    #[tokio::test]
    async fn a_socket_deeper_than_an_address_holds_is_served_through_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        let served = serve(&dir, None, "cached_lease.long".into()).unwrap();
        assert!(served.path().as_os_str().len() > MAX_ADDRESS);
        let path = served.path().to_owned();
        let fetched = read_off_runtime(path).await.unwrap();
        assert_eq!(fetched.unwrap().expose(), "cached_lease.long");
    }

    #[tokio::test]
    async fn an_empty_answer_is_no_credential() {
        let dir = tempfile::tempdir().unwrap();
        let served = serve(dir.path(), None, String::new()).unwrap();
        let path = served.path().to_owned();
        assert!(read_off_runtime(path).await.unwrap().is_none());
    }
}
