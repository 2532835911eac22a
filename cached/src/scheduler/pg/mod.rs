//! The scheduler of several cached replicas: every job, task and lease lives in PostgreSQL, and
//! every change is one transaction on the job's row (`SELECT ... FOR UPDATE`), applying the
//! same steps as the one-machine scheduler ([`super::transitions`]). So any replica may take
//! any call: an agent leases through one replica and completes through another with the same
//! fencing token, and a replica that dies takes nothing with it but its agents' streams.
//!
//! - Leasing ([`dispatch`]): each replica hands queued tasks to the agents connected to it,
//!   taking jobs with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's rows nor
//!   lease a task twice. It runs when something local may have freed work and every
//!   [`POLL`] for what other replicas did.
//! - Fencing: a completion is accepted only if the conditional update of its task row (same
//!   job, task and attempt, still LEASED, lease not expired) changes one row.
//! - Expiry ([`sweep`]): whichever replica sees a lease or job past its time expires it, under
//!   the row lock and with `SKIP LOCKED`, so doing it twice changes nothing.
//! - Watch ([`watch`]): events are rows written in the transaction that caused them; watchers
//!   page through them, woken by local changes and every [`POLL`].
//! - Agents connected elsewhere learn of a cancellation or an expired lease from the abort
//!   their next heartbeat draws.

mod dispatch;
mod live;
mod rows;
mod sessions;
mod sweep;
mod watch;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::v1::{AgentInfo, FencingToken, Heartbeat, JobSpec, JobStatus, TaskState};
use tokio::sync::{Notify, watch as signal};

use super::backend::{JobEvents, SchedulerBackend, Visible};
use super::listing::{ListPage, ListQuery, Pager};
use super::reuse::JobKey;
use super::workers::Workers;
use super::{Outcome, Session, Settings, abort, job_namespace, new_job, now_ms, transitions, unknown_job};
use crate::auth::NamespacePattern;
use crate::auth::{Grant, LeaseId, LeaseKeys, LiveLeases};
use crate::error::Result;
use crate::postgres::Database;

/// How often a replica looks for what other replicas changed: queued work for its agents, and
/// events for its watchers.
pub const POLL: Duration = Duration::from_millis(200);
/// Serialises the open-job caps check of submissions on every replica.
const SUBMIT_LOCK: i64 = 0x6361_6368_6564_0002;
/// The name of the lease server key in `server_keys`.
const LEASE_KEY: &str = "lease";
/// Longest a sweep's read of the live leases may take.
const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PgScheduler {
    db: Database,
    keys: Arc<LeaseKeys>,
    settings: Settings,
    stop: signal::Sender<bool>,
    /// The agents connected to this replica.
    workers: Mutex<Workers>,
    /// Wakes this replica's dispatcher.
    work: Notify,
    /// Bumped on every change this replica makes: wakes the reader of its watched jobs.
    changes: signal::Sender<u64>,
    /// Current leases, as last read (every sweep) or granted here: what lease credentials are
    /// checked against without a query per request.
    live: live::LeaseSet,
    /// The jobs each agent here had no use for, as they were then (see `dispatch`).
    passed: dispatch::Passed,
    /// The jobs watched here, fed by one reader (see `watch`).
    feeds: watch::Feeds,
}

impl PgScheduler {
    /// The scheduler over `db`; makes the lease key on first start, and reads it on every
    /// other, so every replica derives the same lease secrets and credentials.
    pub async fn open(db: Database, settings: Settings) -> Result<Arc<Self>> {
        let keys = Arc::new(LeaseKeys::new(&lease_key(&db).await?));
        let (stop, _) = signal::channel(false);
        let (changes, _) = signal::channel(0);
        let scheduler = Arc::new(Self {
            db,
            keys,
            settings,
            stop,
            workers: Mutex::new(Workers::default()),
            work: Notify::new(),
            changes,
            passed: dispatch::Passed::default(),
            feeds: watch::Feeds::default(),
            live: live::LeaseSet::default(),
        });
        scheduler.refresh_live().await?;
        Ok(scheduler)
    }

    fn workers(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a change: wake the dispatcher and the watchers here.
    fn changed(&self) {
        self.work.notify_one();
        self.changes.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Tells the holders of `tasks` connected here to stop; the others hear it at their next
    /// heartbeat.
    /// Cancels the job, its tasks saying `why`; the job as it is now, and whether this call
    /// cancelled it (not: it had finished already).
    async fn cancel_because(&self, job_id: &str, why: &str) -> Result<(JobStatus, bool)> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut locked = rows::lock(&tx, job_id, false).await?.ok_or_else(|| unknown_job(job_id))?;
        let (events, aborted) = transitions::cancel(&mut locked.job, why);
        if events.is_empty() {
            return Ok((locked.job, false));
        }
        rows::update(&tx, &locked.job, locked.version, &self.settings).await?;
        rows::append_events(&tx, job_id, &events).await?;
        tx.commit().await?;
        tracing::info!(job = %job_id, why, "job cancelled");
        for task in &aborted {
            self.set_live(
                LeaseId { job_id: job_id.to_owned(), task: task.index, attempt: task.attempt },
                false,
            );
        }
        self.abort_local(job_id, &aborted);
        self.changed();
        Ok((locked.job, true))
    }

    fn abort_local(&self, job_id: &str, tasks: &[proto::v1::TaskStatus]) {
        let workers = self.workers();
        for task in tasks {
            abort(&workers, job_id, task);
        }
    }

    async fn refresh_live(&self) -> Result<()> {
        let read = self.live.begin_read();
        // Local changes are kept while a read is under way: a read that hangs must end.
        let rows = tokio::time::timeout(LIVE_READ_TIMEOUT, self.read_live()).await.map_err(|_| {
            crate::error::Error::DeadlineExceeded(format!(
                "reading the live leases took more than {} s",
                LIVE_READ_TIMEOUT.as_secs()
            ))
        })??;
        self.live.finish_read(read, rows);
        Ok(())
    }

    async fn read_live(&self) -> Result<HashSet<LeaseId>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT job_id, idx, attempt FROM tasks WHERE state = 2 AND lease_until_ms >= $1",
                &[&now_ms()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| LeaseId {
                job_id: row.get(0),
                task: row.get::<_, i32>(1) as u32,
                attempt: row.get::<_, i32>(2) as u32,
            })
            .collect())
    }

    /// Puts the leases `agent` (an [`agent_key`](super::workers::agent_key)) holds past their
    /// expiry, for every replica's sweeper to requeue, and stops accepting their cache
    /// credentials here at once (elsewhere at the next refresh of the live leases).
    async fn end_leases_of(&self, agent: &str) -> Result<usize> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let held =
            tx.query("SELECT DISTINCT job_id FROM tasks WHERE agent = $1 AND state = 2", &[&agent]).await?;
        let job_ids: Vec<&str> = held.iter().map(|row| row.get(0)).collect();
        let mut ended = Vec::new();
        for mut locked in rows::lock_many(&tx, &job_ids).await? {
            let job_id = locked.job.job_id.clone();
            for task in &mut locked.job.tasks {
                if task.state == TaskState::Leased as i32 && task.agent == agent {
                    task.lease_until_unix_ms = super::transitions::EXPELLED;
                    ended.push(LeaseId { job_id: job_id.clone(), task: task.index, attempt: task.attempt });
                }
            }
            rows::update(&tx, &locked.job, locked.version, &self.settings).await?;
        }
        tx.commit().await?;
        let count = ended.len();
        for lease in ended {
            self.set_live(lease, false);
        }
        self.changed();
        Ok(count)
    }

    fn set_live(&self, lease: LeaseId, live: bool) {
        self.live.set(lease, live);
    }
}

async fn lease_key(db: &Database) -> Result<[u8; 32]> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh)
        .map_err(|err| crate::error::Error::Internal(format!("the system random source failed: {err}")))?;
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&LEASE_KEY, &fresh.as_slice()],
        )
        .await?;
    let row = client.query_one("SELECT key FROM server_keys WHERE name = $1", &[&LEASE_KEY]).await?;
    let stored: Vec<u8> = row.get(0);
    <[u8; 32]>::try_from(stored.as_slice()).map_err(|_| {
        crate::error::Error::Corrupt(format!(
            "the lease key in the database is {} bytes, not 32",
            stored.len()
        ))
    })
}

/// The unfinished jobs of `namespace`, of `submitter`, and in all, and their submitters.
async fn open_jobs(
    client: &impl tokio_postgres::GenericClient,
    namespace: &str,
    submitter: &str,
) -> Result<super::OpenJobs> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE namespace = $1), count(*) FILTER (WHERE submitter = $2), count(*), \
             coalesce(min(turn) FILTER (WHERE EXISTS \
                 (SELECT 1 FROM tasks WHERE tasks.job_id = jobs.job_id AND tasks.state = 2)), min(turn)), \
             max(turn) FILTER (WHERE submitter = $2), count(DISTINCT submitter) FROM jobs WHERE NOT finished",
            &[&namespace, &submitter],
        )
        .await?;
    let count = |column: usize| row.get::<_, i64>(column) as usize;
    let turn =
        |column: usize| row.get::<_, Option<i64>>(column).map(|turn| u32::try_from(turn).unwrap_or(u32::MAX));
    Ok(super::OpenJobs {
        in_namespace: count(0),
        by_submitter: count(1),
        total: count(2),
        submitters: count(5),
        queue_head: turn(3),
        submitters_latest_turn: turn(4),
    })
}

/// `patterns` as the list query asks them: whether every namespace, the exact names, and the
/// prefixes as LIKE patterns (their `%`, `_` and `\` taken literally).
fn namespace_filter(patterns: &[NamespacePattern]) -> (bool, Vec<String>, Vec<String>) {
    let mut filter = (false, Vec::new(), Vec::new());
    for pattern in patterns {
        match pattern {
            NamespacePattern::Any => filter.0 = true,
            NamespacePattern::Exact(name) => filter.1.push(name.clone()),
            NamespacePattern::Prefix(prefix) => {
                let literal: String = prefix
                    .chars()
                    .flat_map(|c| if matches!(c, '%' | '_' | '\\') { vec!['\\', c] } else { vec![c] })
                    .collect();
                filter.2.push(format!("{literal}%"));
            }
        }
    }
    filter
}

impl LiveLeases for PgScheduler {
    fn is_live(&self, lease: &LeaseId) -> bool {
        self.live.contains(lease)
    }
}

#[tonic::async_trait]
impl SchedulerBackend for PgScheduler {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lease_keys(&self) -> Arc<LeaseKeys> {
        Arc::clone(&self.keys)
    }

    fn stopping(&self) -> signal::Receiver<bool> {
        self.stop.subscribe()
    }

    fn shut_down(&self) {
        let _ = self.stop.send(true);
    }

    /// Runs this replica's dispatcher and the watches' reader beside the sweeps; all end at
    /// shutdown.
    async fn run_sweeper(self: Arc<Self>) {
        let _dispatcher = crate::task::spawn("dispatcher", Arc::clone(&self).run_dispatcher());
        let _feeds = crate::task::spawn("watch feeds", Arc::clone(&self).run_feeds());
        self.run_sweeps().await;
    }

    async fn submit(&self, spec: JobSpec, submitter: &str) -> Result<String> {
        let mut job = new_job(spec, submitter, &self.settings)?;
        let namespace = job_namespace(&job).to_owned();
        let mut client = self.db.client().await?;
        // A submitter at its cap is refused before the lock every replica's submissions take,
        // so a flood of refused calls serialises nobody; the check under the lock decides.
        super::check_open_jobs(
            &self.settings,
            &job,
            &open_jobs(&**client, &namespace, &job.submitter).await?,
        )?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SUBMIT_LOCK]).await?;
        let open = open_jobs(&*tx, &namespace, &job.submitter).await?;
        super::check_open_jobs(&self.settings, &job, &open)?;
        super::take_turn(&mut job, &open);
        rows::insert(&tx, &job, &self.settings).await?;
        let queued: Vec<_> =
            job.tasks.iter().map(|task| super::event(proto::v1::job_event::Kind::Queued, task)).collect();
        rows::append_events(&tx, &job.job_id, &queued).await?;
        tx.commit().await?;
        tracing::info!(job = %job.job_id, targets = job.tasks.len(), submitter, "job submitted");
        self.changed();
        Ok(job.job_id)
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobStatus>> {
        let client = self.db.client().await?;
        let row = client.query_opt("SELECT record FROM jobs WHERE job_id = $1", &[&job_id]).await?;
        row.map(|row| rows::decode(job_id, row.get(0))).transpose()
    }

    async fn finished_with_key(&self, key: &JobKey) -> Result<Vec<String>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT job_id FROM jobs WHERE spec_key = $1 AND finished ORDER BY submitted_ms DESC LIMIT 4",
                &[&key.as_bytes().as_slice()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn namespace_of(&self, job_id: &str) -> Result<String> {
        let client = self.db.client().await?;
        let row = client.query_opt("SELECT namespace FROM jobs WHERE job_id = $1", &[&job_id]).await?;
        Ok(row.ok_or_else(|| unknown_job(job_id))?.get(0))
    }

    async fn watch(self: Arc<Self>, job_id: &str) -> Result<(JobStatus, JobEvents)> {
        watch::watch(self, job_id).await
    }

    async fn list(&self, query: &ListQuery<'_>, visible: Visible<'_>) -> Result<ListPage> {
        const PAGE: i64 = 256;
        let client = self.db.client().await?;
        let mut pager = Pager::new(query);
        let mut before = query.before.map(str::to_owned);
        let (every, exact, prefixes) = namespace_filter(query.namespaces);
        loop {
            let rows = client
                .query(
                    "SELECT job_id, record FROM jobs WHERE ($1 OR NOT finished) AND ($2::text IS NULL OR job_id < $2) \
                     AND ($4 OR namespace = ANY($5) OR namespace LIKE ANY($6)) ORDER BY job_id DESC LIMIT $3",
                    &[&query.all, &before, &PAGE, &every, &exact, &prefixes],
                )
                .await?;
            for row in &rows {
                let job = rows::decode(row.get(0), row.get(1))?;
                if visible(&job) && !pager.offer(&job) {
                    return Ok(pager.finish());
                }
            }
            if rows.len() < PAGE as usize {
                return Ok(pager.finish());
            }
            before = rows.last().map(|row| row.get(0));
        }
    }

    async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        Ok(self.cancel_because(job_id, super::CANCELLED).await?.0)
    }

    async fn cancel_unfinished(&self, namespace: &str, why: &str) -> Result<u64> {
        let client = self.db.client().await?;
        let open = client
            .query("SELECT job_id FROM jobs WHERE namespace = $1 AND NOT finished", &[&namespace])
            .await?;
        let mut cancelled = 0;
        for row in open {
            // One transaction per job, as a user's cancel: one that finished meanwhile stays so.
            if self.cancel_because(row.get(0), why).await?.1 {
                cancelled += 1;
            }
        }
        tracing::info!(namespace, jobs = cancelled, why, "the namespace's unfinished jobs cancelled");
        Ok(cancelled)
    }

    async fn revoke_reuse(&self, namespace: &str) -> Result<u64> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        // A job with no key is in no replica's reach already.
        let keyed = tx
            .query("SELECT job_id FROM jobs WHERE namespace = $1 AND spec_key IS NOT NULL", &[&namespace])
            .await?;
        let job_ids: Vec<&str> = keyed.iter().map(|row| row.get(0)).collect();
        let now = super::now_ms();
        let mut revoked = 0;
        for mut locked in rows::lock_many(&tx, &job_ids).await? {
            locked.job.reuse_revoked_unix_ms = now;
            rows::revoke_reuse(&tx, &locked).await?;
            revoked += 1;
        }
        tx.commit().await?;
        tracing::info!(namespace, jobs = revoked, "reuse of the namespace's jobs revoked");
        Ok(revoked)
    }

    async fn progress(
        &self,
        token: &FencingToken,
        caller: &Grant,
        started: bool,
        lines: Vec<String>,
    ) -> Result<()> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut locked =
            rows::lock(&tx, &token.job_id, false).await?.ok_or_else(|| unknown_job(&token.job_id))?;
        let task = transitions::authorize(&self.keys, &mut locked.job, token, caller)?;
        let mut events: Vec<_> =
            started.then(|| transitions::mark_started(task)).flatten().into_iter().collect();
        let changed = !events.is_empty();
        let lines = if lines.is_empty() { lines } else { rows::admit_log(&tx, token, lines).await? };
        if !lines.is_empty() {
            events.push(transitions::log_event(task, &lines));
        }
        if changed {
            rows::update(&tx, &locked.job, locked.version, &self.settings).await?;
        }
        rows::append_events(&tx, &token.job_id, &events).await?;
        tx.commit().await?;
        self.changed();
        Ok(())
    }

    async fn complete(&self, token: &FencingToken, caller: &Grant, outcome: Outcome) -> Result<()> {
        let outcome = transitions::redact_outcome(outcome);
        let succeeded = matches!(outcome, Outcome::Success(_));
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let mut locked =
            rows::lock(&tx, &token.job_id, false).await?.ok_or_else(|| unknown_job(&token.job_id))?;
        let agent = transitions::authorize(&self.keys, &mut locked.job, token, caller)?.agent.clone();
        transitions::check_outcome(&locked.job, token, &outcome)?;
        let now = now_ms();
        let ended = if succeeded { TaskState::Succeeded } else { TaskState::Failed };
        rows::fence(&tx, token, ended as i32, now).await?;
        let events = transitions::apply_outcome(&mut locked.job, token, outcome, self.settings.max_attempts);
        rows::update(&tx, &locked.job, locked.version, &self.settings).await?;
        rows::record_completion(&tx, token, &agent, succeeded, now).await?;
        rows::append_events(&tx, &token.job_id, &events).await?;
        tx.commit().await?;
        self.set_live(super::lease_id(token), false);
        self.changed();
        Ok(())
    }

    async fn register(&self, info: AgentInfo, grant: Arc<Grant>) -> Result<Session> {
        let session = super::sessions::admit(&mut self.workers(), info, grant, &self.settings)?;
        self.work.notify_one();
        Ok(session)
    }

    async fn unregister(&self, session: u64) {
        if let Some(worker) = self.workers().remove(session) {
            tracing::info!(agent = %worker.agent, "agent disconnected; its leases run until they expire");
        }
    }

    async fn expel(&self, session: u64) {
        let Some(worker) = self.workers().remove(session) else { return };
        let agent = worker.agent;
        match self.end_leases_of(&agent).await {
            Ok(ended) => tracing::warn!(agent = %agent, leases = ended, "agent expelled; its leases end now"),
            Err(err) => tracing::error!(
                agent = %agent, error = %err,
                "agent expelled, but its leases could not be ended; they end at their expiry"
            ),
        }
    }

    async fn heartbeat(&self, session: u64, heartbeat: Heartbeat) -> Result<()> {
        self.extend_leases(session, heartbeat).await
    }

    async fn queue_depth(&self) -> Result<super::gauges::QueueDepth> {
        let client = self.db.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(queued_builds + queued_index), 0)::bigint, min(submitted_ms) FROM jobs \
                 WHERE NOT finished AND (queued_builds > 0 OR queued_index > 0)",
                &[],
            )
            .await?;
        let queued: i64 = row.get(0);
        Ok(super::gauges::QueueDepth {
            queued_tasks: u64::try_from(queued).unwrap_or(0),
            oldest_queued_submitted_ms: row.get(1),
            agents: self.workers().iter().count() as u64,
        })
    }
}

/// How long after an error the background loops try the database again.
const RETRY: Duration = Duration::from_secs(1);
