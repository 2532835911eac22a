//! One page of Jobs.List, the same whichever backend keeps the jobs: newest first, at most
//! `limit` jobs and at most `max_bytes` of them encoded. A job is untrusted input of up to a
//! 64 KiB spec and whatever its agents reported, so a reply bounded by count alone could pass
//! `max_message_size` (tonic refuses it only once it is encoded) after copying all of it, in
//! the one-machine backend under the scheduler's lock. Here nothing is copied that is not sent.

use proto::v1::{JobSpec, JobStatus};

use crate::auth::NamespacePattern;

/// Which jobs a List asks for.
pub struct ListQuery<'a> {
    pub limit: usize,
    /// Finished jobs too.
    pub all: bool,
    /// Only jobs older than this one (a previous page's `next`).
    pub before: Option<&'a str>,
    /// Encoded bytes of the page's jobs in all.
    pub max_bytes: usize,
    /// The namespaces whose jobs the caller may see: a backend that can ask its store for
    /// those only does, so a caller's list costs what it may see, not what the store holds.
    pub namespaces: &'a [NamespacePattern],
}

/// Every namespace, for the scheduler's own queries.
pub const EVERY_NAMESPACE: &[NamespacePattern] = &[NamespacePattern::Any];

pub struct ListPage {
    pub jobs: Vec<JobStatus>,
    /// Where the next page starts (its `before`), when more jobs follow.
    pub next: Option<String>,
}

/// Builds a page from the jobs a query matches, offered newest first.
pub(super) struct Pager {
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    page: ListPage,
}

impl Pager {
    pub(super) fn new(query: &ListQuery<'_>) -> Self {
        Self {
            limit: query.limit,
            max_bytes: query.max_bytes,
            bytes: 0,
            page: ListPage { jobs: Vec::new(), next: None },
        }
    }

    /// Takes `job` into the page, copying it only if it fits; false once the page is full,
    /// `next` then pointing past the last job taken.
    pub(super) fn offer(&mut self, job: &JobStatus) -> bool {
        if self.page.jobs.len() >= self.limit {
            return self.full();
        }
        let size = listed_len(job);
        let copy = if self.bytes + size <= self.max_bytes {
            job.clone()
        } else if self.page.jobs.is_empty() {
            // Stopping here would stop every later page here too.
            oversized(job, size)
        } else {
            return self.full();
        };
        self.bytes += listed_len(&copy);
        self.page.jobs.push(copy);
        true
    }

    fn full(&mut self) -> bool {
        self.page.next = self.page.jobs.last().map(|job| job.job_id.clone());
        false
    }

    pub(super) fn finish(self) -> ListPage {
        self.page
    }
}

/// Bytes `job` adds to a reply: the job, its length and its field tag.
fn listed_len(job: &JobStatus) -> usize {
    let len = prost::Message::encoded_len(job);
    1 + prost::length_delimiter_len(len) + len
}

/// A job larger than a whole page, as a page can hold it: who, where, what state and when.
fn oversized(job: &JobStatus, bytes: usize) -> JobStatus {
    let namespace = job.spec.as_ref().map_or(String::new(), |spec| spec.namespace.clone());
    JobStatus {
        job_id: job.job_id.clone(),
        state: job.state,
        spec: Some(JobSpec { namespace, ..JobSpec::default() }),
        submitted_unix_ms: job.submitted_unix_ms,
        finished_unix_ms: job.finished_unix_ms,
        submitter: job.submitter.clone(),
        reuse_revoked_unix_ms: job.reuse_revoked_unix_ms,
        error: format!(
            "[cached: this job's status is {bytes} bytes, more than a List reply holds, so its spec \
             and tasks are left out here; `cachectl jobs watch {}` shows them]",
            job.job_id
        ),
        ..JobStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{JobState, TaskStatus};

    use super::*;

    fn job(id: &str, error_bytes: usize) -> JobStatus {
        JobStatus {
            job_id: id.to_owned(),
            state: JobState::Failed as i32,
            spec: Some(JobSpec { namespace: "ns".into(), ..JobSpec::default() }),
            tasks: vec![TaskStatus { error: "e".repeat(error_bytes), ..TaskStatus::default() }],
            ..JobStatus::default()
        }
    }

    fn page(jobs: &[JobStatus], limit: usize, max_bytes: usize) -> ListPage {
        let mut pager =
            Pager::new(&ListQuery { limit, all: true, before: None, max_bytes, namespaces: EVERY_NAMESPACE });
        for job in jobs {
            if !pager.offer(job) {
                break;
            }
        }
        pager.finish()
    }

    #[test]
    fn a_page_stops_at_its_bytes_and_says_where_the_rest_starts() {
        let jobs: Vec<JobStatus> = (0..10).map(|i| job(&format!("j{i}"), 1000)).collect();
        let listed = page(&jobs, 100, 3500);
        assert_eq!(listed.jobs.len(), 3);
        assert_eq!(listed.next.as_deref(), Some("j2"));
        let bytes: usize = listed.jobs.iter().map(listed_len).sum();
        assert!(bytes <= 3500, "{bytes}");
    }

    #[test]
    fn a_page_stops_at_its_limit_and_says_so_only_when_more_follow() {
        let jobs: Vec<JobStatus> = (0..3).map(|i| job(&format!("j{i}"), 10)).collect();
        assert_eq!(page(&jobs, 2, 1 << 20).next.as_deref(), Some("j1"));
        let all = page(&jobs, 3, 1 << 20);
        assert_eq!((all.jobs.len(), all.next), (3, None));
    }

    #[test]
    fn a_job_larger_than_a_page_is_listed_without_its_spec_and_tasks() {
        let jobs = [job("big", 10_000), job("small", 10)];
        let listed = page(&jobs, 100, 5000);
        let big = &listed.jobs[0];
        assert!(big.tasks.is_empty() && big.error.contains("cachectl jobs watch big"), "{big:?}");
        assert_eq!(big.spec.as_ref().unwrap().namespace, "ns");
        assert_eq!(listed.jobs.len(), 2, "the jobs after it still come");
    }
}
