//! Jobs.Watch across replicas. A watch starts from a snapshot of the job and the sequence
//! number of its last event, read in one statement (so one snapshot of the database). The jobs
//! watched on a replica are fed by one reader ([`PgScheduler::run_feeds`]), which asks for the
//! new events of all of them in one query, whenever this replica changes something and every
//! [`POLL`] for what others did, and hands each to that job's watchers. So the database sees
//! one query per replica and poll, however many watches are open (a token may hold 1024), and a
//! change wakes the reader, not every watcher. A job's events are written under its row lock,
//! so their sequence numbers follow its changes. A watcher that falls [`BACKLOG`] events behind
//! is sent a fresh snapshot instead of what it missed, as with the in-memory backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use proto::v1::job_event::Kind;
use proto::v1::{JobEvent, JobStatus};
use tokio::sync::broadcast;

use super::super::backend::JobEvents;
use super::super::{now_ms, unknown_job};
use super::{POLL, PgScheduler, RETRY, rows};
use crate::error::{Error, Result};

/// Events read per query.
const PAGE: i64 = 1024;
/// Events a watcher may be behind before it gets a snapshot instead.
const BACKLOG: usize = 1024;

/// An event with its sequence number, shared by the watchers it goes to.
type Fed = Arc<(i64, JobEvent)>;

/// The jobs watched here: how far each one's events were read, and its watchers.
#[derive(Default)]
pub(super) struct Feeds(Mutex<HashMap<String, Feed>>);

struct Feed {
    after: i64,
    sender: broadcast::Sender<Fed>,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feed>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of `job_id`'s events from now on, and the sequence number up to which they
    /// were read before it (a new feed starts at `from`).
    fn subscribe(&self, job_id: &str, from: i64) -> (broadcast::Receiver<Fed>, i64) {
        let mut feeds = self.lock();
        let feed = feeds
            .entry(job_id.to_owned())
            .or_insert_with(|| Feed { after: from, sender: broadcast::channel(BACKLOG).0 });
        (feed.sender.subscribe(), feed.after)
    }

    /// The jobs to read and from where; feeds nobody listens to any more are dropped.
    fn cursors(&self) -> (Vec<String>, Vec<i64>) {
        let mut feeds = self.lock();
        feeds.retain(|_, feed| feed.sender.receiver_count() > 0);
        feeds.iter().map(|(job_id, feed)| (job_id.clone(), feed.after)).unzip()
    }

    /// Hands events (in sequence order) to their jobs' watchers; one that could not be read
    /// is passed over.
    fn deliver(&self, events: Vec<(String, i64, Option<JobEvent>)>) {
        let mut feeds = self.lock();
        for (job_id, seq, event) in events {
            if let Some(feed) = feeds.get_mut(&job_id).filter(|feed| seq > feed.after) {
                feed.after = seq;
                if let Some(event) = event {
                    let _ = feed.sender.send(Arc::new((seq, event)));
                }
            }
        }
    }
}

impl PgScheduler {
    /// Reads the new events of the jobs watched here until shutdown.
    pub(super) async fn run_feeds(self: Arc<Self>) {
        let mut changes = self.changes.subscribe();
        let mut stop = self.stop.subscribe();
        loop {
            let stopped = tokio::select! {
                _ = changes.changed() => false,
                () = tokio::time::sleep(POLL) => false,
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if stopped {
                return;
            }
            if let Err(err) = self.read_feeds().await {
                tracing::debug!(error = %err, "watches cannot read events; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    async fn read_feeds(&self) -> Result<()> {
        loop {
            let (jobs, after) = self.feeds.cursors();
            if jobs.is_empty() {
                return Ok(());
            }
            let client = self.db.client().await?;
            let rows = client
                .query(
                    // Each watched job's next events through its (job_id, seq) index, never a
                    // walk of every job's events in seq order.
                    "SELECT w.job_id, e.seq, e.event FROM unnest($1::text[], $2::int8[]) AS w(job_id, after) \
                     CROSS JOIN LATERAL (SELECT seq, event FROM job_events \
                         WHERE job_id = w.job_id AND seq > w.after ORDER BY seq LIMIT $3) e \
                     ORDER BY e.seq LIMIT $3",
                    &[&jobs, &after, &PAGE],
                )
                .await?;
            let full = rows.len() as i64 == PAGE;
            // A row that does not decode stalls no watch, its job's or another's.
            let events = rows
                .iter()
                .map(|row| {
                    let job_id: String = row.get(0);
                    let event = decode(&job_id, row.get(2))
                        .inspect_err(
                            |err| tracing::warn!(job = %job_id, error = %err, "an event was passed over"),
                        )
                        .ok();
                    (job_id, row.get(1), event)
                })
                .collect();
            self.feeds.deliver(events);
            if !full {
                return Ok(());
            }
        }
    }

    /// The job and the sequence number of its last event, as of one moment.
    async fn watch_start(&self, job_id: &str) -> Result<(JobStatus, i64)> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                "SELECT record, (SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = $1) \
                 FROM jobs WHERE job_id = $1",
                &[&job_id],
            )
            .await?
            .ok_or_else(|| unknown_job(job_id))?;
        Ok((rows::decode(job_id, row.get(0))?, row.get(1)))
    }

    /// `job_id`'s events after `after` up to `until`, for a watcher that joined a feed ahead of
    /// its snapshot.
    async fn events_between(&self, job_id: &str, mut after: i64, until: i64) -> Result<Vec<(i64, JobEvent)>> {
        let client = self.db.client().await?;
        let mut events = Vec::new();
        while after < until {
            let rows = client
                .query(
                    "SELECT seq, event FROM job_events WHERE job_id = $1 AND seq > $2 AND seq <= $3 \
                     ORDER BY seq LIMIT $4",
                    &[&job_id, &after, &until, &PAGE],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            for row in &rows {
                events.push((row.get(0), decode(job_id, row.get(1))?));
            }
        }
        Ok(events)
    }
}

fn decode(job_id: &str, bytes: &[u8]) -> Result<JobEvent> {
    JobEvent::decode(bytes).map_err(|err| Error::Corrupt(format!("an event of job {job_id}: {err}")))
}

/// One watcher: what it has been sent up to, and what it has yet to send.
struct Watcher {
    scheduler: Arc<PgScheduler>,
    job_id: String,
    last: i64,
    pending: std::collections::VecDeque<JobEvent>,
    receiver: broadcast::Receiver<Fed>,
}

pub(super) async fn watch(scheduler: Arc<PgScheduler>, job_id: &str) -> Result<(JobStatus, JobEvents)> {
    let (job, start) = scheduler.watch_start(job_id).await?;
    let (receiver, fed_from) = scheduler.feeds.subscribe(job_id, start);
    // What the feed had read before this watcher joined, past its snapshot.
    let missed = scheduler.events_between(job_id, start, fed_from).await?;
    let last = missed.last().map_or(start, |(seq, _)| *seq);
    let pending = missed.into_iter().map(|(_, event)| event).collect();
    let watcher = Watcher { scheduler, job_id: job_id.to_owned(), last, pending, receiver };
    let events = futures::stream::unfold(watcher, |mut watcher| async move {
        let event = watcher.next().await?;
        Some((event, watcher))
    });
    Ok((job, Box::pin(events)))
}

impl Watcher {
    async fn next(&mut self) -> Option<JobEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            match self.receiver.recv().await {
                Ok(fed) if fed.0 > self.last => {
                    self.last = fed.0;
                    return Some(fed.1.clone());
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !self.resync().await {
                        return None;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Past the backlog: the job as it is now, instead of the events missed; false once the
    /// job is gone (pruned meanwhile), which ends the watch.
    async fn resync(&mut self) -> bool {
        loop {
            match self.scheduler.watch_start(&self.job_id).await {
                Ok((job, last)) => {
                    self.last = last;
                    let finished = job.finished_unix_ms != 0;
                    let event = |kind: Kind, job: JobStatus| JobEvent {
                        kind: kind as i32,
                        time_unix_ms: now_ms(),
                        status: Some(job),
                        ..JobEvent::default()
                    };
                    if finished {
                        self.pending.push_back(event(Kind::Snapshot, job.clone()));
                        self.pending.push_back(event(Kind::JobFinished, job));
                    } else {
                        self.pending.push_back(event(Kind::Snapshot, job));
                    }
                    return true;
                }
                Err(Error::NotFound(_)) => return false,
                Err(err) => {
                    tracing::debug!(job = %self.job_id, error = %err, "watch cannot read the job; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
