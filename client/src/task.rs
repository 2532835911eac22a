//! Every task and thread this code starts, started here: each runs inside a tracing span
//! that names it (`task{name=...}`), so what it logs says where it came from, and
//! [`spawn_guarded`] ties a task's life to a value, so work nobody waits for any more stops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

fn span(name: &str) -> tracing::Span {
    tracing::info_span!("task", name)
}

/// Runs `future` on the current runtime as the task `name`.
// The one place tasks start: the raw spawns are banned everywhere else.
#[allow(clippy::disallowed_methods)]
pub fn spawn<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.instrument(span(name)))
}

/// Runs `future` on the runtime of `handle` (from a thread outside it) as the task `name`.
// The one place tasks start: the raw spawns are banned everywhere else.
#[allow(clippy::disallowed_methods)]
pub fn spawn_on<F>(handle: &tokio::runtime::Handle, name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle.spawn(future.instrument(span(name)))
}

/// Runs blocking `work` (file I/O, hashing, compression) on the runtime's blocking pool as the
/// task `name`.
// The one place tasks start: the raw spawns are banned everywhere else.
#[allow(clippy::disallowed_methods)]
pub fn spawn_blocking<F, R>(name: &str, work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = span(name);
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

/// Runs `work` on a thread of its own named `name`, outside any runtime. Like
/// `std::thread::spawn`, it panics when the system cannot start a thread.
// The one place tasks start: the raw spawns are banned everywhere else.
#[allow(clippy::disallowed_methods)]
pub fn spawn_thread<F, T>(name: &str, work: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = span(name);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || span.in_scope(work))
        .unwrap_or_else(|err| panic!("cannot start the thread {name}: {err}"))
}

/// A task that is aborted when this is dropped; awaiting it awaits the task.
#[must_use = "dropping it aborts the task"]
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// [`spawn`], aborted when the returned guard is dropped.
pub fn spawn_guarded<F>(name: &str, future: F) -> AbortOnDrop<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    AbortOnDrop(spawn(name, future))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_guarded_task_stops_with_its_guard_and_can_be_awaited() {
        assert_eq!(spawn_guarded("answer", async { 42 }).await.unwrap(), 42);
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let guard = spawn_guarded("slow", async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, Ordering::SeqCst);
        });
        drop(guard);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!finished.load(Ordering::SeqCst), "the task ran on after its guard was dropped");
    }

    #[tokio::test]
    async fn blocking_work_and_threads_run_under_their_names() {
        assert_eq!(spawn_blocking("sum", || 2 + 2).await.unwrap(), 4);
        let name = spawn_thread("cached-test-thread", || std::thread::current().name().map(str::to_owned));
        assert_eq!(name.join().unwrap().as_deref(), Some("cached-test-thread"));
    }
}
