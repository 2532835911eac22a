//! Reusing finished jobs: a submission whose spec matches a job that succeeded, and whose
//! results are all still in the CAS, is answered with that job and queues nothing.
//!
//! Why this is safe to share: a job's results are a function of its spec. The spec names its
//! sources, dependencies and the image recipe by content digest, and it names the namespace,
//! so a match is the same request in the same namespace, answered by agents cached trusts;
//! the submitter cannot influence what an earlier job produced. Only what the submitter cannot
//! change about the outcome is left out of the key: priority and timeout. The spec is keyed
//! after validation (which normalises it), so two spellings of one request match, and a
//! request the current settings refuse is refused before any lookup.
//!
//! What the key cannot see is the action cache the agents built through. When an admin purges a
//! namespace because it held entries it should not have, every job of it submitted before may
//! have read them: the purge revokes their reuse, in their stored records (and, on PostgreSQL,
//! out of the key index), so no replica, now or after a restart, answers with them.
//!
//! Which jobs are known: those submitted through this process, at start the finished jobs the
//! scheduler keeps, and with several replicas on one database, the finished jobs the database
//! holds under the key (whichever replica they were submitted through).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use proto::Digest;
use proto::v1::{JobSpec, JobState, JobStatus};

use super::backend::SchedulerBackend;
use super::listing::ListQuery;
use super::store::KEEP_FINISHED;
use crate::cas::Cas;
use crate::error::{Error, Result};

/// What identifies a job's outcome: BLAKE3 of its validated spec less priority and timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobKey([u8; 32]);

impl JobKey {
    pub fn of(spec: &JobSpec) -> Self {
        let mut keyed = spec.clone();
        keyed.priority = 0;
        keyed.timeout_seconds = 0;
        // prost encodes a map in hash order: the labels are hashed apart, sorted.
        let labels: BTreeMap<String, String> = keyed
            .image
            .as_mut()
            .map(|image| std::mem::take(&mut image.labels).into_iter().collect())
            .unwrap_or_default();
        let mut hasher = blake3::Hasher::new_derive_key("cached 2026 job spec key v1");
        let encoded = keyed.encode_to_vec();
        hasher.update(&(encoded.len() as u64).to_le_bytes()).update(&encoded);
        for (name, value) in &labels {
            for part in [name, value] {
                hasher.update(&(part.len() as u64).to_le_bytes()).update(part.as_bytes());
            }
        }
        Self(*hasher.finalize().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The jobs submitted most recently, by key; at most `KEEP_FINISHED`, as the scheduler
/// forgets older finished jobs anyway.
#[derive(Default)]
struct Recent {
    jobs: HashMap<JobKey, String>,
    order: VecDeque<JobKey>,
}

impl Recent {
    fn insert(&mut self, key: JobKey, job_id: String) {
        if self.jobs.insert(key, job_id).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEEP_FINISHED {
            if let Some(oldest) = self.order.pop_front() {
                self.jobs.remove(&oldest);
            }
        }
    }

    fn forget(&mut self, key: &JobKey) {
        self.jobs.remove(key);
        self.order.retain(|known| known != key);
    }
}

pub struct FinishedJobs {
    cas: Arc<Cas>,
    recent: Mutex<Recent>,
}

impl FinishedJobs {
    pub fn new(cas: Arc<Cas>) -> Self {
        Self { cas, recent: Mutex::new(Recent::default()) }
    }

    /// Learns the succeeded jobs the scheduler kept from before this start, oldest first so
    /// the newest of two equal specs wins.
    pub async fn learn_kept(&self, scheduler: &dyn SchedulerBackend) -> Result<()> {
        let everything = |_: &JobStatus| true;
        // Once at start, with nobody waiting on a reply: every kept job in one page.
        let query = ListQuery {
            limit: KEEP_FINISHED,
            all: true,
            before: None,
            max_bytes: usize::MAX,
            namespaces: super::listing::EVERY_NAMESPACE,
        };
        let mut kept = scheduler.list(&query, &everything).await?.jobs;
        kept.retain(|job| job.state == JobState::Succeeded as i32);
        let mut recent = self.lock();
        for job in kept.into_iter().rev() {
            if let Some(spec) = &job.spec {
                recent.insert(JobKey::of(spec), job.job_id);
            }
        }
        Ok(())
    }

    pub fn remember(&self, key: JobKey, job_id: &str) {
        self.lock().insert(key, job_id.to_owned());
    }

    /// The succeeded job with this key whose every result is still in the CAS, if any: the
    /// one this process knows, else those the scheduler's database holds. A known job that
    /// failed, was deleted or lost a result to eviction is forgotten.
    pub async fn find(&self, scheduler: &dyn SchedulerBackend, key: JobKey) -> Result<Option<JobStatus>> {
        let known = self.lock().jobs.get(&key).cloned();
        if let Some(job_id) = known {
            let job = scheduler.get(&job_id).await?;
            // Still running: a second identical submission builds on its own rather than
            // share a job the first submitter may cancel.
            if job.as_ref().is_some_and(|job| job.finished_unix_ms == 0) {
                return Ok(None);
            }
            if let Some(job) = self.usable(job, key).await? {
                return Ok(Some(job));
            }
            self.lock().forget(&key);
        }
        for job_id in scheduler.finished_with_key(&key).await? {
            if let Some(job) = self.usable(scheduler.get(&job_id).await?, key).await? {
                self.remember(key, &job.job_id);
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// The job, if it succeeded under this key, no purge revoked it, and every result is still in
    /// the CAS.
    async fn usable(&self, job: Option<JobStatus>, key: JobKey) -> Result<Option<JobStatus>> {
        let Some(job) = job else { return Ok(None) };
        let usable = job.state == JobState::Succeeded as i32
            && job.reuse_revoked_unix_ms == 0
            && job.spec.as_ref().is_some_and(|spec| JobKey::of(spec) == key)
            && self.results_present(&job).await?;
        Ok(usable.then_some(job))
    }

    async fn results_present(&self, job: &JobStatus) -> Result<bool> {
        let digests = result_digests(job)?;
        if digests.is_empty() {
            return Ok(false);
        }
        let present = self.cas.contains(digests.clone()).await?.into_iter().all(|present| present);
        if present {
            // The submitter reusing the job relies on its results as much as the first one did.
            self.cas.claim(digests).await?;
        }
        Ok(present)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every CAS blob a job's submitter fetches: the outputs of each task, the blobs of each
/// platform image and the image index.
fn result_digests(job: &JobStatus) -> Result<Vec<Digest>> {
    let mut wire = Vec::new();
    for result in job.tasks.iter().filter_map(|task| task.result.as_ref()) {
        wire.extend(result.outputs.iter().map(|output| output.digest.as_ref()));
        if let Some(image) = &result.image {
            for blob in [&image.manifest, &image.config, &image.layer] {
                wire.push(blob.as_ref().and_then(|blob| blob.cas.as_ref()));
            }
        }
        wire.extend(result.index.as_ref().map(|index| index.cas.as_ref()));
    }
    wire.extend(job.image.as_ref().map(|index| index.cas.as_ref()));
    wire.into_iter().map(|digest| Digest::from_wire(digest).map_err(Error::from)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::ImageSpec;

    fn spec() -> JobSpec {
        JobSpec {
            source_root: Some(Digest::of(b"tree").to_wire()),
            namespace: "team".into(),
            packages: vec!["./cmd/app".into()],
            ..JobSpec::default()
        }
    }

    #[test]
    fn priority_and_timeout_do_not_change_the_key_and_the_rest_does() {
        let key = JobKey::of(&spec());
        assert_eq!(JobKey::of(&JobSpec { priority: 9, timeout_seconds: 60, ..spec() }), key);
        for different in [
            JobSpec { namespace: "other".into(), ..spec() },
            JobSpec { source_root: Some(Digest::of(b"changed").to_wire()), ..spec() },
            JobSpec { build_flags: vec!["-trimpath".into()], ..spec() },
            JobSpec { image: Some(ImageSpec::default()), ..spec() },
        ] {
            assert_ne!(JobKey::of(&different), key, "{different:?}");
        }
    }

    #[test]
    fn labels_key_alike_in_any_order() {
        let labelled = |pairs: &[(&str, &str)]| JobSpec {
            image: Some(ImageSpec {
                labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                ..ImageSpec::default()
            }),
            ..spec()
        };
        let many: Vec<(String, String)> = (0..32).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let forward: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
        assert_eq!(JobKey::of(&labelled(&forward)), JobKey::of(&labelled(&backward)));
        // A label moved from name to value is another label.
        assert_ne!(JobKey::of(&labelled(&[("ab", "c")])), JobKey::of(&labelled(&[("a", "bc")])));
    }

    #[test]
    fn the_index_keeps_the_newest_jobs_only() {
        let mut recent = Recent::default();
        for i in 0..KEEP_FINISHED + 5 {
            let key = JobKey::of(&JobSpec { packages: vec![format!("./p{i}")], ..spec() });
            recent.insert(key, format!("job-{i}"));
        }
        assert_eq!(recent.jobs.len(), KEEP_FINISHED);
        assert_eq!(recent.order.len(), KEEP_FINISHED);
        let first = JobKey::of(&JobSpec { packages: vec!["./p0".into()], ..spec() });
        assert!(!recent.jobs.contains_key(&first));
    }
}
