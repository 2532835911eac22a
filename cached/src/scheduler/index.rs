//! Where every job stands, kept in step with each change so that dispatch, the open-job caps
//! and pruning never scan every job and task: the queued tasks in dispatch order, the tasks
//! leased per agent, the unfinished jobs per namespace, and the finished jobs oldest first.
//!
//! After a job changes, [`Index::update`] takes back what the job contributed before (each job
//! remembers its own entries) and records it as it is now, at a cost that depends on that job's
//! tasks only. The invariant, checked by the tests: the index always equals
//! [`Index::rebuild`] of the jobs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use proto::v1::{JobStatus, TaskState};

use super::{is_index, job_finished, job_namespace};

/// A queued task in dispatch order: index tasks first (they finish jobs, in milliseconds),
/// then by priority, then by the job's turn among its submitter's (`JobStatus.turn`), then
/// oldest job first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    pub(super) builds: bool,
    pub(super) negated_priority: i64,
    pub(super) turn: u32,
    pub(super) submitted_unix_ms: i64,
    pub(super) job_id: String,
    pub(super) index: u32,
}

/// What one job put in the index.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entry {
    queued: Vec<QueueKey>,
    /// (agent, is an index task) of each leased task.
    leased: Vec<(String, bool)>,
    /// The namespace and the submitter it counts against while unfinished, and its turn.
    open: Option<(String, String, u32)>,
    finished: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Index {
    queued: BTreeSet<QueueKey>,
    /// Leased build tasks per agent.
    builds: HashMap<String, usize>,
    /// Leased index tasks per agent.
    assembling: HashMap<String, usize>,
    open: HashMap<String, usize>,
    /// The turns of the unfinished jobs, in all and by submitter (as counts of each turn),
    /// and of those with a task leased now (being served).
    turns: BTreeMap<u32, usize>,
    serving_turns: BTreeMap<u32, usize>,
    turns_by_submitter: HashMap<String, BTreeMap<u32, usize>>,
    open_total: usize,
    /// Finished jobs by id, which sorts by submission.
    finished: BTreeSet<String>,
    entries: HashMap<String, Entry>,
}

impl Index {
    /// The index of `jobs` made from scratch.
    pub(super) fn rebuild(jobs: &BTreeMap<String, JobStatus>) -> Self {
        let mut index = Self::default();
        for job in jobs.values() {
            index.update(job);
        }
        index
    }

    /// Records `job` as it is now.
    pub(super) fn update(&mut self, job: &JobStatus) {
        self.remove(&job.job_id);
        let mut entry = Entry::default();
        if job_finished(job) {
            self.finished.insert(job.job_id.clone());
            entry.finished = true;
        } else {
            let namespace = job_namespace(job).to_owned();
            *self.open.entry(namespace.clone()).or_default() += 1;
            *self.turns.entry(job.turn).or_default() += 1;
            *self
                .turns_by_submitter
                .entry(job.submitter.clone())
                .or_default()
                .entry(job.turn)
                .or_default() += 1;
            self.open_total += 1;
            entry.open = Some((namespace, job.submitter.clone(), job.turn));
            let priority = job.spec.as_ref().map_or(0, |spec| spec.priority);
            for task in &job.tasks {
                if task.state == TaskState::Queued as i32 {
                    let key = QueueKey {
                        builds: !is_index(task),
                        negated_priority: -i64::from(priority),
                        turn: job.turn,
                        submitted_unix_ms: job.submitted_unix_ms,
                        job_id: job.job_id.clone(),
                        index: task.index,
                    };
                    self.queued.insert(key.clone());
                    entry.queued.push(key);
                } else if task.state == TaskState::Leased as i32 {
                    let counts = if is_index(task) { &mut self.assembling } else { &mut self.builds };
                    *counts.entry(task.agent.clone()).or_default() += 1;
                    entry.leased.push((task.agent.clone(), is_index(task)));
                }
            }
            if !entry.leased.is_empty() {
                *self.serving_turns.entry(job.turn).or_default() += 1;
            }
        }
        self.entries.insert(job.job_id.clone(), entry);
    }

    /// Forgets the job (deleted).
    pub(super) fn remove(&mut self, job_id: &str) {
        let Some(entry) = self.entries.remove(job_id) else { return };
        for key in &entry.queued {
            self.queued.remove(key);
        }
        for (agent, index_task) in &entry.leased {
            let counts = if *index_task { &mut self.assembling } else { &mut self.builds };
            decrement(counts, agent);
        }
        if let Some((namespace, submitter, turn)) = &entry.open {
            if !entry.leased.is_empty() {
                forget_turn(&mut self.serving_turns, *turn);
            }
            decrement(&mut self.open, namespace);
            forget_turn(&mut self.turns, *turn);
            if let Some(turns) = self.turns_by_submitter.get_mut(submitter) {
                forget_turn(turns, *turn);
                if turns.is_empty() {
                    self.turns_by_submitter.remove(submitter);
                }
            }
            self.open_total -= 1;
        }
        if entry.finished {
            self.finished.remove(job_id);
        }
    }

    /// The first queued task after `after` (from the start without).
    pub(super) fn next_queued(&self, after: Option<&QueueKey>) -> Option<&QueueKey> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.queued.range((start, Bound::Unbounded)).next()
    }

    /// The job's queued tasks, in dispatch order.
    pub(super) fn queued_of(&self, job_id: &str) -> Vec<QueueKey> {
        let mut keys = self.entries.get(job_id).map(|entry| entry.queued.clone()).unwrap_or_default();
        keys.sort();
        keys
    }

    pub(super) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// The submission time of the oldest job with a queued task (the queue is ordered by
    /// kind and priority first, so this looks at each queued task).
    pub(super) fn oldest_queued_submitted_ms(&self) -> Option<i64> {
        self.queued.iter().map(|key| key.submitted_unix_ms).min()
    }

    pub(super) fn leased_builds(&self, agent: &str) -> u32 {
        count(&self.builds, agent)
    }

    pub(super) fn leased_index_tasks(&self, agent: &str) -> u32 {
        count(&self.assembling, agent)
    }

    /// Unfinished jobs in `namespace`.
    pub(super) fn open_in(&self, namespace: &str) -> usize {
        self.open.get(namespace).copied().unwrap_or(0)
    }

    pub(super) fn open_by(&self, submitter: &str) -> usize {
        self.turns_by_submitter.get(submitter).map_or(0, |turns| turns.values().sum())
    }

    /// The turn the queue has reached: the lowest of the jobs being served, or, with none,
    /// the lowest unfinished (a job no agent takes never holds it back while others run).
    pub(super) fn queue_head(&self) -> Option<u32> {
        self.serving_turns.keys().next().or_else(|| self.turns.keys().next()).copied()
    }

    /// The highest turn of the submitter's unfinished jobs.
    pub(super) fn latest_turn_of(&self, submitter: &str) -> Option<u32> {
        self.turns_by_submitter.get(submitter)?.keys().next_back().copied()
    }

    /// Submitters with unfinished jobs.
    pub(super) fn open_submitters(&self) -> usize {
        self.turns_by_submitter.len()
    }

    pub(super) fn open_total(&self) -> usize {
        self.open_total
    }

    pub(super) fn finished_len(&self) -> usize {
        self.finished.len()
    }

    pub(super) fn oldest_finished(&self) -> Option<&String> {
        self.finished.first()
    }
}

fn decrement(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

fn forget_turn(turns: &mut BTreeMap<u32, usize>, turn: u32) {
    if let Some(count) = turns.get_mut(&turn) {
        *count -= 1;
        if *count == 0 {
            turns.remove(&turn);
        }
    }
}

fn count(counts: &HashMap<String, usize>, key: &str) -> u32 {
    counts.get(key).map_or(0, |count| u32::try_from(*count).unwrap_or(u32::MAX))
}
