//! Matching queued tasks to agents: highest priority and oldest first, each to an agent that
//! can build it and has a free slot; among those, the one with the most free slots.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::v1::{
    FencingToken, JobSpec, JobState, JobStatus, LeaseResponse, TaskKind, TaskLease, TaskState,
    job_event::Kind, lease_response,
};

use super::workers::{LeaseSender, Workers, can_build};
use super::{Scheduler, State, event, is_index, job_finished, now_ms};

/// A queued task in dispatch order: index tasks first (they finish jobs, in milliseconds),
/// then by priority, then oldest job first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    builds: bool,
    negated_priority: i64,
    submitted_unix_ms: i64,
    job_id: String,
    index: u32,
}

/// An agent picked for a task.
struct Chosen {
    session: u64,
    agent_id: String,
    sender: LeaseSender,
}

impl Scheduler {
    /// Hands queued tasks to agents while any can take them.
    pub(super) fn dispatch(&self, state: &mut State) {
        let State { jobs, workers } = state;
        if workers.is_empty() {
            return;
        }
        let (leased, queued) = queue(jobs);
        if queued.is_empty() {
            return;
        }
        let mut free = free_slots(workers, &leased);
        let until = now_ms() + self.settings.lease_timeout.as_millis() as i64;
        for Queued { job_id, index, .. } in queued {
            let Some(job) = jobs.get_mut(&job_id) else { continue };
            let Some(spec) = job.spec.as_ref() else { continue };
            let index_task = is_index(&job.tasks[index as usize]);
            let Some(chosen) = choose(workers, &free, index_task, spec, job, index) else { continue };
            let lease = self.lease(job, index);
            let task = &mut job.tasks[index as usize];
            task.state = TaskState::Leased as i32;
            task.attempt += 1;
            task.agent = chosen.agent_id;
            task.lease_until_unix_ms = until;
            task.started_unix_ms = 0;
            let token = FencingToken {
                job_id: job_id.clone(),
                task: index,
                attempt: task.attempt,
                ..FencingToken::default()
            };
            let leased_event = event(Kind::Leased, task);
            job.state = JobState::Running as i32;
            self.save(job);
            let message = LeaseResponse {
                kind: Some(lease_response::Kind::Task(TaskLease { token: Some(token), ..lease })),
            };
            if chosen.sender.send(Ok(message)).is_err() {
                // The stream is gone; the lease expires and the task is requeued.
                tracing::warn!(job = %job_id, task = index, "agent stream closed while leasing");
            }
            if let Some(slots) = free.get_mut(&chosen.session).filter(|_| !index_task) {
                *slots -= 1;
            }
            self.emit(&job_id, leased_event);
        }
    }

    /// What the agent gets for task `index` of `job` (without its fencing token).
    fn lease(&self, job: &JobStatus, index: u32) -> TaskLease {
        let spec = job.spec.clone().unwrap_or_default();
        let timeout = match spec.timeout_seconds {
            0 => self.settings.job_timeout,
            seconds => Duration::from_secs(seconds),
        };
        let (kind, images) = if is_index(&job.tasks[index as usize]) {
            // The index is assembled from the platform images the build tasks reported.
            let images = job
                .tasks
                .iter()
                .filter_map(|task| task.result.as_ref().and_then(|result| result.image.clone()))
                .collect();
            (TaskKind::ImageIndex, images)
        } else {
            (TaskKind::Build, Vec::new())
        };
        TaskLease {
            token: None,
            spec: Some(spec),
            target: job.tasks[index as usize].target.clone(),
            deadline_unix_ms: job.submitted_unix_ms + timeout.as_millis() as i64,
            kind: kind as i32,
            images,
            cache_token: String::new(),
        }
    }
}

/// Build tasks leased per agent, and the queued tasks in dispatch order.
fn queue(jobs: &BTreeMap<String, JobStatus>) -> (HashMap<String, u32>, Vec<Queued>) {
    let mut leased: HashMap<String, u32> = HashMap::new();
    let mut queued = Vec::new();
    for job in jobs.values().filter(|job| !job_finished(job)) {
        let priority = job.spec.as_ref().map_or(0, |spec| spec.priority);
        for task in &job.tasks {
            if task.state == TaskState::Leased as i32 && !is_index(task) {
                *leased.entry(task.agent.clone()).or_default() += 1;
            } else if task.state == TaskState::Queued as i32 {
                queued.push(Queued {
                    builds: !is_index(task),
                    negated_priority: -i64::from(priority),
                    submitted_unix_ms: job.submitted_unix_ms,
                    job_id: job.job_id.clone(),
                    index: task.index,
                });
            }
        }
    }
    queued.sort();
    (leased, queued)
}

/// Free build slots per agent session that is taking tasks.
fn free_slots(workers: &Workers, leased: &HashMap<String, u32>) -> HashMap<u64, u32> {
    workers
        .iter()
        .filter(|(_, worker)| !worker.draining && !worker.sender.is_closed())
        .map(|(session, worker)| {
            let busy = leased.get(&worker.info.agent_id).copied().unwrap_or(0);
            (*session, worker.info.capacity.saturating_sub(busy))
        })
        .collect()
}

/// The agent with the most free slots that can take task `index`. Any agent taking tasks can
/// assemble an index; a build needs a free slot and an agent that can build its target.
fn choose(
    workers: &Workers,
    free: &HashMap<u64, u32>,
    index_task: bool,
    spec: &JobSpec,
    job: &JobStatus,
    index: u32,
) -> Option<Chosen> {
    let target = job.tasks[index as usize].target.clone().unwrap_or_default();
    workers
        .iter()
        .filter(|(session, worker)| {
            free.get(session)
                .is_some_and(|free| index_task || (*free > 0 && can_build(&worker.info, spec, &target)))
        })
        .max_by_key(|(session, _)| free.get(session).copied().unwrap_or(0))
        .map(|(session, worker)| Chosen {
            session: *session,
            agent_id: worker.info.agent_id.clone(),
            sender: worker.sender.clone(),
        })
}
