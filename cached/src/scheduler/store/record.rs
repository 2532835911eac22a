//! Jobs as they are stored: types of their own, so that a change to the wire type
//! (`JobStatus`) is not a change of the disk format, and the one place that converts between
//! the two.
//!
//! Format versions, told apart by a record's first byte:
//! - 0, written before these types existed: the bare protobuf encoding of the wire
//!   `JobStatus`. It starts with the job id's tag (field 1: 0x0A); no protobuf message starts
//!   with a byte below 0x08, which would be field number 0.
//! - 1: the byte 0x01, then the protobuf encoding of [`StoredJob`].
//!
//! [`StoredJob`] and [`StoredTask`] keep the field numbers `JobStatus` and `TaskStatus` had
//! when jobs were first stored, so version 0 reads as them too. Their layout is frozen: a new
//! field takes a new number, a changed meaning takes a new version. The spec, results and
//! image blobs inside are still wire messages, as the client sent them and agents reported
//! them.

use prost::Message;
use proto::v1::{self, JobStatus, TaskStatus};

use crate::error::{Error, Result};

/// The format [`encode`] writes.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes below this cannot start a protobuf message (field number 0): a version byte.
const FIRST_PROTOBUF_BYTE: u8 = 0x08;

#[derive(Clone, PartialEq, Message)]
pub struct StoredJob {
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// `JobState`.
    #[prost(int32, tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub spec: Option<v1::JobSpec>,
    #[prost(message, repeated, tag = "4")]
    pub tasks: Vec<StoredTask>,
    #[prost(int64, tag = "5")]
    pub submitted_unix_ms: i64,
    #[prost(int64, tag = "6")]
    pub finished_unix_ms: i64,
    #[prost(string, tag = "7")]
    pub submitter: String,
    #[prost(message, optional, tag = "8")]
    pub image: Option<v1::OciBlob>,
    #[prost(string, tag = "9")]
    pub error: String,
    #[prost(int64, tag = "10")]
    pub reuse_revoked_unix_ms: i64,
    #[prost(uint32, tag = "11")]
    pub turn: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct StoredTask {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(message, optional, tag = "2")]
    pub target: Option<v1::Target>,
    /// `TaskState`.
    #[prost(int32, tag = "3")]
    pub state: i32,
    /// The fencing token's attempt number of the current or last lease.
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
    #[prost(string, tag = "5")]
    pub agent: String,
    #[prost(message, optional, tag = "6")]
    pub result: Option<v1::TaskResult>,
    #[prost(string, tag = "7")]
    pub error: String,
    #[prost(int64, tag = "8")]
    pub lease_until_unix_ms: i64,
    #[prost(int64, tag = "9")]
    pub started_unix_ms: i64,
    #[prost(int64, tag = "10")]
    pub finished_unix_ms: i64,
    /// `TaskKind`.
    #[prost(int32, tag = "11")]
    pub kind: i32,
}

/// The record of `job`, in the current format.
pub fn encode(job: &JobStatus) -> Vec<u8> {
    let stored = StoredJob::from(job);
    let mut out = Vec::with_capacity(1 + stored.encoded_len());
    out.push(FORMAT_VERSION);
    stored.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The job a record of any known format holds.
pub fn decode(record: &[u8]) -> Result<JobStatus> {
    let stored = match record.first() {
        Some(&FORMAT_VERSION) => StoredJob::decode(&record[1..]),
        Some(&first) if first >= FIRST_PROTOBUF_BYTE => StoredJob::decode(record),
        Some(&version) => return Err(Error::Corrupt(format!("job record of unknown format {version}"))),
        None => return Err(Error::Corrupt("empty job record".into())),
    };
    stored.map(JobStatus::from).map_err(|err| Error::Corrupt(format!("job record: {err}")))
}

// Both directions destructure and build every field by name: a field added to either side
// does not compile until it is converted here.

impl From<&JobStatus> for StoredJob {
    fn from(job: &JobStatus) -> Self {
        let JobStatus {
            job_id,
            state,
            spec,
            tasks,
            submitted_unix_ms,
            finished_unix_ms,
            submitter,
            image,
            error,
            reuse_revoked_unix_ms,
            turn,
        } = job.clone();
        Self {
            job_id,
            state,
            spec,
            tasks: tasks.into_iter().map(StoredTask::from).collect(),
            submitted_unix_ms,
            finished_unix_ms,
            submitter,
            image,
            error,
            reuse_revoked_unix_ms,
            turn,
        }
    }
}

impl From<StoredJob> for JobStatus {
    fn from(job: StoredJob) -> Self {
        let StoredJob {
            job_id,
            state,
            spec,
            tasks,
            submitted_unix_ms,
            finished_unix_ms,
            submitter,
            image,
            error,
            reuse_revoked_unix_ms,
            turn,
        } = job;
        Self {
            job_id,
            state,
            spec,
            tasks: tasks.into_iter().map(TaskStatus::from).collect(),
            submitted_unix_ms,
            finished_unix_ms,
            submitter,
            image,
            error,
            reuse_revoked_unix_ms,
            turn,
        }
    }
}

impl From<TaskStatus> for StoredTask {
    fn from(task: TaskStatus) -> Self {
        let TaskStatus {
            index,
            target,
            state,
            attempt,
            agent,
            result,
            error,
            lease_until_unix_ms,
            started_unix_ms,
            finished_unix_ms,
            kind,
        } = task;
        Self {
            index,
            target,
            state,
            attempt,
            agent,
            result,
            error,
            lease_until_unix_ms,
            started_unix_ms,
            finished_unix_ms,
            kind,
        }
    }
}

impl From<StoredTask> for TaskStatus {
    fn from(task: StoredTask) -> Self {
        let StoredTask {
            index,
            target,
            state,
            attempt,
            agent,
            result,
            error,
            lease_until_unix_ms,
            started_unix_ms,
            finished_unix_ms,
            kind,
        } = task;
        Self {
            index,
            target,
            state,
            attempt,
            agent,
            result,
            error,
            lease_until_unix_ms,
            started_unix_ms,
            finished_unix_ms,
            kind,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proto::v1::{JobState, TaskKind, TaskState};

    use super::*;

    /// A running job of two tasks (one succeeded with an image, one leased on its second
    /// attempt), as `JobStore::save` wrote it before jobs had a storage type of their own:
    /// the bytes RocksDB held, copied out of a store by that version.
    pub(crate) const VERSION_0: &[u8] = include_bytes!("../../../tests/fixtures/job-record-v0.bin");

    fn check_fixture_job(job: &JobStatus) {
        assert_eq!(job.job_id, "0018c6f2a1b-3f9a0c");
        assert_eq!(job.state, JobState::Running as i32);
        assert_eq!((job.submitted_unix_ms, job.finished_unix_ms), (1_700_000_000_000, 0));
        assert_eq!(job.submitter, "ci-token");
        let spec = job.spec.as_ref().expect("the spec");
        assert_eq!((spec.namespace.as_str(), spec.priority, spec.timeout_seconds), ("ci", 5, 600));
        assert_eq!(spec.targets.len(), 2);
        assert_eq!(spec.targets[1].cc, "aarch64-linux-gnu-gcc");
        assert_eq!(spec.image.as_ref().expect("the image spec").labels["org.example"], "x");
        assert_eq!(job.image.as_ref().expect("the job's image").size, 1241);
        let [done, leased] = job.tasks.as_slice() else { panic!("{} tasks", job.tasks.len()) };
        assert_eq!(
            (done.state, done.attempt, done.kind),
            (TaskState::Succeeded as i32, 1, TaskKind::Build as i32)
        );
        assert_eq!(done.target.as_ref().expect("a target").arch_level, "v3");
        let result = done.result.as_ref().expect("the result");
        assert_eq!((result.outputs[0].name.as_str(), result.duration_ms), ("app", 4321));
        assert!(result.image.as_ref().expect("the platform image").layer_cached);
        assert_eq!((leased.state, leased.attempt), (TaskState::Leased as i32, 2));
        assert_eq!((leased.agent.as_str(), leased.error.as_str()), ("agent-b", "lease expired"));
        assert_eq!(leased.lease_until_unix_ms, 1_700_000_030_000);
    }

    #[test]
    fn a_record_written_before_storage_types_still_reads() {
        check_fixture_job(&decode(VERSION_0).unwrap());
    }

    #[test]
    fn records_are_written_in_the_current_format_and_read_back() {
        let job = decode(VERSION_0).unwrap();
        let record = encode(&job);
        assert_eq!(record[0], FORMAT_VERSION);
        assert_eq!(decode(&record).unwrap(), job);
        assert_eq!(&record[1..], VERSION_0, "version 1 is version 0's layout behind a version byte");
    }

    #[test]
    fn records_of_an_unknown_format_are_refused() {
        let mut record = encode(&decode(VERSION_0).unwrap());
        record[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode(&record), Err(Error::Corrupt(_))));
        assert!(matches!(decode(&[]), Err(Error::Corrupt(_))));
    }
}
