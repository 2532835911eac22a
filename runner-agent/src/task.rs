//! One leased task: materialize the sources (and the module proxy), build the target, upload
//! the outputs, layer its image when the job has one, report; or, for a job's last step,
//! assemble the image index. Build output is streamed to cached as it comes (Workers.Progress, in
//! batches); the task directory is removed at the end whatever happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachectl::submit::{Remote, modules};
use proto::v1::{self, FencingToken, TaskLease};
use proto::{Digest, Platform};
use tokio::sync::{mpsc, watch};

use crate::TaskError;
use crate::build::{BuildInput, Builder};
use crate::image;
use crate::workspace::{BlobCache, materialize};

/// Log lines are sent at most this often.
const LOG_BATCH: Duration = Duration::from_millis(250);

/// Everything tasks share.
pub struct TaskContext {
    pub remote: Remote,
    pub cache: BlobCache,
    pub builder: Builder,
    pub work_dir: PathBuf,
    /// The GOCACHEPROG command line: this binary's `gocacheprog` subcommand.
    pub gocacheprog: String,
    /// Environment the GOCACHEPROG bridge needs to reach cached (address, token file).
    pub bridge_env: Vec<(String, String)>,
    /// C compilers by `goos/goarch`.
    pub c_compilers: Vec<v1::CCompiler>,
    pub task_timeout: Duration,
}

/// The key of a task in logs and directory names.
pub fn token_name(token: &FencingToken) -> String {
    format!("{}-{}-{}", token.job_id, token.task, token.attempt)
}

/// Runs one lease to its result. `Err(Cancelled)` means: report nothing (the lease is gone)
/// unless the agent is releasing it.
pub async fn run(
    ctx: Arc<TaskContext>,
    lease: TaskLease,
    cancel: watch::Receiver<bool>,
) -> Result<v1::TaskResult, TaskError> {
    let token = lease.token.clone().unwrap_or_default();
    let (lines, received) = mpsc::unbounded_channel::<String>();
    let logger = tokio::spawn(forward_logs(ctx.remote.clone(), token.clone(), received));
    if lease.kind == v1::TaskKind::ImageIndex as i32 {
        let result = image::index(&ctx.remote.client, &lease, &lines).await;
        drop(lines);
        let _ = logger.await;
        return result;
    }
    let dir = ctx.work_dir.join("tasks").join(token_name(&token));
    let _ = std::fs::remove_dir_all(&dir);
    let result = build_task(&ctx, &lease, &dir, lines, cancel).await;
    let _ = logger.await;
    if let Err(err) = remove_tree(&dir) {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a task directory");
    }
    result
}

async fn build_task(
    ctx: &TaskContext,
    lease: &TaskLease,
    dir: &Path,
    lines: mpsc::UnboundedSender<String>,
    cancel: watch::Receiver<bool>,
) -> Result<v1::TaskResult, TaskError> {
    let started = Instant::now();
    let spec =
        lease.spec.as_ref().ok_or_else(|| TaskError::Infrastructure("the lease has no spec".into()))?;
    let target =
        lease.target.as_ref().ok_or_else(|| TaskError::Infrastructure("the lease has no target".into()))?;
    let platform = Platform::from_wire(target).map_err(|err| TaskError::Build(err.to_string()))?;
    let say = |line: String| {
        let _ = lines.send(line);
    };

    let source_root =
        Digest::from_wire(spec.source_root.as_ref()).map_err(|err| TaskError::Build(err.to_string()))?;
    let src = dir.join("src");
    let tree = materialize(&ctx.remote.client, &ctx.cache, source_root, &src).await?;
    let module_dir = src.join(&spec.module_dir);
    say(format!("runner-agent: {} source files at {}", tree.files, module_dir.display()));

    let mut env = base_env(ctx, dir, &platform, target)?;
    env.push(("CACHED_NAMESPACE".into(), spec.namespace.clone()));
    let mut goflags = vec!["-modcacherw".to_owned()];
    match &spec.module_proxy {
        Some(proxy) => {
            let proxy = Digest::from_wire(Some(proxy)).map_err(|err| TaskError::Build(err.to_string()))?;
            let proxy_dir = dir.join("proxy");
            let files = materialize(&ctx.remote.client, &ctx.cache, proxy, &proxy_dir).await?;
            let go_sum = std::fs::read_to_string(module_dir.join("go.sum")).unwrap_or_default();
            let coverage = modules::coverage(&go_sum, files.paths.iter().map(String::as_str));
            env.push(("GOPROXY".into(), format!("file://{}", proxy_dir.display())));
            goflags.push("-mod=mod".to_owned());
            if coverage.complete() {
                // go.sum vouches for every file: the checksum database would never be asked.
                env.push(("GOSUMDB".into(), "off".into()));
            } else {
                say(format!(
                    "runner-agent: go.sum lacks {} of the shipped modules (e.g. {}); the checksum database stays on, \
                     so the build fails rather than trust them. Run `go mod tidy` and submit again.",
                    coverage.missing.len(),
                    coverage.missing[0]
                ));
            }
            say(format!("runner-agent: module proxy of {} files", files.files));
        }
        None => env.push(("GOPROXY".into(), "off".into())),
    }
    for var in &spec.env {
        if var.name == "GOFLAGS" {
            goflags.extend(var.value.split_whitespace().map(str::to_owned));
        } else {
            env.push((var.name.clone(), var.value.clone()));
        }
    }
    env.push(("GOFLAGS".into(), goflags.join(" ")));
    let deadline = Duration::from_millis(u64::try_from(lease.deadline_unix_ms - now_ms()).unwrap_or(0));
    let timeout = ctx.task_timeout.min(deadline.max(Duration::from_secs(1)));
    let input = BuildInput {
        module_dir,
        packages: spec.packages.clone(),
        output_dir: dir.join("out"),
        go_flags: spec.build_flags.clone(),
        env,
        namespace: spec.namespace.clone(),
        timeout,
    };
    say(format!("runner-agent: go build {} for {platform}", spec.packages.join(" ")));
    let built = ctx.builder.build(&ctx.remote.client, &input, lines.clone(), cancel).await?;
    let paths: Vec<PathBuf> = built.outputs.iter().map(|(path, _)| path.clone()).collect();
    let digests =
        cachectl::transfer::upload_files(&ctx.remote.client, &paths, cachectl::transfer::DEFAULT_LEVEL)
            .await?;
    let outputs = paths
        .iter()
        .zip(digests)
        .map(|(path, digest)| v1::OutputFile {
            name: path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
            digest: Some(digest.to_wire()),
            executable: true,
        })
        .collect();
    let image = match &spec.image {
        Some(image) => {
            image::platform_image(&ctx.remote.client, image, &platform, &built.outputs, &lines).await?
        }
        None => None,
    };
    Ok(v1::TaskResult {
        outputs,
        hit: built.hit,
        build_key: built.key,
        duration_ms: started.elapsed().as_millis() as u64,
        explanation: built.explanation.unwrap_or_default(),
        image,
        index: None,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The go command's environment for a target: sealed (own HOME, shared GOCACHE and module
/// cache under the work dir, no toolchain switching, no telemetry), the target's variables, and
/// the GOCACHEPROG bridge.
fn base_env(
    ctx: &TaskContext,
    dir: &Path,
    platform: &Platform,
    target: &v1::Target,
) -> Result<Vec<(String, String)>, TaskError> {
    let work = &ctx.work_dir;
    let home = dir.join("home");
    std::fs::create_dir_all(&home)
        .map_err(|err| TaskError::Infrastructure(format!("{}: {err}", home.display())))?;
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOME".into(), home.display().to_string()),
        ("TMPDIR".into(), std::env::temp_dir().display().to_string()),
        ("GOCACHE".into(), work.join("gocache").display().to_string()),
        ("GOMODCACHE".into(), work.join("gomodcache").display().to_string()),
        ("GOPATH".into(), work.join("gopath").display().to_string()),
        ("GOENV".into(), "off".into()),
        ("GOTOOLCHAIN".into(), "local".into()),
        ("GOTELEMETRY".into(), "off".into()),
        ("GOWORK".into(), "off".into()),
        ("GOOS".into(), platform.goos.clone()),
        ("GOARCH".into(), platform.goarch.clone()),
        ("GOCACHEPROG".into(), ctx.gocacheprog.clone()),
        ("CACHED_GOCACHE_DIR".into(), work.join("gocacheprog").display().to_string()),
    ];
    env.extend(ctx.bridge_env.iter().cloned());
    if let Some(variable) = Platform::level_variable(&platform.goarch).filter(|_| !platform.level.is_empty())
    {
        env.push((variable.into(), platform.level.clone()));
    }
    if platform.cgo {
        let cc = ctx
            .c_compilers
            .iter()
            .find(|cc| {
                cc.goos == platform.goos
                    && cc.goarch == platform.goarch
                    && (target.cc.is_empty()
                        || cc.cc == target.cc
                        || cc.cc.ends_with(&format!("/{}", target.cc)))
            })
            .ok_or_else(|| {
                TaskError::Infrastructure(format!("this agent has no C compiler for {platform}"))
            })?;
        env.push(("CGO_ENABLED".into(), "1".into()));
        env.push(("CC".into(), cc.cc.clone()));
    } else {
        env.push(("CGO_ENABLED".into(), "0".into()));
    }
    Ok(env)
}

/// Sends log lines to cached in batches until the sender side closes. A refused progress call
/// means the lease is gone.
async fn forward_logs(remote: Remote, token: FencingToken, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut workers = remote.workers;
    let started = v1::ProgressRequest { token: Some(token.clone()), started: true, lines: Vec::new() };
    if let Err(status) = workers.progress(started).await {
        tracing::debug!(error = %status, "progress refused");
    }
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        let deadline = tokio::time::sleep(LOG_BATCH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => {
                        batch.push(line);
                        if batch.len() >= 500 {
                            break;
                        }
                    }
                    None => {
                        open = false;
                        break;
                    }
                },
                () = &mut deadline => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let progress = v1::ProgressRequest { token: Some(token.clone()), started: false, lines: batch };
        if let Err(status) = workers.progress(progress).await {
            tracing::debug!(error = %status, "progress refused");
        }
    }
}

/// Removes a task directory, making read-only directories writable first (the go command
/// leaves module directories read-only unless -modcacherw).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            #[cfg(unix)]
            make_writable(dir);
            std::fs::remove_dir_all(dir)
        }
    }
}

#[cfg(unix)]
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}
