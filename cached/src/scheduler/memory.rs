//! The one-machine scheduler as a [`SchedulerBackend`]: every call is a short critical section
//! on the in-memory state, so none of them awaits.

use std::sync::Arc;

use proto::v1::{AgentInfo, FencingToken, Heartbeat, JobSpec, JobStatus, job_event::Kind};
use tokio::sync::{broadcast, watch};

use super::backend::{JobEvents, SchedulerBackend, Visible};
use super::listing::{ListPage, ListQuery};
use super::{Outcome, Scheduler, Session, Settings, now_ms};
use crate::auth::{Grant, LeaseKeys};
use crate::error::Result;

#[tonic::async_trait]
impl SchedulerBackend for Scheduler {
    fn settings(&self) -> &Settings {
        Scheduler::settings(self)
    }

    fn lease_keys(&self) -> Arc<LeaseKeys> {
        Scheduler::lease_keys(self)
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        Scheduler::stopping(self)
    }

    fn shut_down(&self) {
        Scheduler::shut_down(self);
    }

    async fn run_sweeper(self: Arc<Self>) {
        Scheduler::run_sweeper(self).await;
    }

    async fn submit(&self, spec: JobSpec, submitter: &str) -> Result<String> {
        let job_id = Scheduler::submit(self, spec, submitter)?;
        if let Err(err) = self.synced().await {
            // Not on disk, and the caller is told so: the job must not run, nor hold a place
            // of the caps that the caller's retry needs.
            let _ = Scheduler::cancel(self, &job_id);
            return Err(err);
        }
        Ok(job_id)
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobStatus>> {
        Ok(Scheduler::get(self, job_id))
    }

    async fn namespace_of(&self, job_id: &str) -> Result<String> {
        Scheduler::namespace_of(self, job_id)
    }

    async fn watch(self: Arc<Self>, job_id: &str) -> Result<(JobStatus, JobEvents)> {
        let (job, receiver) = Scheduler::watch(&self, job_id)?;
        let job_id = job_id.to_owned();
        let events = futures::stream::unfold((self, receiver), move |(scheduler, mut receiver)| {
            let job_id = job_id.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.0 == job_id => {
                            return Some((event.1.clone(), (scheduler, receiver)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let job = Scheduler::get(&scheduler, &job_id)?;
                            let snapshot = proto::v1::JobEvent {
                                kind: Kind::Snapshot as i32,
                                time_unix_ms: now_ms(),
                                status: Some(job),
                                ..proto::v1::JobEvent::default()
                            };
                            return Some((snapshot, (scheduler, receiver)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok((job, Box::pin(events)))
    }

    async fn list(&self, query: &ListQuery<'_>, visible: Visible<'_>) -> Result<ListPage> {
        Ok(Scheduler::list(self, query, visible))
    }

    async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        let status = Scheduler::cancel(self, job_id)?;
        self.synced().await?;
        Ok(status)
    }

    async fn cancel_unfinished(&self, namespace: &str, why: &str) -> Result<u64> {
        let cancelled = Scheduler::cancel_unfinished(self, namespace, why)?;
        self.synced().await?;
        Ok(cancelled)
    }

    async fn revoke_reuse(&self, namespace: &str) -> Result<u64> {
        let revoked = Scheduler::revoke_reuse(self, namespace)?;
        self.synced().await?;
        Ok(revoked)
    }

    async fn progress(
        &self,
        token: &FencingToken,
        caller: &Grant,
        started: bool,
        lines: Vec<String>,
    ) -> Result<()> {
        Scheduler::progress(self, token, caller, started, lines)
    }

    async fn complete(&self, token: &FencingToken, caller: &Grant, outcome: Outcome) -> Result<()> {
        Scheduler::complete(self, token, caller, outcome)?;
        self.synced().await
    }

    async fn register(&self, info: AgentInfo, grant: Arc<Grant>) -> Result<Session> {
        Scheduler::register(self, info, grant)
    }

    async fn unregister(&self, session: u64) {
        Scheduler::unregister(self, session);
    }

    async fn expel(&self, session: u64) {
        Scheduler::expel(self, session);
    }

    async fn heartbeat(&self, session: u64, heartbeat: Heartbeat) -> Result<()> {
        Scheduler::heartbeat(self, session, heartbeat)
    }

    async fn queue_depth(&self) -> Result<super::gauges::QueueDepth> {
        Ok(Scheduler::queue_depth(self))
    }
}
