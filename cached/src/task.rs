//! Every task cached starts goes through here, named: its logs carry a `task` span saying
//! what they are part of. The [`Task`] returned aborts the task when dropped, so a task lives
//! only as long as whoever started it holds it; one that ends on its own (a stream that stops
//! when its receiver goes) is let go with [`Task::detach`], which says so where it is started.
//! A task is work for the same caller as the work that started it ([`crate::caller`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

/// A running task, aborted when dropped. Awaiting it gives its output, or the panic or abort
/// that ended it.
#[must_use = "dropping a Task aborts it; call detach() to let it run"]
pub struct Task<T> {
    handle: Option<JoinHandle<T>>,
}

impl<T> Task<T> {
    /// Lets the task run to its own end, with nobody waiting for it.
    pub fn detach(mut self) {
        self.handle.take();
    }

    /// Whether the task has ended (a result waits to be taken by awaiting it).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the task at its next await; a blocking task already running runs on.
    pub fn abort(&self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let handle = self.handle.as_mut().expect("a detached Task is consumed by detach()");
        Pin::new(handle).poll(cx)
    }
}

fn span(name: &'static str) -> tracing::Span {
    tracing::info_span!("task", name)
}

/// Runs `future` on the runtime as the task `name`.
#[allow(clippy::disallowed_methods)] // The one place tasks are spawned.
pub fn spawn<F>(name: &'static str, future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let caller = crate::caller::current_caller();
    Task { handle: Some(tokio::spawn(crate::caller::scope_caller(caller, future.instrument(span(name))))) }
}

/// Runs `work` on the blocking thread pool as the task `name`: for anything that blocks
/// (RocksDB, disk), never on an async worker thread. Work of a caller with a thread share
/// ([`crate::caller::ThreadShares`]) past its share waits for a permit first, on no thread.
#[allow(clippy::disallowed_methods)] // The one place blocking tasks are spawned.
pub fn spawn_blocking<F, R>(name: &'static str, work: F) -> Task<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (span, caller) = (span(name), crate::caller::current_caller());
    let Some(threads) = caller.as_ref().and_then(|caller| caller.threads().cloned()) else {
        return Task { handle: Some(tokio::task::spawn_blocking(in_scope(span, caller, None, work))) };
    };
    if let Ok(permit) = Arc::clone(&threads).try_acquire_owned() {
        return Task {
            handle: Some(tokio::task::spawn_blocking(in_scope(span, caller, Some(permit), work))),
        };
    }
    let handle = tokio::spawn(async move {
        // The share is never closed.
        let permit = threads.acquire_owned().await.ok();
        run_blocking(name, tokio::task::spawn_blocking(in_scope(span, caller, permit, work))).await
    });
    Task { handle: Some(handle) }
}

/// A blocking thread of the current caller's share, taken ahead of a wait on something all
/// callers share (a server-wide slot), so that a caller whose share is busy waits for its
/// thread before it takes that slot, not while holding it.
pub struct ReservedThread(Option<OwnedSemaphorePermit>);

/// Waits, on no thread, for a thread of the current caller's share (at once for a caller with
/// no share).
pub async fn reserve_thread() -> ReservedThread {
    let threads = crate::caller::current_caller().and_then(|caller| caller.threads().cloned());
    match threads {
        // The share is never closed.
        Some(threads) => ReservedThread(threads.acquire_owned().await.ok()),
        None => ReservedThread(None),
    }
}

/// [`spawn_blocking`] on a thread reserved beforehand.
#[allow(clippy::disallowed_methods)] // The one place blocking tasks are spawned.
pub fn spawn_blocking_reserved<F, R>(name: &'static str, thread: ReservedThread, work: F) -> Task<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (span, caller) = (span(name), crate::caller::current_caller());
    Task { handle: Some(tokio::task::spawn_blocking(in_scope(span, caller, thread.0, work))) }
}

/// `work` as it runs on a blocking thread: as work for `caller`, holding `permit` to its end.
fn in_scope<F: FnOnce() -> R, R>(
    span: tracing::Span,
    caller: Option<crate::caller::Caller>,
    permit: Option<OwnedSemaphorePermit>,
    work: F,
) -> impl FnOnce() -> R {
    move || {
        let _permit = permit;
        crate::caller::run_as_caller(caller, || span.in_scope(work))
    }
}

/// The output of a blocking task started from within a task, its panic passed on.
async fn run_blocking<R>(name: &'static str, handle: JoinHandle<R>) -> R {
    match handle.await {
        Ok(output) => output,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("the blocking task {name} did not run: {err}"),
    }
}

/// Runs `work`, which blocks briefly (a disk sync), where it is: on a multi-threaded runtime's
/// worker the runtime first moves its other tasks to other threads; elsewhere (a blocking
/// thread, a current-thread runtime, no runtime) it just runs.
#[allow(clippy::disallowed_methods)]
pub fn block_in_place<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_dropped_task_is_aborted_and_a_detached_one_runs_on() {
        let (dropped_tx, mut dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let pending = spawn("aborted", async move {
            let _alive = dropped_tx;
            std::future::pending::<()>().await;
        });
        drop(pending);
        // The sender goes with the aborted task, so the receiver learns it was dropped.
        let closed = tokio::time::timeout(Duration::from_secs(5), &mut dropped_rx).await;
        assert!(matches!(closed, Ok(Err(_))), "the task still holds its sender");

        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        spawn("detached", async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done_tx.send(());
        })
        .detach();
        tokio::time::timeout(Duration::from_secs(5), done_rx).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn awaiting_a_task_gives_its_output_or_its_panic() {
        assert_eq!(spawn_blocking("adds", || 2 + 2).await.unwrap(), 4);
        let panicked = spawn("panics", async { panic!("on purpose") }).await;
        assert!(panicked.unwrap_err().is_panic());
    }
}
