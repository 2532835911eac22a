//! `cachectl go build`: go build behind a whole-build cache.
//!
//! The build key comes from the Go build inputs ([`inputs`]: `go env -json` and one
//! `go list -deps -json`), each hashed on its own into a [`manifest`]; the key is the hash of
//! the manifest (docs/build-keys.md). A hit restores the outputs without running the compiler
//! or the linker ([`outputs`]); a miss prints why ([`explain`]: the server compared the
//! manifest with the nearest earlier build of the target), runs go build with the GOCACHEPROG
//! bridge, uploads the outputs and records the build. go's output and exit code pass through;
//! a failed build is never recorded; flags the wrapper does not understand ([`flags`]) and an
//! unreachable server make it run go without the whole-build cache and say why.
//!
//! runner-agent builds its targets through [`build`] too, so remote builds use and fill the
//! same cache.

pub mod exec;
pub mod explain;
pub mod flags;
pub mod inputs;
pub mod manifest;
pub mod outputs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1;

use self::exec::{Exec, Invocation, RealExec, Sink};
use self::inputs::{Derived, GoCall};
use self::outputs::Planned;
use crate::client::{Client, ConnectOptions};
use crate::error::CliError;

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
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            go: PathBuf::from("go"),
            gocacheprog: None,
            inherit_stdio: false,
            timeout: Duration::from_secs(20),
            exec: Arc::new(RealExec),
        }
    }
}

/// Builds `request` through the whole-build cache of `client` (None: plain go build).
pub async fn build(
    client: Option<&Client>,
    request: &BuildRequest,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<BuildOutcome, CliError> {
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

/// The environment that points the GOCACHEPROG bridge (`program`) at `server`, with this
/// process's token and TLS settings (passed by environment, never on a command line, never
/// logged), and the variables to remove so the bridge sees the token one way only.
pub fn bridge_env(server: &str, namespace: &str, program: String) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = vec![
        ("GOCACHEPROG".to_owned(), program),
        ("CACHED_ADDR".to_owned(), server.to_owned()),
        ("CACHED_NAMESPACE".to_owned(), namespace.to_owned()),
    ];
    let mut remove = Vec::new();
    let connect = ConnectOptions::process_default();
    if let Some(token) = &connect.token {
        env.push(("CACHED_TOKEN".to_owned(), token.expose().to_owned()));
        remove.push("CACHED_TOKEN_FILE".to_owned());
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
    /// go build with the request's flags, output and packages.
    fn go_args(&self) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        args.extend(self.request.go_flags.iter().cloned());
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

    /// Runs go build (with the bridge when `client` is given); returns go's exit code and how
    /// long it took.
    async fn go(
        &self,
        client: Option<&Client>,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(i32, Duration), CliError> {
        let mut env = self.request.env.clone();
        let mut env_remove = Vec::new();
        if let Some(client) = client {
            let program = self.options.gocacheprog.clone().unwrap_or_else(default_gocacheprog);
            let (bridge, remove) = bridge_env(&client.server, &self.request.namespace, program);
            env.extend(bridge);
            env_remove = remove;
        }
        let invocation = Invocation {
            program: self.options.go.clone(),
            args: self.go_args(),
            dir: self.request.module_dir.clone(),
            env,
            env_remove,
        };
        let started = Instant::now();
        let sink = if self.options.inherit_stdio { Sink::Inherit } else { Sink::Lines(log) };
        let code = self
            .options
            .exec
            .stream(&invocation, sink)
            .await
            .map_err(|err| CliError::Usage(format!("cannot run {}: {err}", self.options.go.display())))?;
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

    /// go build without the whole-build cache.
    async fn uncached(
        &self,
        client: Option<&Client>,
        reason: String,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<BuildOutcome, CliError> {
        let (exit_code, _) = self.go(client, log).await?;
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
) -> Result<BuildOutcome, CliError> {
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
        return run.uncached(None, "not cached: cached is unreachable".to_owned(), log).await;
    };
    let (line, command_line) = match parsed {
        Ok(parsed) => parsed,
        Err(flags::Unsupported(reason)) => {
            say(log, &format!("not caching this build: {reason}"));
            return run.uncached(Some(client), format!("not cached: {reason}"), log).await;
        }
    };

    let derived = derive(&run, &line, &command_line).await;
    let (derived, planned) = match derived {
        Ok(found) => found,
        Err(reason) => {
            say(log, &format!("not caching this build: {reason}"));
            return run.uncached(Some(client), format!("not cached: {reason}"), log).await;
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
            return run
                .uncached(Some(client), format!("not cached: lookup failed: {}", status.message()), log)
                .await;
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
            return run.uncached(None, format!("not cached: cached is unreachable ({reason})"), log).await;
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
                        crate::render::bytes(bytes),
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
            explain::miss_lines(&target, &key, explanation, explain::now_ms())
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
    let (exit_code, build_time) = run.go(Some(client), log).await?;
    let mut outcome = BuildOutcome {
        hit: false,
        key: key_hex,
        outputs: Vec::new(),
        duration: Duration::ZERO,
        explanation: Some(lines.join("\n")),
        exit_code,
    };
    if exit_code == 0 {
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

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn files(count: usize) -> String {
    if count == 1 { "1 file".to_owned() } else { format!("{count} files") }
}

/// The key inputs and the planned outputs, or why there are none.
async fn derive(
    run: &Run<'_>,
    line: &flags::CommandLine,
    command_line: &flags::BuildFlags,
) -> Result<(Derived, Vec<Planned>), String> {
    let call =
        GoCall { exec: run.options.exec.as_ref(), go: &run.options.go, dir: &run.dir, env: &run.request.env };
    let (env, packages) = call.read(command_line, &line.packages).await.map_err(|err| err.0)?;
    let flags = flags::effective(env.get("GOFLAGS").map_or("", String::as_str), line).map_err(|err| err.0)?;
    let derived = inputs::derive(&call, &flags, &env, &packages).await.map_err(|err| err.0)?;
    let output = run.request.output.as_deref().or(flags.output.as_deref());
    let planned = outputs::plan(output, &derived.roots, &derived.goos, &run.dir)?;
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
) -> Result<Vec<(PathBuf, proto::Digest)>, CliError> {
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
        Err(_) => return Err(CliError::Server(format!("Builds.Record: no answer within {timeout:?}"))),
    }
    Ok(uploaded.into_iter().map(|(planned, digest)| (planned.path, digest)).collect())
}
