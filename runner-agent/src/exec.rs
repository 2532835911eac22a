//! Child processes behind a small trait, so tests can script them. The real runner starts
//! each command with a clean environment in its own process group, streams its output lines,
//! and kills the whole group (the go command and every compiler it started) on timeout, on
//! cancel, and when the task's future is dropped.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing is inherited.
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal it did not ask for.
    Signal,
    TimedOut,
    Cancelled,
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<Exit>> + Send + 'a>>;

pub trait ProcessRunner: Send + Sync {
    /// Runs `spec`, sending each line it prints (stdout and stderr) to `lines`, until it exits,
    /// times out, or `cancel` turns true.
    fn run<'a>(
        &'a self,
        spec: ProcessSpec,
        lines: mpsc::UnboundedSender<String>,
        cancel: watch::Receiver<bool>,
    ) -> RunFuture<'a>;
}

/// Real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Processes;

/// Kills every process of the group led by `pid`; a group that is gone already is fine.
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) else { return };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Kills the group when dropped: a task future dropped mid-build leaves no compiler behind.
pub(crate) struct GroupGuard(pub(crate) Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    lines: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines.send(line).is_err() {
                break;
            }
        }
    })
}

impl ProcessRunner for Processes {
    fn run<'a>(
        &'a self,
        spec: ProcessSpec,
        lines: mpsc::UnboundedSender<String>,
        mut cancel: watch::Receiver<bool>,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&spec.program)
                .args(&spec.args)
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&spec.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()?;
            let guard = GroupGuard(child.id());
            let out = child.stdout.take().map(|out| forward(out, lines.clone()));
            let err = child.stderr.take().map(|err| forward(err, lines));
            let exit = tokio::select! {
                status = child.wait() => {
                    let status = status?;
                    match status.code() {
                        Some(code) => Exit::Code(code),
                        None => Exit::Signal,
                    }
                }
                () = tokio::time::sleep(spec.timeout) => Exit::TimedOut,
                _ = cancel.wait_for(|cancelled| *cancelled) => Exit::Cancelled,
            };
            // Whatever the end, nothing of the group outlives the task.
            drop(guard);
            let _ = child.wait().await;
            for reader in [out, err].into_iter().flatten() {
                let _ = reader.await;
            }
            Ok(exit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            dir: std::env::temp_dir(),
            timeout,
        }
    }

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    }

    #[tokio::test]
    async fn lines_exit_codes_and_a_clean_environment() {
        let (lines, mut received) = mpsc::unbounded_channel();
        let (_cancel, cancelled) = watch::channel(false);
        let exit = Processes
            .run(
                sh("echo out; echo err >&2; echo ${HOME:-no-home}; exit 3", Duration::from_secs(10)),
                lines,
                cancelled,
            )
            .await
            .unwrap();
        assert_eq!(exit, Exit::Code(3));
        let mut got = Vec::new();
        while let Ok(line) = received.try_recv() {
            got.push(line);
        }
        got.sort();
        assert_eq!(got, ["err", "no-home", "out"]);
    }

    #[tokio::test]
    async fn timeout_and_cancel_kill_the_whole_group() {
        for cancel_it in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let pidfile = dir.path().join("pid");
            // A grandchild in the background, as the go command starts compilers.
            let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
            let (lines, _received) = mpsc::unbounded_channel();
            let (cancel, cancelled) = watch::channel(false);
            let timeout = if cancel_it { Duration::from_secs(60) } else { Duration::from_millis(500) };
            let run = Processes.run(sh(&script, timeout), lines, cancelled);
            let canceller = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if cancel_it {
                    let _ = cancel.send(true);
                }
            };
            let (exit, ()) = tokio::join!(run, canceller);
            assert_eq!(exit.unwrap(), if cancel_it { Exit::Cancelled } else { Exit::TimedOut });
            let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while alive(pid) {
                assert!(std::time::Instant::now() < deadline, "the grandchild {pid} outlived its task");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
