//! `cachectl gocacheprog`: the go command's cache program (GOCACHEPROG).

use std::path::PathBuf;
use std::time::Duration;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::Options;
use cached_client::connect::ConnectOptions;
use cached_client::error::{ClientError, Result};

/// Where the local tier is and how it reaches cached: the flags `cachectl gocacheprog` and
/// `cachectl warm` share, so a warm prepares exactly the tier its bridge will use.
#[derive(Debug, clap::Args)]
pub struct TierArgs {
    /// Local cache directory (the files the go command reads) [default: <user cache dir>/cached/gocache].
    #[arg(long, env = "CACHED_GOCACHE_DIR")]
    pub dir: Option<PathBuf>,
    /// Size cap of the local cache directory; least recently used entries are trimmed past it.
    #[arg(long, env = "CACHED_GOCACHE_MAX_SIZE", default_value = "10GiB", value_parser = cached_client::size::parse)]
    pub max_size: u64,
    /// Namespace of the Go action entries in cached (teams, branches or runner images).
    #[arg(long, env = "CACHED_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// Deadline of each request to cached; transfers get more in proportion to their size.
    #[arg(long, env = "CACHED_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Most bytes of bodies landed ahead of the go command (0: none, but lists are still kept;
    /// never more than half the local cache).
    #[arg(long, env = "CACHED_PRELOAD_MAX", default_value = "2GiB", value_parser = cached_client::size::parse)]
    pub preload_max: u64,
}

impl TierArgs {
    /// `--dir`, or the user's cache directory.
    pub fn dir(&self) -> Result<PathBuf> {
        self.dir.clone().or_else(crate::default_dir).ok_or_else(|| {
            ClientError::Usage(
                "no user cache directory is known here; set --dir or CACHED_GOCACHE_DIR".into(),
            )
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    tier: TierArgs,
    /// Use the local cache directory only; never contact cached.
    #[arg(long)]
    local_only: bool,
    /// Fetch from cached but never upload (CACHED_READ_ONLY=1, true, yes or on).
    #[arg(long, env = "CACHED_READ_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
    read_only: bool,
    /// With --read-only: the read-only sessions that share what they record in the local
    /// directory, such as one pull request's go commands (its number or CI job id), set by
    /// trusted CI configuration. Without it (or empty) each session's records are its own, so
    /// no other untrusted build takes them.
    #[arg(long, env = "CACHED_UNTRUSTED_SCOPE")]
    untrusted_scope: Option<String>,
    /// How long the end of a go command waits for pending uploads.
    #[arg(long, env = "CACHED_CLOSE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    close_timeout: Duration,
    /// Do not read or write session lists: no preload of what the last run of the same go
    /// command used (also CACHED_PRELOAD=0).
    #[arg(long)]
    no_preload: bool,
    /// Print a one-line session summary on stderr when the go command ends (also CACHED_SUMMARY=1).
    #[arg(short, long)]
    verbose: bool,
    /// Key every action under this salt (64 hex digits): `cachectl go build` passes one made
    /// of the files a build's C and assembly sources include that go's action IDs miss.
    #[arg(long, env = "CACHED_ACTION_SALT", value_parser = crate::salt::parse)]
    action_salt: Option<crate::salt::Salt>,
}

/// CACHED_SUMMARY=1 (or true/yes) asks for the summary without changing GOCACHEPROG.
fn summary_from_env() -> bool {
    std::env::var("CACHED_SUMMARY")
        .is_ok_and(|value| matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// CACHED_PRELOAD=0 (or false/no/off) turns the preload off without changing GOCACHEPROG.
fn preload_off_in_env() -> bool {
    std::env::var("CACHED_PRELOAD")
        .is_ok_and(|value| matches!(value.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"))
}

/// Prints what the bridge reports (through `tracing`) on stderr, which the go command shows
/// with the build's output: warnings as `cachectl gocacheprog: warning: ...` lines, the
/// session summary as it is. For the binaries that offer the subcommand, before `run`.
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .event_format(BridgeLines)
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// One plain line per event: the go command's users read these, not an operator's log.
struct BridgeLines;

impl<S, N> FormatEvent<S, N> for BridgeLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if *event.metadata().level() <= tracing::Level::WARN {
            write!(writer, "cachectl gocacheprog: warning: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub async fn run(server: &str, connect: &ConnectOptions, args: Args) -> Result<()> {
    let options = Options {
        dir: args.tier.dir()?,
        max_size: args.tier.max_size,
        server: (!args.local_only).then(|| server.to_owned()),
        connect: connect.clone(),
        namespace: args.tier.namespace,
        timeout: args.tier.timeout,
        close_timeout: args.close_timeout,
        read_only: args.read_only,
        // An empty value (a pull request number on a push build) names no scope.
        untrusted_scope: args.untrusted_scope.filter(|scope| !scope.is_empty()),
        summary: args.verbose || summary_from_env(),
        preload: !(args.no_preload || preload_off_in_env()),
        preload_max: args.tier.preload_max,
        action_salt: args.action_salt,
    };
    crate::run(options).await
}
