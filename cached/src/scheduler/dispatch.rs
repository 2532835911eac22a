//! Matching queued tasks to agents: highest priority and oldest first, each to an agent whose
//! token covers the job's namespace, that can build it and has a free slot; among those, the
//! one with the most free slots.
//!
//! Dispatch walks the queue index in order and stops as soon as no agent has a free build
//! slot, so with busy agents its cost does not grow with the queue. It runs on the events that
//! can make a queued task leasable: a new job (only that job's tasks: nothing else changed),
//! an agent registering or leaving drain mode, and a slot or task freed (completion, expiry,
//! cancel). A heartbeat that only extends leases dispatches nothing. The leases of one dispatch
//! are written in one batch under the lock, and synced after it, before any agent is sent one.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use proto::v1::{
    FencingToken, JobState, JobStatus, LeaseResponse, Target, TaskKind, TaskLease, TaskState, lease_response,
};

use super::index::QueueKey;
use super::store::Durability;
use super::workers::{LeaseSender, MAX_INDEX_LEASES, Workers, can_build};
use super::{Scheduler, State, event, is_index, job_namespace, millis, now_ms};
use crate::auth::lease::{CacheClaims, LeaseId, LeaseKeys};

/// Which queued tasks may have become leasable.
pub(super) enum Scope<'a> {
    All,
    /// Only this (new) job's.
    Job(&'a str),
}

/// What an agent can take now.
struct Room {
    builds: u32,
    index_tasks: u32,
}

/// A lease to send once it is on disk.
pub(super) struct Outgoing {
    sender: LeaseSender,
    message: LeaseResponse,
    job_id: String,
    attempt: u32,
    event: proto::v1::JobEvent,
}

impl Scheduler {
    /// Hands queued tasks to agents while any can take them.
    pub(super) fn dispatch(&self, state: &mut State, scope: Scope<'_>) {
        let State { jobs, workers, index, .. } = state;
        if workers.is_empty() || index.queued_len() == 0 {
            return;
        }
        let mut room = rooms(workers, index);
        let mut build_slots: u64 = room.values().map(|room| u64::from(room.builds)).sum();
        let until = now_ms().saturating_add(millis(self.settings.lease_timeout));
        let mut of_job = match scope {
            Scope::All => None,
            Scope::Job(job_id) => Some(index.queued_of(job_id).into_iter()),
        };
        let mut cursor: Option<QueueKey> = None;
        let mut outgoing = Vec::new();
        let mut changed = BTreeSet::new();
        loop {
            let next = match &mut of_job {
                Some(keys) => keys.next(),
                None => index.next_queued(cursor.as_ref()).cloned(),
            };
            let Some(key) = next else { break };
            self.examined.fetch_add(1, Ordering::Relaxed);
            if key.builds && build_slots == 0 {
                break;
            }
            cursor = Some(key.clone());
            let Some(job) = jobs.get_mut(&key.job_id) else { continue };
            let Some(session) = choose(workers, &room, &key, job) else { continue };
            let Some(worker) = workers.get(session) else { continue };
            let task = &mut job.tasks[key.index as usize];
            task.state = TaskState::Leased as i32;
            task.attempt += 1;
            task.agent = worker.agent.clone();
            task.lease_until_unix_ms = until;
            task.started_unix_ms = 0;
            let lease = LeaseId { job_id: key.job_id.clone(), task: key.index, attempt: task.attempt };
            let token = FencingToken {
                job_id: key.job_id.clone(),
                task: key.index,
                attempt: task.attempt,
                secret: self.keys.secret(&lease, &worker.grant.token).to_vec().into(),
            };
            let leased_event = event(proto::v1::job_event::Kind::Leased, task);
            job.state = JobState::Running as i32;
            let message =
                LeaseResponse { kind: Some(lease_response::Kind::Task(self.lease(job, lease, token))) };
            if let Some(room) = room.get_mut(&session) {
                if key.builds {
                    room.builds -= 1;
                    build_slots -= 1;
                } else {
                    room.index_tasks -= 1;
                }
            }
            index.update(job);
            changed.insert(key.job_id.clone());
            outgoing.push(Outgoing {
                sender: worker.sender.clone(),
                message,
                attempt: leased_event.attempt,
                job_id: key.job_id,
                event: leased_event,
            });
        }
        if outgoing.is_empty() {
            return;
        }
        let saved = self.save(changed.iter().filter_map(|job_id| jobs.get(job_id)), Durability::Buffered);
        // Events go out in the order of the changes, under the lock; leases once synced.
        for lease in &outgoing {
            self.emit(&lease.job_id, lease.event.clone());
        }
        match saved {
            Ok(()) => state.unsent.extend(outgoing),
            Err(_) => not_sent(outgoing.len()),
        }
    }

    /// Sends leases dispatch wrote, once synced; called after the lock is let go.
    pub(super) fn send_leases(&self, outgoing: Vec<Outgoing>) {
        if self.sync_now().is_err() {
            return not_sent(outgoing.len());
        }
        // A cancel or an expiry during the sync ended some: those are not sent (the agent
        // would build a task no one waits for until its next heartbeat's abort). Sent under
        // the lock, which a cancel's abort takes too, so no abort overtakes its lease.
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for lease in outgoing.into_iter().filter(|lease| still_leased(&state.jobs, lease)) {
            let Outgoing { sender, message, job_id, event, .. } = lease;
            if !sender.send(message) {
                // The session is gone; the lease expires and the task is requeued.
                tracing::warn!(job = %job_id, task = event.task, "agent stream gone while leasing");
            }
        }
    }

    /// What the agent gets for `lease`: the task, its secret in `token`, and the credential its
    /// build reaches the cache with.
    fn lease(&self, job: &JobStatus, lease: LeaseId, token: FencingToken) -> TaskLease {
        task_lease(&self.keys, job, lease, token, self.deadline(job))
    }
}

/// Whether `lease`'s task is leased still, at its attempt.
fn still_leased(jobs: &std::collections::BTreeMap<String, JobStatus>, lease: &Outgoing) -> bool {
    let task = jobs.get(&lease.job_id).and_then(|job| job.tasks.get(lease.event.task as usize));
    task.is_some_and(|task| task.state == TaskState::Leased as i32 && task.attempt == lease.attempt)
}

/// Leases that could not be stored are never sent: they expire and the tasks are requeued.
fn not_sent(leases: usize) {
    tracing::error!(
        leases,
        "leases not sent: they could not be stored; they expire and the tasks are requeued"
    );
}

/// What the agent gets for `lease` of a job due by `deadline`: the task, its secret in
/// `token`, and the credential its build reaches the cache with.
pub(super) fn task_lease(
    keys: &LeaseKeys,
    job: &JobStatus,
    lease: LeaseId,
    token: FencingToken,
    deadline: i64,
) -> TaskLease {
    let spec = job.spec.clone().unwrap_or_default();
    let task = &job.tasks[lease.task as usize];
    let (kind, images) = if is_index(task) {
        // The index is assembled from the platform images the build tasks reported.
        let images = job
            .tasks
            .iter()
            .filter(|task| !is_index(task))
            .filter_map(|task| task.result.as_ref().and_then(|result| result.image.clone()))
            .collect();
        (TaskKind::ImageIndex, images)
    } else {
        (TaskKind::Build, Vec::new())
    };
    let claims = CacheClaims {
        lease,
        namespace: job_namespace(job).to_owned(),
        expires_unix_ms: deadline,
        submitter: job.submitter.clone(),
    };
    TaskLease {
        token: Some(token),
        spec: Some(spec),
        target: task.target.clone(),
        deadline_unix_ms: deadline,
        kind: kind as i32,
        images,
        cache_token: keys.mint(&claims).unwrap_or_default(),
    }
}

/// Free build slots and index-task room of each agent session that is taking tasks.
fn rooms(workers: &Workers, index: &super::index::Index) -> HashMap<u64, Room> {
    workers
        .iter()
        .filter(|(_, worker)| worker.taking())
        .map(|(session, worker)| {
            let agent = &worker.agent;
            let room = Room {
                builds: worker.info.capacity.saturating_sub(index.leased_builds(agent)),
                index_tasks: MAX_INDEX_LEASES.saturating_sub(index.leased_index_tasks(agent)),
            };
            (*session, room)
        })
        .collect()
}

/// The agent with the most free slots that may and can take the task `key` names. Any agent
/// with room assembles an index; a build needs a free slot and an agent that can build its
/// target. Either way the agent's token must cover the job's namespace.
fn choose(workers: &Workers, room: &HashMap<u64, Room>, key: &QueueKey, job: &JobStatus) -> Option<u64> {
    let spec = job.spec.as_ref()?;
    let namespace = job_namespace(job);
    let none = Target::default();
    let target = job.tasks.get(key.index as usize)?.target.as_ref().unwrap_or(&none);
    room.iter()
        .filter(|(session, room)| {
            workers.get(**session).is_some_and(|worker| {
                let fits = if key.builds {
                    room.builds > 0 && can_build(&worker.info, spec, target)
                } else {
                    room.index_tasks > 0
                };
                fits && worker.grant.allows_namespace(namespace)
            })
        })
        .max_by_key(|(session, room)| (room.builds, Reverse(**session)))
        .map(|(session, _)| *session)
}
