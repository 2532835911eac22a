//! The token a piece of work is done for, carried from the gRPC call that started it into the
//! tasks and blocking threads it spawns ([`crate::task`] passes it on). Budgets kept below the
//! services, where no request is at hand (the shared tier's lookups), charge it.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CALLER: Option<Arc<str>>;
}

thread_local! {
    static ON_THIS_THREAD: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// The token of the call this work is for; `None` for the server's own work.
pub fn current() -> Option<Arc<str>> {
    CALLER
        .try_with(Clone::clone)
        .ok()
        .flatten()
        .or_else(|| ON_THIS_THREAD.with(|caller| caller.borrow().clone()))
}

/// Runs `future` as work for `caller`.
pub fn scope<F: Future>(caller: Option<Arc<str>>, future: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, future)
}

/// Runs `work` on this (blocking) thread as work for `caller`.
pub fn run_as<R>(caller: Option<Arc<str>>, work: impl FnOnce() -> R) -> R {
    /// Puts back the thread's caller, even when `work` panics: the pool reuses the thread.
    struct Restore(Option<Arc<str>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_THIS_THREAD.with(|caller| *caller.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(ON_THIS_THREAD.with(|current| current.replace(caller)));
    work()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_follows_the_work_into_tasks_and_blocking_threads() {
        assert_eq!(current(), None);
        let caller: Arc<str> = Arc::from("pr-7");
        let seen = scope(Some(Arc::clone(&caller)), async {
            let direct = current();
            let spawned = crate::task::spawn("child", async { current() }).await.unwrap();
            let blocking = crate::task::spawn_blocking("child", current).await.unwrap();
            (direct, spawned, blocking)
        })
        .await;
        assert_eq!(seen, (Some(Arc::clone(&caller)), Some(Arc::clone(&caller)), Some(caller)));
        // Nothing stays behind on the pool's threads.
        let after = crate::task::spawn_blocking("after", current).await.unwrap();
        assert_eq!((current(), after), (None, None));
    }
}
