//! `cachectl submit`: build a GOOS/GOARCH matrix on runner agents. Uploads the module (only
//! what cached lacks) and the dependencies' module files, submits one job, follows it with
//! live progress, downloads every output to `dist/<goos>_<goarch>/<name>` and prints a
//! summary; exits non-zero when a target failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::platform::label;
use proto::v1::{self, JobState, TaskState};
use proto::{Digest, Platform};

use crate::submit::progress::{View, duration, outcome, print_table, printable, task_label};
use cached_client::connect::ConnectOptions;
use cached_client::error::{ClientError, Result};
use cached_client::remote_exec::RemoteExec;
use cached_client::tree::Tree;
use cached_gobuild::modules;
use cached_oci::job as image;

pub const DEFAULT_TARGETS: &str = "linux/amd64,linux/arm64,darwin/arm64,windows/amd64";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Targets, `goos/goarch[/level][+cgo]`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TARGETS)]
    targets: Vec<String>,
    /// Where outputs go: <output>/<goos>_<goarch>/<name>.
    #[arg(short, long, default_value = "dist")]
    output: PathBuf,
    /// Directory in the module to submit from (its go.mod is found upwards).
    #[arg(short = 'C', long, default_value = ".")]
    dir: PathBuf,
    /// Print the job id and return; follow it with `cachectl jobs watch ID`.
    #[arg(long)]
    detach: bool,
    /// Namespace of the cache entries the builds use.
    #[arg(long, env = "CACHED_NAMESPACE", default_value = "")]
    namespace: String,
    /// Build without -trimpath (on by default: binaries then do not depend on where agents
    /// put the sources, so builds hit across agents).
    #[arg(long)]
    no_trimpath: bool,
    /// -ldflags for go build.
    #[arg(long, allow_hyphen_values = true)]
    ldflags: Option<String>,
    /// -tags for go build.
    #[arg(long)]
    tags: Option<String>,
    /// Any other go build flag (repeatable), e.g. --build-flag=-buildvcs=false.
    #[arg(long = "build-flag", allow_hyphen_values = true)]
    build_flags: Vec<String>,
    /// C compiler for a cgo target, `goos/goarch=command` (repeatable); agents must have it.
    #[arg(long = "cc")]
    cc: Vec<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// Deadline of the whole job [default: the server's job_timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Let agents with any Go version build (by default they must have this machine's).
    #[arg(long)]
    any_go: bool,
    /// Build even when an earlier job with the same sources and settings succeeded and its
    /// results are still in cached (by default cached answers with that job at once).
    #[arg(long)]
    rebuild: bool,
    /// Make an image of the linux targets and push it to REGISTRY/REPOSITORY:TAG, with this
    /// machine's registry credentials (agents never get any).
    #[arg(long, value_name = "REPO:TAG")]
    image: Option<String>,
    /// Make an image of the linux targets and write it to this OCI image layout directory.
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    /// The output that goes in the image, when the build makes several.
    #[arg(long, value_name = "NAME")]
    image_binary: Option<String>,
    /// Directory of the binary in the image; it joins PATH.
    #[arg(long, value_name = "DIR", default_value = cached_oci::job::DEFAULT_DIR)]
    image_dir: String,
    /// User the container runs as [default: 65532 (nonroot)]
    #[arg(long, value_name = "USER")]
    image_user: Option<String>,
    /// Image environment variable, KEY=VALUE; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    image_env: Vec<String>,
    /// Image label, KEY=VALUE; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    image_label: Vec<String>,
    /// Layer compression: gzip or zstd.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    compression: String,
    /// Time of the image's files and `created`, in seconds since the epoch.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// Sign the pushed image index as `cosign sign --key KEY` does (see `cachectl sign`).
    #[arg(long, value_name = "KEY", requires = "image")]
    sign_key: Option<PathBuf>,
    /// File holding --sign-key's password [default: $COSIGN_PASSWORD]
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    sign_key_password_file: Option<PathBuf>,
    #[command(flatten)]
    registry: super::image::RegistryArgs,
    /// Packages to build, relative to --dir [default: .].
    packages: Vec<String>,
}

fn usage(message: impl Into<String>) -> ClientError {
    ClientError::Usage(message.into())
}

/// The directory of the nearest go.mod at or above `dir`.
fn module_root(dir: &Path) -> Result<PathBuf> {
    let dir = std::fs::canonicalize(dir).map_err(ClientError::file(dir))?;
    dir.ancestors().find(|candidate| candidate.join("go.mod").is_file()).map(Path::to_owned).ok_or_else(
        || usage(format!("no go.mod in {} or above it: submit runs in a Go module", dir.display())),
    )
}

fn go_version(dir: &Path) -> Result<String> {
    let output = std::process::Command::new("go")
        .args(["env", "GOVERSION"])
        .current_dir(dir)
        .output()
        .map_err(|err| usage(format!("cannot run go: {err}")))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The image part of the job, and the registry and layout the image goes to; checked before
/// anything is uploaded.
fn image_spec(args: &Args, targets: &[v1::Target]) -> Result<Option<v1::ImageSpec>> {
    if args.image.is_none() && args.oci_layout.is_none() {
        return Ok(None);
    }
    if args.detach {
        return Err(usage("--image and --oci-layout need the job followed to its end: drop --detach"));
    }
    if let Some(reference) = &args.image {
        cached_oci::Reference::parse(reference)?;
    }
    let mut platforms: Vec<(String, cached_oci::ImagePlatform)> = Vec::new();
    for target in targets {
        let platform = Platform::from_wire(target).map_err(|err| usage(err.to_string()))?;
        let Some(image) = image::image_platform(&platform) else { continue };
        let image = image?;
        if let Some((other, _)) = platforms.iter().find(|(_, p)| p.matches(&image)) {
            return Err(usage(format!(
                "targets {other} and {platform} would be the same image platform ({image})"
            )));
        }
        platforms.push((platform.to_string(), image));
    }
    if platforms.is_empty() {
        return Err(usage("an image needs at least one linux target in --targets"));
    }
    let pairs = |what: &str, entries: &[String]| -> Result<Vec<(String, String)>> {
        entries
            .iter()
            .map(|entry| {
                entry
                    .split_once('=')
                    .filter(|(key, _)| !key.is_empty())
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .ok_or_else(|| usage(format!("--{what} {entry:?}: expected KEY=VALUE")))
            })
            .collect()
    };
    pairs("image-env", &args.image_env)?;
    Ok(Some(v1::ImageSpec {
        base: String::new(),
        binary: args.image_binary.clone().unwrap_or_default(),
        dir: args.image_dir.clone(),
        user: args.image_user.clone().unwrap_or_default(),
        env: args.image_env.clone(),
        labels: pairs("image-label", &args.image_label)?.into_iter().collect(),
        compression: args.compression.clone(),
        epoch: args.source_date_epoch,
        uid: 0,
        gid: 0,
    }))
}

pub async fn run(server: &str, connect: &ConnectOptions, args: Args) -> Result<()> {
    let root = module_root(&args.dir)?;
    let here = std::fs::canonicalize(&args.dir).map_err(ClientError::file(&args.dir))?;
    let sub = here.strip_prefix(&root).unwrap_or(Path::new("")).to_string_lossy().replace('\\', "/");
    let mut targets = Vec::new();
    let ccs: BTreeMap<String, String> = args
        .cc
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .map(|(platform, cc)| (platform.to_owned(), cc.to_owned()))
                .ok_or_else(|| usage(format!("--cc {spec:?}: expected goos/goarch=command")))
        })
        .collect::<Result<_>>()?;
    for text in &args.targets {
        let platform: Platform = text.parse().map_err(|err: proto::PlatformError| usage(err.to_string()))?;
        let cc = ccs.get(&format!("{}/{}", platform.goos, platform.goarch)).cloned().unwrap_or_default();
        targets.push(platform.to_wire(if platform.cgo { &cc } else { "" }));
    }
    let packages: Vec<String> =
        if args.packages.is_empty() { vec![".".to_owned()] } else { args.packages.clone() };
    let packages = packages
        .into_iter()
        .map(|package| match (sub.is_empty(), package.strip_prefix('.')) {
            (false, Some(rest)) if rest.is_empty() || rest.starts_with('/') => format!("./{sub}{rest}"),
            _ => package,
        })
        .collect();
    let mut build_flags = Vec::new();
    if !args.no_trimpath {
        build_flags.push("-trimpath".to_owned());
    }
    if let Some(ldflags) = &args.ldflags {
        build_flags.push(format!("-ldflags={ldflags}"));
    }
    if let Some(tags) = &args.tags {
        build_flags.push(format!("-tags={tags}"));
    }
    build_flags.extend(args.build_flags.iter().cloned());
    let image = image_spec(&args, &targets)?;
    // A wrong password should stop us before the upload, not after the push.
    let sign_key = match &args.sign_key {
        Some(path) => Some(super::sign::load_key(path, args.sign_key_password_file.as_deref())?),
        None => None,
    };

    let started = Instant::now();
    let walk_root = root.clone();
    // Outputs and the image layout are not sources.
    let outside: Vec<PathBuf> = [Some(&args.output), args.oci_layout.as_ref()]
        .into_iter()
        .flatten()
        .map(|dir| std::fs::canonicalize(dir).unwrap_or_else(|_| root.join(dir)))
        .collect();
    let (tree, deps) = cached_client::task::spawn_blocking(
        "walk-sources",
        move || -> Result<(Tree, modules::ModuleFiles)> {
            let mut tree = Tree::from_dir(&walk_root)?;
            for dir in outside {
                if let Ok(inside) = dir.strip_prefix(&walk_root) {
                    tree.remove_prefix(&inside.to_string_lossy().replace('\\', "/"));
                }
            }
            Ok((tree, modules::collect(&walk_root)?))
        },
    )
    .await
    .map_err(|err| usage(format!("reading the module failed: {err}")))??;
    let mut remote = RemoteExec::connect(server, connect).await?;
    let sources = tree.upload(&remote.client).await?;
    let proxy = if deps.files.is_empty() { None } else { Some(deps.tree()?.upload(&remote.client).await?) };
    if !deps.vendored && !deps.files.is_empty() {
        let go_sum = std::fs::read_to_string(root.join("go.sum")).unwrap_or_default();
        let coverage = modules::coverage(&go_sum, deps.files.keys().map(String::as_str));
        if !coverage.complete() {
            eprintln!(
                "cachectl: warning: go.sum has no line for {} of the module files (e.g. {}); agents keep the \
                 checksum database on and cannot reach it, so builds needing them fail. Run `go mod tidy`.",
                coverage.missing.len(),
                coverage.missing[0]
            );
        }
    }
    let uploaded = sources.sent_blobs + proxy.map_or(0, |p| p.sent_blobs);
    let sent = sources.sent_bytes + proxy.map_or(0, |p| p.sent_bytes);
    eprintln!(
        "uploaded {} ({} files, {}; {} new blobs, {} sent){} in {:.1}s",
        root.display(),
        sources.files,
        bytesize::ByteSize(sources.bytes),
        uploaded,
        bytesize::ByteSize(sent),
        match (deps.vendored, &proxy) {
            (true, _) => ", vendored dependencies".to_owned(),
            (false, Some(proxy)) => format!(", {} modules ({} files)", deps.modules, proxy.files),
            (false, None) => String::new(),
        },
        started.elapsed().as_secs_f64()
    );

    let spec = v1::JobSpec {
        source_root: Some(sources.root.to_wire()),
        module_dir: String::new(),
        packages,
        targets,
        build_flags,
        env: Vec::new(),
        module_proxy: proxy.map(|p| p.root.to_wire()),
        go_version: if args.any_go { String::new() } else { go_version(&root)? },
        namespace: args.namespace.clone(),
        priority: args.priority,
        timeout_seconds: args.timeout.map_or(0, |t| t.as_secs().max(1)),
        image: image.clone(),
    };
    let request = v1::SubmitRequest { spec: Some(spec), rebuild: args.rebuild };
    let submitted = remote.jobs.submit(request).await?.into_inner();
    let job_id = submitted.job_id;
    if args.detach {
        outln!("{job_id}");
        return Ok(());
    }
    match submitted.reused {
        true => eprintln!(
            "job {job_id} (reused: it built these sources with these settings and its results are \
             still in cached; nothing was built, --rebuild builds anyway)"
        ),
        false => eprintln!("job {job_id}"),
    }
    let (status, remote) = follow(server, connect, remote, &job_id, Some(&args.output), started).await?;
    if let Some(image) = &image {
        let built = publish(&remote, &status, image, &args).await?;
        if let Some(key) = &sign_key {
            let report = super::image::sign_index(&built, key, &args.registry.options()).await?;
            out!("{}", super::sign::render(&report));
        }
    }
    Ok(())
}

/// Writes the job's image to the layout and/or pushes it: the image is built again here from
/// the downloaded binaries through the same library and spec as on the agents, so every layer
/// is a hit in the layer cache (the agents stored them) and the documents come out
/// byte-identical; it must arrive at the job's index digest before anything is written or
/// pushed. Publishing here rather than from the agents keeps registry credentials on this
/// machine: agents run builds for every submitter and hold none.
async fn publish(
    remote: &RemoteExec,
    status: &v1::JobStatus,
    spec: &v1::ImageSpec,
    args: &Args,
) -> Result<cached_oci::ImageResult> {
    let index = status.image.as_ref().ok_or_else(|| {
        ClientError::Server(format!("job {} finished without an image index", status.job_id))
    })?;
    let mut name: Option<String> = None;
    let mut binaries = Vec::new();
    for task in status.tasks.iter().filter(|task| task.kind == v1::TaskKind::Build as i32) {
        let platform = Platform::from_wire(&task.target.clone().unwrap_or_default())
            .map_err(|err| ClientError::Server(err.to_string()))?;
        let Some(image_platform) = image::image_platform(&platform) else { continue };
        let result = task.result.clone().unwrap_or_default();
        let names: Vec<&str> = result.outputs.iter().map(|output| output.name.as_str()).collect();
        let picked = image::pick_binary(spec, &names).map_err(ClientError::Server)?.to_owned();
        if name.as_ref().is_some_and(|name| *name != picked) {
            return Err(ClientError::Server(format!(
                "the targets put different binaries in the image ({picked})"
            )));
        }
        binaries.push((image_platform?, args.output.join(platform.dir_name()).join(&picked)));
        name = Some(picked);
    }
    let name = name.ok_or_else(|| ClientError::Server("no target of the job has an image".into()))?;
    let mut library = image::oci_spec(spec, &name, binaries)?;
    // The agents' layers, in the job's namespace (as cached has it: the one submitted).
    let namespace = status.spec.as_ref().map_or("", |spec| spec.namespace.as_str());
    let cache = cached_oci::LayerCache::new(remote.client.clone(), namespace);
    // The documents alone first (nothing written or pushed; every layer a cache hit, so this
    // costs hashing the binaries and one lookup), checked against the job's index.
    let derived = cached_oci::build_image(&library, Some(&cache)).await?;
    if derived.index.digest.to_string() != index.digest {
        return Err(ClientError::Failed(format!(
            "the image built here has index {} but the agents assembled {}: the image is not reproducible \
             between this machine and the agents (different cachectl versions?); nothing was written or pushed",
            derived.index.digest, index.digest
        )));
    }
    library.oci_layout.clone_from(&args.oci_layout);
    library.push.clone_from(&args.image);
    library.registry = args.registry.options();
    let built = cached_oci::build_image(&library, Some(&cache)).await?;
    for warning in derived.warnings.iter().chain(&built.warnings) {
        eprintln!("cachectl: warning: {warning}");
    }
    out!("{}", super::image::render(&built));
    Ok(built)
}

/// Follows a job to its end (reconnecting if cached restarts), downloads its outputs to
/// `output` and prints the summary. Fails when any target failed.
pub async fn follow(
    server: &str,
    connect: &ConnectOptions,
    mut remote: RemoteExec,
    job_id: &str,
    output: Option<&Path>,
    started: Instant,
) -> Result<(v1::JobStatus, RemoteExec)> {
    let mut view = View::on_stderr();
    let mut backoff = Duration::from_millis(200);
    let status = 'watch: loop {
        let events = remote.jobs.watch(v1::WatchRequest { job_id: job_id.to_owned() }).await;
        let mut events = match events {
            Ok(events) => events.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                view.note("cached is unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if let Ok(again) = RemoteExec::connect(server, connect).await {
                    remote = again;
                }
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        backoff = Duration::from_millis(200);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Some(done) = view.apply(&event) {
                        break 'watch done;
                    }
                }
                Err(_) => break,
            }
        }
        view.note("watch interrupted; reconnecting");
        tokio::time::sleep(backoff).await;
        if let Ok(again) = RemoteExec::connect(server, connect).await {
            remote = again;
        }
    };
    view.finish();
    let mut failed = 0;
    let mut rows = Vec::new();
    for task in &status.tasks {
        let state = TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified);
        let result = task.result.clone().unwrap_or_default();
        if task.kind == v1::TaskKind::ImageIndex as i32 {
            if state != TaskState::Succeeded {
                failed += 1;
            }
            let index = result.index.as_ref().map_or("-".to_owned(), |index| index.digest.clone());
            let time = duration(result.duration_ms);
            rows.push([task_label(task), task.agent.clone(), outcome(state, false, "-"), time, index]);
            continue;
        }
        let target = task.target.clone().unwrap_or_default();
        let platform = Platform::from_wire(&target).map_err(|err| ClientError::Server(err.to_string()))?;
        let mut files = Vec::new();
        if state == TaskState::Succeeded {
            if let Some(output) = output {
                let dir = output.join(platform.dir_name());
                std::fs::create_dir_all(&dir).map_err(ClientError::file(&dir))?;
                for file in &result.outputs {
                    let digest = Digest::from_wire(file.digest.as_ref())
                        .map_err(|err| ClientError::Server(err.to_string()))?;
                    proto::platform::check_output_name(&file.name).map_err(ClientError::Server)?;
                    let dest = dir.join(&file.name);
                    cached_client::transfer::download_to_file(&remote.client, digest, &dest).await?;
                    set_executable(&dest, file.executable)?;
                    files.push(dest.display().to_string());
                }
            } else {
                files.extend(result.outputs.iter().map(|file| file.name.clone()));
            }
        } else {
            failed += 1;
        }
        if let Some(image) = &result.image {
            files.push(format!("+ image {}", image::platform_label(image)));
        }
        let outcome = outcome(state, result.hit, "miss");
        rows.push([
            label(&target),
            task.agent.clone(),
            outcome,
            duration(result.duration_ms),
            files.join(" "),
        ]);
    }
    print_table(&rows);
    for task in status.tasks.iter().filter(|task| task.state == TaskState::Failed as i32) {
        eprintln!("\n{} failed:\n{}", task_label(task), printable(task.error.trim_end()));
    }
    if !status.error.is_empty() {
        eprintln!("\njob {job_id} failed: {}", printable(&status.error));
        failed += 1;
    }
    let state = JobState::try_from(status.state).unwrap_or(JobState::Unspecified);
    outln!("job {job_id} {} in {:.1}s", format!("{state:?}").to_lowercase(), started.elapsed().as_secs_f64());
    if failed > 0 {
        return Err(ClientError::Server(format!("{failed} of {} tasks did not succeed", status.tasks.len())));
    }
    Ok((status, remote))
}

#[cfg(unix)]
fn set_executable(path: &Path, executable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(ClientError::file(path))
}

#[cfg(not(unix))]
fn set_executable(_: &Path, _: bool) -> Result<()> {
    Ok(())
}
