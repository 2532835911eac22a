//! The GOCACHEPROG bridge: the go command's build cache served from a local disk tier and, behind
//! it, cached. `GOCACHEPROG="cachectl gocacheprog" go build ./...`.
//!
//! Read in this order: [`protocol`] (the wire format, no I/O), [`server`] (the loop: reader and
//! writer threads, remote work on the runtime), [`tiers`] (local first, then remote, one fetch
//! per action through [`flights`]), [`disk`]
//! (the files behind `DiskPath`; [`room`] when their disk is full), [`remote`] and [`uploads`]
//! (cached, fail-open behind [`breaker`]), [`prefetch`] (a compile hit's second lookup,
//! started with the first), [`session`] and [`preload`] (what the last run of the same command
//! used, fetched before the go command asks), [`warm`] (the same, started by CI before the go
//! command, which joins it through [`warm_link`] and [`warm_wire`]), [`counters`] (the session summary), and
//! [`command`], the `gocacheprog` subcommand cachectl and runner-agent both offer.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod command;
pub mod counters;
pub mod disk;
pub mod flights;
mod goindex;
pub mod landing;
pub mod prefetch;
pub mod preload;
pub mod protocol;
pub mod remote;
pub mod remote_error;
pub mod room;
pub mod salt;
pub mod server;
pub mod session;
pub mod testlog;
pub mod tiers;
pub mod trim;
pub mod trust;
pub mod uploads;
pub mod vouched;
pub mod warm;
pub mod warm_link;
pub mod warm_wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cached_client::connect::ConnectOptions;
use cached_client::error::{ClientError, Result};

/// Everything a session is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Root of the local disk tier.
    pub dir: PathBuf,
    /// Size cap of the local disk tier, in bytes.
    pub max_size: u64,
    /// cached's address; `None` serves the local tier only.
    pub server: Option<String>,
    /// How to reach it: token, TLS.
    pub connect: ConnectOptions,
    pub namespace: String,
    /// Deadline of each remote request (transfers get more in proportion to their size).
    pub timeout: Duration,
    /// How long `close` waits for pending uploads.
    pub close_timeout: Duration,
    /// Fetch from cached but never upload (for untrusted builds).
    pub read_only: bool,
    /// Which read-only sessions share what they record in the local tier (one pull request's
    /// go commands); `None`: each its own.
    pub untrusted_scope: Option<String>,
    /// Print the session summary line on close.
    pub summary: bool,
    /// Read and write session lists and preload what they name.
    pub preload: bool,
    /// Bytes a session preloads at most.
    pub preload_max: u64,
    /// Moves every action ID into a key space of its own (see [`salt`]).
    pub action_salt: Option<salt::Salt>,
}

/// The default local tier: `<user cache dir>/cached/gocache`.
pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("cached").join("gocache"))
}

/// Serves the go command on stdin/stdout until it closes the session.
pub async fn run(options: Options) -> Result<()> {
    let disk = disk::DiskTier::open(&options.dir, options.max_size)
        .map_err(|err| ClientError::Local {
            what: "cannot use the local cache directory".into(),
            source: err.into(),
        })?
        .in_namespace(options.server.as_deref(), &options.namespace);
    // A session told it is trusted asks cached too: a pull request's CI job run without
    // --read-only must not leave what it built where main's sessions read.
    let vouched = options.server.as_deref().map(|server| {
        let token = options.connect.token.as_ref().map(|token| token.expose());
        vouched::Vouched::new(disk.root(), server, &options.namespace, token)
    });
    // A server it cannot use cannot say whether this session may record.
    let unvouched = !options.read_only && vouched.as_ref().is_some_and(|vouched| !vouched.lately());
    let counters = Arc::new(counters::Counters::default());
    let remote = options.server.as_ref().and_then(|server| {
        let (namespace, counters) = (options.namespace.clone(), Arc::clone(&counters));
        remote::RemoteTier::new(server, &options.connect, namespace, options.timeout, counters)
            // A cache problem never fails the build, a misconfigured one included: say it once.
            .inspect_err(|err| {
                let kept = match unvouched {
                    true => "; what this session records stays its own (cached has not said lately that this token may record)",
                    false => "",
                };
                tracing::warn!("cannot use cached ({err}); continuing with the local cache only{kept}");
            })
            .ok()
    });
    let disk = match &remote {
        _ if options.read_only => disk.untrusted(options.untrusted_scope.as_deref()),
        Some(_) => disk.awaiting_trust(),
        None if unvouched => disk.untrusted(options.untrusted_scope.as_deref()),
        None => disk,
    };
    let trust_check = remote
        .as_ref()
        .zip(vouched)
        .filter(|_| !options.read_only)
        .map(|(_, vouched)| tiers::TrustCheck { scope: options.untrusted_scope.clone(), vouched });
    let keys = options.preload.then(|| session::KeyInputs::from_process(&options.namespace).keys());
    let warm = match &remote {
        Some(_) => {
            let server = options.server.as_deref().unwrap_or_default();
            warm_link::WarmLink::connect(disk.root(), server, &options.namespace, keys.as_ref()).await
        }
        None => None,
    };
    let preload = keys.map(|keys| {
        // Never more than half the local tier, so a preload cannot trim what the build uses.
        let max_bytes = options.preload_max.min(options.max_size / 2);
        preload::Preload::new(keys, max_bytes, !options.read_only, Arc::clone(&counters))
    });
    let tier_options = tiers::TierOptions {
        close_timeout: options.close_timeout,
        summary: options.summary,
        warm,
        salt: options.action_salt,
        trust_check,
    };
    let tiers =
        Arc::new(tiers::Tiers::new(disk, remote, !options.read_only, preload, counters, tier_options));
    tiers.start();
    server::serve(std::io::stdin(), std::io::stdout(), tiers)
        .await
        .map_err(|err| ClientError::Local { what: "gocacheprog".into(), source: err.into() })
}
