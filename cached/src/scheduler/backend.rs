//! What the Jobs and Workers services hold: one scheduler, whichever backend keeps its state.
//! [`crate::scheduler::Scheduler`] keeps every job in memory and in the local RocksDB (one
//! machine); [`crate::scheduler::pg::PgScheduler`] keeps them in PostgreSQL, where several
//! cached replicas lease, heartbeat, complete and expire the same jobs.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1::{AgentInfo, FencingToken, Heartbeat, JobEvent, JobSpec, JobStatus};
use tokio::sync::watch;

use super::listing::{ListPage, ListQuery};
use super::reuse::JobKey;
use super::{Outcome, Session, Settings};
use crate::auth::{Grant, LeaseKeys, LiveLeases};
use crate::error::Result;

/// The events of one job after a snapshot, in order; a watcher that fell behind gets a new
/// snapshot instead of what it missed. Ends when the job is gone.
pub type JobEvents = Pin<Box<dyn Stream<Item = JobEvent> + Send>>;

/// Which jobs a caller may see.
pub type Visible<'a> = &'a (dyn Fn(&JobStatus) -> bool + Send + Sync);

#[tonic::async_trait]
pub trait SchedulerBackend: LiveLeases + Send + Sync + 'static {
    fn settings(&self) -> &Settings;

    /// What lease secrets and cache credentials are derived from.
    fn lease_keys(&self) -> Arc<LeaseKeys>;

    /// Resolves when cached shuts down: long-lived streams (Watch, Lease) end then.
    fn stopping(&self) -> watch::Receiver<bool>;

    fn shut_down(&self);

    /// Expires leases and jobs that ran out of time, until shutdown.
    async fn run_sweeper(self: Arc<Self>);

    async fn submit(&self, spec: JobSpec, submitter: &str) -> Result<String>;

    async fn get(&self, job_id: &str) -> Result<Option<JobStatus>>;

    /// A few finished jobs whose spec has `key` ([`super::reuse`]), newest first, from a
    /// store replicas share. A backend on one machine keeps no such index: reuse there knows
    /// its jobs from submitting them and from the jobs it kept.
    async fn finished_with_key(&self, _key: &JobKey) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// The namespace of the job: what a caller is checked against before the job, which may be
    /// large, is read or copied. Not found if there is no such job.
    async fn namespace_of(&self, job_id: &str) -> Result<String>;

    /// The job as it is now, and every event after it.
    async fn watch(self: Arc<Self>, job_id: &str) -> Result<(JobStatus, JobEvents)>;

    /// One page of the jobs `query` asks for that are `visible` ([`super::listing`]).
    async fn list(&self, query: &ListQuery<'_>, visible: Visible<'_>) -> Result<ListPage>;

    async fn cancel(&self, job_id: &str) -> Result<JobStatus>;

    /// Cancels every unfinished job of `namespace`, its tasks saying `why`, and tells the
    /// agents running them to stop: their leases, and the credentials they carry, end at once.
    /// How many jobs.
    async fn cancel_unfinished(&self, namespace: &str, why: &str) -> Result<u64>;

    /// Marks every job of `namespace` (finished or not) as never to be reused
    /// ([`super::reuse`]), durably and for every replica; how many were marked.
    async fn revoke_reuse(&self, namespace: &str) -> Result<u64>;

    /// The agent started the task, or sent build output.
    async fn progress(
        &self,
        token: &FencingToken,
        caller: &Grant,
        started: bool,
        lines: Vec<String>,
    ) -> Result<()>;

    /// The outcome of a lease; refused unless `token` is the task's current, unexpired lease
    /// and `caller` the token that holds it.
    async fn complete(&self, token: &FencingToken, caller: &Grant, outcome: Outcome) -> Result<()>;

    /// A new agent session, registered through the token of `grant`.
    async fn register(&self, info: AgentInfo, grant: Arc<Grant>) -> Result<Session>;

    async fn unregister(&self, session: u64);

    /// Ends `session` because its agent lost its token: the leases it holds end now (their
    /// tasks are requeued and their cache credentials refused), not at their expiry.
    async fn expel(&self, session: u64);

    /// Extends the leases the heartbeat lists that this session holds; an error ends the session.
    async fn heartbeat(&self, session: u64, heartbeat: Heartbeat) -> Result<()>;

    /// Tasks waiting for an agent (on every replica), and the agents connected here.
    async fn queue_depth(&self) -> Result<super::gauges::QueueDepth>;
}
