//! One leased task: materialize the sources (and the module proxy), build the target as a build
//! user of its own, upload the outputs, layer its image when the job has one, report; or, for a
//! job's last step, assemble the image index. Build output is streamed to cached as it comes
//! (Workers.Progress, in batches). At the end, whatever happened, everything the build user
//! still runs is killed and the task directory removed, before the user builds anything else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cached_client::Secret;
use cached_client::connect::Client;
use cached_client::remote_exec::RemoteExec;
use cached_gobuild::modules;
use proto::v1::{self, FencingToken, TaskLease};
use proto::{Digest, Platform};
use tokio::sync::mpsc;

use cached_client::tree::{Node, TreeLimits};

use crate::TaskError;
use crate::blobcache::BlobCache;
use crate::build::{BuildInput, Builder};
use crate::cancel::Cancel;
use crate::cgroup::TaskGroup;
use crate::credential;
use crate::image;
use crate::modules::{Linked, ModuleStore, ModuleZip, Prepared};
use crate::sandbox::Sandbox;
use crate::taskdir::{self, TaskDir};
use crate::workspace::{self, Materialized, materialize};

/// Log lines are sent at most this often.
const LOG_BATCH: Duration = Duration::from_millis(250);

/// No version control on a job's tree, by the go command or by the agent. A tree may hold a
/// `.git` (or `.hg`, `.svn`, ...) of the job's making, and a VCS command reads its config:
/// `core.fsmonitor`, for one, names a command git runs. git refuses a repository of another
/// owner (the tree is the agent's), but a host whose system config says `safe.directory = *`, or
/// a git older than 2.35.2, trusts it, and the go command's default `-buildvcs=auto` runs
/// `git status` on every main package. With `false`, the go command runs no VCS command and the
/// build key (`cached_gobuild`) stamps nothing, so neither runs git. The flag goes last on the
/// command line and in GOFLAGS, where the go command lets the last say win; cached refuses
/// any other value at submission, so a job is told rather than silently unstamped.
pub const NO_VCS: &str = "-buildvcs=false";

/// Everything tasks share.
pub struct TaskContext {
    pub remote: RemoteExec,
    pub cache: BlobCache,
    /// Module zips of jobs' proxies, extracted once.
    pub modules: ModuleStore,
    pub builder: Builder,
    pub work_dir: PathBuf,
    /// Who builds run as.
    pub sandbox: Sandbox,
    /// What a job's trees may hold.
    pub tree_limits: TreeLimits,
    /// The GOCACHEPROG command line: this binary's `gocacheprog` subcommand.
    pub gocacheprog: String,
    /// Environment the GOCACHEPROG bridge needs to reach cached (address, CA): no credential;
    /// the bridge fetches the lease's own from the task's socket.
    pub bridge_env: Vec<(String, String)>,
    /// C compilers by `goos/goarch`.
    pub c_compilers: Vec<v1::CCompiler>,
    pub task_timeout: Duration,
    /// The most disk a build's own files may take in its task directory.
    pub max_task_disk: u64,
}

/// The key of a task in logs and directory names.
pub fn token_name(token: &FencingToken) -> String {
    format!("{}-{}-{}", token.job_id, token.task, token.attempt)
}

/// Runs one lease to its result. `Err(Cancelled)` means: report nothing (the lease is gone)
/// unless the agent is releasing it. Once `cancel` is set, no phase goes on and nothing is
/// uploaded.
pub async fn run(
    ctx: Arc<TaskContext>,
    lease: TaskLease,
    cancel: Cancel,
) -> Result<v1::TaskResult, TaskError> {
    let token = lease.token.clone().unwrap_or_default();
    let (lines, received) = mpsc::unbounded_channel::<String>();
    let logger =
        cached_client::task::spawn("forward-logs", forward_logs(ctx.remote.clone(), token.clone(), received));
    if lease.kind == v1::TaskKind::ImageIndex as i32 {
        let result = cancel.guard(image::index(&ctx.remote.client, &lease, &lines)).await;
        drop(lines);
        let _ = logger.await;
        return result;
    }
    let result = with_build_user(&ctx, &lease, &token, lines, cancel).await;
    let _ = logger.await;
    result
}

/// A build user and a task directory for the build, and both cleared after it.
async fn with_build_user(
    ctx: &TaskContext,
    lease: &TaskLease,
    token: &FencingToken,
    lines: mpsc::UnboundedSender<String>,
    cancel: Cancel,
) -> Result<v1::TaskResult, TaskError> {
    let user = cancel.guard(async { ctx.sandbox.acquire().await.map_err(TaskError::Infrastructure) }).await?;
    let dir = TaskDir::create(taskdir::task_path(&ctx.work_dir, &token_name(token)), user.owner())?;
    let mut linked = None;
    let result = build_task(ctx, lease, &dir, user.group(), &mut linked, lines, &cancel).await;
    // Whatever finished meanwhile, an aborted task's result is nobody's any more.
    let result = cancel.check().and(result);
    // A build that daemonised is still running: nothing of it may outlive the task or touch
    // the directory while it goes.
    if let Err(err) = user.kill_all().await {
        tracing::error!(error = %err, "cannot stop a finished build's processes");
    }
    dir.remove();
    // Only now are the module store's trees this task linked free of its links.
    drop(linked);
    result
}

/// The client the build's whole-build lookup, restore and record, and the image's layer cache,
/// go through: the lease's cache credential, as the bridge's. A purge cancels the namespace's jobs, and their credentials die
/// with their leases; the agent's own token outlives them, so a build that read entries the
/// purge removed and finished before its cancel arrived would have recorded its outputs again.
/// Without tokens (no credential minted) the agent's own client.
fn lease_cache_client(agent: &Client, lease: &TaskLease) -> Result<Client, TaskError> {
    if lease.cache_token.is_empty() {
        return Ok(agent.clone());
    }
    agent
        .with_token(Secret::new(lease.cache_token.clone()))
        .map_err(|err| TaskError::Infrastructure(format!("the lease's cache credential: {err}")))
}

/// `linked` receives the module store's trees the task's module cache links, for the caller to
/// hold until the directory is gone.
async fn build_task(
    ctx: &TaskContext,
    lease: &TaskLease,
    dir: &TaskDir,
    group: Option<&TaskGroup>,
    linked: &mut Option<Linked>,
    lines: mpsc::UnboundedSender<String>,
    cancel: &Cancel,
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
    let src = dir.path("src");
    let owner = dir.owner();
    let tree = materialize(
        &ctx.remote.client,
        &ctx.cache,
        source_root,
        &src,
        &ctx.tree_limits,
        ctx.max_task_disk,
        owner,
        cancel,
    )
    .await?;
    let module_dir = workspace::module_dir(&src, &tree.tree, &spec.module_dir)?;
    workspace::check_packages(&tree.tree, &spec.module_dir, &spec.packages)?;
    say(format!("runner-agent: {} source files at {}", tree.files(), module_dir.display()));

    let mut env = base_env(ctx, dir, &platform, target)?;
    env.push(("CACHED_NAMESPACE".into(), spec.namespace.clone()));
    // The lease's own credential (the job's namespace, for the lease's life) goes to the bridge
    // alone, on a socket: every tool of the build gets the environment, and reads the files
    // the job names (see `credential`).
    let served = if lease.cache_token.is_empty() {
        None
    } else {
        let served = credential::serve(&dir.root, owner, lease.cache_token.clone())
            .map_err(TaskError::Infrastructure)?;
        env.push((credential::SOCKET_ENV.into(), served.path().display().to_string()));
        Some(served)
    };
    let mut goflags = vec!["-modcacherw".to_owned()];
    match &spec.module_proxy {
        Some(proxy) => {
            let proxy = Digest::from_wire(Some(proxy)).map_err(|err| TaskError::Build(err.to_string()))?;
            let proxy_dir = dir.path("proxy");
            let files = materialize(
                &ctx.remote.client,
                &ctx.cache,
                proxy,
                &proxy_dir,
                &ctx.tree_limits,
                ctx.max_task_disk.saturating_sub(tree.disk),
                owner,
                cancel,
            )
            .await?;
            // Nothing of the build has run yet, and the tree's links stay inside it.
            let go_sum = read_go_sum(&module_dir.join("go.sum"), &say);
            let coverage = modules::coverage(&go_sum, files.file_paths());
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
            say(format!("runner-agent: module proxy of {} files", files.files()));
            let (prepared, held) =
                prepare_modules(ctx, &files, &dir.path("gomodcache"), owner, cancel).await?;
            *linked = Some(held);
            cancel.check()?;
            tracing::info!(
                linked = prepared.linked,
                extracted = prepared.extracted,
                left_to_go = prepared.left_to_go,
                "module cache prepared"
            );
            say(format!(
                "runner-agent: {} modules from the agent's store ({} extracted now), {} left to the go command",
                prepared.linked, prepared.extracted, prepared.left_to_go
            ));
        }
        None => env.push(("GOPROXY".into(), "off".into())),
    }
    let mut job_goflags = None;
    for var in &spec.env {
        if var.name == "GOFLAGS" {
            job_goflags = Some(var.value.as_str());
        } else {
            env.push((var.name.clone(), var.value.clone()));
        }
    }
    env.push(("GOFLAGS".into(), goflags_with(&goflags, job_goflags)));
    let deadline = Duration::from_millis(
        u64::try_from(lease.deadline_unix_ms - cached_client::clock::now_ms()).unwrap_or(0),
    );
    let timeout = ctx.task_timeout.min(deadline.max(Duration::from_secs(1)));
    let input = BuildInput {
        module_dir,
        source_tree: src.clone(),
        packages: spec.packages.clone(),
        output_dir: dir.path("out"),
        go_flags: spec.build_flags.iter().cloned().chain([NO_VCS.to_owned()]).collect(),
        env,
        namespace: spec.namespace.clone(),
        timeout,
        owner,
        task_dir: dir.root.clone(),
        max_disk: ctx.max_task_disk,
        placement: group.map(|group| group.placement().clone()),
        memory: group.and_then(|group| group.memory().cloned()),
    };
    say(format!("runner-agent: go build {} for {platform}", spec.packages.join(" ")));
    let cache = lease_cache_client(&ctx.remote.client, lease)?;
    let built = ctx.builder.build(&cache, &input, lines.clone(), cancel).await;
    // Nothing of the build runs any more (the build library's last process took it all down).
    drop(served);
    let built = built?;
    let written = if built.hit { taskdir::Outputs::Restored } else { taskdir::Outputs::Built };
    taskdir::check_outputs(&input.output_dir, owner, written).map_err(TaskError::Build)?;
    let paths: Vec<PathBuf> = built.outputs.iter().map(|(path, _)| path.clone()).collect();
    let upload = cached_client::transfer::upload_files(
        &ctx.remote.client,
        &paths,
        cached_client::transfer::DEFAULT_LEVEL,
    );
    let digests = cancel.guard(async { Ok(upload.await?) }).await?;
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
            // The layer cache writes the namespace's action cache: the lease's credential, as
            // the build's record.
            let layered =
                image::platform_image(&cache, &spec.namespace, image, &platform, &built.outputs, &lines);
            cancel.guard(layered).await?
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

/// The most of a go.sum read to check the module proxy against it; a larger one vouches for
/// nothing, so the checksum database stays on.
const MAX_GO_SUM: u64 = 64 << 20;

/// The module's go.sum, empty when absent, unreadable or larger than [`MAX_GO_SUM`].
fn read_go_sum(path: &std::path::Path, say: &impl Fn(String)) -> String {
    use std::io::Read;
    let mut go_sum = String::new();
    let Ok(file) = std::fs::File::open(path) else { return go_sum };
    if file.take(MAX_GO_SUM + 1).read_to_string(&mut go_sum).is_err() {
        return String::new();
    }
    if go_sum.len() as u64 > MAX_GO_SUM {
        say(format!("runner-agent: go.sum is larger than {MAX_GO_SUM} bytes, so it vouches for no module"));
        return String::new();
    }
    go_sum
}

/// The build's GOFLAGS: the agent's own flags, the job's GOFLAGS exactly as cached checked it,
/// and [`NO_VCS`] last, so nothing the job says overrides it. cached checks the fields the go
/// command splits the value into, with its quoting (`'-ldflags=-X "main.v=a  b"'` is one field);
/// splitting it again here, any other way, would hand the go command other fields than the
/// ones checked, so the value goes through whole.
pub fn goflags_with(agent: &[String], job: Option<&str>) -> String {
    let mut fields: Vec<&str> = agent.iter().map(String::as_str).collect();
    fields.extend(job.filter(|job| !job.trim().is_empty()));
    fields.push(NO_VCS);
    fields.join(" ")
}

/// Lays the proxy's module zips out in the task's module cache from the agent's store (see
/// [`crate::modules`]), before anything of the build runs.
async fn prepare_modules(
    ctx: &TaskContext,
    proxy: &Materialized,
    gomodcache: &std::path::Path,
    owner: Option<crate::sandbox::Owner>,
    cancel: &Cancel,
) -> Result<(Prepared, Linked), TaskError> {
    let zips: Vec<ModuleZip> = proxy
        .tree
        .nodes
        .iter()
        .filter_map(|node| match node {
            Node::File { path, digest, executable: false } => {
                ModuleZip::from_proxy_path(path, *digest, ctx.cache.path(*digest, false))
            }
            _ => None,
        })
        .collect();
    let (store, gomodcache, cancel) = (ctx.modules.clone(), gomodcache.to_owned(), cancel.clone());
    let stopped = move || cancel.is_cancelled();
    cached_client::task::spawn_blocking("prepare-modules", move || {
        store.prepare_unless(&zips, &gomodcache, owner, &stopped)
    })
    .await
    .map_err(|err| TaskError::Infrastructure(format!("preparing the module cache: {err}")))
}

/// The go command's environment for a target: sealed (HOME, TMPDIR, GOCACHE, the module cache,
/// GOPATH and the bridge's local tier all the task's own, no toolchain switching, no
/// telemetry), the target's variables, and the GOCACHEPROG bridge.
fn base_env(
    ctx: &TaskContext,
    dir: &TaskDir,
    platform: &Platform,
    target: &v1::Target,
) -> Result<Vec<(String, String)>, TaskError> {
    let own = |name: &str| dir.path(name).display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), crate::caps::build_path()),
        ("HOME".into(), own("home")),
        ("TMPDIR".into(), own("tmp")),
        ("GOCACHE".into(), own("gocache")),
        ("GOMODCACHE".into(), own("gomodcache")),
        ("GOPATH".into(), own("gopath")),
        ("GOENV".into(), "off".into()),
        ("GOTOOLCHAIN".into(), "local".into()),
        ("GOTELEMETRY".into(), "off".into()),
        ("GOWORK".into(), "off".into()),
        ("GOOS".into(), platform.goos.clone()),
        ("GOARCH".into(), platform.goarch.clone()),
        ("GOCACHEPROG".into(), ctx.gocacheprog.clone()),
        ("CACHED_GOCACHE_DIR".into(), own("gocacheprog")),
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
async fn forward_logs(remote: RemoteExec, token: FencingToken, mut lines: mpsc::UnboundedReceiver<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_sum_past_the_cap_vouches_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("go.sum");
        let said = std::cell::RefCell::new(Vec::new());
        let say = |line: String| said.borrow_mut().push(line);
        assert_eq!(read_go_sum(&path, &say), "");
        std::fs::write(&path, "example.com/m v1.0.0 h1:x=\n").unwrap();
        assert_eq!(read_go_sum(&path, &say), "example.com/m v1.0.0 h1:x=\n");
        // Sparse: no disk taken, and not read past the cap.
        std::fs::File::create(&path).unwrap().set_len(MAX_GO_SUM + 1).unwrap();
        assert_eq!(read_go_sum(&path, &say), "");
        assert!(said.borrow().iter().any(|line| line.contains("larger than")), "{:?}", said.borrow());
    }
}
