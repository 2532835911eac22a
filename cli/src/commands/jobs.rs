//! `cachectl jobs watch|list|cancel`: follow up on submitted jobs.

use std::path::PathBuf;
use std::time::Instant;

use proto::platform::label;
use proto::v1::{self, JobState, TaskState};

use cached_client::connect::ConnectOptions;
use cached_client::error::Result;
use cached_client::remote_exec::RemoteExec;
use cached_oci::job::platform_label;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Follow a job to its end and download its outputs.
    Watch {
        job_id: String,
        /// Where outputs go: <output>/<goos>_<goarch>/<name>.
        #[arg(short, long, default_value = "dist")]
        output: PathBuf,
        /// Only follow; download nothing.
        #[arg(long)]
        no_download: bool,
    },
    /// Jobs, newest first: unfinished ones, or all with --all.
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON document: [{job_id, state, submitter, image, error, tasks: [{kind, target,
        /// state, attempt, agent, hit, error, outputs, image, index}]}].
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: its queued tasks are dropped and running builds killed.
    Cancel { job_id: String },
}

fn task_state_name(state: i32) -> String {
    TaskState::try_from(state).map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase())
}

fn job_json(job: &v1::JobStatus) -> serde_json::Value {
    let tasks: Vec<serde_json::Value> = job
        .tasks
        .iter()
        .map(|task| {
            let result = task.result.clone().unwrap_or_default();
            let index = task.kind == v1::TaskKind::ImageIndex as i32;
            serde_json::json!({
                "kind": if index { "image-index" } else { "build" },
                "target": if index { String::new() } else { label(&task.target.clone().unwrap_or_default()) },
                "state": task_state_name(task.state),
                "attempt": task.attempt,
                "agent": task.agent,
                "hit": result.hit,
                "error": task.error,
                "outputs": result.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
                "image": result.image.as_ref().map(|image| serde_json::json!({
                    "platform": platform_label(image),
                    "manifest": image.manifest.as_ref().map(|b| b.digest.clone()),
                    "config": image.config.as_ref().map(|b| b.digest.clone()),
                    "layer": image.layer.as_ref().map(|b| b.digest.clone()),
                    "layer_cached": image.layer_cached,
                })),
                "index": result.index.as_ref().map(|b| b.digest.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "job_id": job.job_id,
        "state": state_name(job.state),
        "submitter": job.submitter,
        "submitted_unix_ms": job.submitted_unix_ms,
        "tasks": tasks,
        "image": job.image.as_ref().map(|b| b.digest.clone()),
        "error": job.error,
    })
}

/// Up to `limit` jobs, newest first, over as many replies as cached splits them into (a reply
/// holds at most 1 MiB of jobs).
async fn list(remote: &mut RemoteExec, limit: u32, all: bool) -> Result<Vec<v1::JobStatus>> {
    let mut jobs = Vec::new();
    let mut before = String::new();
    loop {
        let left = limit.saturating_sub(jobs.len() as u32);
        let reply = remote.jobs.list(v1::ListRequest { limit: left, all, before }).await?.into_inner();
        jobs.extend(reply.jobs);
        if reply.next.is_empty() || jobs.len() as u32 >= limit {
            return Ok(jobs);
        }
        before = reply.next;
    }
}

fn state_name(state: i32) -> String {
    JobState::try_from(state).map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase())
}

pub async fn run(server: &str, connect: &ConnectOptions, command: Command) -> Result<()> {
    let mut remote = RemoteExec::connect(server, connect).await?;
    match command {
        Command::Watch { job_id, output, no_download } => {
            let output = (!no_download).then_some(output);
            let (status, _) =
                super::submit::follow(server, connect, remote, &job_id, output.as_deref(), Instant::now())
                    .await?;
            if let Some(index) = &status.image {
                outln!("image index {}", index.digest);
            }
            Ok(())
        }
        Command::List { all, limit, json } => {
            let jobs = list(&mut remote, limit, all).await?;
            if json {
                outln!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect()));
                return Ok(());
            }
            outln!("{:<22}  {:<10}  {:<6}  {:<8}  TARGETS", "JOB", "STATE", "DONE", "AGE");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            for job in jobs {
                let done = job.tasks.iter().filter(|t| t.state == TaskState::Succeeded as i32).count();
                let mut targets: Vec<String> = job
                    .tasks
                    .iter()
                    .filter(|t| t.kind == v1::TaskKind::Build as i32)
                    .map(|t| label(&t.target.clone().unwrap_or_default()))
                    .collect();
                if job.spec.as_ref().is_some_and(|spec| spec.image.is_some()) {
                    targets.push("+image".to_owned());
                }
                let age = humantime::format_duration(std::time::Duration::from_secs(
                    ((now - job.submitted_unix_ms) / 1000).max(0) as u64,
                ));
                outln!(
                    "{:<22}  {:<10}  {:<6}  {:<8}  {}",
                    job.job_id,
                    state_name(job.state),
                    format!("{done}/{}", job.tasks.len()),
                    age.to_string(),
                    targets.join(",")
                );
            }
            Ok(())
        }
        Command::Cancel { job_id } => {
            let status =
                remote.jobs.cancel(v1::CancelRequest { job_id: job_id.clone() }).await?.into_inner().status;
            outln!("job {job_id} {}", status.map_or("?".to_owned(), |s| state_name(s.state)));
            Ok(())
        }
    }
}
