//! A task's abort as each of its phases sees it. The agent sets the flag when cached aborts the
//! lease (the job was cancelled, the lease lost or expired) or when it releases the task on
//! shutdown. Every phase stops then, not only the go command: a job's tree or module proxy may
//! be huge, and nobody wants what it would still cost the agent's disk, network and CPU.
//!
//! Async phases race [`Cancel::cancelled`] and are dropped, which ends their requests. Blocking
//! phases (writing a tree, extracting module zips) poll [`Cancel::is_cancelled`] between files
//! and are waited for, so nothing writes into the task's directory while it is removed.

use std::future::Future;

use tokio::sync::watch;

use crate::TaskError;

#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

impl Cancel {
    /// Set when the sender sends `true`.
    pub fn new(flag: watch::Receiver<bool>) -> Self {
        Self(flag)
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    pub fn check(&self) -> Result<(), TaskError> {
        if self.is_cancelled() { Err(TaskError::Cancelled) } else { Ok(()) }
    }

    /// Resolves once the task is aborted; never when the sender is gone without aborting it.
    pub async fn cancelled(&self) {
        let mut flag = self.0.clone();
        if flag.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `work`'s result, or [`TaskError::Cancelled`] as soon as the task is aborted, `work`
    /// dropped unfinished.
    pub async fn guard<T>(&self, work: impl Future<Output = Result<T, TaskError>>) -> Result<T, TaskError> {
        tokio::select! {
            biased;
            () = self.cancelled() => Err(TaskError::Cancelled),
            result = work => result,
        }
    }

    /// The flag itself, for the build library, which kills its processes when it is set.
    pub fn flag(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_abort_ends_guarded_work_at_once_and_a_dropped_sender_never_does() {
        let (abort, flag) = watch::channel(false);
        let cancel = Cancel::new(flag);
        assert!(cancel.check().is_ok());
        let stuck = cancel.guard(std::future::pending::<Result<(), TaskError>>());
        let aborting = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            abort.send(true).unwrap();
        };
        let (result, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(stuck, aborting) })
                .await
                .expect("the guarded work outlived the abort");
        assert!(matches!(result, Err(TaskError::Cancelled)));
        assert!(matches!(cancel.check(), Err(TaskError::Cancelled)));

        let (gone, flag) = watch::channel(false);
        drop(gone);
        let cancel = Cancel::new(flag);
        let done = cancel.guard(async { Ok(7) }).await;
        assert!(matches!(done, Ok(7)));
        assert!(tokio::time::timeout(Duration::from_millis(50), cancel.cancelled()).await.is_err());
    }
}
