//! Running the go command (and the C compiler, and git) behind a small trait, so the pure
//! logic around it can be tested with scripted results. The real runner kills its child when
//! the build is dropped.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

/// One command to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
    /// Set on top of the inherited environment.
    pub env: Vec<(String, String)>,
    /// Removed from the inherited environment.
    pub env_remove: Vec<String>,
}

impl Invocation {
    pub fn new(program: impl Into<PathBuf>, args: &[&str], dir: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: dir.into(),
            ..Self::default()
        }
    }
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The first non-empty line of stderr, for messages.
    pub fn first_error_line(&self) -> String {
        String::from_utf8_lossy(&self.stderr).lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned()
    }
}

/// Where a streamed command's output goes.
pub enum Sink<'a> {
    /// The child writes to our stdout and stderr directly (a terminal stays a terminal).
    Inherit,
    /// Every line of stdout and stderr goes to the callback, as it comes.
    Lines(&'a mut (dyn FnMut(&str) + Send)),
}

#[tonic::async_trait]
pub trait Exec: Send + Sync {
    /// Runs to completion and captures the output.
    async fn output(&self, invocation: &Invocation) -> std::io::Result<Captured>;
    /// Runs to completion with the output going to `sink`; returns the exit code.
    async fn stream(&self, invocation: &Invocation, sink: Sink<'_>) -> std::io::Result<i32>;
}

/// Hands one line (without its line ending) to the log and empties the buffer.
fn emit(log: &mut (dyn FnMut(&str) + Send), line: &mut Vec<u8>) {
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    log(&String::from_utf8_lossy(line));
    line.clear();
}

/// Processes of this machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealExec;

fn command(invocation: &Invocation) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&invocation.program);
    command.args(&invocation.args).current_dir(&invocation.dir).kill_on_drop(true).stdin(Stdio::null());
    for name in &invocation.env_remove {
        command.env_remove(name);
    }
    for (name, value) in &invocation.env {
        command.env(name, value);
    }
    command
}

/// The exit code, or 128 + signal as a shell reports a killed process.
fn code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(1)
}

#[tonic::async_trait]
impl Exec for RealExec {
    async fn output(&self, invocation: &Invocation) -> std::io::Result<Captured> {
        let output = command(invocation).output().await?;
        Ok(Captured { code: code(output.status), stdout: output.stdout, stderr: output.stderr })
    }

    async fn stream(&self, invocation: &Invocation, sink: Sink<'_>) -> std::io::Result<i32> {
        let mut command = command(invocation);
        let log = match sink {
            Sink::Inherit => {
                let status = command.stdout(Stdio::inherit()).stderr(Stdio::inherit()).status().await?;
                return Ok(code(status));
            }
            Sink::Lines(log) => log,
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut out = child.stdout.take().map(BufReader::new);
        let mut err = child.stderr.take().map(BufReader::new);
        let (mut out_line, mut err_line) = (Vec::new(), Vec::new());
        while out.is_some() || err.is_some() {
            // Bytes, not `lines()`: a line that is not UTF-8 is shown lossily, never an error.
            tokio::select! {
                read = async { out.as_mut().expect("checked").read_until(b'\n', &mut out_line).await }, if out.is_some() => {
                    // A cancelled read keeps what it read in the buffer; EOF flushes it.
                    if read? == 0 {
                        out = None;
                    }
                    if !out_line.is_empty() && (out.is_none() || out_line.ends_with(b"\n")) {
                        emit(log, &mut out_line);
                    }
                }
                read = async { err.as_mut().expect("checked").read_until(b'\n', &mut err_line).await }, if err.is_some() => {
                    // A cancelled read keeps what it read in the buffer; EOF flushes it.
                    if read? == 0 {
                        err = None;
                    }
                    if !err_line.is_empty() && (err.is_none() || err_line.ends_with(b"\n")) {
                        emit(log, &mut err_line);
                    }
                }
            }
        }
        Ok(code(child.wait().await?))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_lines_come_from_both_streams_and_survive_bad_utf8() {
        let script = r"printf 'out one\n'; printf 'err \377 two\n' >&2; printf 'no newline'; exit 3";
        let invocation = Invocation::new("sh", &["-c", script], std::env::temp_dir());
        let mut lines = Vec::new();
        let code = RealExec
            .stream(&invocation, Sink::Lines(&mut |line: &str| lines.push(line.to_owned())))
            .await
            .unwrap();
        assert_eq!(code, 3);
        lines.sort();
        assert_eq!(lines, ["err \u{fffd} two", "no newline", "out one"]);
        let captured = RealExec.output(&invocation).await.unwrap();
        assert_eq!(captured.code, 3);
        assert_eq!(captured.first_error_line(), "err \u{fffd} two");
    }
}
