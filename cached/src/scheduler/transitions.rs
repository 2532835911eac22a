//! The state machine of one job, with no storage and no agents: each step changes the job in
//! place and returns the events it caused, in order. Both schedulers apply these steps, the
//! in-memory one under its mutex and the PostgreSQL one inside the transaction that holds the
//! job's row, so a job moves the same way whichever backend keeps it.

use std::time::Duration;

use proto::v1::{
    FencingToken, JobEvent, JobState, JobStatus, TaskKind, TaskState, TaskStatus, job_event::Kind,
};

use super::{
    Outcome, event, finished_event, is_index, is_terminal, job_finished, job_namespace, lease_id, now_ms,
    token_text,
};
use crate::auth::{Grant, LeaseKeys};
use crate::error::{Error, Result};

/// Ends a task as FAILED, and says why.
pub(super) fn fail_task(task: &mut TaskStatus, error: String) -> JobEvent {
    task.state = TaskState::Failed as i32;
    task.finished_unix_ms = now_ms();
    task.error = error;
    let mut failed = event(Kind::TaskFailed, task);
    failed.message = task.error.clone();
    failed
}

/// Puts a task whose attempt failed back in the queue, and says why; the next lease is the
/// next attempt.
pub(super) fn requeue_task(task: &mut TaskStatus, why: String) -> JobEvent {
    task.state = TaskState::Queued as i32;
    task.started_unix_ms = 0;
    task.error = why;
    let mut queued = event(Kind::Queued, task);
    queued.message = task.error.clone();
    queued
}

/// Redacts what an agent reports before anyone sees it, and bounds its text as agents do: a
/// job's record is copied to every watcher and kept with the job, and an agent that does not
/// bound it would make it as large as a message may be.
pub(super) fn redact_outcome(outcome: Outcome) -> Outcome {
    use proto::text::keep_ends;
    match outcome {
        Outcome::Failure { reason, retryable } => {
            Outcome::Failure { reason: keep_ends(crate::redact::text(&reason)), retryable }
        }
        // The build library's explanation quotes flags and environment values.
        Outcome::Success(mut result) => {
            result.explanation = keep_ends(crate::redact::text(&result.explanation));
            Outcome::Success(result)
        }
    }
}

/// Refuses a success whose images do not fit the task `token` names
/// ([`super::validate::check_for_task`]).
pub(super) fn check_outcome(job: &JobStatus, token: &FencingToken, outcome: &Outcome) -> Result<()> {
    match (outcome, job.tasks.get(token.task as usize)) {
        (Outcome::Success(result), Some(task)) => super::validate::check_for_task(result, job, task),
        _ => Ok(()),
    }
}

/// Applies an accepted completion to the task `token` names (already authorized).
pub(super) fn apply_outcome(
    job: &mut JobStatus,
    token: &FencingToken,
    outcome: Outcome,
    max_attempts: u32,
) -> Vec<JobEvent> {
    let mut events = Vec::new();
    let Some(task) = job.tasks.get_mut(token.task as usize) else { return events };
    task.lease_until_unix_ms = 0;
    match outcome {
        Outcome::Success(result) => {
            task.state = TaskState::Succeeded as i32;
            task.finished_unix_ms = now_ms();
            task.error.clear();
            let mut done = event(Kind::TaskSucceeded, task);
            done.result = Some((*result).clone());
            task.result = Some(*result);
            events.push(done);
        }
        Outcome::Failure { reason, retryable } if retryable && task.attempt < max_attempts => {
            let why = format!("attempt {} on {} failed: {reason}", task.attempt, task.agent);
            events.push(requeue_task(task, why));
        }
        Outcome::Failure { reason, .. } => events.push(fail_task(task, reason)),
    }
    events.extend(finish_if_done(job));
    events
}

/// Cancels every unfinished task, saying `why`; returns the events and the tasks whose holders
/// must be told to stop (as they were leased).
pub(super) fn cancel(job: &mut JobStatus, why: &str) -> (Vec<JobEvent>, Vec<TaskStatus>) {
    let (mut events, mut aborted) = (Vec::new(), Vec::new());
    if job_finished(job) {
        return (events, aborted);
    }
    for task in &mut job.tasks {
        if is_terminal(task.state) {
            continue;
        }
        if task.state == TaskState::Leased as i32 {
            aborted.push(task.clone());
        }
        task.state = TaskState::Cancelled as i32;
        task.error = why.to_owned();
        task.finished_unix_ms = now_ms();
        events.push(event(Kind::TaskCancelled, task));
    }
    job.state = JobState::Cancelled as i32;
    job.finished_unix_ms = now_ms();
    events.push(finished_event(job));
    (events, aborted)
}

/// The expiry an expelled agent's leases are given: the epoch, which no lease granted has, so
/// the next sweep requeues them at once and says why.
pub(super) const EXPELLED: i64 = 0;

/// Expires the job's leases past their deadline and fails it past its own; returns the events
/// and the tasks whose holders must be told to stop. No events: nothing changed.
pub(super) fn expire(
    job: &mut JobStatus,
    now: i64,
    timeout: Duration,
    deadline: i64,
    lease_timeout: Duration,
    max_attempts: u32,
) -> (Vec<JobEvent>, Vec<TaskStatus>) {
    let (mut events, mut aborted) = (Vec::new(), Vec::new());
    if job_finished(job) {
        return (events, aborted);
    }
    for task in &mut job.tasks {
        if is_terminal(task.state) {
            continue;
        }
        if now > deadline {
            if task.state == TaskState::Leased as i32 {
                aborted.push(task.clone());
            }
            let error = format!("the job timed out after {}", humantime::format_duration(timeout));
            events.push(fail_task(task, error));
        } else if task.state == TaskState::Leased as i32 && task.lease_until_unix_ms < now {
            aborted.push(task.clone());
            let why = if task.lease_until_unix_ms == EXPELLED {
                format!(
                    "agent {} was expelled: its token was revoked or no longer lets it build (cached's \
                     audit log says which)",
                    task.agent
                )
            } else {
                format!(
                    "the lease of agent {} expired (no heartbeat for {})",
                    task.agent,
                    humantime::format_duration(lease_timeout)
                )
            };
            task.lease_until_unix_ms = 0;
            if task.attempt >= max_attempts {
                let error = format!("gave up after {} attempts; last: {why}", task.attempt);
                events.push(fail_task(task, error));
            } else {
                events.push(requeue_task(task, why));
            }
            tracing::warn!(job = %job.job_id, task = task.index, attempt = task.attempt, agent = %task.agent, "lease expired");
        }
    }
    if !events.is_empty() {
        events.extend(finish_if_done(job));
    }
    (events, aborted)
}

/// Ends a job whose last task is done: it succeeds or fails, unless it builds an image and
/// still needs the IMAGE_INDEX task that assembles it.
pub(super) fn finish_if_done(job: &mut JobStatus) -> Vec<JobEvent> {
    if job_finished(job) {
        return Vec::new();
    }
    if !job.tasks.iter().all(|task| is_terminal(task.state)) {
        if job.tasks.iter().any(|task| task.attempt > 0) {
            job.state = JobState::Running as i32;
        }
        return Vec::new();
    }
    let mut ok = job.tasks.iter().all(|task| task.state == TaskState::Succeeded as i32);
    if ok && job.spec.as_ref().is_some_and(|spec| spec.image.is_some()) {
        match job.tasks.iter().find(|task| is_index(task)) {
            None => match add_index_task(job) {
                Ok(queued) => return vec![queued],
                Err(reason) => {
                    tracing::warn!(job = %job.job_id, %reason, "no image index");
                    job.error = reason;
                    ok = false;
                }
            },
            Some(task) => job.image = task.result.as_ref().and_then(|result| result.index.clone()),
        }
    }
    job.state = if ok { JobState::Succeeded } else { JobState::Failed } as i32;
    job.finished_unix_ms = now_ms();
    tracing::info!(job = %job.job_id, ok, "job finished");
    vec![finished_event(job)]
}

/// Queues the IMAGE_INDEX task of a job whose build tasks all succeeded, or says why there can
/// be no index (a linux target that returned no image).
///
/// Why an agent assembles the index rather than cached: the index is a pure function of the
/// targets' manifests, but its bytes (canonical JSON) and SHA-256 define the image, and the one
/// encoder of image documents is `cachectl::oci`, which agents link and cached does not; a
/// second encoder here could drift from it and publish an index no client derives. cached stays
/// ignorant of OCI. As a task the step gets persistence, leases, fencing and retries for free;
/// it is a few hundred bytes of work, so it takes no build slot, goes to any connected agent
/// whatever its Go, and is dispatched before any queued build.
fn add_index_task(job: &mut JobStatus) -> std::result::Result<JobEvent, String> {
    let mut images = 0;
    for task in &job.tasks {
        let Some(target) = task.target.as_ref().filter(|target| target.goos == "linux") else { continue };
        if task.result.as_ref().and_then(|result| result.image.as_ref()).is_none() {
            return Err(format!(
                "target {} succeeded without an image (agent {} does not layer images?)",
                proto::platform::label(target),
                task.agent
            ));
        }
        images += 1;
    }
    if images == 0 {
        return Err("no target produced an image".to_owned());
    }
    let task = TaskStatus {
        index: job.tasks.len() as u32,
        state: TaskState::Queued as i32,
        kind: TaskKind::ImageIndex as i32,
        ..TaskStatus::default()
    };
    let queued = event(Kind::Queued, &task);
    job.tasks.push(task);
    job.state = JobState::Running as i32;
    tracing::info!(job = %job.job_id, images, "every target built; assembling the image index");
    Ok(queued)
}

/// The task `token` names, if `caller` may report on it: the job is in the caller's
/// namespaces, the token carries the lease's secret for the caller's token, and the lease is
/// current. A refusal changes nothing.
pub(super) fn authorize<'a>(
    keys: &LeaseKeys,
    job: &'a mut JobStatus,
    token: &FencingToken,
    caller: &Grant,
) -> Result<&'a mut TaskStatus> {
    let namespace = job_namespace(job);
    if !caller.allows_namespace(namespace) {
        tracing::warn!(target: "audit", token = %caller.token, namespace, lease = %token_text(token), "worker outside its namespaces refused");
        // As Watch and Cancel answer: whether another tenant's job exists, and its namespace,
        // are not the caller's to learn.
        return Err(super::unknown_job(&token.job_id));
    }
    if !keys.secret_matches(&lease_id(token), &caller.token, &token.secret) {
        tracing::warn!(target: "audit", token = %caller.token, lease = %token_text(token), "wrong lease secret refused");
        return Err(Error::PermissionDenied(format!(
            "the lease secret for {} is missing or wrong: only the agent that holds the lease, \
             through the token it registered with, may report on it (pass the lease's token as it \
             came, secret included)",
            token_text(token)
        )));
    }
    current_lease(job, token)
}

/// The task `token` names, if `token` is its current, unexpired lease.
pub(super) fn current_lease<'a>(job: &'a mut JobStatus, token: &FencingToken) -> Result<&'a mut TaskStatus> {
    let task = job
        .tasks
        .get_mut(token.task as usize)
        .ok_or_else(|| Error::NotFound(format!("job {} has no task {}", token.job_id, token.task)))?;
    if task.state != TaskState::Leased as i32 || task.attempt != token.attempt {
        let state = TaskState::try_from(task.state).map_or("unknown", |state| state.as_str_name());
        return Err(Error::FailedPrecondition(format!(
            "stale lease: {} is no longer current (the task is {state}, attempt {})",
            token_text(token),
            task.attempt
        )));
    }
    if task.lease_until_unix_ms < now_ms() {
        return Err(Error::FailedPrecondition(format!(
            "stale lease: the lease of {} expired",
            token_text(token)
        )));
    }
    Ok(task)
}

/// A Started event, if this is the first report that the task started.
pub(super) fn mark_started(task: &mut TaskStatus) -> Option<JobEvent> {
    if task.started_unix_ms != 0 {
        return None;
    }
    task.started_unix_ms = now_ms();
    Some(event(Kind::Started, task))
}

/// Build output as watchers see it: redacted (it may quote a proxy URL or an environment).
pub(super) fn log_event(task: &TaskStatus, lines: &[String]) -> JobEvent {
    let mut log = event(Kind::Log, task);
    log.message = crate::redact::text(&lines.join("\n"));
    log
}

#[cfg(test)]
mod tests {
    use proto::text::MAX_REPORT;
    use proto::v1::TaskResult;

    use super::*;

    #[test]
    fn what_an_agent_reports_is_bounded_whatever_it_sent() {
        let huge = format!("go build failed:\n{}\nexit status 2", "x".repeat(8 << 20));
        let Outcome::Failure { reason, .. } =
            redact_outcome(Outcome::Failure { reason: huge.clone(), retryable: false })
        else {
            panic!("a failure stays a failure")
        };
        assert!(reason.len() <= MAX_REPORT, "a reason of {} bytes was kept", reason.len());
        assert!(reason.starts_with("go build failed:") && reason.ends_with("exit status 2"));
        let result = TaskResult { explanation: huge, ..Default::default() };
        let Outcome::Success(result) = redact_outcome(Outcome::Success(Box::new(result))) else {
            panic!("a success stays a success")
        };
        assert!(result.explanation.len() <= MAX_REPORT, "{}", result.explanation.len());
    }
}
