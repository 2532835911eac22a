//! A bridge's side of a running warm ([`super::warm`]): the bridge's lookups that miss the
//! local tier ask the warm first, so an action the warm is fetching, or is about to, is not
//! fetched twice; the warm fetches one it was not going to at once, ahead of its own list.
//!
//! The bridge says which session it is: when the warm lands its own list, the bridge leaves the
//! list to it ([`WarmLink::lands_our_list`]); when it lands another go command's, the bridge
//! walks its own list as usual and only its lookups go through the warm.
//!
//! The link never costs the build more than a fallback: when the warm goes away (done, killed)
//! or does not answer within [`ANSWER_WITHIN`], every waiting lookup and every later one
//! fetches the usual way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::ActionId;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::session::Keys;
use tokio::sync::{Notify, mpsc, oneshot};

use super::warm_wire::{self, Answer};

/// A warm that has not answered by then is taken as gone: a body it is landing for the go
/// command takes well under this even at hundreds of MiB, and a stopped warm must not stall
/// the build for longer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// How long a warm may take to greet a bridge.
const HELLO_WITHIN: Duration = Duration::from_secs(2);

pub struct WarmLink {
    lands_our_list: bool,
    wants: mpsc::UnboundedSender<String>,
    waiting: Mutex<Waiting>,
    gone: Notify,
}

#[derive(Default)]
struct Waiting {
    closed: bool,
    answers: HashMap<ActionId, Vec<oneshot::Sender<Answer>>>,
}

impl WarmLink {
    /// Joins the warm of `namespace` in the local tier at `root`, if one is running, as the
    /// session with `keys`. Needs a tokio runtime.
    pub async fn connect(
        root: &Path,
        server: &str,
        namespace: &str,
        keys: Option<&Keys>,
    ) -> Option<Arc<Self>> {
        let stream = UnixStream::connect(warm_wire::socket_path(root, server, namespace)).await.ok()?;
        if !warm_wire::same_user(&stream) {
            tracing::warn!("the warm socket of this local cache is another user's; not joining it");
            return None;
        }
        let (reader, mut writer) = stream.into_split();
        let mut reader = warm_wire::LineReader::new(reader);
        let lands_our_list = match keys {
            Some(keys) => {
                let hello = async {
                    writer.write_all(warm_wire::session(keys).as_bytes()).await.ok()?;
                    reader.next_line().await.ok()?
                };
                // A warm that does not say hello at once is no help.
                let said = tokio::time::timeout(HELLO_WITHIN, hello).await.ok()??;
                said == warm_wire::JOINED
            }
            None => false,
        };
        let (wants, outgoing) = mpsc::unbounded_channel();
        let waiting = Mutex::new(Waiting::default());
        let link = Arc::new(Self { lands_our_list, wants, waiting, gone: Notify::new() });
        let this = Arc::clone(&link);
        cached_client::task::spawn("warm-link-write", async move {
            let _ = warm_wire::write_lines(writer, outgoing).await;
            this.close();
        });
        let this = Arc::clone(&link);
        cached_client::task::spawn("warm-link-read", async move {
            this.read_answers(reader).await;
            this.close();
        });
        Some(link)
    }

    /// Whether the warm lands this session's own list (its keys are the bridge's).
    pub fn lands_our_list(&self) -> bool {
        self.lands_our_list
    }

    /// What the warm says of an action; [`Answer::NotHere`] once it is gone.
    pub async fn ask(&self, action_id: ActionId) -> Answer {
        let (sender, answered) = oneshot::channel();
        {
            let mut waiting = self.waiting();
            if waiting.closed {
                return Answer::NotHere;
            }
            let waiters = waiting.answers.entry(action_id).or_default();
            waiters.push(sender);
            if waiters.len() == 1 && self.wants.send(warm_wire::want(&action_id)).is_err() {
                waiting.answers.remove(&action_id);
                return Answer::NotHere;
            }
        }
        match tokio::time::timeout(ANSWER_WITHIN, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::NotHere,
            Err(_) => {
                tracing::warn!("the warm did not answer within {ANSWER_WITHIN:?}; fetching without it");
                self.close();
                Answer::NotHere
            }
        }
    }

    /// Resolves once the warm is gone.
    pub async fn gone(&self) {
        loop {
            let gone = self.gone.notified();
            if self.waiting().closed {
                return;
            }
            gone.await;
        }
    }

    async fn read_answers(&self, mut lines: warm_wire::LineReader) {
        while let Ok(Some(line)) = lines.next_line().await {
            let Some((action_id, answer)) = warm_wire::parse_answer(&line) else { continue };
            for waiter in self.waiting().answers.remove(&action_id).unwrap_or_default() {
                let _ = waiter.send(answer);
            }
        }
    }

    /// Every lookup still waiting fetches for itself (its answer is dropped), and so does every
    /// later one.
    fn close(&self) {
        let mut waiting = self.waiting();
        waiting.closed = true;
        waiting.answers.clear();
        drop(waiting);
        self.gone.notify_waiters();
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A warm that lands another list, answers its first want with `landed` and dies at the
    /// second, unanswered.
    async fn one_answer_then_die(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut lines = warm_wire::LineReader::new(reader);
        warm_wire::parse_session(&lines.next_line().await.unwrap().unwrap()).unwrap();
        writer.write_all(format!("{}\n", warm_wire::OTHER).as_bytes()).await.unwrap();
        let first = warm_wire::parse_want(&lines.next_line().await.unwrap().unwrap()).unwrap();
        writer.write_all(warm_wire::answer(&first, Answer::Landed).as_bytes()).await.unwrap();
        lines.next_line().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn lookups_fall_back_once_the_warm_dies_mid_answer() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys { exact: None, shared: ActionId([9; 32]) };
        assert!(
            WarmLink::connect(dir.path(), "http://s", "ns", Some(&keys)).await.is_none(),
            "no warm, no link"
        );
        let listener = UnixListener::bind(warm_wire::socket_path(dir.path(), "http://s", "ns")).unwrap();
        let warm = cached_client::task::spawn("fake-warm", one_answer_then_die(listener));
        let link = WarmLink::connect(dir.path(), "http://s", "ns", Some(&keys)).await.unwrap();
        assert!(!link.lands_our_list());
        assert_eq!(link.ask(ActionId([1; 32])).await, Answer::Landed);
        // The warm dies with this one asked: it is fetched without it, as is every later one.
        assert_eq!(link.ask(ActionId([2; 32])).await, Answer::NotHere);
        warm.await.unwrap();
        link.gone().await;
        assert_eq!(link.ask(ActionId([3; 32])).await, Answer::NotHere);
    }
}
