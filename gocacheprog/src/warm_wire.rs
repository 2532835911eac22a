//! What a warm ([`super::warm`]) and the bridges that join it say to each other over a unix
//! socket in the local tier: one line per message, so either side can be read with `socat`.
//!
//! - bridge → warm, first: `session <exact key hex or -> <shared key hex>`, its session keys;
//!   the warm answers `joined` when they are its own (the warm lands this go command's list, and
//!   stops when this bridge goes) or `other` (it lands another's; the bridge walks its own).
//! - bridge → warm: `want <ActionID hex>`: the go command asked for this action and it is not
//!   on local disk.
//! - warm → bridge: `landed <hex>` (it is in the local tier now), `missing <hex>` (cached has
//!   no usable entry) or `not <hex>` (the warm could not tell; fetch it yourself).
//!
//! The socket is named after the namespace, since a local tier keeps namespaces' entries
//! apart, and lives with the files it is about: whoever may use the tier may connect.

use std::path::{Path, PathBuf};

use proto::ActionId;

use super::session::Keys;
use sha2::{Digest as _, Sha256};

/// What the warm tells a bridge about an action it wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Landed,
    Missing,
    /// The warm could not tell (it failed, or is going away): the bridge fetches it itself.
    NotHere,
}

impl Answer {
    fn word(self) -> &'static str {
        match self {
            Self::Landed => "landed",
            Self::Missing => "missing",
            Self::NotHere => "not",
        }
    }
}

/// The socket of the warm for `namespace` on `server` in the local tier at `root`: a bridge
/// joins only a warm landing from its own server, as the tier keeps records apart
/// ([`crate::disk::DiskTier::in_namespace`]).
pub fn socket_path(root: &Path, server: &str, namespace: &str) -> PathBuf {
    // cached reads "" and "default" as one namespace, and so does the local tier.
    let namespace = if namespace.is_empty() { "default" } else { namespace };
    let hash = Sha256::new()
        .chain_update(b"cachectl warm socket\0")
        .chain_update(crate::disk::server_identity(server))
        .chain_update(b"\0")
        .chain_update(namespace)
        .finalize();
    let hex: String = hash[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    root.join(format!("warm-{hex}.sock"))
}

/// Whether the other end of `stream` runs as this process's user. The socket is the owner's
/// (mode 0600), but it is chmodded only after it is bound, and the tier's directory may not be
/// private: neither end talks to another user's process.
pub fn same_user(stream: &tokio::net::UnixStream) -> bool {
    stream.peer_cred().is_ok_and(|peer| peer.uid() == rustix::process::getuid().as_raw())
}

pub const JOINED: &str = "joined";
pub const OTHER: &str = "other";

pub fn session(keys: &Keys) -> String {
    let exact = keys.exact.map_or_else(|| "-".to_owned(), |key| key.to_string());
    format!("session {exact} {}\n", keys.shared)
}

/// Reads a bridge's first line; `None` for anything else.
pub fn parse_session(line: &str) -> Option<Keys> {
    let (exact, shared) = line.trim_end().strip_prefix("session ")?.split_once(' ')?;
    let exact = if exact == "-" { None } else { Some(parse_action(exact)?) };
    Some(Keys { exact, shared: parse_action(shared)? })
}

pub fn want(action_id: &ActionId) -> String {
    format!("want {action_id}\n")
}

pub fn answer(action_id: &ActionId, answer: Answer) -> String {
    format!("{} {action_id}\n", answer.word())
}

/// Reads a bridge's line; `None` for anything else.
pub fn parse_want(line: &str) -> Option<ActionId> {
    parse_action(line.trim_end().strip_prefix("want ")?)
}

/// Reads a warm's line; `None` for anything else.
pub fn parse_answer(line: &str) -> Option<(ActionId, Answer)> {
    let (word, hex) = line.trim_end().split_once(' ')?;
    let answer = [Answer::Landed, Answer::Missing, Answer::NotHere].into_iter().find(|a| a.word() == word)?;
    Some((parse_action(hex)?, answer))
}

fn parse_action(hex: &str) -> Option<ActionId> {
    crate::disk::parse_hex32(hex).map(ActionId)
}

/// The longest line either side sends (a `session` line is about 140 bytes).
const MAX_LINE: usize = 1024;

/// Reads the other side's lines, each at most [`MAX_LINE`] bytes: a longer one is an error,
/// so a peer that never sends a newline cannot grow this side's memory.
pub struct LineReader {
    inner: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    line: Vec<u8>,
}

impl LineReader {
    pub fn new(reader: tokio::net::unix::OwnedReadHalf) -> Self {
        Self { inner: tokio::io::BufReader::new(reader), line: Vec::new() }
    }

    /// The next line without its newline; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
        self.line.clear();
        let read = (&mut self.inner).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut self.line).await?;
        if read == 0 {
            return Ok(None);
        }
        if self.line.pop_if(|last| *last == b'\n').is_none() && read > MAX_LINE {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a line over 1024 bytes"));
        }
        String::from_utf8(std::mem::take(&mut self.line))
            .map(Some)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }
}

/// Writes the lines `outgoing` gives as they come, one write for whatever is queued, until the
/// sender is gone or the peer is.
pub async fn write_lines(
    mut writer: tokio::net::unix::OwnedWriteHalf,
    mut outgoing: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut batch = String::new();
    while let Some(first) = outgoing.recv().await {
        batch.clear();
        batch.push_str(&first);
        while let Ok(next) = outgoing.try_recv() {
            batch.push_str(&next);
        }
        writer.write_all(batch.as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warm fetches with its user's token and a bridge trusts what it says: neither talks to
    /// another user's process. (Run as root only: it takes another uid to connect.)
    #[tokio::test]
    async fn only_a_peer_of_the_same_user_is_talked_to() {
        let (ours, _other_end) = tokio::net::UnixStream::pair().unwrap();
        assert!(same_user(&ours));
        if !rustix::process::getuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let path = dir.path().join("warm.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let script = format!(
            "import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({:?}); time.sleep(2)",
            path.display().to_string()
        );
        let mut nobody = std::process::Command::new("python3");
        std::os::unix::process::CommandExt::uid(&mut nobody, 65534);
        let mut child = nobody.args(["-c", &script]).spawn().unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        assert!(!same_user(&theirs), "a process of uid 65534 passed for ours");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[tokio::test]
    async fn a_line_without_an_end_is_refused_at_the_bound() {
        use tokio::io::AsyncWriteExt as _;
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (reader, _writer) = ours.into_split();
        let mut lines = LineReader::new(reader);
        let (_, mut sender) = theirs.into_split();
        sender.write_all(b"want ab\n").await.unwrap();
        sender.write_all(&[b'x'; 4096]).await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("want ab"));
        let err = lines.next_line().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn lines_round_trip_and_anything_else_is_ignored() {
        let action = ActionId([0xab; 32]);
        assert_eq!(parse_want(&want(&action)), Some(action));
        for kind in [Answer::Landed, Answer::Missing, Answer::NotHere] {
            assert_eq!(parse_answer(&answer(&action, kind)), Some((action, kind)));
        }
        assert_eq!(parse_want("want abc\n"), None);
        assert_eq!(parse_answer(&want(&action)), None);
        assert_eq!(parse_answer(&format!("landed {}zz\n", "0".repeat(62))), None);
        for keys in
            [Keys { exact: Some(action), shared: ActionId([1; 32]) }, Keys { exact: None, shared: action }]
        {
            assert_eq!(parse_session(&session(&keys)), Some(keys));
        }
        assert_eq!(parse_session(&want(&action)), None);
    }

    #[test]
    fn each_namespace_has_its_socket() {
        let root = Path::new("/tier");
        let server = "http://127.0.0.1:1";
        assert_eq!(socket_path(root, server, ""), socket_path(root, server, "default"));
        assert_ne!(socket_path(root, server, "team"), socket_path(root, server, "default"));
        assert_ne!(socket_path(root, server, "team"), socket_path(root, "http://127.0.0.1:2", "team"));
        assert!(socket_path(root, server, "team").starts_with(root));
    }
}
