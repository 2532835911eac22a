//! Jobs in RocksDB: one record per job (`CF_JOBS`, job id → encoded `JobStatus`, tasks and
//! leases included), written on every change, so a restart of cached loses no task and every
//! lease keeps its deadline and attempt number (the fencing token). Beside them, in
//! `CF_COUNTERS`, the 32-byte key lease secrets and cache credentials are derived from
//! ([`crate::auth::lease`]), made at first start, so both survive a restart as leases do.
//!
//! What is synced, and so survives a power cut once acknowledged ([`Durability::Synced`]): a
//! submitted job (before Submit answers), a lease (before the agent is sent it), a completion
//! (before Complete answers), a cancellation (before Cancel answers), and the server key. What
//! is not ([`Durability::Buffered`], in the WAL but not yet on disk): heartbeat lease
//! extensions, a task marked started, leases the sweeper expired and jobs it timed out, and
//! deleting old finished jobs. Losing those after a power cut costs at most a requeue (a lease
//! that looks older than it was expires again) or a timeout noticed again, never a wrong
//! result. A crash of the process alone loses nothing: the WAL is written before each answer.

use std::sync::Arc;

use prost::Message;
use proto::v1::JobStatus;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{CF_COUNTERS, CF_JOBS, cf};
use crate::error::{Error, Result};

/// Finished jobs kept for `List` and late `Watch` calls; older ones are deleted.
pub const KEEP_FINISHED: usize = 1000;

/// Where the server key lives in `CF_COUNTERS`.
const LEASE_KEY: &[u8] = b"scheduler.lease_key";

/// Whether a write must be on disk before the caller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning: what a client is told is stored.
    Synced,
    /// In the WAL; a power cut may lose it.
    Buffered,
}

#[derive(Clone)]
pub struct JobStore {
    db: Arc<DB>,
}

impl JobStore {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    /// Every stored job, oldest first (ids sort by submission time).
    pub fn load(&self) -> Result<Vec<JobStatus>> {
        let jobs = cf(&self.db, CF_JOBS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(jobs, IteratorMode::Start) {
            let (key, value) = item?;
            let job = JobStatus::decode(value.as_ref()).map_err(|err| {
                Error::Corrupt(format!("job record {}: {err}", String::from_utf8_lossy(&key)))
            })?;
            out.push(job);
        }
        Ok(out)
    }

    /// The server key of lease credentials; made (32 random bytes, synced) at first start.
    pub fn lease_key(&self) -> Result<[u8; 32]> {
        let counters = cf(&self.db, CF_COUNTERS)?;
        if let Some(stored) = self.db.get_cf(counters, LEASE_KEY)? {
            return <[u8; 32]>::try_from(stored.as_slice())
                .map_err(|_| Error::Corrupt(format!("the lease key is {} bytes, not 32", stored.len())));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|err| Error::Internal(format!("the system random source failed: {err}")))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(counters, LEASE_KEY, key);
        self.write(batch, Durability::Synced)?;
        Ok(key)
    }

    /// Writes the records of `jobs` in one batch.
    pub fn save<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a JobStatus>,
        durability: Durability,
    ) -> Result<()> {
        let cf_jobs = cf(&self.db, CF_JOBS)?;
        let mut batch = WriteBatch::default();
        for job in jobs {
            batch.put_cf(cf_jobs, job.job_id.as_bytes(), job.encode_to_vec());
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch, durability)
    }

    pub fn delete(&self, job_id: &str) -> Result<()> {
        let jobs = cf(&self.db, CF_JOBS)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(jobs, job_id.as_bytes());
        self.write(batch, Durability::Buffered)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Synced);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}
