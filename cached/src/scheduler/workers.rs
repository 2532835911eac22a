//! Connected runner agents: who they are, what their token lets them build, the bounded
//! queue of what cached sends each, and what they can build.
//!
//! Matching: a job may pin a Go version (the build key includes it, so an agent with another
//! version would build something else). With CGO_ENABLED=0, GOOS/GOARCH is only part of the build
//! key, so any agent builds any target; a cgo target needs an agent with a C compiler for it.
//! And an agent builds only jobs in the namespaces of the token it registered with.
//!
//! Each session's queue is bounded by what the agent can be sent at once (its leases, and the
//! aborts one heartbeat can draw): an agent that stops reading its stream fills it and loses its
//! session, rather than growing cached's memory. The agent reconnects.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::Stream;
use proto::v1::{AgentInfo, JobSpec, LeaseResponse, Target};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::auth::Grant;

/// Image-index tasks one agent holds at once (they take no build slot).
pub const MAX_INDEX_LEASES: u32 = 8;
/// Leases a heartbeat may list beyond what the agent can hold: tasks it is still killing.
const HEARTBEAT_SLACK: u32 = 16;

/// Most leases a heartbeat from an agent of `capacity` may list.
pub fn max_running(capacity: u32) -> u32 {
    capacity + MAX_INDEX_LEASES + HEARTBEAT_SLACK
}

/// Messages queued for an agent of `capacity`: its leases, the aborts of one heartbeat, and
/// room for a few more.
fn queue_len(capacity: u32) -> usize {
    (capacity + MAX_INDEX_LEASES + max_running(capacity) + 16) as usize
}

/// cached's end of an agent's lease stream.
#[derive(Clone)]
pub struct LeaseSender {
    queue: mpsc::Sender<LeaseResponse>,
    /// Set once the session is over, with what the agent is told.
    end: Arc<watch::Sender<Option<Status>>>,
}

/// The agent's end: what the Lease call streams back.
pub struct LeaseReceiver {
    queue: mpsc::Receiver<LeaseResponse>,
    end: watch::Receiver<Option<Status>>,
}

/// A new session's queue.
pub fn lease_channel(capacity: u32) -> (LeaseSender, LeaseReceiver) {
    let (queue, receiver) = mpsc::channel(queue_len(capacity));
    let (end, ended) = watch::channel(None);
    (LeaseSender { queue, end: Arc::new(end) }, LeaseReceiver { queue: receiver, end: ended })
}

impl LeaseSender {
    /// Queues `message`; false if the session is over. A full queue ends the session.
    pub fn send(&self, message: LeaseResponse) -> bool {
        if self.is_gone() {
            return false;
        }
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = self.queue.max_capacity();
                self.end(Status::resource_exhausted(format!(
                    "the agent did not read its lease stream: {capacity} messages were waiting; reconnect \
                     and read the stream as it comes"
                )));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the session: the agent gets `status` (what was still queued is dropped).
    pub fn end(&self, status: Status) {
        self.end.send_if_modified(|end| {
            if end.is_some() {
                return false;
            }
            *end = Some(status);
            true
        });
    }

    /// Whether the session is over (ended, or the agent went away).
    pub fn is_gone(&self) -> bool {
        self.queue.is_closed() || self.end.borrow().is_some()
    }

    /// Resolves once the session is over.
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut end = self.end.subscribe();
        let queue = self.queue.clone();
        async move {
            tokio::select! {
                _ = end.wait_for(Option::is_some) => {}
                () = queue.closed() => {}
            }
        }
    }
}

impl LeaseReceiver {
    /// The messages, then the status the session ended with, if it was ended.
    pub fn into_stream(self) -> impl Stream<Item = Result<LeaseResponse, Status>> + Send + 'static {
        futures::stream::unfold(Some(self), |receiver| async move {
            let mut receiver = receiver?;
            tokio::select! {
                biased;
                Ok(status) = ended(&mut receiver.end) => Some((Err(status), None)),
                message = receiver.queue.recv() => message.map(|message| (Ok(message), Some(receiver))),
            }
        })
    }
}

/// The status the session ended with; an error once every sender is gone without one.
async fn ended(end: &mut watch::Receiver<Option<Status>>) -> Result<Status, watch::error::RecvError> {
    loop {
        if let Some(status) = end.wait_for(Option::is_some).await?.clone() {
            return Ok(status);
        }
    }
}

/// Who an agent is: the token it registered with and its `--name`, as tasks record it
/// (`ci-workers/builder-1`), so that the same name under another token is another agent. On a
/// server without tokens every agent is `anonymous` and keeps its bare name (`builder-1`),
/// unless that has a `/`. Unambiguous either way: token names have no `/`, so a key without one
/// is an anonymous agent's, and one with one is split at the first.
pub fn agent_key(token: &str, name: &str) -> String {
    if token == Grant::ANONYMOUS && !name.contains('/') { name.to_owned() } else { format!("{token}/{name}") }
}

pub struct Worker {
    /// [`agent_key`] of its token and name: what its sessions and leases are keyed by.
    pub agent: String,
    pub info: AgentInfo,
    /// The grant of the token it registered with: the namespaces it may build.
    pub grant: Arc<Grant>,
    pub draining: bool,
    pub sender: LeaseSender,
}

impl Worker {
    /// Whether it may be handed tasks now.
    pub fn taking(&self) -> bool {
        !self.draining && !self.sender.is_gone()
    }
}

/// Sessions by id, and the one session of each agent (by [`agent_key`]).
#[derive(Default)]
pub struct Workers {
    sessions: HashMap<u64, Worker>,
    agents: HashMap<String, u64>,
    next: u64,
}

impl Workers {
    pub fn add(&mut self, worker: Worker) -> u64 {
        self.next += 1;
        if let Some(old) = self.agents.insert(worker.agent.clone(), self.next) {
            self.sessions.remove(&old);
        }
        self.sessions.insert(self.next, worker);
        self.next
    }

    pub fn remove(&mut self, session: u64) -> Option<Worker> {
        let worker = self.sessions.remove(&session)?;
        if self.agents.get(&worker.agent) == Some(&session) {
            self.agents.remove(&worker.agent);
        }
        Some(worker)
    }

    pub fn get(&self, session: u64) -> Option<&Worker> {
        self.sessions.get(&session)
    }

    pub fn get_mut(&mut self, session: u64) -> Option<&mut Worker> {
        self.sessions.get_mut(&session)
    }

    /// The session of an agent, live or not yet noticed gone.
    pub fn session_of(&self, agent: &str) -> Option<u64> {
        self.agents.get(agent).copied()
    }

    /// The live session of an agent, to send it an abort.
    pub fn by_agent(&self, agent: &str) -> Option<&Worker> {
        let session = self.agents.get(agent)?;
        self.sessions.get(session).filter(|worker| !worker.sender.is_gone())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Worker)> {
        self.sessions.iter()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Whether `agent` can build `target` of `spec`.
pub fn can_build(agent: &AgentInfo, spec: &JobSpec, target: &Target) -> bool {
    if !spec.go_version.is_empty() && spec.go_version != agent.go_version {
        return false;
    }
    if !target.cgo {
        return true;
    }
    agent.c_compilers.iter().any(|cc| {
        cc.goos == target.goos
            && cc.goarch == target.goarch
            && (target.cc.is_empty()
                || cc.cc == target.cc
                || cc.cc.rsplit('/').next() == Some(target.cc.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::CCompiler;

    fn agent(go: &str, compilers: &[(&str, &str, &str)]) -> AgentInfo {
        AgentInfo {
            agent_id: "a".into(),
            go_version: go.into(),
            host_goos: "linux".into(),
            host_goarch: "amd64".into(),
            c_compilers: compilers
                .iter()
                .map(|(goos, goarch, cc)| CCompiler {
                    goos: (*goos).into(),
                    goarch: (*goarch).into(),
                    cc: (*cc).into(),
                })
                .collect(),
            capacity: 1,
            version: String::new(),
            instance: Default::default(),
        }
    }

    #[test]
    fn agent_keys_tell_tokens_apart_and_leave_anonymous_names_bare() {
        assert_eq!(agent_key("ci", "builder-1"), "ci/builder-1");
        assert_eq!(agent_key(Grant::ANONYMOUS, "builder-1"), "builder-1");
        // A `/` in an anonymous name would pass for another token's agent.
        assert_eq!(agent_key(Grant::ANONYMOUS, "ci/builder-1"), "anonymous/ci/builder-1");
    }

    fn target(spec: &str, cc: &str) -> Target {
        spec.parse::<proto::Platform>().unwrap().to_wire(cc)
    }

    #[test]
    fn pure_go_goes_anywhere_with_the_right_go_and_cgo_needs_a_compiler() {
        let plain = agent("go1.26.8", &[("linux", "amd64", "gcc")]);
        let cross = agent(
            "go1.26.8",
            &[("linux", "amd64", "gcc"), ("linux", "arm64", "/usr/bin/aarch64-linux-gnu-gcc")],
        );
        let spec = JobSpec { go_version: "go1.26.8".into(), ..JobSpec::default() };
        assert!(can_build(&plain, &spec, &target("windows/amd64", "")));
        assert!(can_build(&plain, &spec, &target("darwin/arm64", "")));
        assert!(!can_build(&plain, &spec, &target("linux/arm64+cgo", "")));
        assert!(can_build(&cross, &spec, &target("linux/arm64+cgo", "")));
        assert!(can_build(&cross, &spec, &target("linux/arm64+cgo", "aarch64-linux-gnu-gcc")));
        assert!(!can_build(&cross, &spec, &target("linux/arm64+cgo", "clang")));
        let old = agent("go1.24.0", &[]);
        assert!(!can_build(&old, &spec, &target("linux/amd64", "")));
        assert!(can_build(&old, &JobSpec::default(), &target("linux/amd64", "")));
    }
}
