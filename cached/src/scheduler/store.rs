//! Where jobs are kept ([`JobRecords`]): one record per job, tasks and leases included,
//! written on every change, so a restart of cached loses no task and every lease keeps its
//! deadline and attempt number (the fencing token). Beside them, the 32-byte key lease
//! secrets and cache credentials are derived from ([`crate::auth::lease`]), made at first
//! start, so both survive a restart as leases do. RocksDB holds them today ([`RocksJobs`]).
//!
//! What is synced, and so survives a power cut once acknowledged ([`Durability::Synced`]): a
//! submitted job (before Submit answers), a lease (before the agent is sent it), a completion
//! (before Complete answers), a cancellation (before Cancel answers), and the server key;
//! all but the key are written under the scheduler's lock and synced after it
//! ([`JobRecords::sync`]; leases when the lock is let go, before they are sent), so that no
//! disk sync holds every other call of the queue, and a sync holds every write before it (a
//! Submit whose lease was synced needs no sync of its own). What
//! is not ([`Durability::Buffered`], in the WAL but not yet on disk): heartbeat lease
//! extensions, a task marked started, leases the sweeper expired and jobs it timed out, and
//! deleting old finished jobs. Losing those after a power cut costs at most a requeue (a lease
//! that looks older than it was expires again) or a timeout noticed again, never a wrong
//! result. A crash of the process alone loses nothing: the WAL is written before each answer.

pub mod record;
mod rocks;

use proto::v1::JobStatus;

pub use self::rocks::RocksJobs;
use crate::error::Result;

/// Finished jobs kept for `List` and late `Watch` calls; older ones are deleted.
pub const KEEP_FINISHED: usize = 1000;

/// Whether a write must be on disk before the caller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning: what a client is told is stored.
    Synced,
    /// In the WAL; a power cut may lose it.
    Buffered,
}

/// The scheduler's records. Every method blocks briefly. The scheduler writes under its lock,
/// so that what is stored follows the order of the changes, and syncs after it.
pub trait JobRecords: Send + Sync + 'static {
    /// Every stored job, oldest first (ids sort by submission time).
    fn load(&self) -> Result<Vec<JobStatus>>;

    /// The server key of lease credentials; made (32 random bytes, durably) at first start.
    fn lease_key(&self) -> Result<[u8; 32]>;

    /// Writes the records of `jobs` at once.
    fn save(&self, jobs: &[&JobStatus], durability: Durability) -> Result<()>;

    fn delete(&self, job_id: &str) -> Result<()>;

    /// Makes every write before it durable, [`Durability::Buffered`] ones included: a change
    /// written under the scheduler's lock is synced after it, so the lock is not held for a
    /// disk sync.
    fn sync(&self) -> Result<()>;
}
