//! Leasing queued tasks to the agents connected to this replica. For each agent with a free
//! slot, in order of most free slots: one transaction takes the first queued jobs in dispatch
//! order (index tasks first, then priority, then the job's turn among its submitter's, then
//! oldest) with `FOR UPDATE SKIP LOCKED`, so a
//! job another replica is leasing from is passed over rather than waited on, leases what the
//! agent may and can build, and commits before the agent is sent a lease. Jobs the agent can
//! never take as they are ([`Passed`]) are left out of its later rounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use proto::v1::{FencingToken, JobState, LeaseResponse, Target, TaskState, job_event::Kind, lease_response};
use tokio_postgres::Transaction;

use super::super::dispatch::task_lease;
use super::super::workers::{LeaseSender, MAX_INDEX_LEASES, can_build};
use super::super::{event, is_index, job_deadline, job_namespace, millis, now_ms};
use super::{POLL, PgScheduler, RETRY, rows};
use crate::auth::{Grant, LeaseId};
use crate::error::Result;

/// Jobs one leasing transaction looks at.
const JOBS_PER_ROUND: i64 = 32;
/// Leasing rounds one dispatch makes for one agent at most.
const MAX_ROUNDS: usize = 64;
/// Passed-over jobs remembered for all agents together; past it the memory starts again.
const MAX_PASSED: usize = 1 << 16;

/// The jobs each agent here had no use for, by the agent as it was (`Taker::passing_key`):
/// each job with its version then. A
/// job is passed over when nothing of it could be leased to the agent as it is: another
/// namespace, or every queued task a build the agent cannot make (another Go version, a cgo
/// target it has no C compiler for). Such jobs at the head of the queue would otherwise fill
/// every round and keep the agent from the jobs after them, whoever submitted them. A job
/// whose version changed is looked at again.
#[derive(Default)]
pub(super) struct Passed(Mutex<HashMap<String, HashMap<String, i64>>>);

impl Passed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, i64>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The jobs `agent` passed over, and their versions then, as query parameters.
    fn of(&self, agent: &str) -> (Vec<String>, Vec<i64>) {
        self.lock()
            .get(agent)
            .map(|jobs| jobs.iter().map(|(id, version)| (id.clone(), *version)).unzip())
            .unwrap_or_default()
    }

    fn add(&self, agent: &str, jobs: Vec<(String, i64)>) {
        if jobs.is_empty() {
            return;
        }
        let mut passed = self.lock();
        if passed.values().map(HashMap::len).sum::<usize>() + jobs.len() > MAX_PASSED {
            passed.clear();
        }
        passed.entry(agent.to_owned()).or_default().extend(jobs);
    }
}

/// What one leasing round did.
struct Round {
    outgoing: Vec<(LeaseId, LeaseResponse)>,
    /// Jobs the agent had no use for.
    passed: Vec<(String, i64)>,
}

/// An agent connected here that is taking tasks.
struct Taker {
    /// Its [`agent_key`](super::super::workers::agent_key).
    agent: String,
    info: proto::v1::AgentInfo,
    grant: Arc<Grant>,
    sender: LeaseSender,
}

impl Taker {
    /// What the jobs it passed over are remembered under: the agent as it is now, so that one
    /// coming back with another Go version, other C compilers or another grant looks again.
    fn passing_key(&self) -> String {
        let compilers: Vec<String> =
            self.info.c_compilers.iter().map(|cc| format!("{}/{}={}", cc.goos, cc.goarch, cc.cc)).collect();
        let namespaces: Vec<String> = self.grant.namespaces.iter().map(ToString::to_string).collect();
        format!("{}\0{}\0{}\0{}", self.agent, self.info.go_version, compilers.join(","), namespaces.join(","))
    }
}

/// What an agent can take now.
#[derive(Clone, Copy)]
struct Room {
    builds: u32,
    index_tasks: u32,
}

impl PgScheduler {
    pub(super) async fn run_dispatcher(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let stopped = tokio::select! {
                () = self.work.notified() => false,
                () = tokio::time::sleep(POLL) => false,
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if stopped {
                return;
            }
            if let Err(err) = self.dispatch().await {
                tracing::warn!(error = %err, "leasing failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// Hands queued tasks to the agents here while any can take them.
    async fn dispatch(&self) -> Result<()> {
        let takers: Vec<Taker> = self
            .workers()
            .iter()
            .filter(|(_, worker)| worker.taking())
            .map(|(_, worker)| Taker {
                agent: worker.agent.clone(),
                info: worker.info.clone(),
                grant: Arc::clone(&worker.grant),
                sender: worker.sender.clone(),
            })
            .collect();
        let mut rooms = Vec::new();
        for taker in takers {
            let room = self.room(&taker).await?;
            if room.builds > 0 || room.index_tasks > 0 {
                rooms.push((taker, room));
            }
        }
        rooms.sort_by_key(|(_, room)| std::cmp::Reverse(room.builds));
        let mut leased = false;
        for (taker, mut room) in rooms {
            for _ in 0..MAX_ROUNDS {
                if room.builds == 0 && room.index_tasks == 0 {
                    break;
                }
                let (sent, passed) = self.lease_round(&taker, &mut room).await?;
                leased |= sent > 0;
                // A round that neither leased nor passed anything over saw all there is.
                if sent == 0 && passed == 0 {
                    break;
                }
            }
        }
        if leased {
            self.changes.send_modify(|count| *count = count.wrapping_add(1));
        }
        Ok(())
    }

    /// What the agent holds, wherever it was leased, against what it can hold.
    async fn room(&self, taker: &Taker) -> Result<Room> {
        let client = self.db.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT is_index), count(*) FILTER (WHERE is_index) \
                 FROM tasks WHERE state = 2 AND agent = $1",
                &[&taker.agent],
            )
            .await?;
        let (builds, index_tasks): (i64, i64) = (row.get(0), row.get(1));
        Ok(Room {
            builds: taker.info.capacity.saturating_sub(u32::try_from(builds).unwrap_or(u32::MAX)),
            index_tasks: MAX_INDEX_LEASES.saturating_sub(u32::try_from(index_tasks).unwrap_or(u32::MAX)),
        })
    }

    /// One transaction of leases to `taker`; how many were sent, and how many jobs it passed
    /// over.
    async fn lease_round(&self, taker: &Taker, room: &mut Room) -> Result<(usize, usize)> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let Round { outgoing, passed } = self.take(&tx, taker, room).await?;
        let passed_count = passed.len();
        self.passed.add(&taker.passing_key(), passed);
        if outgoing.is_empty() {
            return Ok((0, passed_count));
        }
        tx.commit().await?;
        let count = outgoing.len();
        for (lease, message) in outgoing {
            self.set_live(lease.clone(), true);
            if !taker.sender.send(message) {
                // The session is gone; the lease expires and the task is requeued.
                tracing::warn!(job = %lease.job_id, task = lease.task, "agent stream gone while leasing");
            }
        }
        Ok((count, passed_count))
    }

    /// Leases in `tx` what `taker` may and can take of the first queued jobs it has not
    /// passed over.
    async fn take(&self, tx: &Transaction<'_>, taker: &Taker, room: &mut Room) -> Result<Round> {
        let (passed_ids, passed_versions) = self.passed.of(&taker.passing_key());
        let rows = tx
            .query(
                "SELECT job_id, record, version FROM jobs WHERE NOT finished \
                 AND ((queued_builds > 0 AND $1) OR (queued_index > 0 AND $2)) \
                 AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::int8[]) AS passed(job_id, version) \
                     WHERE passed.job_id = jobs.job_id AND passed.version = jobs.version) \
                 ORDER BY queued_index > 0 DESC, priority DESC, turn, submitted_ms, job_id \
                 LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[
                    &(room.builds > 0),
                    &(room.index_tasks > 0),
                    &JOBS_PER_ROUND,
                    &passed_ids,
                    &passed_versions,
                ],
            )
            .await?;
        let until = now_ms().saturating_add(millis(self.settings.lease_timeout));
        let mut round = Round { outgoing: Vec::new(), passed: Vec::new() };
        let outgoing = &mut round.outgoing;
        for row in rows {
            if room.builds == 0 && room.index_tasks == 0 {
                break;
            }
            let job_id: String = row.get(0);
            let version: i64 = row.get(2);
            let mut job = rows::decode(&job_id, row.get(1))?;
            let usable = job.spec.as_ref().filter(|_| taker.grant.allows_namespace(job_namespace(&job)));
            let Some(spec) = usable.cloned() else {
                round.passed.push((job_id, version));
                continue;
            };
            if never_usable(&job, &spec, &taker.info) {
                round.passed.push((job_id, version));
                continue;
            }
            let mut events = Vec::new();
            let mut order: Vec<usize> = (0..job.tasks.len()).collect();
            order.sort_by_key(|&index| !is_index(&job.tasks[index]));
            for index in order {
                let task = &job.tasks[index];
                if task.state != TaskState::Queued as i32 {
                    continue;
                }
                let none = Target::default();
                let fits = if is_index(task) {
                    room.index_tasks > 0
                } else {
                    room.builds > 0 && can_build(&taker.info, &spec, task.target.as_ref().unwrap_or(&none))
                };
                if !fits {
                    continue;
                }
                let task = &mut job.tasks[index];
                task.state = TaskState::Leased as i32;
                task.attempt += 1;
                task.agent = taker.agent.clone();
                task.lease_until_unix_ms = until;
                task.started_unix_ms = 0;
                if is_index(task) {
                    room.index_tasks -= 1;
                } else {
                    room.builds -= 1;
                }
                let lease = LeaseId { job_id: job_id.clone(), task: task.index, attempt: task.attempt };
                let token = FencingToken {
                    job_id: job_id.clone(),
                    task: task.index,
                    attempt: task.attempt,
                    secret: self.keys.secret(&lease, &taker.grant.token).to_vec().into(),
                };
                events.push(event(Kind::Leased, task));
                job.state = JobState::Running as i32;
                let deadline = job_deadline(&self.settings, &job);
                let message = task_lease(&self.keys, &job, lease.clone(), token, deadline);
                outgoing.push((lease, LeaseResponse { kind: Some(lease_response::Kind::Task(message)) }));
            }
            if !events.is_empty() {
                rows::update(tx, &job, version, &self.settings).await?;
                rows::append_events(tx, &job_id, &events).await?;
            }
        }
        Ok(round)
    }
}

/// Whether no queued task of `job` could be leased to `agent` however much room it had: each
/// is a build it cannot make.
fn never_usable(job: &proto::v1::JobStatus, spec: &proto::v1::JobSpec, agent: &proto::v1::AgentInfo) -> bool {
    let none = Target::default();
    job.tasks
        .iter()
        .filter(|task| task.state == TaskState::Queued as i32)
        .all(|task| !is_index(task) && !can_build(agent, spec, task.target.as_ref().unwrap_or(&none)))
}
