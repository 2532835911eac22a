//! Leasing queued tasks to the agents connected to this replica. For each agent with a free
//! slot, in order of most free slots: one transaction takes the first queued jobs in dispatch
//! order (index tasks first, then priority, then oldest) with `FOR UPDATE SKIP LOCKED`, so a
//! job another replica is leasing from is passed over rather than waited on, leases what the
//! agent may and can build, and commits before the agent is sent a lease.

use std::sync::Arc;

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

/// An agent connected here that is taking tasks.
struct Taker {
    /// Its [`agent_key`](super::super::workers::agent_key).
    agent: String,
    info: proto::v1::AgentInfo,
    grant: Arc<Grant>,
    sender: LeaseSender,
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
            while room.builds > 0 || room.index_tasks > 0 {
                let sent = self.lease_round(&taker, &mut room).await?;
                if sent == 0 {
                    break;
                }
                leased = true;
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

    /// One transaction of leases to `taker`; how many were sent.
    async fn lease_round(&self, taker: &Taker, room: &mut Room) -> Result<usize> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let outgoing = self.take(&tx, taker, room).await?;
        if outgoing.is_empty() {
            return Ok(0);
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
        Ok(count)
    }

    /// Leases in `tx` what `taker` may and can take of the first queued jobs.
    async fn take(
        &self,
        tx: &Transaction<'_>,
        taker: &Taker,
        room: &mut Room,
    ) -> Result<Vec<(LeaseId, LeaseResponse)>> {
        let rows = tx
            .query(
                "SELECT job_id, record, version FROM jobs WHERE NOT finished \
                 AND ((queued_builds > 0 AND $1) OR (queued_index > 0 AND $2)) \
                 ORDER BY queued_index > 0 DESC, priority DESC, submitted_ms, job_id \
                 LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[&(room.builds > 0), &(room.index_tasks > 0), &JOBS_PER_ROUND],
            )
            .await?;
        let until = now_ms().saturating_add(millis(self.settings.lease_timeout));
        let mut outgoing = Vec::new();
        for row in rows {
            if room.builds == 0 && room.index_tasks == 0 {
                break;
            }
            let job_id: String = row.get(0);
            let mut job = rows::decode(&job_id, row.get(1))?;
            if !taker.grant.allows_namespace(job_namespace(&job)) {
                continue;
            }
            let Some(spec) = job.spec.clone() else { continue };
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
                rows::update(tx, &job, row.get(2)).await?;
                rows::append_events(tx, &job_id, &events).await?;
            }
        }
        Ok(outgoing)
    }
}
