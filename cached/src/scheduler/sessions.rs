//! Agent sessions: registering (one live session per agent, taken over only by the same
//! process reconnecting), heartbeats (which extend the leases they list, if the session holds
//! them and presents their secrets) and going away.
//!
//! An agent is its token and its `--name` ([`agent_key`]), and so is what its tasks record: an
//! agent of another token may take the same name without reaching this one's session, leases,
//! aborts or records.

use std::collections::BTreeSet;
use std::sync::Arc;

use proto::v1::{
    AgentInfo, FencingToken, Heartbeat, LeaseResponse, Registered, TaskState, TaskStatus, lease_response,
};
use tonic::Status;

use super::dispatch::Scope;
use super::store::Durability;
use super::transitions::EXPELLED;
use super::workers::{LeaseReceiver, LeaseSender, Worker, Workers, agent_key, lease_channel, max_running};
use super::{
    MAX_AGENT_CAPACITY, MAX_JOB_ID_LEN, Scheduler, Settings, State, abort_message, job_namespace, lease_id,
    millis, now_ms, token_text,
};
use crate::auth::Grant;
use crate::error::{Error, Result};

/// Longest `AgentInfo.instance` (agents send 16 random bytes).
const MAX_INSTANCE_LEN: usize = 64;

/// A registered agent's end of its session.
pub struct Session {
    pub id: u64,
    pub sender: LeaseSender,
    pub receiver: LeaseReceiver,
}

impl Scheduler {
    /// A new agent session, registered through the token of `grant`. Refused while another
    /// live session of the same agent (token and name) is connected, unless it is the same
    /// process reconnecting: the same `instance`.
    pub fn register(&self, info: AgentInfo, grant: Arc<Grant>) -> Result<Session> {
        let mut state = self.lock();
        let session = admit(&mut state.workers, info, grant, &self.settings)?;
        self.dispatch(&mut state, Scope::All);
        Ok(session)
    }

    pub fn unregister(&self, session: u64) {
        let mut state = self.lock();
        if let Some(worker) = state.workers.remove(session) {
            tracing::info!(agent = %worker.agent, "agent disconnected; its leases run until they expire");
        }
    }

    pub fn expel(&self, session: u64) {
        {
            let mut state = self.lock();
            let State { jobs, workers, .. } = &mut *state;
            let Some(worker) = workers.remove(session) else { return };
            let agent = &worker.agent;
            let held = jobs
                .values_mut()
                .flat_map(|job| job.tasks.iter_mut())
                .filter(|task| task.state == TaskState::Leased as i32 && task.agent == *agent);
            let ended = held.map(|task| task.lease_until_unix_ms = EXPELLED).count();
            tracing::warn!(agent = %agent, leases = ended, "agent expelled; its leases end now");
        }
        self.sweep();
    }

    /// Extends the leases the heartbeat lists that this session holds, with their secrets;
    /// every other one is answered with an abort. An error ends the session.
    pub fn heartbeat(&self, session: u64, heartbeat: Heartbeat) -> Result<()> {
        let mut state = self.lock();
        let State { jobs, workers, index, .. } = &mut *state;
        let Some(worker) = workers.get_mut(session) else { return Ok(()) };
        check_heartbeat(&worker.info, &heartbeat)?;
        let resumed = worker.draining && !heartbeat.draining;
        worker.draining = heartbeat.draining;
        let (grant, sender) = (&worker.grant, &worker.sender);
        let holder = Holder { agent: &worker.agent, name: &worker.info.agent_id, now: now_ms() };
        let until = holder.now.saturating_add(millis(self.settings.lease_timeout));
        let mut changed = BTreeSet::new();
        for token in heartbeat.running {
            let Some(job) = jobs.get_mut(&token.job_id) else {
                sender.send(abort_message(token));
                continue;
            };
            let allowed = grant.allows_namespace(job_namespace(job));
            let held = job.tasks.get_mut(token.task as usize).filter(|task| holder.holds(task, &token));
            match held {
                Some(task)
                    if allowed
                        && self.keys.secret_matches(&lease_id(&token), &grant.token, &token.secret) =>
                {
                    task.lease_until_unix_ms = until;
                    if task.agent != holder.agent {
                        task.agent = holder.agent.to_owned();
                        index.update(job);
                    }
                    changed.insert(token.job_id);
                }
                Some(_) => {
                    tracing::warn!(target: "audit", agent = %holder.agent, token = %grant.token, lease = %token_text(&token), "heartbeat without the lease's secret refused");
                    sender.send(abort_message(token));
                }
                None => {
                    sender.send(abort_message(token));
                }
            }
        }
        // Extensions are not synced: losing one to a power cut costs a requeue at most.
        let _ = self.save(changed.iter().filter_map(|job_id| jobs.get(job_id)), Durability::Buffered);
        if resumed {
            self.dispatch(&mut state, Scope::All);
        }
        Ok(())
    }
}

/// The agent a heartbeat comes from, and when it is judged.
pub(super) struct Holder<'a> {
    /// Its [`agent_key`].
    pub(super) agent: &'a str,
    /// Its `--name`.
    pub(super) name: &'a str,
    pub(super) now: i64,
}

impl Holder<'_> {
    /// Whether `task` is leased to this agent under `token`'s attempt, unexpired. A lease
    /// recorded before agents were keyed by their tokens has the bare name, which matches
    /// too if it has no `/` (else it might be another token's key): the caller still checks
    /// the lease's secret, which only the token it was leased through can present, and the
    /// extension records the key. So agents keep their leases across that upgrade.
    pub(super) fn holds(&self, task: &TaskStatus, token: &FencingToken) -> bool {
        let legacy = !task.agent.contains('/') && task.agent == self.name;
        task.state == TaskState::Leased as i32
            && task.attempt == token.attempt
            && (task.agent == self.agent || legacy)
            && task.lease_until_unix_ms >= self.now
    }
}

/// Adds a session of `info` to `workers`, registered through the token of `grant`. Refused
/// while another live session of the same agent (token and name) is connected, unless it is
/// the same process reconnecting: the same `instance`.
pub(super) fn admit(
    workers: &mut Workers,
    mut info: AgentInfo,
    grant: Arc<Grant>,
    settings: &Settings,
) -> Result<Session> {
    check_info(&info)?;
    info.capacity = info.capacity.clamp(1, MAX_AGENT_CAPACITY);
    let (sender, receiver) = lease_channel(info.capacity);
    let registered = LeaseResponse {
        kind: Some(lease_response::Kind::Registered(Registered {
            heartbeat_interval_ms: u64::try_from(millis(settings.heartbeat_interval)).unwrap_or(0),
            lease_timeout_ms: u64::try_from(millis(settings.lease_timeout)).unwrap_or(0),
        })),
    };
    sender.send(registered);
    let agent = agent_key(&grant.token, &info.agent_id);
    if let Some(old) = workers.session_of(&agent) {
        if let Some(worker) = workers.get(old).filter(|worker| !worker.sender.is_gone()) {
            let reconnect = !info.instance.is_empty() && worker.info.instance == info.instance;
            if !reconnect {
                tracing::warn!(
                    target: "audit", agent = %agent, token = %grant.token,
                    "registration of a connected agent from another process refused"
                );
                return Err(Error::PermissionDenied(format!(
                    "agent `{}` of token `{}` is already connected from another process; only \
                     that process may reconnect under it (same instance). Give each runner agent \
                     of a token its own --name; if the old one stopped, its session ends once \
                     cached notices the connection dropped (within about idle_timeout)",
                    info.agent_id, grant.token
                )));
            }
            worker.sender.end(Status::aborted("replaced by a new session of the same agent"));
        }
        workers.remove(old);
    }
    tracing::info!(
        agent = %agent, token = %grant.token, go = %info.go_version, capacity = info.capacity,
        c_compilers = info.c_compilers.len(), "agent connected"
    );
    let worker = Worker { agent, info, grant, draining: false, sender: sender.clone() };
    let id = workers.add(worker);
    Ok(Session { id, sender, receiver })
}

fn check_info(info: &AgentInfo) -> Result<()> {
    if info.agent_id.is_empty() || info.agent_id.len() > 128 || info.agent_id.chars().any(char::is_control) {
        return Err(Error::invalid("agent_id must be 1 to 128 bytes of printable text"));
    }
    if info.instance.len() > MAX_INSTANCE_LEN {
        return Err(Error::invalid(format!(
            "instance is {} bytes; at most {MAX_INSTANCE_LEN} (agents send 16 random bytes)",
            info.instance.len()
        )));
    }
    Ok(())
}

/// A heartbeat lists at most what the agent can hold, by job ids of ours.
pub(super) fn check_heartbeat(info: &AgentInfo, heartbeat: &Heartbeat) -> Result<()> {
    let most = max_running(info.capacity);
    if heartbeat.running.len() > most as usize {
        return Err(Error::ResourceExhausted(format!(
            "the heartbeat lists {} leases; agent `{}` (capacity {}) holds at most {most}",
            heartbeat.running.len(),
            info.agent_id,
            info.capacity
        )));
    }
    if let Some(token) = heartbeat.running.iter().find(|token| token.job_id.len() > MAX_JOB_ID_LEN) {
        return Err(Error::invalid(format!(
            "the heartbeat lists a lease of a {}-byte job id; job ids are at most {MAX_JOB_ID_LEN} bytes",
            token.job_id.len()
        )));
    }
    Ok(())
}
