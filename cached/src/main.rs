//! `cached`: with no arguments, a working single-machine cache on 127.0.0.1:7070.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use cached::config::{self, CONFIG_FILE_ENV, Config, SETTINGS};
use clap::{Arg, ArgAction, Command};

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
        command = command.arg(
            Arg::new(setting.key)
                .long(setting.key.replace('_', "-"))
                .value_name(setting.key.to_ascii_uppercase())
                .action(ArgAction::Set)
                .help(help),
        );
    }
    command
}

fn load_config() -> Result<Config, String> {
    let matches = command().get_matches();
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

async fn serve(config: Config) -> Result<(), String> {
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
    eprintln!(
        "cached {}: gRPC on {}, metrics on {}, data in {}",
        env!("CARGO_PKG_VERSION"),
        config.listen,
        config.metrics_listen.map_or("(off)".to_owned(), |addr| format!("http://{addr}/metrics")),
        config.data_dir.display()
    );
    cached::run(config, listener, metrics_listener, cached::shutdown::signal_received())
        .await
        .map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    let config = match load_config() {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cached: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cached: {err}");
            ExitCode::FAILURE
        }
    }
}
