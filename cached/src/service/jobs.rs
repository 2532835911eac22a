//! Thin handlers of `Jobs` (submit, watch, cancel, list) and `Workers` (the agents' lease
//! stream, progress and completion) over [`crate::scheduler`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::text::char_floor;
use proto::v1::jobs_server::Jobs;
use proto::v1::workers_server::Workers;
use proto::v1::{
    CancelRequest, CancelResponse, CompleteRequest, CompleteResponse, JobEvent, JobSpec, LeaseRequest,
    LeaseResponse, ListRequest, ListResponse, ProgressRequest, ProgressResponse, SubmitRequest,
    SubmitResponse, WatchRequest, complete_request, job_event::Kind, lease_request,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::auth::refusals::{EVERY_PER_TOKEN, RefusalLog};
use crate::error::Error;
use crate::gocache::namespace;
use crate::scheduler::backend::SchedulerBackend;
use crate::scheduler::listing::ListQuery;
use crate::scheduler::reuse::{FinishedJobs, JobKey};
use crate::scheduler::{Outcome, Session, validate};
use crate::store::SharedStore;

const DEFAULT_LIST: usize = 50;
const MAX_LIST: usize = 1000;
/// Encoded bytes of the jobs of one List reply: half the smallest `max_message_size` cached
/// accepts, so a reply fits whatever the setting; callers go on with `before`.
const MAX_LIST_BYTES: usize = 1 << 20;
/// Job ids are `<11 hex>-<6 hex>`; a longer `before` names no job of ours.
const MAX_JOB_ID: usize = 64;
/// Lines in one Progress call, bytes of one line, and bytes of the call: build output reaches
/// every watcher through one shared event buffer, so what a call may add there is bounded.
const MAX_LINES: usize = 1000;
const MAX_LINE_BYTES: usize = 4 << 10;
const MAX_PROGRESS_BYTES: usize = 64 << 10;
/// Bytes of a submitted list in an audit line (what was submitted, refused or not).
const MAX_LOGGED: usize = 1 << 10;

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type LeaseStream = Pin<Box<dyn Stream<Item = Result<LeaseResponse, Status>> + Send>>;

pub struct JobsService {
    scheduler: Arc<dyn SchedulerBackend>,
    finished: Arc<FinishedJobs>,
    /// Refused and reused submissions are logged as the auth layer's refusals are: a line per
    /// address and interval, so a token submitting at its rate limit does not fill the disk.
    refusals: RefusalLog,
}

impl JobsService {
    pub fn new(scheduler: Arc<dyn SchedulerBackend>, finished: Arc<FinishedJobs>) -> Self {
        Self { scheduler, finished, refusals: RefusalLog::default() }
    }

    /// The key of the spec as the scheduler will store it (validation normalises it); none for
    /// a spec the current settings refuse, which `submit` then refuses with the reason.
    fn key_of(&self, spec: &JobSpec) -> Option<JobKey> {
        // A spec of any size up to a message's is copied only once it is known to be small.
        validate::check_spec_size(spec).ok()?;
        let mut checked = spec.clone();
        validate::check_spec(&mut checked, self.scheduler.settings()).ok()?;
        Some(JobKey::of(&checked))
    }

    /// Queues the job and remembers it under `key`, so the next identical submission can
    /// reuse it.
    async fn submit_new(&self, spec: JobSpec, key: Option<JobKey>, submitter: &str) -> Result<String, Error> {
        let job_id = self.scheduler.submit(spec, submitter).await?;
        if let Some(key) = key {
            self.finished.remember(key, &job_id);
        }
        Ok(job_id)
    }
}

/// Queued tasks run highest priority first, so a tenant free to choose any would take every
/// agent ahead of the others: a token asks at most its `max_priority`.
fn check_priority(grant: &auth::Grant, priority: i32) -> Result<(), Error> {
    // One out of range is refused as such when the spec is checked.
    if priority <= grant.max_priority || !crate::scheduler::validate::PRIORITIES.contains(&priority) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "token `{}` may submit jobs at priority {} at most, not {priority}; an operator can raise \
         it with `max_priority` in the token's [[tokens]] entry",
        grant.token, grant.max_priority
    )))
}

fn job_namespace(job: &proto::v1::JobStatus) -> &str {
    job.spec.as_ref().map_or("", |spec| spec.namespace.as_str())
}

/// A job is visible to callers that may use its namespace, which is checked before the job
/// is read: a caller refused costs no copy of another namespace's job. To it the job is unknown,
/// word for word: a refusal naming the namespace would tell another tenant the job exists and
/// where (a project's name, say).
async fn check_job_namespace(
    scheduler: &dyn SchedulerBackend,
    extensions: &http::Extensions,
    job_id: &str,
) -> Result<Arc<auth::Grant>, Status> {
    let ns = scheduler.namespace_of(job_id).await?;
    match auth::check_namespace(extensions, namespace(&ns)?) {
        Err(Error::PermissionDenied(_)) => Err(crate::scheduler::unknown_job(job_id).into()),
        checked => Ok(checked?),
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let mut spec = request.spec.ok_or_else(|| Error::invalid("spec is missing"))?;
        // Named as everything after reads it (`""` is `default`): its reuse key, the lease
        // credential's namespace, purges.
        spec.namespace = namespace(&spec.namespace)?.to_owned();
        let grant = auth::check_namespace(&extensions, &spec.namespace)?;
        check_priority(&grant, spec.priority)?;
        let (packages, targets) = (logged_list(&spec.packages), spec.targets.len());
        let spec_namespace = spec.namespace.clone();
        let key = self.key_of(&spec);
        let reused = match key {
            Some(key) if !request.rebuild => self.finished.find(&*self.scheduler, key).await?,
            _ => None,
        };
        let result = match &reused {
            Some(job) => Ok(job.job_id.clone()),
            None => self.submit_new(spec, key, &grant.token).await,
        };
        // A job runs the submitter's source on the agents: who asked for what is on record.
        let outcome = match (&result, &reused) {
            (Err(_), _) => "refused",
            (Ok(_), Some(_)) => "reused",
            (Ok(_), None) => "queued",
        };
        // Refused and reused submissions cost the caller nothing but its rate: logged once per
        // token and interval, with a count of the rest (by token: behind one address, another
        // token's line would only be counted). Queued ones are capped by the open jobs and
        // are all on record.
        let unlogged = match outcome {
            "refused" => self.refusals.admit_token(&grant.token, "Jobs.Submit refused"),
            "reused" => self.refusals.admit_token(&grant.token, "Jobs.Submit reused"),
            _ => Some(0),
        };
        if let Some(unlogged) = unlogged {
            tracing::info!(
                target: "audit",
                token = %grant.token,
                namespace = %spec_namespace,
                job = %result.as_deref().unwrap_or("-"),
                packages = %packages,
                targets,
                outcome,
                unlogged,
                "Jobs.Submit{}",
                if outcome == "queued" { "" } else { EVERY_PER_TOKEN }
            );
        }
        Ok(Response::new(SubmitResponse { job_id: result?, reused: reused.is_some() }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (_, extensions, request) = request.into_parts();
        check_job_namespace(&*self.scheduler, &extensions, &request.job_id).await?;
        let (job, mut events) = Arc::clone(&self.scheduler).watch(&request.job_id).await?;
        let mut standing = auth::standing(&extensions);
        let (sender, receiver) = mpsc::channel(64);
        let mut stop = self.scheduler.stopping();
        // Ends when the job finishes, the watcher goes or loses its token, or cached shuts down.
        crate::task::spawn("job watch", async move {
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
                    next = events.next() => next,
                    () = stopped(&mut stop) => {
                        let _ = sender.send(Err(Status::unavailable("cached is shutting down; watch again"))).await;
                        return;
                    }
                    err = auth::lost(&mut standing) => {
                        let _ = sender.send(Err(err.into())).await;
                        return;
                    }
                };
                let Some(event) = next else { return };
                let last = event.kind == Kind::JobFinished as i32;
                if sender.send(Ok(event)).await.is_err() || last {
                    return;
                }
            }
        })
        .detach();
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let grant = check_job_namespace(&*self.scheduler, &extensions, &request.job_id).await?;
        let result = self.scheduler.cancel(&request.job_id).await;
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
        let visible = |job: &proto::v1::JobStatus| {
            namespace(job_namespace(job)).is_ok_and(|ns| grant.allows_namespace(ns))
        };
        if request.before.len() > MAX_JOB_ID {
            return Err(Error::invalid(format!(
                "`before` is {} bytes long; it is a job id (a previous reply's `next`)",
                request.before.len()
            ))
            .into());
        }
        let before = Some(request.before.as_str()).filter(|before| !before.is_empty());
        let query = ListQuery {
            limit,
            all: request.all,
            before,
            max_bytes: MAX_LIST_BYTES,
            namespaces: &grant.namespaces,
        };
        let page = self.scheduler.list(&query, &visible).await?;
        Ok(Response::new(ListResponse { jobs: page.jobs, next: page.next.unwrap_or_default() }))
    }
}

/// `items` for an audit line: each `{:?}`-escaped, so no newline of theirs starts a forged
/// line; at most about [`MAX_LOGGED`] bytes in all, and how many were left out.
fn logged_list(items: &[String]) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for item in items {
        if out.len() >= MAX_LOGGED {
            break;
        }
        let head = &item[..char_floor(item, MAX_LOGGED)];
        let cut = if head.len() < item.len() { "…" } else { "" };
        out.push_str(&format!("{}{head:?}{cut}", if shown > 0 { " " } else { "" }));
        shown += 1;
    }
    if out.len() > MAX_LOGGED {
        out.truncate(char_floor(&out, MAX_LOGGED));
        out.push('…');
    }
    if shown < items.len() {
        out.push_str(&format!(" and {} more", items.len() - shown));
    }
    out
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
    scheduler: Arc<dyn SchedulerBackend>,
    /// The CAS's blobs, whose recorded SHA-256 the image blobs of a completion must match.
    blobs: SharedStore,
}

impl WorkersService {
    pub fn new(scheduler: Arc<dyn SchedulerBackend>, blobs: SharedStore) -> Self {
        Self { scheduler, blobs }
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type LeaseStream = LeaseStream;

    async fn lease(
        &self,
        request: Request<Streaming<LeaseRequest>>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        let (_, extensions, mut inbound) = request.into_parts();
        let grant = auth::grant(&extensions)?;
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Error::invalid("the lease stream ended before the agent registered"))?;
        let Some(lease_request::Kind::Register(info)) = first.kind else {
            return Err(Error::invalid("the first message of a lease stream must be `register`").into());
        };
        let mut standing = auth::standing(&extensions);
        let Session { id, sender, receiver } = self.scheduler.register(info, Arc::clone(&grant)).await?;
        let scheduler = Arc::clone(&self.scheduler);
        let mut stop = scheduler.stopping();
        // Ends when the agent goes or cached shuts down.
        crate::task::spawn("lease stream", async move {
            let gone = sender.gone();
            tokio::pin!(gone);
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = stopped(&mut stop) => {
                        sender.end(Status::unavailable("cached is shutting down; reconnect"));
                        break;
                    }
                    () = &mut gone => break,
                    err = auth::lost(&mut standing) => {
                        tracing::warn!(target: "audit", token = %grant.token, session = id, reason = %err, "lease stream ended");
                        sender.end(err.into());
                        scheduler.expel(id).await;
                        return;
                    }
                };
                match message {
                    Some(Ok(LeaseRequest { kind: Some(lease_request::Kind::Heartbeat(heartbeat)) })) => {
                        if let Err(err) = scheduler.heartbeat(id, heartbeat).await {
                            sender.end(err.into());
                            break;
                        }
                    }
                    Some(Ok(_)) => {
                        sender.end(Error::invalid("register is only the first message").into());
                        break;
                    }
                    Some(Err(_)) | None => break,
                }
            }
            scheduler.unregister(id).await;
        })
        .detach();
        Ok(Response::new(Box::pin(receiver.into_stream())))
    }

    async fn progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let grant = auth::grant(&extensions)?;
        let token = request.token.ok_or_else(|| Error::invalid("token is missing"))?;
        let lines = bound_lines(request.lines);
        self.scheduler.progress(&token, &grant, request.started, lines).await?;
        Ok(Response::new(ProgressResponse {}))
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let grant = auth::grant(&extensions)?;
        let token = request.token.ok_or_else(|| Error::invalid("token is missing"))?;
        let outcome = match request.outcome {
            Some(complete_request::Outcome::Success(result)) => {
                validate::check_result(&result)?;
                validate::check_stored(&result, &self.blobs).await?;
                Outcome::Success(Box::new(result))
            }
            Some(complete_request::Outcome::Failure(failure)) => {
                Outcome::Failure { reason: failure.reason, retryable: failure.retryable }
            }
            None => return Err(Error::invalid("outcome is missing").into()),
        };
        self.scheduler.complete(&token, &grant, outcome).await?;
        Ok(Response::new(CompleteResponse {}))
    }
}

/// Build output as watchers get it: at most [`MAX_LINES`] lines of at most [`MAX_LINE_BYTES`],
/// [`MAX_PROGRESS_BYTES`] in all, and a note of what was left out.
fn bound_lines(lines: Vec<String>) -> Vec<String> {
    let total = lines.len();
    let mut bytes = 0;
    let mut out = Vec::new();
    for mut line in lines.into_iter().take(MAX_LINES) {
        if line.len() > MAX_LINE_BYTES {
            line.truncate(char_floor(&line, MAX_LINE_BYTES));
            line.push_str(" [cut by cached: a line of build output is at most 4 KiB]");
        }
        if bytes + line.len() > MAX_PROGRESS_BYTES {
            break;
        }
        bytes += line.len() + 1;
        out.push(line);
    }
    if out.len() < total {
        out.push(format!(
            "[cached dropped {} of {total} lines: one progress call carries at most {MAX_LINES} lines and 64 KiB]",
            total - out.len()
        ));
    }
    out
}
