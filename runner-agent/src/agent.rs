//! The agent's session with cached: register over `Workers.Lease`, heartbeat every interval
//! the server asks for (carrying the leases being worked on, which keeps them alive and lets
//! the server answer with aborts), run each task it is handed, and reconnect with backoff when
//! the stream breaks; running tasks carry on meanwhile, and their leases are heartbeated again
//! once the stream is back.
//!
//! SIGTERM drains: stop taking tasks, let the running ones finish within the grace period,
//! then kill what is left and release it (a retryable failure, so it is requeued at once).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cached_client::connect::ConnectOptions;
use cached_client::remote_exec::RemoteExec;
use futures::FutureExt;
use proto::v1::{
    self, AgentInfo, FencingToken, Heartbeat, LeaseRequest, TaskLease, complete_request, lease_request,
    lease_response,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use cached_client::tree::TreeLimits;

use crate::TaskError;
use crate::blobcache::BlobCache;
use crate::build::Builder;
use crate::cancel::Cancel;
use crate::caps;
use crate::modules::ModuleStore;
use crate::sandbox::Sandbox;
use crate::task::{self, TaskContext, token_name};
use crate::taskdir;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub connect: ConnectOptions,
    pub agent_id: String,
    pub concurrency: u32,
    pub work_dir: PathBuf,
    /// Cap of the blob cache in the work dir, in bytes.
    pub cache_size: u64,
    pub grace: Duration,
    pub task_timeout: Duration,
    /// The most disk a build's own files may take in its task directory, in bytes.
    pub max_task_disk: u64,
    pub go: PathBuf,
    /// Extra C compilers, `goos/goarch=command`.
    pub cc: Vec<String>,
    /// This binary as build users reach it: the GOCACHEPROG bridge and the entry of every
    /// build process.
    pub bridge: PathBuf,
    /// Environment the bridge needs (CACHED_ADDR, CA): never the agent's credentials.
    pub bridge_env: Vec<(String, String)>,
    /// Who builds run as (set up and checked by `sandbox`).
    pub sandbox: Sandbox,
    pub tree_limits: TreeLimits,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Running {
    token: FencingToken,
    cancel: watch::Sender<bool>,
    release: Arc<AtomicBool>,
}

/// Heartbeats every `interval`. After a stall (a busy machine, a slow send) the next one goes
/// out once and the rhythm starts again from there: missed ticks are not sent in a burst.
fn heartbeat_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Each task may take `--max-task-disk`; with less free than all of them at once, one job's
/// files can fail another task's build as a full disk (the agent's trouble, retried
/// elsewhere) before its own cap stops it.
fn warn_if_tasks_do_not_fit(work_dir: &std::path::Path, capacity: u32, max_task_disk: u64) {
    let Ok(stat) = rustix::fs::statvfs(work_dir) else { return };
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let needed = u64::from(capacity).saturating_mul(max_task_disk);
    if free < needed {
        tracing::warn!(
            free_mib = free >> 20,
            needed_mib = needed >> 20,
            "the work directory's filesystem has less free space than --concurrency tasks of --max-task-disk \
             each may take: one job's files can then fail another's build as a full disk; lower either, or \
             give the work directory more room"
        );
    }
}

/// Runs until `shutdown` resolves and the drain is over.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let go = caps::go_info(&config.go)?;
    let relative = caps::relative_path_entries();
    if !relative.is_empty() {
        tracing::warn!(
            entries = relative.join(", "),
            "PATH has entries that are not absolute; builds run without them (a job's tree would \
             supply the programs they name)"
        );
    }
    let c_compilers = caps::c_compilers(&go, &config.cc)?;
    let info = AgentInfo {
        agent_id: config.agent_id.clone(),
        go_version: go.version.clone(),
        host_goos: go.goos.clone(),
        host_goarch: go.goarch.clone(),
        c_compilers: c_compilers.clone(),
        capacity: config.concurrency.max(1),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        instance: instance()?.to_vec().into(),
    };
    tracing::info!(
        agent = %info.agent_id, go = %info.go_version, capacity = info.capacity,
        c_compilers = %c_compilers.iter().map(|c| format!("{}/{}={}", c.goos, c.goarch, c.cc)).collect::<Vec<_>>().join(","),
        work_dir = %config.work_dir.display(), "runner agent starting"
    );
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|err| format!("{}: {err}", config.work_dir.display()))?;
    warn_if_tasks_do_not_fit(&config.work_dir, info.capacity, config.max_task_disk);
    let cache =
        BlobCache::open(config.work_dir.join("blobs"), config.cache_size).map_err(|err| err.to_string())?;
    let modules = ModuleStore::open(config.work_dir.join("modules"), config.cache_size)
        .map_err(|err| err.to_string())?;
    tokio::pin!(shutdown);

    let mut backoff = Duration::from_millis(200);
    let remote = loop {
        match RemoteExec::connect(&config.server, &config.connect).await {
            Ok(remote) => break remote,
            Err(err) => {
                tracing::warn!(error = %err, "cannot reach cached; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let gocacheprog = format!("{} gocacheprog", config.bridge.display());
    let ctx = Arc::new(TaskContext {
        remote: remote.clone(),
        cache,
        modules,
        builder: Builder {
            go: config.go.clone(),
            gocacheprog: gocacheprog.clone(),
            entry: config.bridge.clone(),
            bridge_connect: ConnectOptions { token: None, ..config.connect.clone() },
        },
        work_dir: config.work_dir.clone(),
        sandbox: config.sandbox.clone(),
        tree_limits: config.tree_limits,
        gocacheprog,
        bridge_env: config.bridge_env.clone(),
        c_compilers,
        task_timeout: config.task_timeout,
        max_task_disk: config.max_task_disk,
    });

    let mut running: HashMap<String, Running> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut draining = false;
    let mut grace_over: Option<Instant> = None;
    let mut released = false;
    let mut backoff = Duration::from_millis(200);
    'session: loop {
        if draining && running.is_empty() {
            break;
        }
        let (sender, outbound) = mpsc::channel::<LeaseRequest>(16);
        let _ = sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info.clone())) }).await;
        let stream = remote.workers.clone().lease(ReceiverStream::new(outbound)).await;
        let mut inbound = match stream {
            Ok(stream) => {
                backoff = Duration::from_millis(200);
                stream.into_inner()
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "lease stream refused; retrying");
                if wait_or_finish(backoff, &mut done_rx, &mut running, &mut shutdown, &mut draining).await {
                    grace_over.get_or_insert_with(|| Instant::now() + config.grace);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut interval = Duration::from_secs(10);
        let mut ticker = heartbeat_ticker(interval);
        let heartbeat = |running: &HashMap<String, Running>, draining: bool| LeaseRequest {
            kind: Some(lease_request::Kind::Heartbeat(Heartbeat {
                free_slots: info.capacity.saturating_sub(running.len() as u32),
                // A build being killed still takes its slot, but its lease is given up.
                running: running.values().filter(|r| !*r.cancel.borrow()).map(|r| r.token.clone()).collect(),
                draining,
            })),
        };
        loop {
            let grace = async {
                match grace_over {
                    Some(at) if !released => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {
                    if sender.send(heartbeat(&running, draining)).await.is_err() {
                        break;
                    }
                }
                Some(key) = done_rx.recv() => {
                    running.remove(&key);
                    if draining && running.is_empty() {
                        break 'session;
                    }
                    let _ = sender.send(heartbeat(&running, draining)).await;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => match message.kind {
                        Some(lease_response::Kind::Registered(registered)) => {
                            interval = Duration::from_millis(registered.heartbeat_interval_ms.max(10));
                            ticker = heartbeat_ticker(interval);
                            tracing::info!(heartbeat = ?interval, "registered with cached");
                        }
                        Some(lease_response::Kind::Task(lease)) => {
                            let token = lease.token.clone().unwrap_or_default();
                            if draining {
                                release(&remote, token, "the agent is shutting down").await;
                                continue;
                            }
                            tracing::info!(task = %token_name(&token), "task leased");
                            let entry = start(Arc::clone(&ctx), lease, done_tx.clone());
                            running.insert(token_name(&token), entry);
                            let _ = sender.send(heartbeat(&running, draining)).await;
                        }
                        Some(lease_response::Kind::Abort(token)) => {
                            if let Some(task) = running.get(&token_name(&token)) {
                                tracing::warn!(task = %token_name(&token), "lease aborted by cached; stopping the task");
                                let _ = task.cancel.send(true);
                            }
                        }
                        None => {}
                    },
                    Ok(None) | Err(_) => {
                        tracing::warn!("lease stream ended; reconnecting");
                        break;
                    }
                },
                () = &mut shutdown, if !draining => {
                    draining = true;
                    grace_over = Some(Instant::now() + config.grace);
                    tracing::info!(running = running.len(), grace = ?config.grace, "draining: no new tasks");
                    if running.is_empty() {
                        break 'session;
                    }
                    let _ = sender.send(heartbeat(&running, draining)).await;
                }
                () = grace => {
                    released = true;
                    tracing::warn!(running = running.len(), "grace period over; releasing the remaining tasks");
                    for task in running.values() {
                        task.release.store(true, Ordering::SeqCst);
                        let _ = task.cancel.send(true);
                    }
                }
            }
        }
        if wait_or_finish(backoff, &mut done_rx, &mut running, &mut shutdown, &mut draining).await {
            grace_over.get_or_insert_with(|| Instant::now() + config.grace);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::info!("runner agent stopped");
    Ok(())
}

/// Random per process: cached lets a registration take over a connected agent id only when it
/// comes from the same process reconnecting (same token, same instance).
fn instance() -> Result<[u8; 16], String> {
    let mut instance = [0u8; 16];
    getrandom::fill(&mut instance).map_err(|err| format!("the system random source failed: {err}"))?;
    Ok(instance)
}

/// Sleeps `backoff` while noting finished tasks; true when shutdown arrived meanwhile.
async fn wait_or_finish(
    backoff: Duration,
    done: &mut mpsc::UnboundedReceiver<String>,
    running: &mut HashMap<String, Running>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    draining: &mut bool,
) -> bool {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return false,
            Some(key) = done.recv() => { running.remove(&key); }
            () = shutdown.as_mut(), if !*draining => {
                *draining = true;
                return true;
            }
        }
    }
}

fn start(ctx: Arc<TaskContext>, lease: TaskLease, done: mpsc::UnboundedSender<String>) -> Running {
    let token = lease.token.clone().unwrap_or_default();
    let (cancel, cancelled) = watch::channel(false);
    let release_flag = Arc::new(AtomicBool::new(false));
    let releasing = Arc::clone(&release_flag);
    let key = token_name(&token);
    let task_token = token.clone();
    cached_client::task::spawn("lease-task", async move {
        let remote = ctx.remote.clone();
        // Where task::run keeps the task's files, for when it cannot remove them itself.
        let task_dir = taskdir::task_path(&ctx.work_dir, &key);
        let work = task::run(ctx, lease, Cancel::new(cancelled));
        if let Some(outcome) = settle(work, &task_dir, &key, &releasing).await {
            complete(&remote, task_token, outcome).await;
        }
        let _ = done.send(key);
    });
    Running { token, cancel, release: release_flag }
}

/// What to report of a task once `work` ends; `None`: nothing, its lease is gone.
///
/// A panic in `work` (a bug, perhaps one a job's spec reaches) ends the task like any trouble
/// of the agent's: unreported, its lease would be heartbeated until the job's deadline, its
/// slot stay taken and SIGTERM wait for it forever. The unwinding skipped the removal of the
/// task's directory, so it goes here (the build user's processes die as its uid is given back).
async fn settle(
    work: impl Future<Output = Result<v1::TaskResult, TaskError>>,
    task_dir: &Path,
    key: &str,
    releasing: &AtomicBool,
) -> Option<complete_request::Outcome> {
    let result = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            if let Err(err) = taskdir::remove_tree(task_dir) {
                tracing::warn!(dir = %task_dir.display(), error = %err, "cannot remove a task directory");
            }
            Err(TaskError::Infrastructure(format!(
                "the agent failed on this task (a bug in runner-agent; its log has the details): {}",
                panic_message(panic.as_ref())
            )))
        }
    };
    match result {
        Ok(result) => {
            tracing::info!(task = %key, outputs = result.outputs.len(), hit = result.hit, "task built");
            Some(complete_request::Outcome::Success(result))
        }
        Err(TaskError::Build(reason)) => {
            tracing::info!(task = %key, "build failed");
            let reason = proto::text::keep_ends(reason);
            Some(complete_request::Outcome::Failure(v1::TaskFailure { reason, retryable: false }))
        }
        Err(TaskError::Infrastructure(reason)) => {
            let reason = proto::text::keep_ends(reason);
            tracing::warn!(task = %key, error = %reason, "task failed");
            Some(complete_request::Outcome::Failure(v1::TaskFailure { reason, retryable: true }))
        }
        Err(TaskError::Cancelled) if releasing.load(Ordering::SeqCst) => {
            Some(complete_request::Outcome::Failure(v1::TaskFailure {
                reason: "released: the agent shut down before the build finished".to_owned(),
                retryable: true,
            }))
        }
        Err(TaskError::Cancelled) => None,
    }
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "panicked",
    }
}

async fn release(remote: &RemoteExec, token: FencingToken, why: &str) {
    let failure = v1::TaskFailure { reason: format!("released: {why}"), retryable: true };
    complete(remote, token, complete_request::Outcome::Failure(failure)).await;
}

/// Reports an outcome, retrying while cached is unreachable (it may be restarting; the lease
/// outlives a restart). A refused token means the lease was lost: nothing more to do.
async fn complete(remote: &RemoteExec, token: FencingToken, outcome: complete_request::Outcome) {
    let request = v1::CompleteRequest { token: Some(token.clone()), outcome: Some(outcome) };
    let mut backoff = Duration::from_millis(200);
    for _ in 0..60 {
        match remote.workers.clone().complete(request.clone()).await {
            Ok(_) => return,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(status) => {
                tracing::warn!(task = %token_name(&token), error = %status.message(), "completion refused");
                return;
            }
        }
    }
    tracing::error!(task = %token_name(&token), "gave up reporting a completion: cached stayed unreachable");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_fails_as_the_agents_trouble_and_leaves_no_directory() {
        let work_dir = tempfile::tempdir().unwrap();
        let task_dir = work_dir.path().join("tasks/job-0-1");
        std::fs::create_dir_all(task_dir.join("src")).unwrap();
        std::fs::write(task_dir.join("src/main.go"), "package main").unwrap();
        let work = async {
            tokio::task::yield_now().await;
            panic!("the image step met an epoch past year 9999")
        };
        let outcome = settle(work, &task_dir, "job-0-1", &AtomicBool::new(false)).await;
        let Some(complete_request::Outcome::Failure(failure)) = outcome else {
            panic!("a panicking task is reported as failed, got {outcome:?}")
        };
        assert!(failure.retryable, "another agent may do better: {failure:?}");
        assert!(failure.reason.contains("an epoch past year 9999"), "{}", failure.reason);
        assert!(!task_dir.exists(), "the task directory is removed");
    }

    #[tokio::test]
    async fn a_tasks_result_is_reported_as_it_was() {
        let task_dir = tempfile::tempdir().unwrap();
        let (key, releasing) = ("job-0-1", AtomicBool::new(false));
        let built = async { Ok(v1::TaskResult { hit: true, ..v1::TaskResult::default() }) };
        let outcome = settle(built, task_dir.path(), key, &releasing).await;
        assert!(matches!(outcome, Some(complete_request::Outcome::Success(result)) if result.hit));
        let failed = async { Err(TaskError::Build("syntax error".into())) };
        let outcome = settle(failed, task_dir.path(), key, &releasing).await;
        assert!(matches!(outcome, Some(complete_request::Outcome::Failure(f)) if !f.retryable));
        let cancelled = async { Err(TaskError::Cancelled) };
        assert!(settle(cancelled, task_dir.path(), key, &releasing).await.is_none());
        assert!(task_dir.path().exists(), "only a panic's directory is removed here");
    }
}
