//! The build step of a task: `go build` for one target, through the cache.
//!
//! Agents must build through the same library as `cachectl go build` (whole-build hit → no
//! compiler at all; else the go command with the GOCACHEPROG bridge, recording the result).
//! That library (`cachectl::gobuild`) is being written; until it lands this one function runs
//! `go build` itself with `GOCACHEPROG` pointing at this binary's `gocacheprog` subcommand
//! (the same bridge `cachectl gocacheprog` serves), so every remote build already uses and
//! fills the Go action cache, and reports every build as a whole-build miss. Swapping in
//! `cachectl::gobuild::build` changes this file only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::Digest;
use tokio::sync::{mpsc, watch};

use crate::TaskError;
use crate::exec::{Exit, ProcessRunner, ProcessSpec};

/// Whether builds go through the whole-build cache (`cachectl::gobuild`), so an unchanged
/// target is a hit without the go command; false while this file runs go build itself.
pub const WHOLE_BUILD_CACHE: bool = false;

/// What to build, in the shape of `cachectl::gobuild::BuildRequest`.
#[derive(Debug, Clone)]
pub struct BuildInput {
    pub module_dir: PathBuf,
    pub packages: Vec<String>,
    /// Directory the executables are written to.
    pub output_dir: PathBuf,
    pub go_flags: Vec<String>,
    /// The go command's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub namespace: String,
    pub timeout: Duration,
}

/// What came out, in the shape of `cachectl::gobuild::BuildOutcome`.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub hit: bool,
    pub key: String,
    /// Executables in `output_dir`, with their digests.
    pub outputs: Vec<(PathBuf, Digest)>,
    pub duration: Duration,
    pub explanation: Option<String>,
}

/// Lines of output kept for the failure message of a build error.
pub const ERROR_TAIL: usize = 200;

pub struct Builder {
    pub go: PathBuf,
    pub runner: Arc<dyn ProcessRunner>,
}

impl Builder {
    /// Runs the build, sending its output lines to `lines`. A failed build is a
    /// [`TaskError::Build`] carrying the tail of the go command's output.
    pub async fn build(
        &self,
        input: &BuildInput,
        lines: mpsc::UnboundedSender<String>,
        cancel: watch::Receiver<bool>,
    ) -> Result<BuildOutput, TaskError> {
        let started = Instant::now();
        std::fs::create_dir_all(&input.output_dir).map_err(|err| {
            TaskError::Infrastructure(format!("creating {}: {err}", input.output_dir.display()))
        })?;
        let mut args = vec!["build".to_owned(), "-o".to_owned(), format!("{}/", input.output_dir.display())];
        args.extend(input.go_flags.iter().cloned());
        args.extend(input.packages.iter().cloned());
        let spec = ProcessSpec {
            program: self.go.clone(),
            args,
            env: input.env.clone(),
            dir: input.module_dir.clone(),
            timeout: input.timeout,
        };
        // Keep the tail for the error message while passing every line on.
        let (tee, mut teed) = mpsc::unbounded_channel::<String>();
        let tail = tokio::spawn(async move {
            let mut tail = std::collections::VecDeque::new();
            while let Some(line) = teed.recv().await {
                if tail.len() == ERROR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                let _ = lines.send(line);
            }
            tail.into_iter().collect::<Vec<_>>()
        });
        let exit = self.runner.run(spec, tee, cancel).await;
        let tail = tail.await.unwrap_or_default();
        let exit = exit
            .map_err(|err| TaskError::Infrastructure(format!("cannot run {}: {err}", self.go.display())))?;
        match exit {
            Exit::Code(0) => {}
            Exit::Cancelled => return Err(TaskError::Cancelled),
            Exit::TimedOut => {
                return Err(TaskError::Build(format!(
                    "go build timed out after {}\n{}",
                    humantime::format_duration(input.timeout),
                    tail.join("\n")
                )));
            }
            Exit::Code(code) => {
                return Err(TaskError::Build(format!(
                    "go build failed (exit status {code}):\n{}",
                    tail.join("\n")
                )));
            }
            Exit::Signal => {
                return Err(TaskError::Infrastructure(format!(
                    "go build was killed by a signal:\n{}",
                    tail.join("\n")
                )));
            }
        }
        let outputs = hash_outputs(&input.output_dir)?;
        Ok(BuildOutput {
            hit: false,
            key: String::new(),
            outputs,
            duration: started.elapsed(),
            explanation: None,
        })
    }
}

fn hash_outputs(dir: &Path) -> Result<Vec<(PathBuf, Digest)>, TaskError> {
    let mut outputs = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|err| TaskError::Infrastructure(format!("{}: {err}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|err| TaskError::Infrastructure(err.to_string()))?.path();
        if path.is_file() {
            outputs.push((path.clone(), cachectl::transfer::hash_file(&path)?));
        }
    }
    outputs.sort();
    Ok(outputs)
}
