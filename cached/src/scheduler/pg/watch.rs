//! Jobs.Watch across replicas: a snapshot of the job and the sequence number of its last event,
//! read in one statement (so one snapshot of the database), then the job's event rows after it,
//! page by page, whenever this replica changes something and every [`POLL`] for what others did.
//! A job's events are written under its row lock, so their sequence numbers follow its changes.

use std::collections::VecDeque;
use std::sync::Arc;

use prost::Message;
use proto::v1::{JobEvent, JobStatus};

use super::super::backend::JobEvents;
use super::super::unknown_job;
use super::{POLL, PgScheduler, RETRY, rows};
use crate::error::{Error, Result};

/// Events read per query.
const PAGE: i64 = 256;

struct Cursor {
    scheduler: Arc<PgScheduler>,
    job_id: String,
    after: i64,
    pending: VecDeque<JobEvent>,
    changes: tokio::sync::watch::Receiver<u64>,
}

pub(super) async fn watch(scheduler: Arc<PgScheduler>, job_id: &str) -> Result<(JobStatus, JobEvents)> {
    let client = scheduler.db.client().await?;
    let row = client
        .query_opt(
            "SELECT record, (SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = $1) \
             FROM jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await?
        .ok_or_else(|| unknown_job(job_id))?;
    let job = rows::decode(job_id, row.get(0))?;
    let changes = scheduler.changes.subscribe();
    let cursor =
        Cursor { scheduler, job_id: job_id.to_owned(), after: row.get(1), pending: VecDeque::new(), changes };
    let events = futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.pending.pop_front() {
                return Some((event, cursor));
            }
            match cursor.next_page().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::debug!(job = %cursor.job_id, error = %err, "watch cannot read events; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
            tokio::select! {
                _ = cursor.changes.changed() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok((job, Box::pin(events)))
}

impl Cursor {
    /// Reads the next events into `pending`; false if there were none.
    async fn next_page(&mut self) -> Result<bool> {
        let client = self.scheduler.db.client().await?;
        let rows = client
            .query(
                "SELECT seq, event FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&self.job_id, &self.after, &PAGE],
            )
            .await?;
        for row in &rows {
            self.after = row.get(0);
            let bytes: &[u8] = row.get(1);
            let event = JobEvent::decode(bytes)
                .map_err(|err| Error::Corrupt(format!("an event of job {}: {err}", self.job_id)))?;
            self.pending.push_back(event);
        }
        Ok(!rows.is_empty())
    }
}
