//! `cachectl`: talk to a cached server.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use cachectl::commands;
use cached_client::connect::{Client, ConnectOptions, DEFAULT_SERVER};
use cached_client::error::{ClientError, Result};
use cached_client::transfer::DEFAULT_LEVEL;
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use proto::Digest;

#[derive(Parser)]
#[command(name = "cachectl", version, about = "Client for the cached build cache")]
struct Cli {
    /// Address of the cached server, or of several replicas separated by commas (calls fail
    /// over between them).
    #[arg(long, global = true, env = "CACHED_ADDR", default_value = DEFAULT_SERVER)]
    server: String,
    /// Token for a server that requires one (from `cached token new`). Prefer --token-file or
    /// the environment: a flag shows in the process list.
    #[arg(long, global = true, env = "CACHED_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// File that holds the token.
    #[arg(long, global = true, env = "CACHED_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign an https:// server's certificate [default: the system's roots].
    #[arg(long, global = true, env = "CACHED_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mTLS.
    #[arg(long, global = true, env = "CACHED_TLS_CLIENT_CERT", value_name = "FILE")]
    tls_client_cert: Option<PathBuf>,
    /// Key of --tls-client-cert (PEM).
    #[arg(long, global = true, env = "CACHED_TLS_CLIENT_KEY", value_name = "FILE")]
    tls_client_key: Option<PathBuf>,
    /// Send the token over plain http:// to a server that is not on loopback, where anyone on
    /// the network path can read it. Only for a path you trust; use https:// otherwise.
    #[arg(long, global = true, env = "CACHED_ALLOW_INSECURE_TOKEN", value_parser = BoolishValueParser::new())]
    allow_insecure_token: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The global connection options, every file read and checked up front.
    fn connect_options(&self) -> Result<ConnectOptions> {
        let token = ConnectOptions::token_from_flags(self.token.as_deref(), self.token_file.as_deref())?;
        Ok(ConnectOptions {
            token,
            tls_ca: self.tls_ca.clone(),
            tls_client_cert: self.tls_client_cert.clone(),
            tls_client_key: self.tls_client_key.clone(),
            allow_insecure_token: self.allow_insecure_token,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Upload files (only those the server lacks); print one `<blake3 hex>/<size>` per file.
    Put {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// zstd level used to compress on this side before upload.
        #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
    },
    /// Download blobs; each file appears only after its digest was verified.
    Get {
        /// `<64 hex digits>/<size>`, as `cachectl put` prints it; several with --output-dir.
        #[arg(required = true)]
        digests: Vec<String>,
        /// The file to write (one digest).
        #[arg(short, long, required_unless_present = "output_dir", conflicts_with = "output_dir")]
        output: Option<PathBuf>,
        /// A directory to write each blob into, named by its digest's hex.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// How cached sends the bytes: zstd frames (fewer bytes, least CPU, decoded here), none
        /// (decoded by the server), or auto: none from a server on loopback, zstd from any other.
        #[arg(long, env = "CACHED_TRANSFER_COMPRESSION", default_value = "zstd", value_parser = ["auto", "zstd", "none"])]
        transfer_compression: String,
    },
    /// Report which digests the server holds; exits 1 when any is missing.
    Has {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Serve the go command's build cache: GOCACHEPROG="cachectl gocacheprog" go build ./...
    Gocacheprog(cached_gocacheprog::command::Args),
    /// Land what the last run of a go command used into the local cache before it starts, as
    /// CI's first step: `cachectl warm -- go build ./... &`; its bridge joins the warm.
    Warm(Box<commands::warm::Args>),
    /// Build a multi-platform OCI image from built binaries; write a layout and/or push it.
    Image(Box<commands::image::Args>),
    /// Sign an image in a registry the way `cosign sign --key` does (no transparency log).
    Sign(Box<commands::sign::Args>),
    /// Check an image's cosign-compatible signature; exits 1 when none holds for the key.
    Verify(Box<commands::verify::Args>),
    /// Build a GOOS/GOARCH matrix of this module on runner agents; outputs to dist/<goos>_<goarch>/.
    Submit(Box<commands::submit::Args>),
    /// Operator actions (a token with the `admin` scope): `admin purge --namespace NS`.
    Admin {
        #[command(subcommand)]
        command: commands::admin::Command,
    },
    /// Follow, list and cancel submitted jobs.
    Jobs {
        #[command(subcommand)]
        command: commands::jobs::Command,
    },
    /// Server statistics: store size, requests, hits and misses per API and namespace, and
    /// whole builds (hit rate, time saved, top miss causes and missed targets).
    Stats {
        /// Print the stable JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Window of the whole-build numbers (`24h`, `7d`, `90m`).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
    },
    /// The go command behind the cache: `cachectl go build [flags] [packages]` skips unchanged
    /// builds and says why a build missed; `cachectl go test ...` runs with the cache bridge.
    Go {
        /// Namespace of the build and Go action entries.
        #[arg(long, env = "CACHED_NAMESPACE", default_value = "")]
        namespace: String,
        /// Look up only: record no build and upload nothing, the bridge included (an untrusted
        /// build whose token may write; also CACHED_READ_ONLY=1).
        #[arg(long, env = "CACHED_READ_ONLY", value_parser = BoolishValueParser::new())]
        read_only: bool,
        #[command(subcommand)]
        command: GoCommand,
    },
    /// Set every file of a git clone to the time of its last commit, so `go test` results that
    /// read files (testdata, golden files) hit the cache on a fresh clone; run it after checkout.
    RestoreMtimes {
        /// A directory inside the clone.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Why the latest build of a target (an import path such as `cmd/app`, optionally
    /// followed by `linux/amd64`) or of a build key missed: every input that differed.
    Explain {
        /// A target or a build key (at least 8 hex digits).
        #[arg(num_args = 1.., required = true)]
        query: Vec<String>,
        #[arg(long, env = "CACHED_NAMESPACE", default_value = "")]
        namespace: String,
        /// Print the stable JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GoCommand {
    /// go build through the whole-build cache; flags and packages as for go build.
    #[command(disable_help_flag = true)]
    Build {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// go test with GOCACHEPROG set to the cache bridge; flags and packages as for go test.
    #[command(disable_help_flag = true)]
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_digest(text: &str) -> Result<Digest> {
    text.parse().map_err(|err: proto::DigestError| ClientError::Usage(err.to_string()))
}

async fn run(cli: Cli) -> Result<()> {
    // Parse arguments before connecting, so bad input is reported as such even when the
    // server is down.
    let connect = cli.connect_options()?;
    match cli.command {
        Command::Put { files, level } => {
            commands::put::check(&files)?;
            let client = Client::connect(&cli.server, &connect).await?;
            commands::put::run(&client, &files, level).await
        }
        Command::Get { digests, output, output_dir, transfer_compression } => {
            let digests = digests.iter().map(|d| parse_digest(d)).collect::<Result<Vec<_>>>()?;
            let destination = match (output, output_dir) {
                (Some(file), _) if digests.len() == 1 => commands::get::Destination::File(file),
                (Some(_), _) => {
                    return Err(ClientError::Usage(
                        "--output names one file: download several digests with --output-dir".to_owned(),
                    ));
                }
                (None, Some(dir)) => commands::get::Destination::Dir(dir),
                (None, None) => {
                    return Err(ClientError::Usage("give --output FILE or --output-dir DIR".to_owned()));
                }
            };
            let compression = transfer_compression.parse()?;
            let client = Client::connect(&cli.server, &connect).await?;
            commands::get::run(&client, &digests, &destination, compression).await
        }
        Command::Has { digests } => {
            let digests = digests.iter().map(|d| parse_digest(d)).collect::<Result<Vec<_>>>()?;
            let client = Client::connect(&cli.server, &connect).await?;
            commands::has::run(&client, &digests).await
        }
        Command::Gocacheprog(args) => {
            cached_gocacheprog::command::init_log();
            cached_gocacheprog::command::run(&cli.server, &connect, args).await
        }
        Command::Warm(args) => commands::warm::run(&cli.server, &connect, *args).await,
        Command::Image(args) => commands::image::run(&cli.server, &connect, *args).await,
        Command::Sign(args) => commands::sign::run(*args).await,
        Command::Verify(args) => commands::verify::run(*args).await,
        Command::Submit(args) => commands::submit::run(&cli.server, &connect, *args).await,
        Command::Jobs { command } => commands::jobs::run(&cli.server, &connect, command).await,
        Command::Admin { command } => commands::admin::run(&cli.server, &connect, command).await,
        Command::Stats { json, since } => {
            let client = Client::connect(&cli.server, &connect).await?;
            commands::stats::run(&client, json, since).await
        }
        Command::Go { namespace, read_only, command } => {
            let code = match command {
                GoCommand::Build { args } => {
                    commands::gobuild::build(&cli.server, &connect, namespace, read_only, args).await?
                }
                GoCommand::Test { args } => {
                    commands::gobuild::test(&cli.server, &connect, namespace, read_only, args).await?
                }
            };
            if code != 0 {
                // go's own exit code passes through (it has said what failed).
                std::process::exit(code);
            }
            Ok(())
        }
        Command::RestoreMtimes { dir } => commands::mtimes::run(&dir),
        Command::Explain { query, namespace, json } => {
            let client = Client::connect(&cli.server, &connect).await?;
            commands::explain::run(&client, namespace, query.join(" "), json).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = cli.server.clone();
    match run(cli).await.map_err(|err| err.for_server(&server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cachectl: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
