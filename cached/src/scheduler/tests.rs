//! The state machine on a real RocksDB without the wire: the queue index stays equal to a
//! rebuild from scratch whatever happens, and what Submit and heartbeats cost does not grow
//! with the queue (counted in queued tasks dispatch looks at, not in time).

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use proto::Digest;
use proto::v1::{AgentInfo, FencingToken, Heartbeat, JobSpec, LeaseResponse, TaskState, lease_response};
use tonic::Status;

use super::index::Index;
use super::workers::agent_key;
use super::{Outcome, Scheduler, Settings};
use crate::auth::{Grant, LeaseId, NamespacePattern, Scopes};

#[test]
fn job_ids_sort_in_submission_order_even_within_one_millisecond() {
    let ids: Vec<String> = (0..1000).map(|_| super::new_job_id()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
}

const TARGETS: [&str; 4] = ["linux/amd64", "linux/arm64", "darwin/arm64", "windows/amd64"];

fn open(dir: &std::path::Path) -> Arc<Scheduler> {
    let settings = Settings {
        max_open_jobs_per_namespace: 10_000,
        max_open_jobs_per_token: 10_000,
        max_open_jobs: 10_000,
        ..Settings::default()
    };
    let jobs = Arc::new(super::store::RocksJobs::new(crate::db::open(dir).unwrap()));
    Scheduler::open(jobs, settings).unwrap()
}

fn spec(namespace: &str, targets: usize, priority: i32) -> JobSpec {
    JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: TARGETS[..targets]
            .iter()
            .map(|t| t.parse::<proto::Platform>().unwrap().to_wire(""))
            .collect(),
        namespace: namespace.to_owned(),
        priority,
        ..JobSpec::default()
    }
}

fn grant(name: &str, namespaces: &str) -> Arc<Grant> {
    Arc::new(Grant {
        token: name.to_owned(),
        scopes: Scopes::parse_list("worker").unwrap(),
        namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
        max_priority: 0,
        share: None,
    })
}

type Replies = Pin<Box<dyn Stream<Item = Result<LeaseResponse, Status>> + Send>>;

/// A registered agent whose replies the test reads when it likes.
struct Agent {
    session: u64,
    grant: Arc<Grant>,
    replies: Replies,
}

impl Agent {
    fn register(scheduler: &Scheduler, id: &str, capacity: u32, grant: Arc<Grant>) -> Self {
        let info = AgentInfo { agent_id: id.to_owned(), capacity, ..AgentInfo::default() };
        let session = scheduler.register(info, Arc::clone(&grant)).unwrap();
        Self { session: session.id, grant, replies: Box::pin(session.receiver.into_stream()) }
    }

    /// Its leases and aborts since the last call.
    fn replies(&mut self) -> Vec<lease_response::Kind> {
        let mut replies = Vec::new();
        while let Some(Some(Ok(reply))) = self.replies.next().now_or_never() {
            replies.extend(reply.kind.filter(|kind| !matches!(kind, lease_response::Kind::Registered(_))));
        }
        replies
    }

    /// The leases it was sent since the last call.
    fn leases(&mut self) -> Vec<FencingToken> {
        let mut leases = Vec::new();
        while let Some(Some(Ok(reply))) = self.replies.next().now_or_never() {
            if let Some(lease_response::Kind::Task(lease)) = reply.kind {
                leases.push(lease.token.unwrap());
            }
        }
        leases
    }
}

fn assert_index_is_current(scheduler: &Scheduler, after: &str) {
    let state = scheduler.lock();
    assert!(state.index == Index::rebuild(&state.jobs), "the index drifted from the jobs after {after}");
}

/// A small deterministic generator, so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn the_queue_index_equals_a_rebuild_after_any_sequence_of_changes() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let mut rng = Rng(0x5eed_1234_abcd);
    let grants = [grant("all", "*"), grant("main", "main/*"), grant("pr", "pr-*")];
    let namespaces = ["main/linux", "pr-1", "pr-2", "team"];
    let mut agents: Vec<Agent> = Vec::new();
    let mut held: Vec<(FencingToken, Arc<Grant>)> = Vec::new();
    let mut jobs: Vec<String> = Vec::new();
    for step in 0..1500 {
        let op = rng.below(10);
        let what = match op {
            0..=2 => {
                let spec = spec(namespaces[rng.below(4)], 1 + rng.below(4), rng.below(3) as i32 - 1);
                jobs.push(scheduler.submit(spec, "test").unwrap());
                "submit"
            }
            3 => {
                // Names recur across grants: each (grant, name) is an agent of its own, and
                // one already connected restarts.
                let grant = Arc::clone(&grants[rng.below(3)]);
                let id = format!("agent-{}", rng.below(6));
                let key = agent_key(&grant.token, &id);
                if let Some(at) = agents.iter().position(|agent| {
                    scheduler.lock().workers.get(agent.session).is_some_and(|w| w.agent == key)
                }) {
                    let agent = agents.remove(at);
                    scheduler.unregister(agent.session);
                }
                agents.push(Agent::register(&scheduler, &id, 1 + rng.below(3) as u32, grant));
                "register"
            }
            4 | 5 if !held.is_empty() => {
                let (token, grant) = held.swap_remove(rng.below(held.len()));
                let outcome = match rng.below(3) {
                    0 => Outcome::Failure { reason: "flaky".into(), retryable: true },
                    1 => Outcome::Failure { reason: "broken".into(), retryable: false },
                    _ => Outcome::Success(Box::default()),
                };
                let _ = scheduler.complete(&token, &grant, outcome);
                "complete"
            }
            6 if !jobs.is_empty() => {
                let _ = scheduler.cancel(&jobs[rng.below(jobs.len())]);
                "cancel"
            }
            7 if !held.is_empty() => {
                // The lease runs out: the sweeper requeues or fails it.
                let (token, _) = &held[rng.below(held.len())];
                if let Some(task) = scheduler
                    .lock()
                    .jobs
                    .get_mut(&token.job_id)
                    .map(|job| &mut job.tasks[token.task as usize])
                {
                    task.lease_until_unix_ms = 1;
                }
                scheduler.sweep();
                "sweep"
            }
            8 if !agents.is_empty() => {
                let agent = &agents[rng.below(agents.len())];
                let running = held
                    .iter()
                    .filter(|(_, g)| Arc::ptr_eq(g, &agent.grant))
                    .map(|(t, _)| t.clone())
                    .collect::<Vec<_>>();
                let heartbeat = Heartbeat {
                    running: running.into_iter().take(4).collect(),
                    draining: rng.below(4) == 0,
                    free_slots: 0,
                };
                let _ = scheduler.heartbeat(agent.session, heartbeat);
                "heartbeat"
            }
            _ if !agents.is_empty() => {
                let agent = agents.swap_remove(rng.below(agents.len()));
                scheduler.unregister(agent.session);
                "unregister"
            }
            _ => "nothing",
        };
        for agent in &mut agents {
            held.extend(agent.leases().into_iter().map(|token| (token, Arc::clone(&agent.grant))));
        }
        assert_index_is_current(&scheduler, &format!("step {step} ({what})"));
    }
    let state = scheduler.lock();
    assert!(
        state.jobs.values().any(|job| job.tasks.iter().any(|task| task.state == TaskState::Succeeded as i32))
    );
    assert!(state.index.finished_len() > 0 && state.index.queued_len() > 0, "the run covered the states");
}

#[test]
fn submit_and_heartbeat_cost_does_not_grow_with_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let all = grant("all", "*");
    let mut agent = Agent::register(&scheduler, "busy", 1, Arc::clone(&all));
    scheduler.submit(spec("main", 1, 0), "test").unwrap();
    let running = agent.leases();
    assert_eq!(running.len(), 1, "the agent's one slot is taken");

    // Thousands of queued tasks behind a busy agent: each Submit looks at its own tasks at
    // most, a heartbeat at none.
    for n in 0..500 {
        let before = scheduler.tasks_examined();
        scheduler.submit(spec(&format!("pr-{}", n % 7), 4, n % 3), "test").unwrap();
        assert!(
            scheduler.tasks_examined() - before <= 4,
            "submit {n} looked at {}",
            scheduler.tasks_examined() - before
        );
    }
    assert_eq!(scheduler.lock().index.queued_len(), 2000);
    let before = scheduler.tasks_examined();
    for _ in 0..100 {
        let heartbeat = Heartbeat { running: running.clone(), ..Heartbeat::default() };
        scheduler.heartbeat(agent.session, heartbeat).unwrap();
    }
    assert_eq!(scheduler.tasks_examined(), before, "heartbeats dispatch nothing");

    // A freed slot takes the next task in order and stops there.
    let before = scheduler.tasks_examined();
    scheduler.complete(&running[0], &all, Outcome::Success(Box::default())).unwrap();
    assert!(scheduler.tasks_examined() - before <= 2, "{}", scheduler.tasks_examined() - before);
    let next = agent.leases();
    assert_eq!(next.len(), 1);
    let state = scheduler.lock();
    let job = &state.jobs[&next[0].job_id];
    assert_eq!(job.spec.as_ref().unwrap().priority, 2, "highest priority first");
    assert!(
        state
            .jobs
            .values()
            .filter(|other| other.spec.as_ref().unwrap().priority == 2)
            .all(|other| other.job_id >= job.job_id),
        "oldest first among equals"
    );
}

#[test]
fn lease_secrets_are_bound_to_the_lease_and_the_registering_token() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let (ci, other) = (grant("ci", "*"), grant("other", "*"));
    let mut agent = Agent::register(&scheduler, "a", 1, Arc::clone(&ci));
    scheduler.submit(spec("main", 1, 0), "test").unwrap();
    let token = agent.leases().pop().unwrap();
    let lease = LeaseId { job_id: token.job_id.clone(), task: token.task, attempt: token.attempt };
    assert_eq!(token.secret.as_ref(), scheduler.keys.secret(&lease, "ci"));
    let err = scheduler.progress(&token, &other, true, Vec::new()).unwrap_err();
    assert!(matches!(err, crate::error::Error::PermissionDenied(_)), "{err}");
    scheduler.progress(&token, &ci, true, Vec::new()).unwrap();

    // The key is stored: a reopened scheduler derives the same secret.
    drop((agent, scheduler));
    let reopened = open(dir.path());
    assert_eq!(reopened.keys.secret(&lease, "ci").as_slice(), token.secret.as_ref());
}

#[test]
fn an_expelled_agents_task_is_queued_again_at_once_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let mut agent = Agent::register(&scheduler, "a", 1, grant("revoked", "*"));
    let job_id = scheduler.submit(spec("main", 1, 0), "test").unwrap();
    assert_eq!(agent.leases().len(), 1);
    scheduler.expel(agent.session);
    let task = &scheduler.get(&job_id).unwrap().tasks[0];
    assert_eq!(task.state, TaskState::Queued as i32, "{task:?}");
    assert!(task.error.contains("agent revoked/a was expelled"), "{}", task.error);
    assert!(!task.error.contains("no heartbeat"), "{}", task.error);
}

/// The same name under two tokens is two agents: either registers while the other is
/// connected, and neither's heartbeat, expulsion or aborts reach the other's lease.
#[test]
fn an_agent_of_another_token_with_the_same_name_cannot_touch_the_first_ones_leases() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let mut ci = Agent::register(&scheduler, "builder-1", 1, grant("ci", "*"));
    let job_id = scheduler.submit(spec("main", 1, 0), "test").unwrap();
    let lease = ci.leases().pop().unwrap();
    let mut other = Agent::register(&scheduler, "builder-1", 1, grant("other", "*"));
    let leased = |scheduler: &Scheduler| scheduler.get(&job_id).unwrap().tasks[0].clone();
    let before = leased(&scheduler);
    assert_eq!((before.agent.as_str(), before.state), ("ci/builder-1", TaskState::Leased as i32));

    // Its heartbeat, even with the lease's secret, extends nothing and draws an abort to itself.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let heartbeat = Heartbeat { running: vec![lease.clone()], ..Heartbeat::default() };
    scheduler.heartbeat(other.session, heartbeat).unwrap();
    assert_eq!(leased(&scheduler).lease_until_unix_ms, before.lease_until_unix_ms, "extended");
    assert!(matches!(other.replies()[..], [lease_response::Kind::Abort(_)]));

    // Its expulsion ends only its own leases.
    scheduler.expel(other.session);
    let after = leased(&scheduler);
    assert_eq!((after.state, after.attempt), (TaskState::Leased as i32, 1), "{after:?}");
    assert_eq!(after.lease_until_unix_ms, before.lease_until_unix_ms, "{after:?}");

    // A new session of it is told nothing of the first one's cancelled job.
    let mut other = Agent::register(&scheduler, "builder-1", 1, grant("other", "*"));
    scheduler.cancel(&job_id).unwrap();
    assert!(other.replies().is_empty());
    assert!(matches!(ci.replies()[..], [lease_response::Kind::Abort(ref token)] if token.job_id == job_id));
}

/// A lease stored before agents were keyed by their tokens names the agent bare: the agent's
/// heartbeat (with the lease's secret) still extends it, and records it as the agent's.
#[test]
fn a_lease_recorded_under_the_bare_name_stays_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = open(dir.path());
    let ci = grant("ci", "*");
    let mut agent = Agent::register(&scheduler, "builder-1", 1, Arc::clone(&ci));
    let job_id = scheduler.submit(spec("main", 1, 0), "test").unwrap();
    let lease = agent.leases().pop().unwrap();
    {
        let mut state = scheduler.lock();
        let super::State { jobs, index, .. } = &mut *state;
        let job = jobs.get_mut(&job_id).unwrap();
        job.tasks[0].agent = "builder-1".into();
        job.tasks[0].lease_until_unix_ms = super::now_ms() + 1000;
        index.update(job);
    }
    let heartbeat = || Heartbeat { running: vec![lease.clone()], ..Heartbeat::default() };

    // Another token's builder-1 has not the secret.
    let mut other = Agent::register(&scheduler, "builder-1", 1, grant("other", "*"));
    scheduler.heartbeat(other.session, heartbeat()).unwrap();
    assert!(matches!(other.replies()[..], [lease_response::Kind::Abort(_)]));
    assert_eq!(scheduler.get(&job_id).unwrap().tasks[0].agent, "builder-1");

    scheduler.heartbeat(agent.session, heartbeat()).unwrap();
    assert!(agent.replies().is_empty(), "the agent was told to abort its own lease");
    let task = &scheduler.get(&job_id).unwrap().tasks[0];
    assert_eq!(task.agent, "ci/builder-1");
    assert!(task.lease_until_unix_ms > super::now_ms() + 1000, "not extended: {task:?}");
    assert_index_is_current(&scheduler, "the heartbeat");
    scheduler.complete(&lease, &ci, Outcome::Success(Box::default())).unwrap();
}

/// A disk whose syncs wait for the test: [`JobRecords::sync`] and synced writes block until
/// released, once `slow` is set.
struct SlowDisk {
    inner: super::store::RocksJobs,
    slow: std::sync::atomic::AtomicBool,
    /// Syncs fail, as a disk gone bad makes them.
    failing: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl SlowDisk {
    /// A disk in `dir`, not slow yet; what tells that a sync started, and what lets it end.
    fn open(
        dir: &std::path::Path,
    ) -> (Arc<Self>, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let disk = Arc::new(SlowDisk {
            inner: super::store::RocksJobs::new(crate::db::open(dir).unwrap()),
            slow: false.into(),
            failing: false.into(),
            entered: entered_tx.into(),
            release: release_rx.into(),
        });
        (disk, entered, release)
    }

    fn wait_if_slow(&self) {
        if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
    }
}

impl super::store::JobRecords for SlowDisk {
    fn load(&self) -> crate::error::Result<Vec<proto::v1::JobStatus>> {
        self.inner.load()
    }

    fn lease_key(&self) -> crate::error::Result<[u8; 32]> {
        self.inner.lease_key()
    }

    fn save(
        &self,
        jobs: &[&proto::v1::JobStatus],
        durability: super::store::Durability,
    ) -> crate::error::Result<()> {
        if durability == super::store::Durability::Synced {
            self.wait_if_slow();
        }
        self.inner.save(jobs, durability)
    }

    fn delete(&self, job_id: &str) -> crate::error::Result<()> {
        self.inner.delete(job_id)
    }

    fn sync(&self) -> crate::error::Result<()> {
        self.wait_if_slow();
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::error::Error::Internal("the disk failed".to_owned()));
        }
        self.inner.sync()
    }
}

/// A Submit whose record could not be synced answers an error, but its job was already in
/// the queue: it ran, and held the submitter's open-job place its retry needed. It is
/// cancelled now.
#[tokio::test]
async fn a_submit_that_could_not_be_stored_leaves_no_job_running() {
    use super::backend::SchedulerBackend;
    let dir = tempfile::tempdir().unwrap();
    let (disk, _entered, _release) = SlowDisk::open(dir.path());
    let settings = Settings { max_open_jobs_per_token: 1, ..Settings::default() };
    let scheduler = Scheduler::open(disk.clone(), settings).unwrap();
    disk.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "a").await;
    assert!(failed.is_err());
    assert!(scheduler.lock().jobs.values().all(super::job_finished), "an unstored job is queued");
    disk.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "a").await.expect("the retry has its place");
}

/// Submit synced its record under the queue's lock: while the disk took its time, every
/// other call (leases, heartbeats, other tenants' submits and watches) waited. The sync now
/// comes after the lock, and Submit still answers only once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_sync_of_a_submit_holds_no_other_call() {
    use super::backend::SchedulerBackend;
    let dir = tempfile::tempdir().unwrap();
    let (disk, entered, release) = SlowDisk::open(dir.path());
    let scheduler = Scheduler::open(disk.clone(), Settings::default()).unwrap();
    let first = SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "a").await.unwrap();
    disk.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let submitting = {
        let scheduler = Arc::clone(&scheduler);
        crate::task::spawn("submit", async move {
            SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "b").await
        })
    };
    entered.recv_timeout(std::time::Duration::from_secs(30)).expect("the submit reached the disk");
    let (got_tx, got) = std::sync::mpsc::channel();
    let reader = Arc::clone(&scheduler);
    let _lookup =
        crate::task::spawn_blocking("lookup", move || got_tx.send(reader.get(&first).is_some()).unwrap());
    let answered = got.recv_timeout(std::time::Duration::from_secs(10));
    assert!(!submitting.is_finished(), "Submit answered before its record was synced");
    release.send(()).unwrap();
    assert_eq!(answered, Ok(true), "a lookup waited for another call's disk sync");
    submitting.await.unwrap().unwrap();
}

/// Dispatch synced the leases it made under the queue's lock, so a Submit that an idle agent
/// could take held every other call for a disk sync too. The leases are now synced after the
/// lock, and no agent is sent one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_sync_of_a_lease_holds_no_other_call() {
    use super::backend::SchedulerBackend;
    let dir = tempfile::tempdir().unwrap();
    let (disk, entered, release) = SlowDisk::open(dir.path());
    let scheduler = Scheduler::open(disk.clone(), Settings::default()).unwrap();
    let first = SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "a").await.unwrap();
    let mut agent = Agent::register(&scheduler, "agent", 2, grant("agent", "*"));
    assert_eq!(agent.leases().len(), 1, "the first job's task");
    disk.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let submitting = {
        let scheduler = Arc::clone(&scheduler);
        crate::task::spawn("submit", async move {
            SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "b").await
        })
    };
    let wait = std::time::Duration::from_secs(30);
    entered.recv_timeout(wait).expect("the lease reached the disk");
    let (got_tx, got) = std::sync::mpsc::channel();
    let reader = Arc::clone(&scheduler);
    let _lookup =
        crate::task::spawn_blocking("lookup", move || got_tx.send(reader.get(&first).is_some()).unwrap());
    let answered = got.recv_timeout(std::time::Duration::from_secs(10));
    assert!(agent.leases().is_empty(), "a lease was sent before it was synced");
    release.send(()).unwrap();
    assert_eq!(answered, Ok(true), "a lookup waited for a lease's disk sync");
    // The lease's sync holds the submitted job too: Submit needs no second one.
    submitting.await.unwrap().unwrap();
    assert!(entered.try_recv().is_err(), "a second sync");
    assert_eq!(agent.leases().len(), 1);
}

/// A cancel that comes while a lease is being synced ends the task: the lease is not sent
/// after it (the agent would build, unasked, until its next heartbeat's abort).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cancelled_during_its_sync_is_not_sent() {
    use super::backend::SchedulerBackend;
    let dir = tempfile::tempdir().unwrap();
    let (disk, entered, release) = SlowDisk::open(dir.path());
    let scheduler = Scheduler::open(disk.clone(), Settings::default()).unwrap();
    let mut agent = Agent::register(&scheduler, "agent", 1, grant("agent", "*"));
    disk.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let submitting = {
        let scheduler = Arc::clone(&scheduler);
        crate::task::spawn("submit", async move {
            SchedulerBackend::submit(&*scheduler, spec("ci", 1, 0), "b").await
        })
    };
    entered.recv_timeout(std::time::Duration::from_secs(30)).expect("the lease reached the disk");
    let job = scheduler.lock().jobs.keys().next().cloned().unwrap();
    scheduler.cancel(&job).unwrap();
    disk.slow.store(false, std::sync::atomic::Ordering::SeqCst);
    release.send(()).unwrap();
    submitting.await.unwrap().unwrap();
    let replies = agent.replies();
    assert!(
        !replies.iter().any(|reply| matches!(reply, lease_response::Kind::Task(_))),
        "a cancelled task's lease was sent: {replies:?}"
    );
}
