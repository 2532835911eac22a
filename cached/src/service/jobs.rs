//! Thin handlers of `Jobs` (submit, watch, cancel, list) and `Workers` (the agents' lease
//! stream, progress and completion) over [`crate::scheduler`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1::jobs_server::Jobs;
use proto::v1::workers_server::Workers;
use proto::v1::{
    CancelRequest, CancelResponse, CompleteRequest, CompleteResponse, JobEvent, LeaseRequest, LeaseResponse,
    ListRequest, ListResponse, ProgressRequest, ProgressResponse, SubmitRequest, SubmitResponse,
    WatchRequest, complete_request, job_event::Kind, lease_request,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::error::Error;
use crate::gocache::namespace;
use crate::scheduler::{Outcome, Scheduler};

const DEFAULT_LIST: usize = 50;
const MAX_LIST: usize = 1000;
/// Lines in one Progress call.
const MAX_LINES: usize = 1000;

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type LeaseStream = Pin<Box<dyn Stream<Item = Result<LeaseResponse, Status>> + Send>>;

pub struct JobsService {
    scheduler: Arc<Scheduler>,
}

impl JobsService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }
}

fn job_namespace(job: &proto::v1::JobStatus) -> &str {
    job.spec.as_ref().map_or("", |spec| spec.namespace.as_str())
}

/// A job is visible to callers that may use its namespace.
fn check_job_namespace(
    extensions: &http::Extensions,
    job: &proto::v1::JobStatus,
) -> Result<Arc<auth::Grant>, Status> {
    let ns = namespace(job_namespace(job))?.to_owned();
    Ok(auth::check_namespace(extensions, &ns)?)
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let spec = request.spec.ok_or_else(|| Error::invalid("spec is missing"))?;
        let ns = namespace(&spec.namespace)?.to_owned();
        let grant = auth::check_namespace(&extensions, &ns)?;
        let (packages, targets) = (spec.packages.join(" "), spec.targets.len());
        let result = self.scheduler.submit(spec, &grant.token);
        // A job runs the submitter's source on the agents: who asked for what is on record.
        tracing::info!(
            target: "audit",
            token = %grant.token,
            namespace = %ns,
            job = %result.as_deref().unwrap_or("-"),
            packages = %packages,
            targets,
            outcome = if result.is_ok() { "queued" } else { "refused" },
            "Jobs.Submit"
        );
        Ok(Response::new(SubmitResponse { job_id: result? }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (_, extensions, request) = request.into_parts();
        let (job, mut events) = self.scheduler.watch(&request.job_id)?;
        check_job_namespace(&extensions, &job)?;
        let (sender, receiver) = mpsc::channel(64);
        let scheduler = Arc::clone(&self.scheduler);
        let mut stop = scheduler.stopping();
        tokio::spawn(async move {
            let job_id = job.job_id.clone();
            let finished = job.finished_unix_ms != 0;
            let snapshot = snapshot_event(Kind::Snapshot, job.clone());
            if sender.send(Ok(snapshot)).await.is_err() {
                return;
            }
            if finished {
                let _ = sender.send(Ok(snapshot_event(Kind::JobFinished, job))).await;
                return;
            }
            loop {
                let next = tokio::select! {
                    next = events.recv() => next,
                    () = stopped(&mut stop) => {
                        let _ = sender.send(Err(Status::unavailable("cached is shutting down; watch again"))).await;
                        return;
                    }
                };
                let event = match next {
                    Ok(event) if event.0 == job_id => event.1.clone(),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => match scheduler.get(&job_id) {
                        Some(job) => snapshot_event(Kind::Snapshot, job),
                        None => return,
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = event.kind == Kind::JobFinished as i32;
                if sender.send(Ok(event)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let job = self
            .scheduler
            .get(&request.job_id)
            .ok_or_else(|| Error::NotFound(format!("no job {:?}", request.job_id)))?;
        let grant = check_job_namespace(&extensions, &job)?;
        let result = self.scheduler.cancel(&request.job_id);
        tracing::info!(
            target: "audit",
            token = %grant.token,
            job = %request.job_id,
            outcome = if result.is_ok() { "cancelled" } else { "failed" },
            "Jobs.Cancel"
        );
        Ok(Response::new(CancelResponse { status: Some(result?) }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let grant = auth::grant(&extensions)?;
        let limit = match request.limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        let jobs = self.scheduler.list(limit, request.all, |job| {
            namespace(job_namespace(job)).is_ok_and(|ns| grant.allows_namespace(ns))
        });
        Ok(Response::new(ListResponse { jobs }))
    }
}

/// Resolves once cached shuts down.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn snapshot_event(kind: Kind, job: proto::v1::JobStatus) -> JobEvent {
    JobEvent {
        kind: kind as i32,
        time_unix_ms: crate::scheduler::now_ms(),
        status: Some(job),
        ..JobEvent::default()
    }
}

pub struct WorkersService {
    scheduler: Arc<Scheduler>,
}

impl WorkersService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type LeaseStream = LeaseStream;

    async fn lease(
        &self,
        request: Request<Streaming<LeaseRequest>>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Error::invalid("the lease stream ended before the agent registered"))?;
        let Some(lease_request::Kind::Register(info)) = first.kind else {
            return Err(Error::invalid("the first message of a lease stream must be `register`").into());
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let session = self.scheduler.register(info, sender.clone())?;
        let scheduler = Arc::clone(&self.scheduler);
        let mut stop = scheduler.stopping();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = stopped(&mut stop) => {
                        let _ = sender.send(Err(Status::unavailable("cached is shutting down; reconnect")));
                        break;
                    }
                    () = sender.closed() => break,
                };
                match message {
                    Some(Ok(LeaseRequest { kind: Some(lease_request::Kind::Heartbeat(heartbeat)) })) => {
                        scheduler.heartbeat(session, heartbeat);
                    }
                    Some(Ok(_)) => {
                        let _ = sender.send(Err(Error::invalid("register is only the first message").into()));
                        break;
                    }
                    Some(Err(_)) | None => break,
                }
            }
            scheduler.unregister(session);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(receiver))))
    }

    async fn progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let request = request.into_inner();
        let token = request.token.ok_or_else(|| Error::invalid("token is missing"))?;
        let mut lines = request.lines;
        lines.truncate(MAX_LINES);
        self.scheduler.progress(&token, request.started, lines)?;
        Ok(Response::new(ProgressResponse {}))
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let request = request.into_inner();
        let token = request.token.ok_or_else(|| Error::invalid("token is missing"))?;
        let outcome = match request.outcome {
            Some(complete_request::Outcome::Success(result)) => {
                crate::scheduler::validate::check_result(&result)?;
                Outcome::Success(Box::new(result))
            }
            Some(complete_request::Outcome::Failure(failure)) => {
                Outcome::Failure { reason: failure.reason, retryable: failure.retryable }
            }
            None => return Err(Error::invalid("outcome is missing").into()),
        };
        self.scheduler.complete(&token, outcome)?;
        Ok(Response::new(CompleteResponse {}))
    }
}
