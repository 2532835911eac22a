//! The order cached stops in, within the shutdown grace period: first the servers (the gRPC
//! server stops accepting and drains its streams, then `/metrics`), then the background tasks
//! the served requests relied on (housekeeping, the lease sweeper, SIGHUP reloads), and last
//! the store is flushed, once nothing writes to it any more.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::task::Task;

/// A step that starts after the grace period is spent still gets this long: tasks told to
/// stop normally end at once, and one that is finishing a housekeeping round should not be
/// cut off mid-batch for want of a second.
const LAST_STEP: Duration = Duration::from_secs(2);

/// Tasks that run until told to stop, and are then awaited until a deadline.
pub struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, Task<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self { stop: watch::channel(false).0, running: Vec::new() }
    }
}

impl Tasks {
    /// What a task of this group watches to know it should stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Resolves once the group is told to stop, for servers that take a shutdown future.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop_signal();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.running.push((name, crate::task::spawn(name, task)));
    }

    /// Tells every task to stop and waits for them until `deadline`; those still running
    /// then are aborted.
    async fn stop(self, deadline: Instant) {
        let _ = self.stop.send(true);
        for (name, mut task) in self.running {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(task = name, error = %err, "task failed while stopping"),
                Err(_) => {
                    tracing::warn!(task = name, "still running after the grace period; aborted");
                    task.abort();
                }
            }
        }
    }
}

pub type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// The gRPC server, serving until `drain` is sent.
pub struct Grpc {
    pub serving: Serving,
    pub drain: oneshot::Sender<()>,
}

/// What stops, in order, once the signal comes.
pub struct Ordered {
    pub grace: Duration,
    /// Run before the gRPC server drains: ends what would otherwise keep it from draining
    /// (streams that never end on their own) and tells health checkers it is going.
    pub before_drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Servers beside the gRPC one, stopped right after it.
    pub servers: Tasks,
    pub background: Tasks,
    /// Makes what the store holds durable; always runs, however long it takes.
    pub flush: Box<dyn FnOnce() -> Result<()> + Send>,
}

impl Ordered {
    /// Serves until `signal` resolves (or the gRPC server fails), then stops everything in
    /// order. A server failure is returned after the store was flushed.
    pub async fn serve_until(self, grpc: Grpc, signal: impl Future<Output = ()>) -> Result<()> {
        let Grpc { mut serving, drain } = grpc;
        let failed = tokio::select! {
            result = &mut serving => Some(result),
            () = signal => None,
        };
        let deadline = Instant::now() + self.grace;
        self.before_drain.await;
        let served = match failed {
            Some(result) => result,
            None => {
                let _ = drain.send(());
                tokio::time::timeout_at(deadline, &mut serving).await.unwrap_or_else(|_| {
                    tracing::warn!(grace = ?self.grace, "grace period over; cutting off the streams still running");
                    Ok(())
                })
            }
        };
        drop(serving);
        self.servers.stop(deadline.max(Instant::now() + LAST_STEP)).await;
        self.background.stop(deadline.max(Instant::now() + LAST_STEP)).await;
        crate::task::spawn_blocking("flush store", self.flush).await??;
        tracing::info!("store flushed; stopped");
        served.map_err(|err| Error::Internal(format!("gRPC server failed: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A task that notes `name` in `log` once its group tells it to stop.
    fn stops_when_told(tasks: &Tasks, log: &Log, name: &'static str) -> impl Future<Output = ()> + use<> {
        let (mut stop, log) = (tasks.stop_signal(), Arc::clone(log));
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
            log.lock().unwrap().push(name);
        }
    }

    #[tokio::test]
    async fn servers_stop_before_background_tasks_and_the_flush_comes_last() {
        let log: Log = Arc::default();
        let (drain, drained) = oneshot::channel::<()>();
        let grpc_log = Arc::clone(&log);
        let serving: Serving = Box::pin(async move {
            let _ = drained.await;
            grpc_log.lock().unwrap().push("gRPC drained");
            Ok(())
        });
        let (mut servers, mut background) = (Tasks::default(), Tasks::default());
        servers.spawn("metrics", stops_when_told(&servers, &log, "metrics stopped"));
        background.spawn("housekeeping", stops_when_told(&background, &log, "housekeeping stopped"));
        let (before, flushed) = (Arc::clone(&log), Arc::clone(&log));
        let ordered = Ordered {
            grace: Duration::from_secs(5),
            before_drain: Box::pin(async move { before.lock().unwrap().push("streams ended") }),
            servers,
            background,
            flush: Box::new(move || {
                flushed.lock().unwrap().push("flushed");
                Ok(())
            }),
        };
        ordered.serve_until(Grpc { serving, drain }, async {}).await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["streams ended", "gRPC drained", "metrics stopped", "housekeeping stopped", "flushed"]
        );
    }

    #[tokio::test]
    async fn a_task_that_does_not_stop_is_aborted_at_the_deadline() {
        let mut tasks = Tasks::default();
        let (alive, mut gone) = oneshot::channel::<()>();
        tasks.spawn("stuck", async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        let started = Instant::now();
        tasks.stop(started + Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Aborted, the task drops its sender: the receiver hears it closed, never a value.
        let closed = tokio::time::timeout(Duration::from_secs(5), &mut gone).await;
        assert!(matches!(closed, Ok(Err(_))), "the task still runs");
    }
}
