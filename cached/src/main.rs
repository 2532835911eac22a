//! `cached`: with no arguments, a working single-machine cache on 127.0.0.1:7070.
//! `cached token new` makes a token for the `[[tokens]]` of the config.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec, tokens};
use cached::config::{self, CONFIG_FILE_ENV, Config, SETTINGS, SWITCHES};
use clap::{Arg, ArgAction, ArgMatches, Command};

fn command() -> Command {
    let mut command = Command::new("cached")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Distributed build cache for Go: content-addressed store and Go action cache over gRPC")
        .after_help(
            "Every setting can also come from the environment (CACHED_<KEY>, e.g. CACHED_MAX_SIZE) \
             or the TOML file given with --config (key = value, e.g. max_size = \"20GiB\"). \
             Flags win over the environment, which wins over the file.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help(format!("TOML config file [env: {CONFIG_FILE_ENV}]")),
        );
    for setting in SETTINGS {
        let mut help = format!("{} [env: {}]", setting.help, config::env_name(setting.key));
        if !setting.default.is_empty() {
            help = format!("{help} [default: {}]", setting.default);
        }
        let mut arg = Arg::new(setting.key)
            .long(setting.key.replace('_', "-"))
            .value_name(setting.key.to_ascii_uppercase())
            .action(ArgAction::Set)
            .help(help);
        if SWITCHES.contains(&setting.key) {
            arg = arg.value_name("BOOL").num_args(0..=1).default_missing_value("true");
        }
        command = command.arg(arg);
    }
    command.args_conflicts_with_subcommands(true).subcommand(
        Command::new("token")
            .about("Manage the tokens clients authenticate with")
            .subcommand_required(true)
            .subcommand(
            Command::new("new")
                .about("Make a token: print its secret once, and the [[tokens]] table to add to the config")
                .arg(
                    Arg::new("name")
                        .long("name")
                        .required(true)
                        .help("name in audit logs and errors, e.g. ci"),
                )
                .arg(
                    Arg::new("scopes")
                        .long("scopes")
                        .required(true)
                        .help("comma-separated: read, cas-write, ac-write, worker, submit, admin"),
                )
                .arg(
                    Arg::new("namespaces")
                        .long("namespaces")
                        .default_value("*")
                        .help("comma-separated namespaces or prefixes (main/*) of the Go action cache"),
                )
                .arg(Arg::new("rate_limit").long("rate-limit").value_parser(clap::value_parser!(u32)).help(
                    "requests per second for this token; 0 = unlimited [default: the server's rate_limit]",
                ))
                .arg(
                    Arg::new("max_priority")
                        .long("max-priority")
                        .allow_negative_numbers(true)
                        .value_parser(clap::value_parser!(i32).range(-1000..=1000))
                        .help("the highest priority this token's jobs may ask [default: 0; any for admin tokens]"),
                )
                .arg(Arg::new("secret_file").long("secret-file").value_name("FILE").help(
                    "write the secret to FILE (mode 0600) and print only the [[tokens]] table, for scripts",
                )),
        ),
    )
}

/// `cached token new`.
fn new_token(args: &ArgMatches) -> Result<(), String> {
    let text = |key: &str| args.get_one::<String>(key).cloned().unwrap_or_default();
    let name = text("name");
    tokens::check_name(&name)?;
    let scopes = Scopes::parse_list(&text("scopes"))?;
    if scopes.is_empty() {
        return Err("--scopes is empty; a token needs at least one scope".to_owned());
    }
    let namespaces = NamespacePattern::parse_list(&text("namespaces"))?;
    if namespaces.is_empty() {
        return Err("--namespaces is empty; use '*' for every namespace".to_owned());
    }
    let secret = tokens::new_secret()?;
    let spec = TokenSpec {
        name,
        scopes,
        namespaces,
        secret_hash: SecretHash::new(&secret)?,
        rate_limit: args.get_one::<u32>("rate_limit").copied(),
        max_priority: args.get_one::<i32>("max_priority").copied(),
    };
    match args.get_one::<String>("secret_file") {
        Some(path) => {
            write_secret(std::path::Path::new(path), &secret)
                .map_err(|err| format!("cannot write the secret to {path}: {err}"))?;
            print!("{}", spec.to_toml());
        }
        None => {
            println!(
                "Secret of token `{}` (shown this once; give it to the client as CACHED_TOKEN or --token-file):\n",
                spec.name
            );
            println!("    {secret}\n");
            println!("Add this to cached's config (--config or --tokens-file), then send cached SIGHUP:\n");
            print!("{}", spec.to_toml());
        }
    }
    Ok(())
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{secret}")
}

fn load_config(matches: &ArgMatches) -> Result<Config, String> {
    let flags: BTreeMap<String, String> = SETTINGS
        .iter()
        .filter_map(|s| matches.get_one::<String>(s.key).map(|v| (s.key.to_owned(), v.clone())))
        .collect();
    let file = matches
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var(CONFIG_FILE_ENV).ok())
        .map(PathBuf::from);
    Config::load(&flags, file.as_deref(), &|name| std::env::var(name).ok()).map_err(|err| err.to_string())
}

/// The command line and `CACHED_*` environment, credentials redacted, for the log.
fn log_invocation() {
    tracing::info!(args = ?cached::redact::args(std::env::args()), "starting");
    let vars = std::env::vars().filter(|(name, _)| name.starts_with("CACHED_"));
    tracing::debug!(env = ?cached::redact::env(vars), "environment");
}

async fn serve(config: Config, matches: ArgMatches) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|err| format!("cannot listen on {} (listen): {err}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|err| format!("cannot listen on {addr} (metrics_listen): {err}"))?,
        ),
        None => None,
    };
    let registry_listener = match &config.registry {
        Some(registry) => Some(
            tokio::net::TcpListener::bind(registry.listen)
                .await
                .map_err(|err| format!("cannot listen on {} (registry_listen): {err}", registry.listen))?,
        ),
        None => None,
    };
    eprintln!(
        "cached {}: gRPC{} on {}, metrics on {}, registry on {}, data in {}",
        env!("CARGO_PKG_VERSION"),
        match (&config.tls, config.tokens.len()) {
            (Some(_), 0) => " (TLS, no tokens)".to_owned(),
            (Some(_), n) => format!(" (TLS, {n} tokens)"),
            (None, 0) => " (no tokens)".to_owned(),
            (None, n) => format!(" ({n} tokens)"),
        },
        config.listen,
        config.metrics_listen.map_or("(off)".to_owned(), |addr| format!("http://{addr}/metrics")),
        config.registry.as_ref().map_or("(off)".to_owned(), |registry| registry.listen.to_string()),
        config.data_dir.display()
    );
    // SIGHUP reads the same flags, environment and files again, and takes their tokens.
    let tokens: cached::auth::TokenSource =
        Box::new(move || load_config(&matches).map(|config| config.tokens));
    let listeners =
        cached::Listeners { grpc: listener, metrics: metrics_listener, registry: registry_listener };
    cached::run(config, listeners, cached::signals::shutdown(), Some(tokens))
        .await
        .map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    if let Some(("token", token)) = matches.subcommand() {
        let result = match token.subcommand() {
            Some(("new", args)) => new_token(args),
            _ => Err("unknown token command; try `cached token new --help`".to_owned()),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("cached token: {err}");
                ExitCode::from(2)
            }
        };
    }
    let config = match load_config(&matches) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("cached: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = cached::telemetry::init(config.log_format, &config.log_level) {
        eprintln!("cached: {err}");
        return ExitCode::from(2);
    }
    log_invocation();
    if config.tokens.is_empty() && config.allow_anonymous && !config.listen.ip().is_loopback() {
        eprintln!(
            "cached: WARNING: serving {} without tokens (--allow-anonymous): anyone who can connect may write the cache",
            config.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(config.limits.max_blocking_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cached: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cached: {err}");
            ExitCode::FAILURE
        }
    }
}
