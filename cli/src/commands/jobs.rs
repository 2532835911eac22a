//! `cachectl jobs watch|list|cancel`: follow up on submitted jobs.

use std::path::PathBuf;
use std::time::Instant;

use proto::platform::label;
use proto::v1::{self, JobState, TaskState};

use crate::client::ConnectOptions;
use crate::error::Result;
use crate::submit::Remote;

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
        /// One JSON document: [{job_id, state, submitter, tasks: [{target, state, attempt, agent,
        /// hit, error, outputs}]}].
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
            serde_json::json!({
                "target": label(&task.target.clone().unwrap_or_default()),
                "state": task_state_name(task.state),
                "attempt": task.attempt,
                "agent": task.agent,
                "hit": result.hit,
                "error": task.error,
                "outputs": result.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "job_id": job.job_id,
        "state": state_name(job.state),
        "submitter": job.submitter,
        "submitted_unix_ms": job.submitted_unix_ms,
        "tasks": tasks,
    })
}

fn state_name(state: i32) -> String {
    JobState::try_from(state).map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase())
}

pub async fn run(server: &str, connect: &ConnectOptions, command: Command) -> Result<()> {
    let mut remote = Remote::connect(server, connect).await?;
    match command {
        Command::Watch { job_id, output, no_download } => {
            let output = (!no_download).then_some(output);
            super::submit::follow(server, connect, remote, &job_id, output.as_deref(), Instant::now()).await
        }
        Command::List { all, limit, json } => {
            let jobs = remote.jobs.list(v1::ListRequest { limit, all }).await?.into_inner().jobs;
            if json {
                println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect()));
                return Ok(());
            }
            println!("{:<22}  {:<10}  {:<6}  {:<8}  TARGETS", "JOB", "STATE", "DONE", "AGE");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            for job in jobs {
                let done = job.tasks.iter().filter(|t| t.state == TaskState::Succeeded as i32).count();
                let targets: Vec<String> =
                    job.tasks.iter().map(|t| label(&t.target.clone().unwrap_or_default())).collect();
                let age = humantime::format_duration(std::time::Duration::from_secs(
                    ((now - job.submitted_unix_ms) / 1000).max(0) as u64,
                ));
                println!(
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
            println!("job {job_id} {}", status.map_or("?".to_owned(), |s| state_name(s.state)));
            Ok(())
        }
    }
}
