//! Running the go command (and the C compiler, and git) behind one small trait, [`Exec`], so
//! the pure logic around it can be tested with scripted results. The real runner,
//! [`Processes`], serves both the wrapper on a terminal (this process's environment, the
//! terminal's process group) and runner agents (a clean environment, each command in its own
//! process group killed as a whole on timeout, cancel and drop, and a hook for the build user).

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::watch;

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
    /// The value of `name` in the environment commands start from, before an invocation's own
    /// `env`: this process's, unless the commands run in an environment of their own.
    fn inherited_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// The most of one line of a streamed command's output that is kept: a build prints what its
/// code makes the compiler print (a string constant quoted in an error, whole), and whoever
/// reads the lines keeps some of them.
pub const MAX_LINE: usize = 4096;

/// One line of output as it is read, at most [`MAX_LINE`] bytes of it.
#[derive(Default)]
struct Line {
    bytes: Vec<u8>,
    /// Bytes of the line past the cap, read and dropped.
    cut: u64,
}

/// Reads to the end of a line (true) or of the stream (false) into `line`. Cancel-safe: what it
/// consumed is in `line`, so a read cancelled mid-line goes on where it stopped.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), line: &mut Line) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let end = available.iter().position(|b| *b == b'\n');
        let chunk = &available[..end.map_or(available.len(), |at| at + 1)];
        let keep = chunk.len().min(MAX_LINE.saturating_sub(line.bytes.len()));
        line.bytes.extend_from_slice(&chunk[..keep]);
        // The line ending is no part of what was cut.
        let ending = usize::from(end.is_some() && keep < chunk.len());
        line.cut += (chunk.len() - keep - ending) as u64;
        let consumed = chunk.len();
        reader.consume(consumed);
        if end.is_some() {
            return Ok(true);
        }
    }
}

/// Hands one line (without its line ending, marked where it was cut) to the log and empties it.
fn emit(log: &mut (dyn FnMut(&str) + Send), line: &mut Line) {
    let bytes = &mut line.bytes;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    let text = String::from_utf8_lossy(bytes);
    if line.cut == 0 {
        log(&text);
    } else {
        log(&format!("{text} [line cut at {MAX_LINE} bytes: {} more not shown]", line.cut));
    }
    *line = Line::default();
}

/// Changes a command just before it starts (runner agents: the build user).
pub type Prepare = Arc<dyn Fn(&mut tokio::process::Command) + Send + Sync>;

/// Processes of this machine. The default suits a terminal: this process's environment, the
/// terminal's process group (so Ctrl-C reaches go), no deadline.
#[derive(Clone, Default)]
pub struct Processes {
    /// The whole environment of every command, the invocation's on top; `None`: this
    /// process's.
    pub clean_env: Option<Vec<(String, String)>>,
    /// Each command in its own process group, and the whole group killed when the command
    /// ends, times out, is cancelled or dropped: no compiler go started outlives it.
    pub own_group: bool,
    /// Longest a command may run; it ends with a `TimedOut` error.
    pub timeout: Option<Duration>,
    /// Turning true stops the command with an `Interrupted` error.
    pub cancel: Option<watch::Receiver<bool>>,
    pub prepare: Option<Prepare>,
}

impl Processes {
    fn command(&self, invocation: &Invocation) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&invocation.program);
        command.args(&invocation.args).current_dir(&invocation.dir).kill_on_drop(true).stdin(Stdio::null());
        if let Some(env) = &self.clean_env {
            command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        for name in &invocation.env_remove {
            command.env_remove(name);
        }
        for (name, value) in &invocation.env {
            command.env(name, value);
        }
        if self.own_group {
            command.process_group(0);
        }
        if let Some(prepare) = &self.prepare {
            prepare(&mut command);
        }
        command
    }

    /// Waits for `work` of the child `pid`, or gives up on timeout or cancel; then, with its
    /// own group, nothing of that group is left running.
    async fn bounded<T>(
        &self,
        pid: Option<u32>,
        work: impl Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        let guard = self.own_group.then_some(GroupGuard(pid));
        let timeout = async {
            match self.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match self.cancel.clone() {
                // A cancel sender that is gone counts as a cancel: nobody waits for the result.
                Some(mut cancel) => drop(cancel.wait_for(|cancelled| *cancelled).await),
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = work => result,
            () = timeout => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {}", humantime::format_duration(self.timeout.unwrap_or_default())),
            )),
            () = cancelled => Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled")),
        };
        drop(guard);
        result
    }
}

/// Kills the process group led by `pid` when dropped; a group that is gone already is fine.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) else { return };
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The most of a captured command's stdout or stderr that is kept in memory. What the build
/// library captures (`go list -deps -json` of a build, `go env`, a compiler's version) is far
/// smaller; a job's sources decide how much, so past it the command fails instead.
pub const MAX_CAPTURED: u64 = 256 << 20;

/// All of `pipe`, refused past `cap` bytes.
async fn read_capped(pipe: Option<impl tokio::io::AsyncRead + Unpin>, cap: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let Some(pipe) = pipe else { return Ok(out) };
    pipe.take(cap + 1).read_to_end(&mut out).await?;
    if out.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "the command printed more than {cap} bytes, more than is kept"
        )));
    }
    Ok(out)
}

/// The exit code, or 128 + signal as a shell reports a killed process.
fn code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().map_or_else(|| status.code().unwrap_or(1), |signal| 128 + signal)
}

#[tonic::async_trait]
impl Exec for Processes {
    async fn output(&self, invocation: &Invocation) -> std::io::Result<Captured> {
        let mut child = self.command(invocation).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let captured = async {
            let (stdout, stderr, status) = tokio::try_join!(
                read_capped(stdout, MAX_CAPTURED),
                read_capped(stderr, MAX_CAPTURED),
                child.wait()
            )?;
            Ok(Captured { code: code(status), stdout, stderr })
        };
        self.bounded(pid, captured).await
    }

    fn inherited_var(&self, name: &str) -> Option<String> {
        match &self.clean_env {
            Some(env) => env.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.clone()),
            None => std::env::var(name).ok(),
        }
    }

    async fn stream(&self, invocation: &Invocation, sink: Sink<'_>) -> std::io::Result<i32> {
        let mut command = self.command(invocation);
        let log = match sink {
            Sink::Inherit => {
                let mut child = command.stdout(Stdio::inherit()).stderr(Stdio::inherit()).spawn()?;
                let pid = child.id();
                return self.bounded(pid, async { Ok(code(child.wait().await?)) }).await;
            }
            Sink::Lines(log) => log,
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let pid = child.id();
        let mut out = child.stdout.take().map(BufReader::new);
        let mut err = child.stderr.take().map(BufReader::new);
        let work = async {
            let (mut out_line, mut err_line) = (Line::default(), Line::default());
            while out.is_some() || err.is_some() {
                // Bytes, not `lines()`: a line that is not UTF-8 is shown lossily, never an error.
                tokio::select! {
                    read = async { read_line(out.as_mut().expect("checked"), &mut out_line).await }, if out.is_some() => {
                        if !read? {
                            out = None;
                        }
                        if !out_line.bytes.is_empty() || out_line.cut > 0 {
                            emit(log, &mut out_line);
                        }
                    }
                    read = async { read_line(err.as_mut().expect("checked"), &mut err_line).await }, if err.is_some() => {
                        if !read? {
                            err = None;
                        }
                        if !err_line.bytes.is_empty() || err_line.cut > 0 {
                            emit(log, &mut err_line);
                        }
                    }
                }
            }
            Ok(code(child.wait().await?))
        };
        self.bounded(pid, work).await
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
        let code = Processes::default()
            .stream(&invocation, Sink::Lines(&mut |line: &str| lines.push(line.to_owned())))
            .await
            .unwrap();
        assert_eq!(code, 3);
        lines.sort();
        assert_eq!(lines, ["err \u{fffd} two", "no newline", "out one"]);
        let captured = Processes::default().output(&invocation).await.unwrap();
        assert_eq!(captured.code, 3);
        assert_eq!(captured.first_error_line(), "err \u{fffd} two");
    }
}

#[cfg(all(test, unix))]
mod line_tests {
    use super::*;

    #[tokio::test]
    async fn a_long_line_is_cut_and_marked_and_the_next_one_is_whole() {
        // 1 MiB without a newline, a short line, and 5000 bytes at the end of the stream.
        let script =
            "head -c 1048576 /dev/zero | tr '\\0' a; echo; echo next; head -c 5000 /dev/zero | tr '\\0' b";
        let invocation = Invocation::new("sh", &["-c", script], std::env::temp_dir());
        let mut lines = Vec::new();
        let code = Processes::default()
            .stream(&invocation, Sink::Lines(&mut |line: &str| lines.push(line.to_owned())))
            .await
            .unwrap();
        assert_eq!(code, 0);
        assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
        let cut = (1 << 20) - MAX_LINE;
        assert_eq!(
            lines[0],
            format!("{} [line cut at 4096 bytes: {cut} more not shown]", "a".repeat(MAX_LINE))
        );
        assert_eq!(lines[1], "next");
        assert_eq!(
            lines[2],
            format!("{} [line cut at 4096 bytes: 904 more not shown]", "b".repeat(MAX_LINE))
        );
    }
}

#[cfg(all(test, unix))]
mod group_tests {
    use super::*;

    fn sh(script: &str) -> Invocation {
        Invocation::new("/bin/sh", &["-c", script], std::env::temp_dir())
    }

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    }

    #[tokio::test]
    async fn captured_output_is_refused_past_its_cap() {
        let ten: &[u8] = b"0123456789";
        assert_eq!(read_capped(Some(ten), 10).await.unwrap(), ten);
        let err = read_capped(Some(ten), 9).await.unwrap_err();
        assert!(err.to_string().contains("more than 9 bytes"), "{err}");
        // A command's own output goes through the same cap.
        let printed = Processes::default().output(&sh("printf hello")).await.unwrap();
        assert_eq!(printed.stdout, b"hello");
    }

    #[tokio::test]
    async fn a_clean_environment_holds_only_what_it_is_given() {
        let processes = Processes {
            clean_env: Some(vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())]),
            ..Processes::default()
        };
        let mut invocation = sh("echo ${HOME:-no-home} $EXTRA");
        invocation.env.push(("EXTRA".into(), "extra".into()));
        let captured = processes.output(&invocation).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&captured.stdout), "no-home extra\n");
    }

    #[tokio::test]
    async fn timeout_and_cancel_kill_the_whole_group() {
        for cancel_it in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let pidfile = dir.path().join("pid");
            // A grandchild in the background, as the go command starts compilers.
            let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
            let (cancel, cancelled) = watch::channel(false);
            let timeout = if cancel_it { Duration::from_secs(60) } else { Duration::from_millis(500) };
            let processes = Processes {
                own_group: true,
                timeout: Some(timeout),
                cancel: Some(cancelled),
                ..Processes::default()
            };
            let canceller = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if cancel_it {
                    let _ = cancel.send(true);
                }
            };
            let invocation = sh(&script);
            let mut ignore = |_: &str| {};
            let run = processes.stream(&invocation, Sink::Lines(&mut ignore));
            let (result, ()) = tokio::join!(run, canceller);
            let kind = result.unwrap_err().kind();
            let expected =
                if cancel_it { std::io::ErrorKind::Interrupted } else { std::io::ErrorKind::TimedOut };
            assert_eq!(kind, expected);
            let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while alive(pid) {
                assert!(std::time::Instant::now() < deadline, "the grandchild {pid} outlived its command");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
