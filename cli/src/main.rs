//! `cachectl`: talk to a cached server.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use cachectl::client::{Client, DEFAULT_SERVER};
use cachectl::commands;
use cachectl::error::{CliError, Result};
use cachectl::transfer::DEFAULT_LEVEL;
use clap::{Parser, Subcommand};
use proto::Digest;

#[derive(Parser)]
#[command(name = "cachectl", version, about = "Client for the cached build cache")]
struct Cli {
    /// Address of the cached server.
    #[arg(long, global = true, env = "CACHED_ADDR", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(subcommand)]
    command: Command,
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
    /// Download a blob; the file appears only after its digest was verified.
    Get {
        /// `<64 hex digits>/<size>`, as `cachectl put` prints it.
        digest: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Report which digests the server holds; exits 1 when any is missing.
    Has {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Serve the go command's build cache: GOCACHEPROG="cachectl gocacheprog" go build ./...
    Gocacheprog(commands::gocacheprog::Args),
    /// Build a multi-platform OCI image from built binaries; write a layout and/or push it.
    Image(Box<commands::image::Args>),
    /// Server statistics: store size, requests, hits and misses per API and namespace.
    Stats {
        /// Print the stable JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_digest(text: &str) -> Result<Digest> {
    text.parse().map_err(|err: proto::DigestError| CliError::Usage(err.to_string()))
}

async fn run(cli: Cli) -> Result<()> {
    // Parse arguments before connecting, so bad input is reported as such even when the
    // server is down.
    match cli.command {
        Command::Put { files, level } => {
            commands::put::check(&files)?;
            let client = Client::connect(&cli.server).await?;
            commands::put::run(&client, &files, level).await
        }
        Command::Get { digest, output } => {
            let digest = parse_digest(&digest)?;
            let client = Client::connect(&cli.server).await?;
            commands::get::run(&client, digest, &output).await
        }
        Command::Has { digests } => {
            let digests = digests.iter().map(|d| parse_digest(d)).collect::<Result<Vec<_>>>()?;
            let client = Client::connect(&cli.server).await?;
            commands::has::run(&client, &digests).await
        }
        Command::Gocacheprog(args) => commands::gocacheprog::run(&cli.server, args).await,
        Command::Image(args) => commands::image::run(&cli.server, *args).await,
        Command::Stats { json } => {
            let client = Client::connect(&cli.server).await?;
            commands::stats::run(&client, json).await
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
