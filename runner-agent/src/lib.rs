//! runner-agent: the worker side of cached's remote execution.
//!
//! Read in this order: [`agent`] (the lease stream: register, heartbeat, take tasks, abort,
//! drain on SIGTERM), [`task`] (one task: sources, module proxy, build, outputs, completion,
//! each phase stopped by an abort through [`cancel`]),
//! [`sandbox`] (the build users builds run as, and the start-up checks they need),
//! [`cgroup`] (each task's control group: its memory, process and CPU limits),
//! [`taskdir`] (a task's own directories), [`workspace`] (checked trees from the CAS into a
//! directory, never through a link) through the [`blobcache`] (hard links), [`modules`] (module
//! zips extracted once per agent and hard-linked into each task's module cache), [`build`] (the go
//! build, through `cached_gobuild`, its processes through `cached_gobuild::exec`), [`credential`]
//! (the lease's cache credential, on a socket only the build's bridge reads), [`image`] (a target's platform image and a job's image
//! index, through `cached_oci::job`), [`caps`] (what this machine can build).

#![forbid(unsafe_code)]

pub mod agent;
pub mod blobcache;
pub mod build;
pub mod cancel;
pub mod caps;
pub mod cgroup;
pub mod credential;
pub mod image;
pub mod modules;
mod quiet;
pub mod sandbox;
pub mod startup;
pub mod task;
pub mod taskdir;
mod trouble;
pub mod workspace;

/// Errors of one task, split by whether another attempt could succeed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The build itself failed (compile error, missing package): the same inputs fail again.
    #[error("{0}")]
    Build(String),
    /// Fetching inputs, uploading outputs, the machine: another agent may succeed.
    #[error("{0}")]
    Infrastructure(String),
    /// The lease was aborted (cancelled, expired) or the agent is shutting down.
    #[error("cancelled")]
    Cancelled,
}

impl From<cached_client::error::ClientError> for TaskError {
    fn from(err: cached_client::error::ClientError) -> Self {
        Self::Infrastructure(err.to_string())
    }
}
