//! The token a piece of work is done for, carried from the gRPC call that started it into the
//! tasks and blocking threads it spawns ([`crate::task`] passes it on). Budgets kept below the
//! services, where no request is at hand (the shared tier's lookups), charge it.
//!
//! A caller also carries its token's share of the blocking thread pool ([`ThreadShares`]):
//! everything slow in cached (RocksDB, the disk, the shared tier's bucket requests, a wait for
//! another call's fill) holds one of the pool's threads, and a token whose calls held them all
//! would stall every other tenant's calls. Work past its token's share waits for a thread
//! without holding one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Semaphore;

/// Who work is for: a token, the share of blocking threads its work may hold at once (none:
/// no bound, the server's own work and the callers of a server without tokens), and whom the
/// blobs it stores are charged to.
#[derive(Clone)]
pub struct Caller {
    token: Arc<str>,
    threads: Option<Arc<Semaphore>>,
    owner: Arc<str>,
}

impl Caller {
    /// Work for `token`, bound by no thread share.
    pub fn unbounded(token: Arc<str>) -> Self {
        Self { owner: Arc::clone(&token), token, threads: None }
    }

    /// Work for `token` whose stored blobs are charged to `owner` (the leases of one tenant
    /// are one owner), bound by no thread share.
    fn unbounded_owned_by(token: Arc<str>, owner: &str) -> Self {
        Self { token, threads: None, owner: Arc::from(owner) }
    }

    /// Whom the blobs this work stores are charged to: the store evicts the blobs of owners
    /// holding more than their share first ([`crate::store`]).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Permits for the blocking threads this caller's work may hold.
    pub fn threads(&self) -> Option<&Arc<Semaphore>> {
        self.threads.as_ref()
    }
}

tokio::task_local! {
    static CALLER: Option<Caller>;
}

thread_local! {
    static ON_THIS_THREAD: RefCell<Option<Caller>> = const { RefCell::new(None) };
}

/// The token of the call this work is for; `None` for the server's own work.
pub fn current() -> Option<Arc<str>> {
    current_caller().map(|caller| caller.token)
}

/// Whose budgets the current work counts against: its token's, or for a lease credential its
/// tenant's share ([`crate::auth::Grant::budget`]), which its stored blobs are charged to too.
pub fn current_owner() -> Option<Arc<str>> {
    current_caller().map(|caller| caller.owner)
}

/// The caller this work is for, its thread share included.
pub fn current_caller() -> Option<Caller> {
    CALLER
        .try_with(Clone::clone)
        .ok()
        .flatten()
        .or_else(|| ON_THIS_THREAD.with(|caller| caller.borrow().clone()))
}

/// Runs `future` as work for `token`, bound by no thread share.
pub fn scope<F: Future>(token: Option<Arc<str>>, future: F) -> impl Future<Output = F::Output> {
    scope_caller(token.map(Caller::unbounded), future)
}

/// Runs `future` as work for `caller`.
pub fn scope_caller<F: Future>(caller: Option<Caller>, future: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, future)
}

/// Runs `work` on this (blocking) thread as work for `token`, bound by no thread share.
pub fn run_as<R>(token: Option<Arc<str>>, work: impl FnOnce() -> R) -> R {
    run_as_caller(token.map(Caller::unbounded), work)
}

/// Runs `work` on this (blocking) thread as work for `caller`.
pub fn run_as_caller<R>(caller: Option<Caller>, work: impl FnOnce() -> R) -> R {
    /// Puts back the thread's caller, even when `work` panics: the pool reuses the thread.
    struct Restore(Option<Caller>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_THIS_THREAD.with(|caller| *caller.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(ON_THIS_THREAD.with(|current| current.replace(caller)));
    work()
}

/// Each token's share of the blocking thread pool (`max_blocking_threads_per_token`): the
/// permits of a token live while any of its work does, and are shared by all of it.
pub struct ThreadShares {
    per_token: usize,
    shares: Mutex<HashMap<Arc<str>, Weak<Semaphore>>>,
}

impl ThreadShares {
    /// Shares of `per_token` threads each; 0 bounds nothing.
    pub fn new(per_token: usize) -> Self {
        Self { per_token, shares: Mutex::default() }
    }

    /// The caller for work of `token`, holding the token's share.
    pub fn caller(&self, token: &str) -> Caller {
        self.caller_sharing(token, token)
    }

    /// The caller for work of `token`, holding the share named `share` (the leases of one
    /// tenant share one), whose stored blobs are charged to that share too.
    pub fn caller_sharing(&self, token: &str, share: &str) -> Caller {
        let token: Arc<str> = Arc::from(token);
        if self.per_token == 0 {
            return Caller::unbounded_owned_by(token, share);
        }
        let owner: Arc<str> = Arc::from(share);
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(threads) = shares.get(share).and_then(Weak::upgrade) {
            return Caller { token, threads: Some(threads), owner };
        }
        // Shares with no work left are dropped as new ones come, so the map holds about the
        // shares with work in flight.
        if shares.len() >= 64 && shares.len().is_power_of_two() {
            shares.retain(|_, threads| threads.strong_count() > 0);
        }
        let threads = Arc::new(Semaphore::new(self.per_token));
        shares.insert(Arc::clone(&owner), Arc::downgrade(&threads));
        Caller { token, threads: Some(threads), owner }
    }
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

    #[test]
    fn a_tokens_work_shares_one_share_while_any_of_it_runs() {
        let shares = ThreadShares::new(3);
        let first = shares.caller("pr-1");
        let again = shares.caller("pr-1");
        let other = shares.caller("main");
        let same = |a: &Caller, b: &Caller| Arc::ptr_eq(a.threads().unwrap(), b.threads().unwrap());
        assert!(same(&first, &again) && !same(&first, &other));
        let running = first.threads().unwrap().clone().try_acquire_owned().unwrap();
        drop((first, again));
        // Work still running holds the share: a new call of the token gets what is left.
        assert_eq!(shares.caller("pr-1").threads().unwrap().available_permits(), 2);
        drop(running);
        assert_eq!(shares.caller("pr-1").threads().unwrap().available_permits(), 3);
        assert!(ThreadShares::new(0).caller("pr-1").threads().is_none());
        // Callers naming one share hold it together, under their own names.
        let (a, b) = (
            shares.caller_sharing("lease:j1/0/1", "lease:pr-1"),
            shares.caller_sharing("lease:j2/0/1", "lease:pr-1"),
        );
        assert!(same(&a, &b) && a.token.as_ref() == "lease:j1/0/1");
    }
}
