//! One go build through the whole-build cache: derive the key, restore a hit, or run go with
//! the GOCACHEPROG bridge, upload the outputs and record the build.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1;

use crate::exec::{Exec, Invocation, Processes, Sink};
use crate::gocache::{self, GoCache};
use crate::inputs::{Derived, GoCall};
use crate::outputs::Planned;
use crate::{confine, explain, flags, inputs, manifest, outputs};
use cached_client::connect::{Client, ConnectOptions};
use cached_client::error::ClientError;

/// One `go build`.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// Where go runs (where go.mod is, or a directory inside the module).
    pub module_dir: PathBuf,
    /// Package patterns, e.g. `["./cmd/app"]`; empty builds the package in `module_dir`.
    pub packages: Vec<String>,
    /// The -o path (file or directory), relative to `module_dir`; None: go's default name.
    pub output: Option<PathBuf>,
    /// The go build flags as given (`-trimpath`, `-ldflags=...`, `-tags=...`).
    pub go_flags: Vec<String>,
    /// Extra environment for go (GOOS, GOARCH, GOAMD64, CGO_ENABLED, CC, ...). Only
    /// allow-listed variables enter the key (through `go env`).
    pub env: Vec<(String, String)>,
    pub namespace: String,
    /// The directory the sources came in (a job's tree, a developer's repository): includes
    /// may name files in it outside the build's modules. None: the modules only.
    pub source_tree: Option<PathBuf>,
    /// The directories the build key may read in, for a builder that reads for someone else
    /// (an agent, for a job): a build whose packages or modules lie elsewhere gets no key and
    /// no shared go cache, and nothing of it is read. Empty: no bound, for one's own builds,
    /// whose go.mod may rightly replace a module with a directory next to the repository.
    pub confine_to: Vec<PathBuf>,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub hit: bool,
    /// The build key in hex; empty when none was derived.
    pub key: String,
    /// Files written, with their CAS digests.
    pub outputs: Vec<(PathBuf, proto::Digest)>,
    pub duration: Duration,
    /// On a miss, the explanation lines (or why the build was not cached); None on a hit.
    pub explanation: Option<String>,
    /// go's exit code (0 on a hit).
    pub exit_code: i32,
}

/// How builds run; the defaults suit runner agents and tests.
#[derive(Clone)]
pub struct BuildOptions {
    /// The go command.
    pub go: PathBuf,
    /// The GOCACHEPROG command line for misses; None: `cachectl gocacheprog` (this executable
    /// when it is cachectl, else `cachectl` next to it, else on PATH).
    pub gocacheprog: Option<String>,
    /// go's stdout and stderr go straight to ours instead of to the log (the CLI).
    pub inherit_stdio: bool,
    /// Deadline of each whole-build cache call.
    pub timeout: Duration,
    pub exec: Arc<dyn Exec>,
    /// How the GOCACHEPROG bridge of a miss connects: the token and TLS files it is handed.
    pub bridge_connect: ConnectOptions,
    /// Look up only: a miss uploads nothing and records no build, and its bridge runs
    /// read-only (an untrusted build, such as a pull request's, whose token may write).
    pub read_only: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            go: PathBuf::from("go"),
            gocacheprog: None,
            inherit_stdio: false,
            timeout: Duration::from_secs(20),
            exec: Arc::new(Processes::default()),
            bridge_connect: ConnectOptions::default(),
            read_only: false,
        }
    }
}

/// Builds `request` through the whole-build cache of `client` (None: plain go build).
pub async fn build(
    client: Option<&Client>,
    request: &BuildRequest,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<BuildOutcome, ClientError> {
    build_with(client, request, &BuildOptions::default(), log).await
}

/// The prefix of the wrapper's own lines.
const PREFIX: &str = "cachectl:";

fn say(log: &mut (dyn FnMut(&str) + Send), text: &str) {
    log(&format!("{PREFIX} {text}"));
}

/// `cachectl gocacheprog` as a GOCACHEPROG command line.
pub fn default_gocacheprog() -> String {
    let exe = std::env::current_exe().ok();
    let program = exe
        .as_ref()
        .and_then(|exe| {
            let stem = exe.file_stem()?.to_string_lossy();
            if stem == "cachectl" {
                return Some(exe.clone());
            }
            let sibling = exe.with_file_name(format!("cachectl{}", std::env::consts::EXE_SUFFIX));
            sibling.is_file().then_some(sibling)
        })
        .map_or_else(|| "cachectl".to_owned(), |path| path.display().to_string());
    let quoted = if program.contains(char::is_whitespace) { format!("'{program}'") } else { program };
    format!("{quoted} gocacheprog")
}

/// The variables that start the bridge, and those to remove so that it sees each one way only.
pub type BridgeEnv = (Vec<(String, String)>, Vec<String>);

/// Where the bridge reads that it may not upload.
pub const READ_ONLY_VAR: &str = "CACHED_READ_ONLY";

/// The environment that points the GOCACHEPROG bridge (`program`) at `server`, with the token
/// and TLS settings of `connect` (passed by environment, never on a command line, never
/// logged), and the variables to remove so the bridge sees the token one way only.
pub fn bridge_env(server: &str, namespace: &str, program: String, connect: &ConnectOptions) -> BridgeEnv {
    let mut env = vec![
        ("GOCACHEPROG".to_owned(), program),
        ("CACHED_ADDR".to_owned(), server.to_owned()),
        ("CACHED_NAMESPACE".to_owned(), namespace.to_owned()),
    ];
    let mut remove = Vec::new();
    if let Some(token) = &connect.token {
        env.push(("CACHED_TOKEN".to_owned(), token.expose().to_owned()));
        remove.push("CACHED_TOKEN_FILE".to_owned());
    }
    // The bridge sends the token where this process would, no further.
    if connect.allow_insecure_token {
        env.push(("CACHED_ALLOW_INSECURE_TOKEN".to_owned(), "1".to_owned()));
    } else {
        remove.push("CACHED_ALLOW_INSECURE_TOKEN".to_owned());
    }
    for (name, path) in [
        ("CACHED_TLS_CA", &connect.tls_ca),
        ("CACHED_TLS_CLIENT_CERT", &connect.tls_client_cert),
        ("CACHED_TLS_CLIENT_KEY", &connect.tls_client_key),
    ] {
        if let Some(path) = path {
            env.push((name.to_owned(), path.display().to_string()));
        }
    }
    (env, remove)
}

/// A build in progress: what every path through `build_with` shares.
struct Run<'a> {
    request: &'a BuildRequest,
    options: &'a BuildOptions,
    dir: PathBuf,
    started: Instant,
}

impl Run<'_> {
    /// Whether go would start a cache program the environment names.
    fn names_cache_program(&self) -> bool {
        let own =
            self.request.env.iter().rev().find(|(name, _)| name == "GOCACHEPROG").map(|(_, v)| v.clone());
        own.or_else(|| self.options.exec.inherited_var("GOCACHEPROG"))
            .is_some_and(|program| !program.is_empty())
    }

    /// go build with the request's flags, output and packages; with -a when `rebuild`.
    fn go_args(&self, rebuild: bool) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        args.extend(self.request.go_flags.iter().cloned());
        if rebuild {
            args.insert(1 + leading_chdir(&self.request.go_flags), "-a".to_owned());
        }
        let has_output = self
            .request
            .go_flags
            .iter()
            .any(|f| f == "-o" || f.starts_with("-o=") || f == "--o" || f.starts_with("--o="));
        if let (Some(output), false) = (&self.request.output, has_output) {
            args.push("-o".to_owned());
            args.push(output.display().to_string());
        }
        args.extend(self.request.packages.iter().cloned());
        args
    }

    /// Runs go build, with the bridge to `client` as `go_cache` allows; returns go's exit code
    /// and how long it took. Without a client, a bridge the environment already names (an
    /// agent's task has one) is held to `go_cache` as well.
    async fn go(
        &self,
        client: Option<&Client>,
        go_cache: GoCache,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(i32, Duration), ClientError> {
        let bridge = client.map(|client| {
            let program = self.options.gocacheprog.clone().unwrap_or_else(default_gocacheprog);
            bridge_env(&client.server, &self.request.namespace, program, &self.options.bridge_connect)
        });
        let program_runs = bridge.is_some() || self.names_cache_program();
        let go_cache = go_cache.with_program(program_runs);
        let mut env = self.request.env.clone();
        let env_remove = go_cache.apply(bridge, &mut env);
        if self.options.read_only {
            // Whatever bridge runs, the wrapper's or one the environment names.
            env.push((READ_ONLY_VAR.to_owned(), "true".to_owned()));
        }
        let mut invocation = Invocation {
            program: self.options.go.clone(),
            args: self.go_args(go_cache == GoCache::Off),
            dir: self.request.module_dir.clone(),
            env,
            env_remove,
        };
        if go_cache == GoCache::Off {
            gocache::keep_off(self.options.exec.as_ref(), &self.options.go, &mut invocation).await?;
        } else if !program_runs {
            gocache::without_own_index(self.options.exec.as_ref(), &mut invocation);
        }
        let started = Instant::now();
        let sink = if self.options.inherit_stdio { Sink::Inherit } else { Sink::Lines(log) };
        let code = self
            .options
            .exec
            .stream(&invocation, sink)
            .await
            .map_err(ClientError::run(self.options.go.display().to_string()))?;
        Ok((code, started.elapsed()))
    }

    /// What an uncached build wrote to the request's -o path: the file, or the files directly
    /// in the directory.
    async fn written_outputs(&self) -> Vec<(PathBuf, proto::Digest)> {
        let Some(output) = &self.request.output else { return Vec::new() };
        let path = self.dir.join(output);
        let files: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
                .unwrap_or_default()
        } else if path.is_file() {
            vec![path]
        } else {
            Vec::new()
        };
        let planned: Vec<Planned> =
            files.into_iter().map(|path| Planned { package: String::new(), path }).collect();
        outputs::hash(&planned).await
    }

    /// go build without the whole-build cache, with go's as `go_cache` allows.
    async fn uncached(
        &self,
        client: Option<&Client>,
        unkeyed: Unkeyed,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<BuildOutcome, ClientError> {
        let Unkeyed { reason, go_cache } = unkeyed;
        say_go_cache(log, go_cache);
        let (exit_code, _) = self.go(client, go_cache, log).await?;
        let outputs = if exit_code == 0 { self.written_outputs().await } else { Vec::new() };
        Ok(BuildOutcome {
            hit: false,
            key: String::new(),
            outputs,
            duration: self.started.elapsed(),
            explanation: Some(reason),
            exit_code,
        })
    }
}

/// Whether a failed call means the server cannot be reached (rather than that it refused).
fn unreachable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
}

/// [`build`] with explicit options.
pub async fn build_with(
    client: Option<&Client>,
    request: &BuildRequest,
    options: &BuildOptions,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<BuildOutcome, ClientError> {
    let started = Instant::now();
    let mut all_args = request.go_flags.clone();
    all_args.extend(request.packages.iter().cloned());
    let parsed = flags::parse_command_line(&all_args).and_then(|line| {
        let command_line = flags::effective("", &line)?;
        Ok((line, command_line))
    });
    let dir = match &parsed {
        Ok((_, flags)) => match &flags.chdir {
            Some(chdir) => request.module_dir.join(chdir),
            None => request.module_dir.clone(),
        },
        Err(_) => request.module_dir.clone(),
    };
    let run = Run { request, options, dir, started };
    let Some(client) = client else {
        // go may still reach a cache program the environment names.
        let go_cache = match &parsed {
            Ok((line, command_line)) => match derive(&run, line, command_line).await {
                Ok((derived, _)) => derived.go_cache,
                Err(unkeyed) => unkeyed.go_cache,
            },
            Err(_) => GoCache::Off,
        };
        let unkeyed = Unkeyed { reason: "not cached: cached is unreachable".to_owned(), go_cache };
        return run.uncached(None, unkeyed, log).await;
    };
    let (line, command_line) = match parsed {
        Ok(parsed) => parsed,
        Err(flags::Unsupported(reason)) => {
            say(log, &format!("not caching this build: {reason}"));
            // Without the packages, the files the build reads are not known.
            let unkeyed = Unkeyed { reason: format!("not cached: {reason}"), go_cache: GoCache::Off };
            return run.uncached(Some(client), unkeyed, log).await;
        }
    };

    let derived = without_old_outputs(&run, &line, &command_line).await?;
    let (derived, planned) = match derived {
        Ok(found) => found,
        Err(unkeyed) => {
            say(log, &format!("not caching this build: {}", unkeyed.reason));
            let unkeyed = Unkeyed { reason: format!("not cached: {}", unkeyed.reason), ..unkeyed };
            return run.uncached(Some(client), unkeyed, log).await;
        }
    };
    let key = derived.manifest.key();
    let key_hex = manifest::hex(&key);
    let target = v1::BuildTarget {
        module: derived.module.clone(),
        package: {
            let mut roots: Vec<&str> = derived.roots.iter().map(|r| r.import_path.as_str()).collect();
            roots.sort_unstable();
            roots.join(" ")
        },
        goos: derived.goos.clone(),
        goarch: derived.goarch.clone(),
    };
    let wire_manifest = derived.manifest.to_wire();
    let lookup = v1::BuildLookupRequest {
        namespace: request.namespace.clone(),
        target: Some(target.clone()),
        key: key.to_vec().into(),
        manifest: Some(wire_manifest.clone()),
    };
    let answer = match tokio::time::timeout(options.timeout, client.builds.clone().lookup(lookup)).await {
        Ok(Ok(answer)) => answer.into_inner(),
        Ok(Err(status)) if !unreachable(&status) => {
            say(
                log,
                &format!(
                    "warning: the whole-build lookup failed ({}: {}); building without it",
                    code_name(&status),
                    status.message()
                ),
            );
            let reason = format!("not cached: lookup failed: {}", status.message());
            return run.uncached(Some(client), Unkeyed { reason, go_cache: derived.go_cache }, log).await;
        }
        failed => {
            let reason = match failed {
                Ok(Err(status)) => status.message().to_owned(),
                _ => format!("no answer within {:?}", options.timeout),
            };
            say(
                log,
                &format!(
                    "warning: cached at {} is unreachable ({reason}); running go build without the cache",
                    client.server
                ),
            );
            let reason = format!("not cached: cached is unreachable ({reason})");
            return run.uncached(None, Unkeyed { reason, go_cache: derived.go_cache }, log).await;
        }
    };

    if answer.hit {
        match outputs::restore(client, &planned, &answer.outputs).await {
            Ok(written) => {
                let bytes: u64 = written.iter().map(|(_, digest)| digest.size).sum();
                let elapsed = started.elapsed();
                say(
                    log,
                    &format!(
                        "cache hit for {}, key {}: restored {} ({}) in {} ms",
                        explain::target_text(&target),
                        explain::short(&key),
                        files(written.len()),
                        cached_client::size::human(bytes),
                        elapsed.as_millis()
                    ),
                );
                return Ok(BuildOutcome {
                    hit: true,
                    key: key_hex,
                    outputs: written,
                    duration: elapsed,
                    explanation: None,
                    exit_code: 0,
                });
            }
            Err(err) => say(log, &format!("the cached outputs could not be restored ({err}); building")),
        }
    }
    let lines = match &answer.explanation {
        Some(explanation) if !answer.hit => {
            explain::miss_lines(&target, &key, explanation, cached_client::clock::now_ms())
        }
        _ => vec![format!(
            "cache miss for {}, key {}: restoring failed",
            explain::target_text(&target),
            explain::short(&key)
        )],
    };
    for line in &lines {
        say(log, line);
    }
    // go's action IDs hash only the files go lists for each package, so its cache (the
    // bridge's, shared through the server) may hold an object built with an older version of
    // a file this key names; recording that under this key would restore it on every hit.
    // The bridge keys this build's entries under a salt of those files instead.
    say_go_cache(log, derived.go_cache);
    let (exit_code, build_time) = run.go(Some(client), derived.go_cache, log).await?;
    let mut outcome = BuildOutcome {
        hit: false,
        key: key_hex,
        outputs: Vec::new(),
        duration: Duration::ZERO,
        explanation: Some(lines.join("\n")),
        exit_code,
    };
    if exit_code == 0 && options.read_only {
        say(log, "read-only: the build was not recorded");
        outcome.outputs = outputs::hash(&planned).await;
    } else if exit_code == 0 && !inputs_unchanged(&run, &line, &command_line, &derived.manifest).await {
        say(log, "warning: the build's inputs changed while go ran; the build was not cached");
        outcome.outputs = outputs::hash(&planned).await;
    } else if exit_code == 0 {
        match record(client, request, &target, &key, wire_manifest, &planned, build_time, options.timeout)
            .await
        {
            Ok(written) => outcome.outputs = written,
            Err(err) => {
                say(log, &format!("warning: the build was not cached: {err}"));
                outcome.outputs = outputs::hash(&planned).await;
            }
        }
    }
    outcome.duration = started.elapsed();
    Ok(outcome)
}

/// The key inputs and planned outputs, derived with the outputs of an earlier build removed
/// first: go takes an output whose build ID matches its action ID as up to date, though that
/// ID misses what the key adds (included files, the C toolchain's environment), and an old
/// output left where go did not write must never be recorded as what it wrote. go stamps the
/// repository as it finds it when it starts, so a tree that an untracked old output made
/// dirty is derived again without it.
async fn without_old_outputs(
    run: &Run<'_>,
    line: &flags::CommandLine,
    command_line: &flags::BuildFlags,
) -> Result<Result<(Derived, Vec<Planned>), Unkeyed>, ClientError> {
    let derived = derive(run, line, command_line).await;
    let Ok((found, planned)) = &derived else { return Ok(derived) };
    let present = planned.iter().any(|output| go_replaces(&output.path));
    if !present {
        return Ok(derived);
    }
    remove_outputs(planned)?;
    let dirty = found.manifest.get(VCS_MODIFIED).is_some_and(|component| component.display == "true");
    Ok(if dirty { derive(run, line, command_line).await } else { derived })
}

/// The component saying whether the repository had changes when the build started.
const VCS_MODIFIED: &str = "vcs.modified";

/// Whether the inputs derived again after go ran are those looked up: a file edited while go
/// compiled (an editor saving, another step of the job) made a binary of other contents than
/// the key names, which every later build of the key would restore. Whether the repository
/// is dirty is left out: the outputs just written may be untracked files in it, and go
/// stamped it as it was when go started.
async fn inputs_unchanged(
    run: &Run<'_>,
    line: &flags::CommandLine,
    command_line: &flags::BuildFlags,
    looked_up: &manifest::Manifest,
) -> bool {
    let Ok((again, _)) = derive(run, line, command_line).await else { return false };
    let inputs = |manifest: &manifest::Manifest| -> Vec<manifest::Component> {
        manifest.components().filter(|component| component.name != VCS_MODIFIED).cloned().collect()
    };
    inputs(&again.manifest) == inputs(looked_up)
}

fn is_regular_file(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file())
}

/// Whether `path` holds an old output go would link again: never a FIFO or a directory, nor
/// a file go refuses to overwrite (a script named like the binary), where go must fail as it
/// does without the wrapper.
fn go_replaces(path: &std::path::Path) -> bool {
    is_regular_file(path) && outputs::go_would_overwrite(path)
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn files(count: usize) -> String {
    if count == 1 { "1 file".to_owned() } else { format!("{count} files") }
}

/// Removes the files the build will write, so that go links them again: it leaves an output
/// alone when the build ID in it matches what it would build, which does not tell a file
/// built from another version of an included file.
fn remove_outputs(planned: &[Planned]) -> Result<(), ClientError> {
    for output in planned {
        if !go_replaces(&output.path) {
            continue;
        }
        match std::fs::remove_file(&output.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClientError::Local {
                    what: format!(
                        "cannot remove the old {} before building it again (go would keep it)",
                        output.path.display()
                    ),
                    source: err.into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// How many of `flags` a leading `-C dir` takes, which go wants before any other flag.
pub fn leading_chdir(flags: &[String]) -> usize {
    match flags.first().map(String::as_str) {
        Some("-C" | "--C") => 2.min(flags.len()),
        Some(flag) if flag.starts_with("-C=") || flag.starts_with("--C=") => 1,
        _ => 0,
    }
}

/// Why a build has no whole-build key, and how it may still use go's cache.
struct Unkeyed {
    reason: String,
    go_cache: GoCache,
}

/// Says how the build uses go's cache when that is not as usual.
fn say_go_cache(log: &mut (dyn FnMut(&str) + Send), go_cache: GoCache) {
    match go_cache {
        GoCache::Shared => {}
        GoCache::Salted(_) => say(
            log,
            "keying go's cache by the files the build includes and the C toolchain settings that go's own \
             cache does not key",
        ),
        GoCache::Off => say(
            log,
            "compiling every package without go's shared cache: which files the build reads that \
             go's cache does not key is not known",
        ),
    }
}

/// The key inputs and the planned outputs, or why there are none.
async fn derive(
    run: &Run<'_>,
    line: &flags::CommandLine,
    command_line: &flags::BuildFlags,
) -> Result<(Derived, Vec<Planned>), Unkeyed> {
    let call =
        GoCall { exec: run.options.exec.as_ref(), go: &run.options.go, dir: &run.dir, env: &run.request.env };
    let (env, packages) = call
        .read(command_line, &line.packages)
        .await
        .map_err(|err| Unkeyed { reason: err.0, go_cache: GoCache::Off })?;
    if !run.request.confine_to.is_empty() {
        confine::check(&packages, &run.request.confine_to)
            .map_err(|err| Unkeyed { reason: err.0, go_cache: GoCache::Off })?;
    }
    let tree = run.request.source_tree.as_deref();
    let goflags = env.get("GOFLAGS").map_or("", String::as_str);
    // The command line was read already: what fails here is GOFLAGS, whose flags the key
    // does not take (-overlay, -toolexec) change what is compiled from what the include scan
    // reads. No shared go cache, as for such a command line.
    let flags =
        flags::effective(goflags, line).map_err(|err| Unkeyed { reason: err.0, go_cache: GoCache::Off })?;
    // What go's cache may serve is decided as for a keyed build: the include scan and the
    // C toolchain's settings.
    let unkeyed = |reason: String| async {
        let go_cache = gocache::for_unkeyed(&call, &env, &flags, &packages, tree).await;
        Unkeyed { reason, go_cache }
    };
    // Before any other reason to step aside: whatever the include scan finds, these headers
    // are not among its files.
    if flags.asm_include_dirs() {
        let reason = "-asmflags gives the assembler include directories (-I), whose headers neither the build \
                      key nor go's cache follows";
        return Err(Unkeyed { reason: reason.to_owned(), go_cache: GoCache::Off });
    }
    if let Some(reason) = flags::ldflags_read_files(&flags.ldflags) {
        return Err(unkeyed(format!("{reason}, which the build key does not read")).await);
    }
    if let Some(reason) = flags::tool_flags_read_files(&flags) {
        // go's action IDs hash the flags, not what they name: no shared go cache either.
        let reason = format!("{reason}, which neither the build key nor go's cache follows");
        return Err(Unkeyed { reason, go_cache: GoCache::Off });
    }
    let derived = match inputs::derive(&call, &flags, &env, &packages, tree).await {
        Ok(derived) => derived,
        Err(err) => return Err(unkeyed(err.0).await),
    };
    let output = run.request.output.as_deref().or(flags.output.as_deref());
    let planned = outputs::plan(output, &derived.roots, &derived.goos, &run.dir)
        .map_err(|reason| Unkeyed { reason, go_cache: derived.go_cache })?;
    Ok((derived, planned))
}

/// Uploads the outputs and records the build.
#[allow(clippy::too_many_arguments)]
async fn record(
    client: &Client,
    request: &BuildRequest,
    target: &v1::BuildTarget,
    key: &[u8; 32],
    manifest: v1::BuildManifest,
    planned: &[Planned],
    build_time: Duration,
    timeout: Duration,
) -> Result<Vec<(PathBuf, proto::Digest)>, ClientError> {
    let uploaded = outputs::upload(client, planned).await?;
    let record = v1::BuildRecordRequest {
        namespace: request.namespace.clone(),
        target: Some(target.clone()),
        key: key.to_vec().into(),
        manifest: Some(manifest),
        outputs: uploaded
            .iter()
            .map(|(planned, digest)| v1::BuildOutput {
                path: planned.package.clone(),
                digest: Some(digest.to_wire()),
                mode: outputs::EXECUTABLE,
            })
            .collect(),
        build_duration_ms: build_time.as_millis() as u64,
    };
    match tokio::time::timeout(timeout, client.builds.clone().record(record)).await {
        Ok(result) => {
            result?;
        }
        Err(_) => return Err(ClientError::Server(format!("Builds.Record: no answer within {timeout:?}"))),
    }
    Ok(uploaded.into_iter().map(|(planned, digest)| (planned.path, digest)).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::exec::Captured;

    /// Scripted results by the command's first argument (`env`, `list`, `build`).
    #[derive(Default)]
    struct Scripted {
        outputs: Vec<(&'static str, Captured)>,
        build_lines: Vec<&'static str>,
        build_code: i32,
        seen: Mutex<Vec<Invocation>>,
    }

    #[tonic::async_trait]
    impl Exec for Scripted {
        async fn output(&self, invocation: &Invocation) -> std::io::Result<Captured> {
            self.seen.lock().unwrap().push(invocation.clone());
            let mut first = invocation.args.first().map_or("", String::as_str);
            if invocation.args == ["env", "-json"]
                && invocation.env_remove.iter().any(|name| name == "CACHED_ACTION_SALT")
            {
                // keep_off's probe, as go answers it: with GOENV=off no env file, and so no
                // program from it.
                if invocation.env.contains(&("GOENV".to_owned(), "off".to_owned())) {
                    return Ok(ok(r#"{"GOENV": "off", "GOCACHEPROG": "", "GOFLAGS": ""}"#.to_owned()));
                }
                first = "env file";
            }
            let found = self.outputs.iter().find(|(arg, _)| *arg == first).map(|(_, c)| c.clone());
            Ok(found.unwrap_or(Captured {
                code: 1,
                stderr: b"unexpected command".to_vec(),
                ..Captured::default()
            }))
        }

        async fn stream(&self, invocation: &Invocation, sink: Sink<'_>) -> std::io::Result<i32> {
            self.seen.lock().unwrap().push(invocation.clone());
            if let Sink::Lines(log) = sink {
                for line in &self.build_lines {
                    log(line);
                }
            }
            Ok(self.build_code)
        }
    }

    fn ok(stdout: String) -> Captured {
        Captured { code: 0, stdout: stdout.into_bytes(), stderr: Vec::new() }
    }

    fn module() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cmd/app")).unwrap();
        std::fs::write(dir.path().join("go.mod"), "module example.com/m\n").unwrap();
        std::fs::write(dir.path().join("go.sum"), "").unwrap();
        std::fs::write(dir.path().join("cmd/app/main.go"), "package main\n").unwrap();
        std::fs::create_dir_all(dir.path().join("goroot/src/fmt")).unwrap();
        std::fs::write(dir.path().join("goroot/src/fmt/print.go"), "package fmt\n").unwrap();
        let semver = dir.path().join("modcache/golang.org/x/mod@v0.1.0/semver");
        std::fs::create_dir_all(&semver).unwrap();
        std::fs::write(semver.join("semver.go"), "package semver\n").unwrap();
        dir
    }

    fn scripted(dir: &std::path::Path) -> Scripted {
        let root = dir.display();
        let env = format!(
            r#"{{"GOOS":"linux","GOARCH":"amd64","GOAMD64":"v1","CGO_ENABLED":"0","GOVERSION":"go1.26.8",
            "GOMOD":"{root}/go.mod","GOMODCACHE":"{root}/modcache","GOFLAGS":"","GOROOT":"{root}/goroot","GOWORK":"",
            "GOPROXY":"https://user:hunter2@proxy.example","GOAUTH":"netrc"}}"#
        );
        let list = format!(
            r#"{{"ImportPath":"fmt","Standard":true,"DepOnly":true,"Dir":"{root}/goroot/src/fmt","GoFiles":["print.go"]}}
{{"ImportPath":"golang.org/x/mod/semver","Name":"semver","DepOnly":true,"Dir":"{root}/modcache/golang.org/x/mod@v0.1.0/semver",
 "Module":{{"Path":"golang.org/x/mod","Version":"v0.1.0","Sum":"h1:abc="}},"GoFiles":["semver.go"]}}
{{"ImportPath":"example.com/m/cmd/app","Name":"main","Dir":"{root}/cmd/app",
 "Module":{{"Path":"example.com/m","Main":true,"Dir":"{root}"}},"GoFiles":["main.go"]}}"#
        );
        let env_file = ok(r#"{"GOENV": "off", "GOCACHEPROG": ""}"#.to_owned());
        Scripted {
            outputs: vec![("env", ok(env)), ("list", ok(list)), ("env file", env_file)],
            ..Scripted::default()
        }
    }

    async fn derive_with(exec: &Scripted, dir: &std::path::Path, args: &[&str]) -> Derived {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let line = flags::parse_command_line(&args).unwrap();
        let command_line = flags::effective("", &line).unwrap();
        let call = GoCall { exec, go: std::path::Path::new("go"), dir, env: &[] };
        let (env, packages) = call.read(&command_line, &line.packages).await.unwrap();
        let flags = flags::effective("", &line).unwrap();
        inputs::derive(&call, &flags, &env, &packages, None).await.unwrap()
    }

    #[tokio::test]
    async fn the_manifest_names_files_modules_and_settings_and_nothing_secret() {
        let dir = module();
        let exec = scripted(dir.path());
        let derived = derive_with(&exec, dir.path(), &["-trimpath", "-tags=netgo", "./cmd/app"]).await;
        let manifest = &derived.manifest;
        assert_eq!(derived.module, "example.com/m");
        assert_eq!((derived.goos.as_str(), derived.goarch.as_str()), ("linux", "amd64"));
        assert_eq!(manifest.get("env.arch_level").unwrap().display, "GOAMD64=v1");
        assert_eq!(manifest.get("flag.tags").unwrap().display, "netgo");
        assert_eq!(manifest.get("dep.golang.org/x/mod").unwrap().display, "v0.1.0");
        assert!(manifest.get("file.cmd/app/main.go").is_some());
        assert!(manifest.get("mod.go.mod").is_some() && manifest.get("mod.go.sum").is_some());
        assert!(manifest.get("path.goroot").is_none(), "-trimpath leaves paths out");
        assert_eq!((derived.files, derived.modules), (4, 1), "the module's file is hashed too");
        let wire = format!("{:?}", manifest.to_wire());
        for secret in ["hunter2", "proxy.example", "GOPROXY", "GOAUTH", "netrc"] {
            assert!(!wire.contains(secret), "{secret} reached the manifest");
        }
        // go list saw the tags; nothing ran with GOCACHEPROG.
        {
            let seen = exec.seen.lock().unwrap();
            let list = seen.iter().find(|i| i.args[0] == "list").unwrap();
            assert!(
                list.args.contains(&"-tags=netgo".to_owned())
                    && list.args.ends_with(&["--".into(), "./cmd/app".into()])
            );
            assert!(seen.iter().all(|i| i.env_remove.contains(&"GOCACHEPROG".to_owned())));
        }

        let before = manifest.key();
        std::fs::write(dir.path().join("cmd/app/main.go"), "package main // edited\n").unwrap();
        let edited = derive_with(&exec, dir.path(), &["-trimpath", "-tags=netgo", "./cmd/app"]).await;
        assert_ne!(edited.manifest.key(), before);
        let without_trimpath = derive_with(&exec, dir.path(), &["-tags=netgo", "./cmd/app"]).await;
        let goroot = dir.path().join("goroot").display().to_string();
        assert_eq!(without_trimpath.manifest.get("path.goroot").unwrap().display, goroot);
        // The standard library's sources are keyed: a toolchain patched where it is installed
        // keeps its version string.
        std::fs::write(dir.path().join("goroot/src/fmt/print.go"), "package fmt // patched\n").unwrap();
        let patched = derive_with(&exec, dir.path(), &["-trimpath", "-tags=netgo", "./cmd/app"]).await;
        assert_ne!(patched.manifest.key(), edited.manifest.key(), "a patched standard library was not keyed");
        assert!(patched.manifest.get("go.std").is_some());
        // And the assembler's headers, which go's -I gives every package's assembly.
        std::fs::create_dir_all(dir.path().join("goroot/pkg/include")).unwrap();
        std::fs::write(dir.path().join("goroot/pkg/include/textflag.h"), "#define NOSPLIT 4\n").unwrap();
        let with_header = derive_with(&exec, dir.path(), &["-trimpath", "-tags=netgo", "./cmd/app"]).await;
        assert_ne!(
            with_header.manifest.key(),
            patched.manifest.key(),
            "the assembler's headers were not keyed"
        );
    }

    /// A build of `./cmd/app` in `dir` to `bin/app`, in namespace `ci`.
    fn app_request(dir: &std::path::Path, go_flags: Vec<String>, env: Vec<(String, String)>) -> BuildRequest {
        BuildRequest {
            module_dir: dir.to_owned(),
            packages: vec!["./cmd/app".into()],
            output: Some(PathBuf::from("bin/app")),
            go_flags,
            env,
            namespace: "ci".into(),
            source_tree: None,
            confine_to: Vec::new(),
        }
    }

    #[tokio::test]
    async fn without_a_server_go_runs_plainly_and_its_exit_code_passes_through() {
        let dir = module();
        let exec = Arc::new(Scripted {
            build_lines: vec!["# example.com/m/cmd/app", "main.go:1: oops"],
            build_code: 2,
            ..scripted(dir.path())
        });
        let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
        let request =
            app_request(dir.path(), vec!["-trimpath".into()], vec![("GOOS".into(), "windows".into())]);
        let mut lines = Vec::new();
        let outcome = build_with(None, &request, &options, &mut |line: &str| lines.push(line.to_owned()))
            .await
            .unwrap();
        assert_eq!(outcome.exit_code, 2);
        assert!(!outcome.hit && outcome.key.is_empty());
        assert_eq!(lines, ["# example.com/m/cmd/app", "main.go:1: oops"]);
        let seen = exec.seen.lock().unwrap();
        // go env and go list: which files the build reads decides how go's cache may serve it.
        let build = seen.last().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(build.args, ["build", "-trimpath", "-o", "bin/app", "./cmd/app"]);
        assert!(build.env.contains(&("GOOS".into(), "windows".into())));
        assert!(!build.env.iter().any(|(name, _)| name == "GOCACHEPROG" || name == "CACHED_ACTION_SALT"));
    }

    /// Without a server go may still run a cache program its environment names (an agent's
    /// task has the bridge; the lookup may have failed): a build whose reads are not known
    /// must not share go's cache through it, unsalted and writable.
    #[tokio::test]
    async fn without_a_server_a_build_whose_reads_are_not_known_uses_no_cache_program() {
        let dir = module();
        std::fs::write(dir.path().join("cmd/app/a.c"), "#include HEADER\n").unwrap();
        let root = dir.path().display();
        let list = format!(
            r#"{{"ImportPath":"example.com/m/cmd/app","Name":"main","Dir":"{root}/cmd/app",
 "Module":{{"Path":"example.com/m","Main":true,"Dir":"{root}"}},"GoFiles":["main.go"],"CFiles":["a.c"]}}"#
        );
        let mut exec = scripted(dir.path());
        exec.outputs.retain(|(arg, _)| *arg != "list");
        exec.outputs.push(("list", ok(list)));
        let exec = Arc::new(exec);
        let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
        let request =
            app_request(dir.path(), Vec::new(), vec![("GOCACHEPROG".into(), "cachectl gocacheprog".into())]);
        let mut lines = Vec::new();
        build_with(None, &request, &options, &mut |line: &str| lines.push(line.to_owned())).await.unwrap();
        let seen = exec.seen.lock().unwrap();
        let build = seen.last().unwrap();
        assert_eq!(build.args, ["build", "-a", "-o", "bin/app", "./cmd/app"], "{lines:?}");
        assert!(build.env_remove.iter().any(|name| name == "GOCACHEPROG"), "{build:?}");
        assert!(!build.env.iter().any(|(name, _)| name == "GOCACHEPROG"), "{build:?}");
        assert!(lines.iter().any(|line| line.contains("without go's shared cache")), "{lines:?}");
    }

    /// `-asmflags=-I dir` gives the assembler headers go's action IDs do not cover: such a
    /// build has no key and compiles without go's shared cache, also when another flag gives
    /// no key first (`-extld` went by the include scan alone, which answered shared).
    #[tokio::test]
    async fn assembler_include_directories_use_no_cache_program() {
        for go_flags in [
            vec!["-asmflags=all=-I=../../inc".to_owned()],
            vec!["-ldflags=-extld=gcc".to_owned(), "-asmflags=all=-I=../../inc".to_owned()],
        ] {
            let dir = module();
            let exec = Arc::new(scripted(dir.path()));
            let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
            let request = app_request(
                dir.path(),
                go_flags,
                vec![("GOCACHEPROG".into(), "cachectl gocacheprog".into())],
            );
            let mut lines = Vec::new();
            build_with(None, &request, &options, &mut |line: &str| lines.push(line.to_owned()))
                .await
                .unwrap();
            let seen = exec.seen.lock().unwrap();
            let build = seen.last().unwrap();
            assert!(build.args.contains(&"-a".to_owned()), "{build:?}");
            assert!(build.env_remove.iter().any(|name| name == "GOCACHEPROG"), "{build:?}");
            assert!(lines.iter().any(|line| line.contains("without go's shared cache")), "{lines:?}");
        }
    }

    /// Without a cache program go reads its own GOCACHE, and its module index there (keyed by
    /// file names, sizes and times; other builds on the runner wrote it): the key's `go list`
    /// reads none, so the build must not either, or the two may see other files.
    #[tokio::test]
    async fn a_build_reading_its_own_gocache_reads_no_module_index() {
        let dir = module();
        let exec = Arc::new(scripted(dir.path()));
        let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
        let request = app_request(dir.path(), Vec::new(), vec![("GODEBUG".into(), "x=1".into())]);
        build_with(None, &request, &options, &mut |_: &str| {}).await.unwrap();
        let seen = exec.seen.lock().unwrap();
        let build = seen.last().unwrap();
        assert_eq!(build.args.first().map(String::as_str), Some("build"), "{build:?}");
        assert!(!build.args.contains(&"-a".to_owned()), "a shared cache: {build:?}");
        let godebug = build.env.iter().rev().find(|(name, _)| name == "GODEBUG").map(|(_, v)| v.as_str());
        assert_eq!(godebug, Some("x=1,goindex=0"), "{build:?}");
    }

    /// `go env -w GOCACHEPROG=...` names a cache program in go's env file, which removing the
    /// variable does not reach: the build runs with the file's other settings as variables
    /// (the environment's own first) and GOENV=off.
    #[tokio::test]
    async fn a_build_without_a_cache_program_does_not_take_one_from_the_env_file() {
        let dir = module();
        // A line end in the name kept the program's line from where a line reader looked.
        let file = dir.path().join("go-env\n");
        let settings = "GOCACHEPROG=cachectl gocacheprog\nGOFLAGS=-mod=mod\nGOPRIVATE=corp\nPATH=/evil\n\
                        GODEBUG=x=1\nCGO_CFLAGS_ALLOW=-fplugin.*\n";
        std::fs::write(&file, settings).unwrap();
        let mut exec = scripted(dir.path());
        exec.outputs.retain(|(arg, _)| *arg != "env file");
        let printed = serde_json::json!({
            "GOENV": file, "GOCACHEPROG": "cachectl gocacheprog", "GOFLAGS": "", "GOPRIVATE": "", "GODEBUG": ""
        });
        exec.outputs.push(("env file", ok(printed.to_string())));
        let exec = Arc::new(exec);
        let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
        let request = app_request(
            dir.path(),
            vec!["-asmflags=all=-I=../../inc".into()],
            vec![("GOPRIVATE".into(), "mine".into())],
        );
        build_with(None, &request, &options, &mut |_: &str| {}).await.unwrap();
        let seen = exec.seen.lock().unwrap();
        let build = seen.last().unwrap();
        assert_eq!(build.args.first().map(String::as_str), Some("build"), "{build:?}");
        let set = |name: &str| build.env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(set("GOENV"), Some("off"), "{build:?}");
        assert_eq!(set("GOFLAGS"), Some("-mod=mod"), "{build:?}");
        assert_eq!(set("GOPRIVATE"), Some("mine"), "{build:?}");
        assert_eq!(set("GOCACHEPROG"), None, "{build:?}");
        // go takes neither from its file; the wrapper reads go's own GOCACHE without its index.
        assert_eq!((set("PATH"), set("GODEBUG")), (None, Some("goindex=0")), "{build:?}");
        assert_eq!(
            set("CGO_CFLAGS_ALLOW"),
            Some("-fplugin.*"),
            "go env does not print it, go reads it: {build:?}"
        );
    }

    /// `-overlay` in GOFLAGS compiles other files than those the include scan reads: no
    /// shared go cache (with the scan's answer, an overlay's include was served stale).
    #[tokio::test]
    async fn goflags_the_key_does_not_take_use_no_cache_program() {
        let dir = module();
        let mut exec = scripted(dir.path());
        for (name, captured) in &mut exec.outputs {
            if *name == "env" {
                let text = String::from_utf8(captured.stdout.clone()).unwrap();
                captured.stdout =
                    text.replace(r#""GOFLAGS":"""#, r#""GOFLAGS":"-overlay=ov.json""#).into_bytes();
            }
        }
        let exec = Arc::new(exec);
        let options = BuildOptions { exec: exec.clone(), ..BuildOptions::default() };
        let request =
            app_request(dir.path(), Vec::new(), vec![("GOCACHEPROG".into(), "cachectl gocacheprog".into())]);
        build_with(None, &request, &options, &mut |_: &str| {}).await.unwrap();
        let seen = exec.seen.lock().unwrap();
        let build = seen.last().unwrap();
        assert!(build.args.contains(&"-a".to_owned()), "{build:?}");
        assert!(build.env_remove.iter().any(|name| name == "GOCACHEPROG"), "{build:?}");
    }

    /// Only regular files are removed before a salted build: never `-o /dev/null` (as root
    /// that would remove the device), a FIFO or a directory.
    #[test]
    fn only_old_outputs_go_would_overwrite_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let (binary, empty, script, fifo) = (path("app"), path("empty"), path("script"), path("pipe"));
        std::fs::write(&binary, b"\x7fELF\x02\x01\x01 old").unwrap();
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&script, b"#!/bin/sh\necho not a binary\n").unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0)
            .unwrap();
        let planned: Vec<Planned> = [&binary, &empty, &script, &fifo, &dir.path().to_owned()]
            .into_iter()
            .map(|path| Planned { package: String::new(), path: path.clone() })
            .collect();
        remove_outputs(&planned).unwrap();
        assert!(!binary.exists() && !empty.exists(), "old outputs are removed");
        assert!(script.exists() && fifo.exists() && dir.path().exists(), "nothing else is");
    }

    #[test]
    fn a_leading_chdir_stays_first() {
        let flags = |list: &[&str]| list.iter().map(|flag| (*flag).to_owned()).collect::<Vec<_>>();
        assert_eq!(leading_chdir(&flags(&["-C", "sub", "-trimpath"])), 2);
        assert_eq!(leading_chdir(&flags(&["-C=sub"])), 1);
        assert_eq!(leading_chdir(&flags(&["-trimpath", "-C", "sub"])), 0);
    }

    #[test]
    fn the_bridge_gets_the_server_and_namespace() {
        let anonymous = ConnectOptions::default();
        let (env, remove) =
            bridge_env("http://cache:7070", "ci/main", "cachectl gocacheprog".into(), &anonymous);
        assert!(env.contains(&("GOCACHEPROG".into(), "cachectl gocacheprog".into())));
        assert!(env.contains(&("CACHED_ADDR".into(), "http://cache:7070".into())));
        assert!(env.contains(&("CACHED_NAMESPACE".into(), "ci/main".into())));
        assert!(!env.iter().any(|(name, _)| name == "CACHED_TOKEN"));
        assert!(remove.contains(&"CACHED_ALLOW_INSECURE_TOKEN".into()));
        let with_token =
            ConnectOptions { allow_insecure_token: true, ..ConnectOptions::with_token("cached_t") };
        let (env, remove) =
            bridge_env("http://cache:7070", "ci/main", "cachectl gocacheprog".into(), &with_token);
        assert!(env.contains(&("CACHED_TOKEN".into(), "cached_t".into())));
        assert!(env.contains(&("CACHED_ALLOW_INSECURE_TOKEN".into(), "1".into())));
        assert_eq!(remove, ["CACHED_TOKEN_FILE"]);
        assert!(default_gocacheprog().ends_with(" gocacheprog"));
    }
}
