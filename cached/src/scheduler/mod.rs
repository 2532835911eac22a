//! The remote-execution scheduler: jobs, one task per target, leases to runner agents.
//!
//! Read in this order: [`validate`] (what a job may ask of the agents), this module (the state
//! machine: submit, progress, complete, cancel, and who may report on a lease), [`sessions`]
//! (agents registering and heartbeating), [`expiry`] (leases and jobs that ran out of time),
//! [`finish`] (how a job ends), [`workers`] (connected agents and their bounded queues),
//! [`dispatch`] (matching queued tasks to agents), [`index`] (where every job stands, kept in
//! step with each change), [`store`] (every change stored before it is acknowledged).
//!
//! A task is QUEUED, then LEASED to one agent at a time under a fencing token (job, task,
//! attempt). Heartbeats extend the lease; a lease not extended for `lease_timeout` expires and
//! the task goes back to the queue with the next attempt number, up to `max_attempts`, then
//! fails with the reason. A completion is accepted only from the current, unexpired lease, so a
//! zombie agent can never overwrite a newer attempt's result.
//!
//! Workers act within their grant: an agent is leased only jobs in the namespaces of the token
//! it registered with; every lease carries a secret (`FencingToken.secret`, see
//! [`crate::auth::lease`]) bound to the lease and to that token, which Progress, heartbeats and
//! Complete must present. An agent is its token and its name ([`workers::agent_key`]), as its
//! tasks record it: the same name under another token is another agent. Each agent has one live
//! session, which only the same process (same instance) may take over when it reconnects.
//!
//! A job with an image spec gets one more task once every build task has succeeded: an
//! IMAGE_INDEX task that assembles the image index over the targets' images (see
//! [`Scheduler::add_index_task`] for why an agent does that, not cached).
//!
//! All state sits behind one mutex; nothing awaits while holding it. Events go out on a
//! broadcast channel while the lock is held, so a watcher that subscribed under the lock sees
//! every change after its snapshot, in order.

pub mod backend;
mod dispatch;
mod expiry;
pub mod gauges;
mod index;
pub mod listing;
pub mod logcap;
mod memory;
pub mod pg;
pub mod reuse;
mod sessions;
pub mod store;
mod transitions;
pub mod validate;
pub mod workers;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1::{
    FencingToken, JobEvent, JobSpec, JobState, JobStatus, LeaseResponse, TaskKind, TaskResult, TaskState,
    TaskStatus, job_event::Kind, lease_response,
};
use tokio::sync::{broadcast, watch};

pub use self::sessions::Session;

use self::dispatch::Scope;
use self::index::Index;
use self::listing::{ListPage, ListQuery};
use self::store::{Durability, JobRecords, KEEP_FINISHED};
use self::workers::Workers;
use crate::auth::{Grant, LeaseId, LeaseKeys, LiveLeases};
use crate::error::{Error, Result};

/// Timing, retry and size policy (`heartbeat_interval`, `lease_timeout`, `max_attempts`,
/// `job_timeout`, `max_job_timeout`, `max_open_jobs_per_namespace`, `max_open_jobs_per_token`,
/// `max_open_jobs` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
    pub max_attempts: u32,
    pub job_timeout: Duration,
    /// The longest deadline a job may ask for.
    pub max_job_timeout: Duration,
    pub max_open_jobs_per_namespace: usize,
    /// Per submitting token: one that may name many namespaces (`pr-1/*`) could otherwise take
    /// every open slot by spreading its jobs over them.
    pub max_open_jobs_per_token: usize,
    pub max_open_jobs: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            lease_timeout: Duration::from_secs(30),
            max_attempts: 3,
            job_timeout: Duration::from_secs(3600),
            max_job_timeout: Duration::from_secs(24 * 3600),
            max_open_jobs_per_namespace: 100,
            max_open_jobs_per_token: 100,
            max_open_jobs: 1000,
        }
    }
}

/// Events kept for watchers that fall behind; a watcher that lags further gets a new snapshot.
const EVENT_BUFFER: usize = 4096;
const MAX_AGENT_CAPACITY: u32 = 1024;
/// Job ids are `<11 hex>-<6 hex>`; a lease token naming a longer one is not ours.
const MAX_JOB_ID_LEN: usize = 64;

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
    index: Index,
    /// Bytes of build output each attempt has logged ([`logcap`]), by job, then task and
    /// attempt; a job's entries go with it.
    logged: HashMap<String, HashMap<(u32, u32), u64>>,
    /// Leases written under the lock, sent once synced, after it ([`Locked`]).
    unsent: Vec<dispatch::Outgoing>,
}

/// Syncs `store`, which then holds every write up to the `written`-th.
fn sync_up_to(store: &dyn JobRecords, synced_upto: &AtomicU64, written: u64) -> Result<()> {
    store.sync().inspect_err(|err| tracing::error!(error = %err, "cannot sync jobs"))?;
    synced_upto.fetch_max(written, Ordering::Release);
    Ok(())
}

/// The scheduler's state, locked. When it is let go, the leases dispatch wrote are synced
/// and sent: after the lock, so that no disk sync holds the queue.
struct Locked<'a> {
    state: Option<MutexGuard<'a, State>>,
    scheduler: &'a Scheduler,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.state.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut state) = self.state.take() else { return };
        let unsent = std::mem::take(&mut state.unsent);
        drop(state);
        if !unsent.is_empty() {
            self.scheduler.send_leases(unsent);
        }
    }
}

pub struct Scheduler {
    state: Mutex<State>,
    store: Arc<dyn JobRecords>,
    /// Buffered writes made, and how many of them a sync has made durable.
    written: AtomicU64,
    synced_upto: Arc<AtomicU64>,
    keys: Arc<LeaseKeys>,
    events: broadcast::Sender<Arc<(String, JobEvent)>>,
    settings: Settings,
    stop: watch::Sender<bool>,
    /// Queued tasks dispatch has looked at, in all: what its cost grows with.
    examined: AtomicU64,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// `duration` in milliseconds, saturating: no timeout, however large, overflows a deadline.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn is_terminal(state: i32) -> bool {
    matches!(TaskState::try_from(state), Ok(TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled))
}

fn is_index(task: &TaskStatus) -> bool {
    task.kind == TaskKind::ImageIndex as i32
}

/// Why a task a user cancelled ended.
const CANCELLED: &str = "cancelled";

fn job_finished(job: &JobStatus) -> bool {
    matches!(JobState::try_from(job.state), Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled))
}

/// The job's namespace as grants see it (`default` for none).
fn job_namespace(job: &JobStatus) -> &str {
    let namespace = job.spec.as_ref().map_or("", |spec| spec.namespace.as_str());
    crate::gocache::namespace(namespace).unwrap_or(namespace)
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

/// The job's own timeout, or `job_timeout`.
fn job_timeout(settings: &Settings, job: &JobStatus) -> Duration {
    match job.spec.as_ref().map_or(0, |spec| spec.timeout_seconds) {
        0 => settings.job_timeout,
        seconds => Duration::from_secs(seconds),
    }
}

/// When the job times out, saturating: a stored job with a huge timeout never overflows.
fn job_deadline(settings: &Settings, job: &JobStatus) -> i64 {
    job.submitted_unix_ms.saturating_add(millis(job_timeout(settings, job)))
}

/// A checked job of `spec`, queued, one task per target, under a new id.
fn new_job(mut spec: JobSpec, submitter: &str, settings: &Settings) -> Result<JobStatus> {
    validate::check_spec(&mut spec, settings)?;
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
    Ok(JobStatus {
        job_id: new_job_id(),
        state: JobState::Queued as i32,
        spec: Some(spec),
        tasks,
        submitted_unix_ms: now_ms(),
        finished_unix_ms: 0,
        submitter: submitter.to_owned(),
        ..JobStatus::default()
    })
}

/// How many unfinished jobs there are: of the new job's namespace, of its submitter's, and in
/// all; and the turns a new job's depends on.
struct OpenJobs {
    in_namespace: usize,
    by_submitter: usize,
    total: usize,
    /// Submitters with unfinished jobs.
    submitters: usize,
    /// How far the queue has come: the lowest turn of the jobs being served (a task leased),
    /// else of the unfinished ones.
    queue_head: Option<u32>,
    /// The highest turn of the submitter's unfinished jobs.
    submitters_latest_turn: Option<u32>,
}

/// Gives a new job its turn (`JobStatus.turn`): one past its submitter's latest unfinished
/// job, and never before the turn the queue has reached (the lowest being served). Each
/// submitter's jobs so go in the order they came, one submitter's hundred queued jobs take
/// turns 0 to 99 while a newcomer's first job takes the turn the queue has reached. Callers of
/// a server without tokens are one party: their jobs go in the order they came, all at turn 0.
fn take_turn(job: &mut JobStatus, open: &OpenJobs) {
    job.turn = if Grant::has_own_limits(&job.submitter) {
        let next_of_submitter = open.submitters_latest_turn.map_or(0, |turn| turn.saturating_add(1));
        next_of_submitter.max(open.queue_head.unwrap_or(0))
    } else {
        0
    };
}

/// What the index says of the unfinished jobs, for `job`.
fn open_jobs(index: &Index, job: &JobStatus) -> OpenJobs {
    OpenJobs {
        in_namespace: index.open_in(job_namespace(job)),
        by_submitter: index.open_by(&job.submitter),
        total: index.open_total(),
        submitters: index.open_submitters(),
        queue_head: index.queue_head(),
        submitters_latest_turn: index.latest_turn_of(&job.submitter),
    }
}

/// Refuses a job beyond `max_open_jobs_per_namespace`, `max_open_jobs_per_token` or
/// `max_open_jobs` (for a submitter at its share of it).
fn check_open_jobs(settings: &Settings, job: &JobStatus, open: &OpenJobs) -> Result<()> {
    let (per_namespace, per_token) = (settings.max_open_jobs_per_namespace, settings.max_open_jobs_per_token);
    if open.in_namespace >= per_namespace {
        return Err(Error::ResourceExhausted(format!(
            "namespace `{}` already has {per_namespace} unfinished jobs \
             (max_open_jobs_per_namespace); wait for one to finish or cancel one",
            job_namespace(job)
        )));
    }
    if open.by_submitter >= per_token {
        return Err(Error::ResourceExhausted(format!(
            "token `{}` already has {per_token} unfinished jobs in its namespaces \
             (max_open_jobs_per_token); wait for one to finish or cancel one",
            job.submitter
        )));
    }
    let total = settings.max_open_jobs;
    let past_share = open.by_submitter >= equal_share(total, open);
    if open.total >= total && (past_share || open.total >= total.saturating_mul(2)) {
        return Err(Error::ResourceExhausted(format!(
            "cached already holds {} unfinished jobs (max_open_jobs is {total}), and token `{}` holds \
             {} of them, its share or more; retry once some finish",
            open.total, job.submitter, open.by_submitter
        )));
    }
    Ok(())
}

/// A submitter's share of `max_open_jobs` among those with unfinished jobs, itself included.
/// Past the cap a submitter below its share still gets in, so tokens that filled it between
/// them (pull requests each submitting its most, of jobs no agent will take) cannot lock every
/// other tenant out. Shares shrink as submitters come, so newcomers could still add up to a
/// multiple of it: twice it is a hard stop.
fn equal_share(max_open_jobs: usize, open: &OpenJobs) -> usize {
    let submitters = open.submitters + usize::from(open.by_submitter == 0);
    max_open_jobs / submitters.max(1)
}

fn token_text(token: &FencingToken) -> String {
    format!("task {} of job {} (attempt {})", token.task, token.job_id, token.attempt)
}

fn lease_id(token: &FencingToken) -> LeaseId {
    LeaseId { job_id: token.job_id.clone(), task: token.task, attempt: token.attempt }
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
        stamp = now.max(last.saturating_add(1));
        Some(stamp)
    });
    let mut random = [0u8; 3];
    let _ = getrandom::fill(&mut random);
    format!("{stamp:011x}-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Scheduler {
    /// Loads the stored jobs and the lease key; leases keep their deadlines and secrets, so
    /// agents that are still working reconnect and go on heartbeating them.
    pub fn open(store: Arc<dyn JobRecords>, settings: Settings) -> Result<Arc<Self>> {
        let keys = Arc::new(LeaseKeys::new(&store.lease_key()?));
        let jobs: BTreeMap<String, JobStatus> =
            store.load()?.into_iter().map(|job| (job.job_id.clone(), job)).collect();
        let index = Index::rebuild(&jobs);
        if index.open_total() > 0 {
            tracing::info!(jobs = index.open_total(), "resuming unfinished jobs");
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Self {
            state: Mutex::new(State {
                jobs,
                workers: Workers::default(),
                index,
                logged: HashMap::new(),
                unsent: Vec::new(),
            }),
            store,
            written: AtomicU64::new(0),
            synced_upto: Arc::new(AtomicU64::new(0)),
            keys,
            events,
            settings,
            stop,
            examined: AtomicU64::new(0),
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What lease secrets and cache credentials are derived from; the auth layer checks the
    /// credentials with it.
    pub fn lease_keys(&self) -> Arc<LeaseKeys> {
        Arc::clone(&self.keys)
    }

    /// Queued tasks dispatch has looked at since start: a measure of its cost for tests.
    pub fn tasks_examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    pub fn queue_depth(&self) -> gauges::QueueDepth {
        let state = self.lock();
        gauges::QueueDepth {
            queued_tasks: state.index.queued_len() as u64,
            oldest_queued_submitted_ms: state.index.oldest_queued_submitted_ms(),
            agents: state.workers.iter().count() as u64,
        }
    }

    fn lock(&self) -> Locked<'_> {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Locked { state: Some(state), scheduler: self }
    }

    fn emit(&self, job_id: &str, event: JobEvent) {
        let _ = self.events.send(Arc::new((job_id.to_owned(), event)));
    }

    /// Writes `jobs`; a failure is logged and returned, for the callers that acknowledge.
    fn save<'a>(&self, jobs: impl IntoIterator<Item = &'a JobStatus>, durability: Durability) -> Result<()> {
        let jobs: Vec<&JobStatus> = jobs.into_iter().collect();
        self.store.save(&jobs, durability).inspect_err(|err| {
            tracing::error!(error = %err, "cannot persist jobs");
        })?;
        if durability == Durability::Buffered && !jobs.is_empty() {
            // Release: a sync that reads the count holds this write (it is in the WAL).
            self.written.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Makes what was written before durable, off the lock and off the async threads: Submit,
    /// Cancel and Complete write under the lock (so that records follow the order of the
    /// changes) and sync before they answer, unless a sync since (the leases') did.
    pub async fn synced(&self) -> Result<()> {
        let written = self.written.load(Ordering::Acquire);
        if self.synced_upto.load(Ordering::Acquire) >= written {
            return Ok(());
        }
        let (store, synced_upto) = (Arc::clone(&self.store), Arc::clone(&self.synced_upto));
        crate::task::spawn_blocking("sync jobs", move || sync_up_to(&*store, &synced_upto, written)).await?
    }

    /// [`Self::synced`], blocking, where the caller is.
    fn sync_now(&self) -> Result<()> {
        let written = self.written.load(Ordering::Acquire);
        crate::task::block_in_place(|| sync_up_to(&*self.store, &self.synced_upto, written))
    }

    /// The job's own timeout, or `job_timeout`.
    fn timeout(&self, job: &JobStatus) -> Duration {
        job_timeout(&self.settings, job)
    }

    /// When the job times out, saturating: a stored job with a huge timeout never overflows.
    fn deadline(&self, job: &JobStatus) -> i64 {
        job_deadline(&self.settings, job)
    }

    /// Resolves when cached shuts down: long-lived streams (Watch, Lease) end then, so they do
    /// not hold the shutdown for its whole grace period.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn shut_down(&self) {
        let _ = self.stop.send(true);
    }

    pub fn submit(&self, spec: JobSpec, submitter: &str) -> Result<String> {
        let mut job = new_job(spec, submitter, &self.settings)?;
        let job_id = job.job_id.clone();
        let mut state = self.lock();
        let open = open_jobs(&state.index, &job);
        check_open_jobs(&self.settings, &job, &open)?;
        take_turn(&mut job, &open);
        self.save([&job], Durability::Buffered)?;
        for task in &job.tasks {
            self.emit(&job_id, event(Kind::Queued, task));
        }
        tracing::info!(job = %job_id, targets = job.tasks.len(), submitter, "job submitted");
        state.index.update(&job);
        state.jobs.insert(job_id.clone(), job);
        self.dispatch(&mut state, Scope::Job(&job_id));
        Ok(job_id)
    }

    pub fn get(&self, job_id: &str) -> Option<JobStatus> {
        self.lock().jobs.get(job_id).cloned()
    }

    pub fn namespace_of(&self, job_id: &str) -> Result<String> {
        let state = self.lock();
        let job = state.jobs.get(job_id).ok_or_else(|| unknown_job(job_id))?;
        Ok(job_namespace(job).to_owned())
    }

    /// The job as it is now, and every event after it.
    pub fn watch(&self, job_id: &str) -> Result<(JobStatus, Events)> {
        let state = self.lock();
        let job = state.jobs.get(job_id).cloned().ok_or_else(|| unknown_job(job_id))?;
        Ok((job, self.events.subscribe()))
    }

    /// One page of the jobs `query` asks for that are `visible` ([`listing`]).
    pub fn list(&self, query: &ListQuery<'_>, visible: impl Fn(&JobStatus) -> bool) -> ListPage {
        let older = query.before.map_or(Bound::Unbounded, Bound::Excluded);
        let mut pager = listing::Pager::new(query);
        let state = self.lock();
        let matching = state.jobs.range::<str, _>((Bound::Unbounded, older)).rev().map(|(_, job)| job);
        for job in matching.filter(|job| (query.all || !job_finished(job)) && visible(job)) {
            if !pager.offer(job) {
                break;
            }
        }
        pager.finish()
    }

    pub fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        let mut state = self.lock();
        let State { jobs, workers, index, .. } = &mut *state;
        let job = jobs.get_mut(job_id).ok_or_else(|| unknown_job(job_id))?;
        if job_finished(job) {
            return Ok(job.clone());
        }
        let (events, aborted) = transitions::cancel(job, CANCELLED);
        for task in &aborted {
            abort(workers, job_id, task);
        }
        index.update(job);
        let saved = self.save([&*job], Durability::Buffered);
        tracing::info!(job = %job_id, "job cancelled");
        for event in events {
            self.emit(job_id, event);
        }
        let status = job.clone();
        self.prune(&mut state);
        self.dispatch(&mut state, Scope::All);
        saved.map(|()| status)
    }

    /// Cancels every unfinished job of `namespace`, saying `why`; how many.
    pub fn cancel_unfinished(&self, namespace: &str, why: &str) -> Result<u64> {
        let mut state = self.lock();
        let State { jobs, workers, index, .. } = &mut *state;
        let mut cancelled = Vec::new();
        for job in jobs.values_mut().filter(|job| !job_finished(job) && job_namespace(job) == namespace) {
            let (events, aborted) = transitions::cancel(job, why);
            for task in &aborted {
                abort(workers, &job.job_id, task);
            }
            index.update(job);
            cancelled.push((job.job_id.clone(), events));
        }
        let saved = self
            .save(cancelled.iter().filter_map(|(job_id, _)| state.jobs.get(job_id)), Durability::Buffered);
        tracing::info!(namespace, jobs = cancelled.len(), why, "the namespace's unfinished jobs cancelled");
        let count = cancelled.len() as u64;
        for (job_id, events) in cancelled {
            for event in events {
                self.emit(&job_id, event);
            }
        }
        self.prune(&mut state);
        self.dispatch(&mut state, Scope::All);
        saved.map(|()| count)
    }

    pub fn revoke_reuse(&self, namespace: &str) -> Result<u64> {
        let mut state = self.lock();
        let now = now_ms();
        let mut revoked = Vec::new();
        for job in state.jobs.values_mut() {
            if job_namespace(job) == namespace && job.reuse_revoked_unix_ms == 0 {
                job.reuse_revoked_unix_ms = now;
                revoked.push(job.job_id.clone());
            }
        }
        let jobs = revoked.iter().filter_map(|job_id| state.jobs.get(job_id));
        self.save(jobs, Durability::Buffered)?;
        tracing::info!(namespace, jobs = revoked.len(), "reuse of the namespace's jobs revoked");
        Ok(revoked.len() as u64)
    }

    /// The agent started the task, or sent build output.
    pub fn progress(
        &self,
        token: &FencingToken,
        caller: &Grant,
        started: bool,
        lines: Vec<String>,
    ) -> Result<()> {
        let mut state = self.lock();
        let State { jobs, logged, .. } = &mut *state;
        let job = jobs.get_mut(&token.job_id).ok_or_else(|| unknown_job(&token.job_id))?;
        let task = transitions::authorize(&self.keys, job, token, caller)?;
        if let Some(started) = started.then(|| transitions::mark_started(task)).flatten() {
            let _ = self.save([&*job], Durability::Buffered);
            self.emit(&token.job_id, started);
        }
        if lines.is_empty() {
            return Ok(());
        }
        let spent =
            logged.entry(token.job_id.clone()).or_default().entry((token.task, token.attempt)).or_default();
        let (lines, now_spent) = logcap::admit(*spent, lines);
        *spent = now_spent;
        if !lines.is_empty() {
            let log = transitions::log_event(&job.tasks[token.task as usize], &lines);
            self.emit(&token.job_id, log);
        }
        Ok(())
    }

    /// The outcome of a lease; refused unless `token` is the task's current, unexpired lease
    /// and `caller` the token that holds it.
    pub fn complete(&self, token: &FencingToken, caller: &Grant, outcome: Outcome) -> Result<()> {
        let outcome = transitions::redact_outcome(outcome);
        let mut state = self.lock();
        let State { jobs, index, .. } = &mut *state;
        let job = jobs.get_mut(&token.job_id).ok_or_else(|| unknown_job(&token.job_id))?;
        transitions::authorize(&self.keys, job, token, caller)?;
        transitions::check_outcome(job, token, &outcome)?;
        for event in transitions::apply_outcome(job, token, outcome, self.settings.max_attempts) {
            self.emit(&token.job_id, event);
        }
        index.update(job);
        let saved = self.save([&*job], Durability::Buffered);
        self.prune(&mut state);
        self.dispatch(&mut state, Scope::All);
        saved
    }

    /// Deletes the oldest finished jobs beyond [`KEEP_FINISHED`].
    fn prune(&self, state: &mut State) {
        while state.index.finished_len() > KEEP_FINISHED {
            let Some(job_id) = state.index.oldest_finished().cloned() else { break };
            state.index.remove(&job_id);
            state.jobs.remove(&job_id);
            state.logged.remove(&job_id);
            if let Err(err) = self.store.delete(&job_id) {
                tracing::warn!(job = %job_id, error = %err, "cannot delete an old job");
            }
        }
    }
}

/// The auth layer asks whether a cache credential's lease is still current.
impl LiveLeases for Scheduler {
    fn is_live(&self, lease: &LeaseId) -> bool {
        let state = self.lock();
        let task = state.jobs.get(&lease.job_id).and_then(|job| job.tasks.get(lease.task as usize));
        task.is_some_and(|task| {
            task.state == TaskState::Leased as i32
                && task.attempt == lease.attempt
                && task.lease_until_unix_ms >= now_ms()
        })
    }
}

/// Tells the holder of a task's lease to stop working on it. Aborts carry no secret.
fn abort(workers: &Workers, job_id: &str, task: &TaskStatus) {
    if let Some(worker) = workers.by_agent(&task.agent) {
        let token = FencingToken {
            job_id: job_id.to_owned(),
            task: task.index,
            attempt: task.attempt,
            ..FencingToken::default()
        };
        worker.sender.send(abort_message(token));
    }
}

fn abort_message(token: FencingToken) -> LeaseResponse {
    let token = FencingToken { secret: Default::default(), ..token };
    LeaseResponse { kind: Some(lease_response::Kind::Abort(token)) }
}

pub(crate) fn unknown_job(job_id: &str) -> Error {
    Error::NotFound(format!("no job {job_id:?}; `cachectl jobs list --all` shows the known ones"))
}

#[cfg(test)]
mod tests;
