//! `runner-agent`: lease build tasks from cached and build them through the cache.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cached_client::connect::{ConnectOptions, DEFAULT_SERVER};
use cached_client::tree::TreeLimits;
use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runner_agent::agent::{self, AgentConfig};
use runner_agent::startup::{self, ROOT_WORK_DIR};

#[derive(Parser)]
#[command(
    name = "runner-agent",
    version,
    about = "Runner agent for cached: builds GOOS/GOARCH matrices leased from the job queue"
)]
struct Cli {
    /// Address of cached, or of several cached replicas separated by commas (the agent fails
    /// over between them).
    #[arg(long, global = true, env = "CACHED_ADDR", default_value = DEFAULT_SERVER)]
    server: String,
    /// Token with the `worker`, `read`, `cas-write` and `ac-write` scopes. Prefer --token-file.
    #[arg(long, global = true, env = "CACHED_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File that holds the token.
    #[arg(long, global = true, env = "CACHED_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) of an https:// server.
    #[arg(long, global = true, env = "CACHED_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Send the token over plain http:// to a server that is not on loopback, where anyone on
    /// the network path can read it. Only for a path you trust; use https:// otherwise.
    #[arg(long, global = true, env = "CACHED_ALLOW_INSECURE_TOKEN", value_parser = BoolishValueParser::new())]
    allow_insecure_token: bool,
    /// Tasks built at once [default: the number of CPUs].
    #[arg(long, env = "CACHED_CONCURRENCY")]
    concurrency: Option<u32>,
    /// Where the blob cache and the task directories live [default: /var/lib/runner-agent as
    /// root, else <user cache dir>/cached/agent].
    #[arg(long, env = "CACHED_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Uids builds run as, FIRST-LAST, one per running task (its group: the same number); no
    /// account may use them [default as root: 61000-61063, or more for a larger --concurrency;
    /// without root: builds run as the agent's user, unsafe for untrusted jobs].
    #[arg(long, env = "CACHED_BUILD_UIDS")]
    build_uids: Option<String>,
    /// The most memory one task's build may take (the go command, its compilers and linker,
    /// the bridge), in a control group of its own; a build past it is killed and fails as the
    /// job's fault. A size, or `none` [default: the machine's memory divided by --concurrency;
    /// a container's own limit stays the agent's trouble, as running out of the machine's].
    /// Given, the agent refuses to start where it cannot set it.
    #[arg(long, env = "CACHED_BUILD_MEMORY", value_parser = runner_agent::cgroup::parse_memory)]
    build_memory: Option<runner_agent::cgroup::BuildMemory>,
    /// The most processes and threads one task's build may have at once [default: 4096].
    /// Given, the agent refuses to start where it cannot set it.
    #[arg(long, env = "CACHED_BUILD_PIDS", value_parser = clap::value_parser!(u64).range(16..))]
    build_pids: Option<u64>,
    /// Most entries (files, directories, links; a shared directory counted every time it
    /// appears) of a job's source or module tree.
    #[arg(long, env = "CACHED_MAX_TREE_ENTRIES", default_value_t = TreeLimits::default().max_entries)]
    max_tree_entries: u64,
    /// Cap of the blob cache (sources and module files) in the work dir, and separately of the
    /// extracted module zips; least recently used entries go past it, never one a running task
    /// uses.
    #[arg(long, env = "CACHED_AGENT_CACHE_SIZE", default_value = "20GiB", value_parser = cached_client::size::parse)]
    cache_size: u64,
    /// The most disk one build's own files may take in its task directory (module cache,
    /// GOCACHE, temporary files, outputs); a build past it is stopped and fails as the build's
    /// fault, not retried. Also the most a job's source tree, and its module tree, may declare
    /// in all: a larger one is refused, the job's fault, before any of it is downloaded.
    #[arg(long, env = "CACHED_MAX_TASK_DISK", default_value = "10GiB", value_parser = cached_client::size::parse)]
    max_task_disk: u64,
    /// Name of this agent in leases and job events [default: <hostname>-<pid>].
    #[arg(long, env = "CACHED_AGENT_NAME")]
    name: Option<String>,
    /// After SIGTERM, how long running tasks may finish before they are killed and released.
    #[arg(long, env = "CACHED_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Longest one build may run.
    #[arg(long, env = "CACHED_TASK_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    task_timeout: Duration,
    /// A C compiler for cgo targets, `goos/goarch=command` (repeatable); Debian's cross
    /// compilers on PATH are found without it.
    #[arg(long = "cc", env = "CACHED_CC", value_delimiter = ',')]
    cc: Vec<String>,
    /// The go command.
    #[arg(long, env = "CACHED_GO", default_value = "go")]
    go: PathBuf,
    /// tracing filter.
    #[arg(long, env = "CACHED_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The GOCACHEPROG bridge the agent's builds use (as `cachectl gocacheprog`).
    #[command(hide = true)]
    Gocacheprog(cached_gocacheprog::command::Args),
    /// What every build process starts through (see the sandbox module).
    #[command(hide = true, name = runner_agent::sandbox::ENTER_BUILD)]
    EnterBuild {
        /// The agent's socket that places this process in its task's control group.
        #[arg(long)]
        placement: Option<PathBuf>,
        /// `CONTROLLERS:PATH`, as /proc/self/cgroup shows the task's group once placed.
        #[arg(long = "cgroup")]
        cgroups: Vec<String>,
        program: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "agent".to_owned())
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn run(cli: Cli, token_on_command_line: bool) -> Result<(), String> {
    let token = ConnectOptions::token_from_flags(cli.token.as_deref(), cli.token_file.as_deref())
        .map_err(|err| err.to_string())?;
    let connect = ConnectOptions {
        token,
        tls_ca: cli.tls_ca.clone(),
        allow_insecure_token: cli.allow_insecure_token,
        ..ConnectOptions::default()
    };
    if let Some(Command::Gocacheprog(args)) = cli.command {
        cached_gocacheprog::command::init_log();
        let connect = bridge_connect(connect)?;
        return cached_gocacheprog::command::run(&cli.server, &connect, args)
            .await
            .map_err(|err| err.to_string());
    }
    // A bad address or a token that may not go to it is refused now, not retried forever.
    connect.endpoints(&cli.server, |endpoint| endpoint).map_err(|err| err.to_string())?;
    let mut bridge_env = vec![("CACHED_ADDR".to_owned(), cli.server.clone())];
    if let Some(path) = &cli.tls_ca {
        bridge_env.push(("CACHED_TLS_CA".to_owned(), path.display().to_string()));
    }
    if cli.allow_insecure_token {
        bridge_env.push(("CACHED_ALLOW_INSECURE_TOKEN".to_owned(), "1".to_owned()));
    }
    let work_dir = match cli.work_dir {
        Some(dir) => dir,
        None if runner_agent::sandbox::agent_uid() == 0 => PathBuf::from(ROOT_WORK_DIR),
        None => cached_gocacheprog::default_dir()
            .and_then(|dir| dir.parent().map(|parent| parent.join("agent")))
            .ok_or("no user cache directory is known here; set --work-dir")?,
    };
    let concurrency =
        cli.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let prepared = startup::prepare(&startup::Options {
        work_dir: &work_dir,
        build_uids: cli.build_uids.as_deref(),
        concurrency,
        go: &cli.go,
        token_file: cli.token_file.as_deref(),
        token_on_command_line,
        limits: runner_agent::cgroup::Request { memory: cli.build_memory, pids: cli.build_pids, concurrency },
    })?;
    let config = AgentConfig {
        server: cli.server,
        connect,
        agent_id: cli.name.unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id())),
        concurrency,
        work_dir,
        cache_size: cli.cache_size,
        grace: cli.grace,
        task_timeout: cli.task_timeout,
        max_task_disk: cli.max_task_disk,
        go: cli.go,
        cc: cli.cc,
        bridge: prepared.bridge,
        bridge_env,
        sandbox: prepared.sandbox,
        tree_limits: TreeLimits { max_entries: cli.max_tree_entries, ..TreeLimits::default() },
    };
    agent::run(config, signal()).await
}

/// How the bridge of a task's build connects: with the lease's credential, fetched from the
/// socket the task's environment names (`runner_agent::credential`), held in memory only.
fn bridge_connect(mut connect: ConnectOptions) -> Result<ConnectOptions, String> {
    let Some(socket) = std::env::var_os(runner_agent::credential::SOCKET_ENV) else { return Ok(connect) };
    if connect.token.is_some() {
        return Err(format!(
            "give the token one way: {} or --token/--token-file",
            runner_agent::credential::SOCKET_ENV
        ));
    }
    connect.token = runner_agent::credential::fetch(std::path::Path::new(&socket))?;
    Ok(connect)
}

/// The exit code of a build process that could not start (as a shell's for a command it
/// could not run).
const ENTER_BUILD_FAILED: u8 = 126;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let token_on_command_line = matches.value_source("token") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if let Some(Command::EnterBuild { placement, cgroups, program, args }) = &cli.command {
        let placement = placement.as_ref().map(|socket| runner_agent::cgroup::Placement {
            socket: socket.clone(),
            expected: cgroups.clone(),
        });
        eprintln!("runner-agent: {}", runner_agent::sandbox::enter_build(placement.as_ref(), program, args));
        return ExitCode::from(ENTER_BUILD_FAILED);
    }
    if cli.command.is_none() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_default())
            .with_writer(std::io::stderr)
            .init();
        // Before any thread exists, so every thread and build inherits it: nothing a build
        // runs gains privileges from a set-user-id file.
        if let Err(err) = rustix::thread::set_no_new_privs(true) {
            eprintln!("runner-agent: cannot set no_new_privs: {err}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("runner-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, token_on_command_line)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("runner-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
