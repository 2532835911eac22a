//! Jobs in RocksDB: one record per job (`CF_JOBS`, job id → encoded `JobStatus`, tasks and
//! leases included), written on every change, so a restart of cached loses no task and every
//! lease keeps its deadline and attempt number (the fencing token).

use std::sync::Arc;

use prost::Message;
use proto::v1::JobStatus;
use rocksdb::{DB, IteratorMode};

use crate::db::{CF_JOBS, cf};
use crate::error::{Error, Result};

/// Finished jobs kept for `List` and late `Watch` calls; older ones are deleted.
pub const KEEP_FINISHED: usize = 1000;

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

    /// Writes the job's record. The WAL makes it survive a crash of the process; a power cut
    /// may lose the last writes, which costs re-running a task, never a wrong result.
    pub fn save(&self, job: &JobStatus) -> Result<()> {
        let jobs = cf(&self.db, CF_JOBS)?;
        self.db.put_cf(jobs, job.job_id.as_bytes(), job.encode_to_vec())?;
        Ok(())
    }

    pub fn delete(&self, job_id: &str) -> Result<()> {
        let jobs = cf(&self.db, CF_JOBS)?;
        self.db.delete_cf(jobs, job_id.as_bytes())?;
        Ok(())
    }
}
