//! A job's row and its tasks' rows: read under the row lock, written back with the version it
//! was read at (a write that finds another version changes nothing), the tasks table kept in
//! step with the record, and the job's events appended in the same transaction.

use prost::Message;
use proto::v1::{FencingToken, JobEvent, JobStatus, TaskState};
use tokio_postgres::Transaction;

use super::super::logcap;
use super::super::reuse::JobKey;
use super::super::store::record;
use super::super::{Settings, is_index, job_deadline, job_finished, job_namespace, now_ms};
use crate::error::{Error, Result};

/// A job as read under its row lock, and the version it had.
pub(super) struct Locked {
    pub(super) job: JobStatus,
    pub(super) version: i64,
}

pub(super) fn decode(job_id: &str, bytes: &[u8]) -> Result<JobStatus> {
    record::decode(bytes).map_err(|err| Error::Corrupt(format!("job {job_id}: {err}")))
}

/// The job, locked until the transaction ends; `None` if there is none, or with `skip_locked`
/// if another transaction holds it (someone else is already on it).
pub(super) async fn lock(tx: &Transaction<'_>, job_id: &str, skip_locked: bool) -> Result<Option<Locked>> {
    let sql = if skip_locked {
        "SELECT record, version FROM jobs WHERE job_id = $1 FOR UPDATE SKIP LOCKED"
    } else {
        "SELECT record, version FROM jobs WHERE job_id = $1 FOR UPDATE"
    };
    let Some(row) = tx.query_opt(sql, &[&job_id]).await? else { return Ok(None) };
    Ok(Some(Locked { job: decode(job_id, row.get(0))?, version: row.get(1) }))
}

/// The jobs of `job_ids` that exist, each locked until the transaction ends, in one round trip.
/// Locked in job id order, the order every multi-job transaction of every replica uses, so two
/// of them never deadlock.
pub(super) async fn lock_many(tx: &Transaction<'_>, job_ids: &[&str]) -> Result<Vec<Locked>> {
    let rows = tx
        .query(
            "SELECT job_id, record, version FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE",
            &[&job_ids],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let job_id: &str = row.get(0);
            Ok(Locked { job: decode(job_id, row.get(1))?, version: row.get(2) })
        })
        .collect()
}

/// Writes back jobs whose only change is longer leases, and those leases' task rows, held by
/// `agent`: two statements however many jobs and tasks a heartbeat lists.
pub(super) async fn extend_leases(
    tx: &Transaction<'_>,
    jobs: &[Locked],
    leases: &[(&str, i32)],
    agent: &str,
    until: i64,
) -> Result<()> {
    let ids: Vec<&str> = jobs.iter().map(|locked| locked.job.job_id.as_str()).collect();
    let versions: Vec<i64> = jobs.iter().map(|locked| locked.version).collect();
    let records: Vec<Vec<u8>> = jobs.iter().map(|locked| record::encode(&locked.job)).collect();
    let written = tx
        .execute(
            "UPDATE jobs SET version = jobs.version + 1, record = u.record \
             FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(job_id, version, record) \
             WHERE jobs.job_id = u.job_id AND jobs.version = u.version",
            &[&ids, &versions, &records],
        )
        .await?;
    if written != jobs.len() as u64 {
        return Err(Error::Aborted("jobs changed during a heartbeat; retry".into()));
    }
    let (lease_jobs, lease_tasks): (Vec<&str>, Vec<i32>) = leases.iter().copied().unzip();
    tx.execute(
        "UPDATE tasks SET lease_until_ms = $3, agent = $4 FROM unnest($1::text[], $2::integer[]) AS u(job_id, idx) \
         WHERE tasks.job_id = u.job_id AND tasks.idx = u.idx",
        &[&lease_jobs, &lease_tasks, &until, &agent],
    )
    .await?;
    Ok(())
}

/// The queue columns of a job: (queued builds, queued index tasks).
fn queued(job: &JobStatus) -> (i32, i32) {
    let queued = job.tasks.iter().filter(|task| task.state == TaskState::Queued as i32);
    let (index, builds): (Vec<_>, Vec<_>) = queued.partition(|task| is_index(task));
    (builds.len() as i32, index.len() as i32)
}

pub(super) async fn insert(tx: &Transaction<'_>, job: &JobStatus, settings: &Settings) -> Result<()> {
    let (builds, index) = queued(job);
    let priority = job.spec.as_ref().map_or(0, |spec| spec.priority);
    let spec_key = job.spec.as_ref().map(|spec| JobKey::of(spec).as_bytes().to_vec());
    tx.execute(
        "INSERT INTO jobs (job_id, namespace, finished, queued_builds, queued_index, priority, submitted_ms, \
         deadline_ms, version, record, spec_key, submitter, events_until_ms, turn) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11, CASE WHEN $3 THEN $12::int8 END, $13)",
        &[
            &job.job_id,
            &job_namespace(job),
            &job_finished(job),
            &builds,
            &index,
            &priority,
            &job.submitted_unix_ms,
            &job_deadline(settings, job),
            &record::encode(job),
            &spec_key,
            &job.submitter,
            &events_until(settings),
            &i64::from(job.turn),
        ],
    )
    .await?;
    write_tasks(tx, job).await
}

/// When the events of a job finishing now may be deleted: ten lease timeouts on (five minutes
/// by default), long past a watcher's reading them; a stream whose client stops reading is cut
/// after `idle_timeout` (a minute) anyway.
fn events_until(settings: &Settings) -> i64 {
    let keep = i64::try_from(settings.lease_timeout.as_millis()).unwrap_or(i64::MAX).saturating_mul(10);
    now_ms().saturating_add(keep)
}

/// Writes `job` back over the version it was read at.
pub(super) async fn update(
    tx: &Transaction<'_>,
    job: &JobStatus,
    version: i64,
    settings: &Settings,
) -> Result<()> {
    let (builds, index) = queued(job);
    let written = tx
        .execute(
            "UPDATE jobs SET finished = $3, queued_builds = $4, queued_index = $5, version = version + 1, \
             record = $6, events_until_ms = CASE WHEN $3 THEN coalesce(events_until_ms, $7::int8) END \
             WHERE job_id = $1 AND version = $2",
            &[
                &job.job_id,
                &version,
                &job_finished(job),
                &builds,
                &index,
                &record::encode(job),
                &events_until(settings),
            ],
        )
        .await?;
    if written != 1 {
        return Err(Error::Aborted(format!("job {} changed meanwhile; retry", job.job_id)));
    }
    write_tasks(tx, job).await
}

/// Writes back a job whose only change is its revoked reuse, and takes it out of the key index
/// so no replica's lookup finds it.
pub(super) async fn revoke_reuse(tx: &Transaction<'_>, locked: &Locked) -> Result<()> {
    let job = &locked.job;
    let written = tx
        .execute(
            "UPDATE jobs SET spec_key = NULL, version = version + 1, record = $3 WHERE job_id = $1 AND version = $2",
            &[&job.job_id, &locked.version, &record::encode(job)],
        )
        .await?;
    if written != 1 {
        return Err(Error::Aborted(format!("job {} changed meanwhile; retry", job.job_id)));
    }
    Ok(())
}

async fn write_tasks(tx: &Transaction<'_>, job: &JobStatus) -> Result<()> {
    let tasks = &job.tasks;
    let index: Vec<i32> = tasks.iter().map(|task| task.index as i32).collect();
    let state: Vec<i16> = tasks.iter().map(|task| task.state as i16).collect();
    let attempt: Vec<i32> = tasks.iter().map(|task| task.attempt as i32).collect();
    let agent: Vec<&str> = tasks.iter().map(|task| task.agent.as_str()).collect();
    let until: Vec<i64> = tasks.iter().map(|task| task.lease_until_unix_ms).collect();
    let kind: Vec<bool> = tasks.iter().map(is_index).collect();
    tx.execute(
        "INSERT INTO tasks (job_id, idx, state, attempt, agent, lease_until_ms, is_index) \
         SELECT $1, * FROM unnest($2::integer[], $3::smallint[], $4::integer[], $5::text[], $6::bigint[], $7::boolean[]) \
         ON CONFLICT (job_id, idx) DO UPDATE SET state = excluded.state, attempt = excluded.attempt, \
         agent = excluded.agent, lease_until_ms = excluded.lease_until_ms, is_index = excluded.is_index",
        &[&job.job_id, &index, &state, &attempt, &agent, &until, &kind],
    )
    .await?;
    Ok(())
}

/// Appends the job's events, in order.
pub(super) async fn append_events(tx: &Transaction<'_>, job_id: &str, events: &[JobEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let encoded: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
    tx.execute(
        "INSERT INTO job_events (job_id, event) SELECT $1, e FROM unnest($2::bytea[]) WITH ORDINALITY AS t(e, n) ORDER BY n",
        &[&job_id, &encoded],
    )
    .await?;
    Ok(())
}

/// The lines of a Progress call that the attempt's log cap lets in ([`logcap`]), counted in
/// `task_logs`. The caller holds the job's row lock, so calls of one attempt add up in turn.
pub(super) async fn admit_log(
    tx: &Transaction<'_>,
    token: &FencingToken,
    lines: Vec<String>,
) -> Result<Vec<String>> {
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&token.job_id, &(token.task as i32), &(token.attempt as i32)];
    let spent = tx
        .query_opt("SELECT bytes FROM task_logs WHERE job_id = $1 AND idx = $2 AND attempt = $3", &key)
        .await?
        .map_or(0, |row| row.get::<_, i64>(0));
    let (kept, now_spent) = logcap::admit(spent as u64, lines);
    if now_spent != spent as u64 {
        tx.execute(
            "INSERT INTO task_logs (job_id, idx, attempt, bytes) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id, idx, attempt) DO UPDATE SET bytes = excluded.bytes",
            &[key[0], key[1], key[2], &(now_spent as i64)],
        )
        .await?;
    }
    Ok(kept)
}

/// The fencing check as the database makes it: the task moves out of LEASED only if `token`
/// is still its current, unexpired lease. Zero rows: a stale, expired or cancelled lease.
pub(super) async fn fence(
    tx: &Transaction<'_>,
    token: &FencingToken,
    new_state: i32,
    now: i64,
) -> Result<()> {
    let fenced = tx
        .execute(
            "UPDATE tasks SET state = $4, lease_until_ms = 0 WHERE job_id = $1 AND idx = $2 AND attempt = $3 \
             AND state = 2 AND lease_until_ms >= $5",
            &[&token.job_id, &(token.task as i32), &(token.attempt as i32), &(new_state as i16), &now],
        )
        .await?;
    if fenced != 1 {
        return Err(Error::FailedPrecondition(format!(
            "stale lease: task {} of job {} (attempt {}) is no longer current",
            token.task, token.job_id, token.attempt
        )));
    }
    Ok(())
}

/// Records an accepted completion: at most one per (task, attempt).
pub(super) async fn record_completion(
    tx: &Transaction<'_>,
    token: &FencingToken,
    agent: &str,
    succeeded: bool,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO completions (job_id, idx, attempt, agent, succeeded, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&token.job_id, &(token.task as i32), &(token.attempt as i32), &agent, &succeeded, &now],
    )
    .await?;
    Ok(())
}
