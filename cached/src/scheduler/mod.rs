//! The remote-execution scheduler: jobs, one task per target, leases to runner agents.
//!
//! Read in this order: [`validate`] (what a job may ask of the agents), this module (the state
//! machine: submit, lease, heartbeat, complete, cancel), [`expiry`] (leases and jobs that ran
//! out of time), [`finish`] (how a job ends), [`workers`] (connected agents), [`dispatch`]
//! (matching queued tasks to agents), [`store`] (every change written to RocksDB before it is
//! acknowledged).
//!
//! A task is QUEUED, then LEASED to one agent at a time under a fencing token (job, task,
//! attempt). Heartbeats extend the lease; a lease not extended for `lease_timeout` expires and
//! the task goes back to the queue with the next attempt number, up to `max_attempts`, then
//! fails with the reason. A completion is accepted only from the current, unexpired lease, so a
//! zombie agent can never overwrite a newer attempt's result.
//!
//! A job with an image spec gets one more task once every build task has succeeded: an
//! IMAGE_INDEX task that assembles the image index over the targets' images (see
//! [`Scheduler::add_index_task`] for why an agent does that, not cached).
//!
//! All state sits behind one mutex; nothing awaits while holding it. Events go out on a
//! broadcast channel while the lock is held, so a watcher that subscribed under the lock sees
//! every change after its snapshot, in order.

mod dispatch;
mod expiry;
mod finish;
pub mod store;
pub mod validate;
pub mod workers;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1::{
    AgentInfo, FencingToken, Heartbeat, JobEvent, JobSpec, JobState, JobStatus, LeaseResponse, Registered,
    TaskKind, TaskResult, TaskState, TaskStatus, job_event::Kind, lease_response,
};
use tokio::sync::{broadcast, watch};

use self::store::{JobStore, KEEP_FINISHED};
use self::workers::{LeaseSender, Workers};
use crate::error::{Error, Result};

/// Timing and retry policy (`heartbeat_interval`, `lease_timeout`, `max_attempts`,
/// `job_timeout`, `max_job_timeout` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
    pub max_attempts: u32,
    pub job_timeout: Duration,
    /// The longest deadline a job may ask for.
    pub max_job_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            lease_timeout: Duration::from_secs(30),
            max_attempts: 3,
            job_timeout: Duration::from_secs(3600),
            max_job_timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// Events kept for watchers that fall behind; a watcher that lags further gets a new snapshot.
const EVENT_BUFFER: usize = 4096;
const MAX_AGENT_CAPACITY: u32 = 1024;

/// Events of every job, tagged with the job id.
pub type Events = broadcast::Receiver<Arc<(String, JobEvent)>>;

/// What happened to a completed lease.
pub enum Outcome {
    Success(Box<TaskResult>),
    Failure { reason: String, retryable: bool },
}

struct State {
    jobs: BTreeMap<String, JobStatus>,
    workers: Workers,
}

pub struct Scheduler {
    state: Mutex<State>,
    store: JobStore,
    events: broadcast::Sender<Arc<(String, JobEvent)>>,
    settings: Settings,
    stop: watch::Sender<bool>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn is_terminal(state: i32) -> bool {
    matches!(TaskState::try_from(state), Ok(TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled))
}

fn is_index(task: &TaskStatus) -> bool {
    task.kind == TaskKind::ImageIndex as i32
}

fn job_finished(job: &JobStatus) -> bool {
    matches!(JobState::try_from(job.state), Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled))
}

fn event(kind: Kind, task: &TaskStatus) -> JobEvent {
    JobEvent {
        kind: kind as i32,
        time_unix_ms: now_ms(),
        task: task.index,
        attempt: task.attempt,
        agent: task.agent.clone(),
        ..JobEvent::default()
    }
}

/// JOB_FINISHED, with the job as it ended.
fn finished_event(job: &JobStatus) -> JobEvent {
    JobEvent {
        kind: Kind::JobFinished as i32,
        time_unix_ms: now_ms(),
        status: Some(job.clone()),
        ..JobEvent::default()
    }
}

fn token_text(token: &FencingToken) -> String {
    format!("task {} of job {} (attempt {})", token.task, token.job_id, token.attempt)
}

/// A job ID that sorts after every one this process handed out before: its first part is the
/// submission time in milliseconds, moved on by one when two jobs arrive within the same
/// millisecond. Dispatch breaks ties between jobs submitted at the same time by ID, so this
/// keeps it first come, first served.
fn new_job_id() -> String {
    static LAST_MS: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let mut stamp = now;
    let _ = LAST_MS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        stamp = now.max(last + 1);
        Some(stamp)
    });
    let mut random = [0u8; 3];
    let _ = getrandom::fill(&mut random);
    format!("{stamp:011x}-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Scheduler {
    /// Loads the stored jobs; leases keep their deadlines, so agents that are still working
    /// reconnect and go on heartbeating them.
    pub fn open(db: Arc<rocksdb::DB>, settings: Settings) -> Result<Arc<Self>> {
        let store = JobStore::new(db);
        let jobs: BTreeMap<String, JobStatus> =
            store.load()?.into_iter().map(|job| (job.job_id.clone(), job)).collect();
        let open = jobs.values().filter(|job| !job_finished(job)).count();
        if open > 0 {
            tracing::info!(jobs = open, "resuming unfinished jobs");
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Self {
            state: Mutex::new(State { jobs, workers: Workers::default() }),
            store,
            events,
            settings,
            stop,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, job_id: &str, event: JobEvent) {
        let _ = self.events.send(Arc::new((job_id.to_owned(), event)));
    }

    fn save(&self, job: &JobStatus) {
        if let Err(err) = self.store.save(job) {
            tracing::error!(job = %job.job_id, error = %err, "cannot persist job");
        }
    }

    /// Resolves when cached shuts down: long-lived streams (Watch, Lease) end then, so they do
    /// not hold the shutdown for its whole grace period.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn shut_down(&self) {
        let _ = self.stop.send(true);
    }

    pub fn submit(&self, mut spec: JobSpec, submitter: &str) -> Result<String> {
        validate::check_spec(&mut spec, &self.settings)?;
        let job_id = new_job_id();
        let tasks = spec
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| TaskStatus {
                index: index as u32,
                target: Some(target.clone()),
                state: TaskState::Queued as i32,
                ..TaskStatus::default()
            })
            .collect();
        let job = JobStatus {
            job_id: job_id.clone(),
            state: JobState::Queued as i32,
            spec: Some(spec),
            tasks,
            submitted_unix_ms: now_ms(),
            finished_unix_ms: 0,
            submitter: submitter.to_owned(),
            ..JobStatus::default()
        };
        let mut state = self.lock();
        self.store.save(&job)?;
        for task in &job.tasks {
            self.emit(&job_id, event(Kind::Queued, task));
        }
        tracing::info!(job = %job_id, targets = job.tasks.len(), submitter, "job submitted");
        state.jobs.insert(job_id.clone(), job);
        self.dispatch(&mut state);
        Ok(job_id)
    }

    pub fn get(&self, job_id: &str) -> Option<JobStatus> {
        self.lock().jobs.get(job_id).cloned()
    }

    /// The job as it is now, and every event after it.
    pub fn watch(&self, job_id: &str) -> Result<(JobStatus, Events)> {
        let state = self.lock();
        let job = state.jobs.get(job_id).cloned().ok_or_else(|| unknown_job(job_id))?;
        Ok((job, self.events.subscribe()))
    }

    /// Newest first; unfinished only unless `all`.
    pub fn list(&self, limit: usize, all: bool, visible: impl Fn(&JobStatus) -> bool) -> Vec<JobStatus> {
        let state = self.lock();
        state
            .jobs
            .values()
            .rev()
            .filter(|job| (all || !job_finished(job)) && visible(job))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        let mut state = self.lock();
        let State { jobs, workers } = &mut *state;
        let job = jobs.get_mut(job_id).ok_or_else(|| unknown_job(job_id))?;
        if job_finished(job) {
            return Ok(job.clone());
        }
        for task in &mut job.tasks {
            if is_terminal(task.state) {
                continue;
            }
            if task.state == TaskState::Leased as i32 {
                abort(workers, job_id, task);
            }
            task.state = TaskState::Cancelled as i32;
            task.error = "cancelled".to_owned();
            task.finished_unix_ms = now_ms();
            self.emit(job_id, event(Kind::TaskCancelled, task));
        }
        job.state = JobState::Cancelled as i32;
        job.finished_unix_ms = now_ms();
        self.save(job);
        tracing::info!(job = %job_id, "job cancelled");
        self.emit(job_id, finished_event(job));
        Ok(job.clone())
    }

    /// A new agent session. The agent's first message; tasks follow on `sender`.
    pub fn register(&self, mut info: AgentInfo, sender: LeaseSender) -> Result<u64> {
        if info.agent_id.is_empty()
            || info.agent_id.len() > 128
            || info.agent_id.chars().any(char::is_control)
        {
            return Err(Error::invalid("agent_id must be 1 to 128 bytes of printable text"));
        }
        info.capacity = info.capacity.clamp(1, MAX_AGENT_CAPACITY);
        let registered = LeaseResponse {
            kind: Some(lease_response::Kind::Registered(Registered {
                heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
                lease_timeout_ms: self.settings.lease_timeout.as_millis() as u64,
            })),
        };
        let _ = sender.send(Ok(registered));
        let mut state = self.lock();
        // A reconnect may arrive before the old stream is noticed to be gone.
        let stale: Vec<u64> = state
            .workers
            .iter()
            .filter(|(_, worker)| worker.info.agent_id == info.agent_id)
            .map(|(session, _)| *session)
            .collect();
        for session in stale {
            state.workers.remove(session);
        }
        tracing::info!(
            agent = %info.agent_id, go = %info.go_version, capacity = info.capacity,
            c_compilers = info.c_compilers.len(), "agent connected"
        );
        let session = state.workers.add(info, sender);
        self.dispatch(&mut state);
        Ok(session)
    }

    pub fn unregister(&self, session: u64) {
        let mut state = self.lock();
        if let Some(worker) = state.workers.remove(session) {
            tracing::info!(agent = %worker.info.agent_id, "agent disconnected; its leases run until they expire");
        }
    }

    pub fn heartbeat(&self, session: u64, heartbeat: Heartbeat) {
        let mut state = self.lock();
        let State { jobs, workers } = &mut *state;
        let Some(worker) = workers.get_mut(session) else { return };
        worker.draining = heartbeat.draining;
        let agent_id = worker.info.agent_id.clone();
        let sender = worker.sender.clone();
        let now = now_ms();
        let until = now + self.settings.lease_timeout.as_millis() as i64;
        let mut changed = HashSet::new();
        for token in heartbeat.running {
            let current = jobs
                .get_mut(&token.job_id)
                .and_then(|job| job.tasks.get_mut(token.task as usize))
                .filter(|task| {
                    task.state == TaskState::Leased as i32
                        && task.attempt == token.attempt
                        && task.agent == agent_id
                        && task.lease_until_unix_ms >= now
                });
            match current {
                Some(task) => {
                    task.lease_until_unix_ms = until;
                    changed.insert(token.job_id.clone());
                }
                None => {
                    let _ = sender.send(Ok(LeaseResponse { kind: Some(lease_response::Kind::Abort(token)) }));
                }
            }
        }
        for job_id in changed {
            if let Some(job) = jobs.get(&job_id) {
                self.save(job);
            }
        }
        self.dispatch(&mut state);
    }

    /// The agent started the task, or sent build output.
    pub fn progress(&self, token: &FencingToken, started: bool, lines: Vec<String>) -> Result<()> {
        let mut state = self.lock();
        let job = state.jobs.get_mut(&token.job_id).ok_or_else(|| unknown_job(&token.job_id))?;
        let task = current_lease(job, token)?;
        if started && task.started_unix_ms == 0 {
            task.started_unix_ms = now_ms();
            let started = event(Kind::Started, task);
            self.save(job);
            self.emit(&token.job_id, started);
        }
        if !lines.is_empty() {
            let task = &job.tasks[token.task as usize];
            let mut log = event(Kind::Log, task);
            // Build output may quote a proxy URL or an environment; watchers see it redacted.
            log.message = crate::redact::text(&lines.join("\n"));
            self.emit(&token.job_id, log);
        }
        Ok(())
    }

    /// The outcome of a lease; refused unless `token` is the task's current, unexpired lease.
    pub fn complete(&self, token: &FencingToken, outcome: Outcome) -> Result<()> {
        let outcome = match outcome {
            Outcome::Failure { reason, retryable } => {
                Outcome::Failure { reason: crate::redact::text(&reason), retryable }
            }
            success => success,
        };
        let mut state = self.lock();
        let job = state.jobs.get_mut(&token.job_id).ok_or_else(|| unknown_job(&token.job_id))?;
        let max_attempts = self.settings.max_attempts;
        let task = current_lease(job, token)?;
        task.lease_until_unix_ms = 0;
        match outcome {
            Outcome::Success(result) => {
                task.state = TaskState::Succeeded as i32;
                task.finished_unix_ms = now_ms();
                task.error.clear();
                let mut done = event(Kind::TaskSucceeded, task);
                done.result = Some((*result).clone());
                task.result = Some(*result);
                self.emit(&token.job_id, done);
            }
            Outcome::Failure { reason, retryable } if retryable && task.attempt < max_attempts => {
                let why = format!("attempt {} on {} failed: {reason}", task.attempt, task.agent);
                self.requeue_task(&token.job_id, task, why);
            }
            Outcome::Failure { reason, .. } => self.fail_task(&token.job_id, task, reason),
        }
        self.finish_if_done(job);
        self.save(job);
        self.prune(&mut state);
        self.dispatch(&mut state);
        Ok(())
    }

    /// Ends a task as FAILED, and says why.
    fn fail_task(&self, job_id: &str, task: &mut TaskStatus, error: String) {
        task.state = TaskState::Failed as i32;
        task.finished_unix_ms = now_ms();
        task.error = error;
        let mut failed = event(Kind::TaskFailed, task);
        failed.message = task.error.clone();
        self.emit(job_id, failed);
    }

    /// Puts a task whose attempt failed back in the queue, and says why; the next lease is
    /// the next attempt.
    fn requeue_task(&self, job_id: &str, task: &mut TaskStatus, why: String) {
        task.state = TaskState::Queued as i32;
        task.started_unix_ms = 0;
        task.error = why;
        let mut queued = event(Kind::Queued, task);
        queued.message = task.error.clone();
        self.emit(job_id, queued);
    }

    /// Deletes the oldest finished jobs beyond [`KEEP_FINISHED`].
    fn prune(&self, state: &mut State) {
        let finished: Vec<String> =
            state.jobs.values().filter(|job| job_finished(job)).map(|job| job.job_id.clone()).collect();
        for job_id in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
            state.jobs.remove(job_id);
            if let Err(err) = self.store.delete(job_id) {
                tracing::warn!(job = %job_id, error = %err, "cannot delete an old job");
            }
        }
    }
}

/// The task `token` names, if `token` is its current, unexpired lease.
fn current_lease<'a>(job: &'a mut JobStatus, token: &FencingToken) -> Result<&'a mut TaskStatus> {
    let task = job
        .tasks
        .get_mut(token.task as usize)
        .ok_or_else(|| Error::NotFound(format!("job {} has no task {}", token.job_id, token.task)))?;
    if task.state != TaskState::Leased as i32 || task.attempt != token.attempt {
        let state = TaskState::try_from(task.state).map_or("unknown", |state| state.as_str_name());
        return Err(Error::FailedPrecondition(format!(
            "stale lease: {} is no longer current (the task is {state}, attempt {})",
            token_text(token),
            task.attempt
        )));
    }
    if task.lease_until_unix_ms < now_ms() {
        return Err(Error::FailedPrecondition(format!(
            "stale lease: the lease of {} expired",
            token_text(token)
        )));
    }
    Ok(task)
}

/// Tells the holder of a task's lease to stop working on it.
fn abort(workers: &Workers, job_id: &str, task: &TaskStatus) {
    if let Some(worker) = workers.by_agent(&task.agent) {
        let token = FencingToken {
            job_id: job_id.to_owned(),
            task: task.index,
            attempt: task.attempt,
            ..FencingToken::default()
        };
        let _ = worker.sender.send(Ok(LeaseResponse { kind: Some(lease_response::Kind::Abort(token)) }));
    }
}

fn unknown_job(job_id: &str) -> Error {
    Error::NotFound(format!("no job {job_id:?}; `cachectl jobs list --all` shows the known ones"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_ids_sort_in_submission_order_even_within_one_millisecond() {
        let ids: Vec<String> = (0..1000).map(|_| super::new_job_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }
}
