//! Jobs in RocksDB: `CF_JOBS`, job id → the job's record; the lease key in `CF_COUNTERS`.

use std::sync::Arc;

use proto::v1::JobStatus;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use super::{Durability, JobRecords, record};
use crate::db::{CF_COUNTERS, CF_JOBS, cf};
use crate::error::{Error, Result};

/// Where the server key lives in `CF_COUNTERS`.
const LEASE_KEY: &[u8] = b"scheduler.lease_key";

#[derive(Clone)]
pub struct RocksJobs {
    db: Arc<DB>,
}

impl RocksJobs {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Synced);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

impl JobRecords for RocksJobs {
    fn load(&self) -> Result<Vec<JobStatus>> {
        let jobs = cf(&self.db, CF_JOBS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(jobs, IteratorMode::Start) {
            let (key, value) = item?;
            let job = record::decode(&value)
                .map_err(|err| Error::Corrupt(format!("job {}: {err}", String::from_utf8_lossy(&key))))?;
            out.push(job);
        }
        Ok(out)
    }

    fn lease_key(&self) -> Result<[u8; 32]> {
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

    fn save(&self, jobs: &[&JobStatus], durability: Durability) -> Result<()> {
        let cf_jobs = cf(&self.db, CF_JOBS)?;
        let mut batch = WriteBatch::default();
        for job in jobs {
            batch.put_cf(cf_jobs, job.job_id.as_bytes(), record::encode(job));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch, durability)
    }

    fn delete(&self, job_id: &str) -> Result<()> {
        let jobs = cf(&self.db, CF_JOBS)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(jobs, job_id.as_bytes());
        self.write(batch, Durability::Buffered)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::store::record::{FORMAT_VERSION, tests::VERSION_0};

    #[test]
    fn a_store_written_before_storage_types_still_loads_and_is_rewritten_in_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let id = b"0018c6f2a1b-3f9a0c";
        db.put_cf(cf(&db, CF_JOBS).unwrap(), id, VERSION_0).unwrap();
        let jobs = RocksJobs::new(Arc::clone(&db));
        let loaded = jobs.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0], record::decode(VERSION_0).unwrap());
        jobs.save(&[&loaded[0]], Durability::Synced).unwrap();
        let stored = db.get_cf(cf(&db, CF_JOBS).unwrap(), id).unwrap().unwrap();
        assert_eq!(stored[0], FORMAT_VERSION);
        assert_eq!(jobs.load().unwrap(), loaded);
    }
}
