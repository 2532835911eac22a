//! `cachectl warm`: the session preload ([`super::preload`]) started by CI before the go
//! command, while the job checks out and sets up its toolchain, so the go command starts with
//! a warm local tier.
//!
//! A warm computes the session keys the bridge will compute ([`super::session`]) from the go
//! command line it is given, walks the list they name like a bridge's preload, landing bodies
//! in the local tier (each whole, by a rename, or not at all), and serves a unix socket in the
//! tier ([`super::warm_wire`]). The bridge the go command starts later joins it
//! ([`super::warm_link`]): a lookup that misses the local tier asks the warm, which answers at
//! once for what it landed, makes the fetch of an action it has in flight the lookup's, and
//! fetches anything else right away, ahead of its list; so no action is fetched twice. The
//! bridge walks the list itself only once the warm is gone, skipping what is on disk.
//!
//! A warm stops when its list is walked (or `--preload-max` reached), and when a bridge of its
//! go command (one with its session keys) ends its session; other bridges are served too. It writes no session list: the bridge does, from what the go
//! command used.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cached_client::connect::ConnectOptions;
use proto::ActionId;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::counters::{Counters, bump, process_cpu};
use super::disk::DiskTier;
use super::flights::Flights;
use super::preload::Preload;
use super::remote::RemoteTier;
use super::session::Keys;
use super::warm_wire::{self, Answer};

/// What a warm is set up with; the local tier's and cached's settings are the bridge's.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    pub dir: PathBuf,
    pub max_size: u64,
    pub server: String,
    pub connect: ConnectOptions,
    pub namespace: String,
    pub timeout: Duration,
    pub preload_max: u64,
    /// The keys of the go command the warm prepares for.
    pub keys: Keys,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("cannot use the local cache directory")]
    Disk(#[source] super::disk::DiskError),
    #[error("cannot use cached")]
    Remote(#[source] cached_client::error::ClientError),
    #[error("cannot serve the warm's socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Lands the session list of `options.keys` into the local tier, serving bridges that join,
/// until one of the stops in the module's description. Returns the summary line.
pub async fn run(options: WarmOptions) -> Result<String, WarmError> {
    let started = Instant::now();
    let disk = DiskTier::open(&options.dir, options.max_size)
        .map_err(WarmError::Disk)?
        .in_namespace(Some(&options.server), &options.namespace);
    let socket = warm_wire::socket_path(disk.root(), &options.server, &options.namespace);
    let Some(listener) = listen(&socket).await? else {
        return Ok("cachectl warm: another warm is landing into this local cache; leaving it to it".into());
    };
    let counters = Arc::new(Counters::default());
    let remote = RemoteTier::new(
        &options.server,
        &options.connect,
        options.namespace.clone(),
        options.timeout,
        Arc::clone(&counters),
    )
    .map_err(WarmError::Remote)?;
    let remote = Arc::new(remote);
    // Never more than half the local tier, as for the bridge's own preload.
    let max_bytes = options.preload_max.min(options.max_size / 2);
    let keys = options.keys;
    let preload = Arc::new(Preload::new(keys, max_bytes, false, Arc::clone(&counters)));
    let flights = Arc::new(Flights::new(Arc::new(disk), Some(Arc::clone(&remote)), None));

    let (stop, stopped) = watch::channel(false);
    let serving = cached_client::task::spawn(
        "warm-serve",
        serve(listener, keys, Arc::clone(&flights), Arc::clone(&counters), stopped),
    );
    tokio::pin!(serving);
    let walk = Arc::clone(&preload).run(Arc::clone(&flights), remote, None);
    let ended = tokio::select! {
        () = walk => {
            // New bridges fetch for themselves from now on; joined ones get their answers.
            let _ = std::fs::remove_file(&socket);
            let _ = stop.send(true);
            let _ = (&mut serving).await;
            "its list is walked"
        }
        _ = &mut serving => "the go command's session ended",
    };
    let _ = std::fs::remove_file(&socket);
    Ok(summary(&counters, ended, started.elapsed()))
}

/// Binds the socket, replacing one a warm that is gone left behind; `None` when a warm is
/// serving it.
async fn listen(socket: &Path) -> Result<Option<UnixListener>, WarmError> {
    let failed = |source| WarmError::Socket { path: socket.to_owned(), source };
    if UnixStream::connect(socket).await.is_ok() {
        return Ok(None);
    }
    match std::fs::remove_file(socket) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(failed(err)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(failed)?;
    restrict_to_owner(socket).map_err(failed)?;
    Ok(Some(listener))
}

#[cfg(unix)]
fn restrict_to_owner(socket: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
}

/// Serves bridges until one of the go command with `keys` has gone (it is done), or, once
/// `stopped` turns true, until each has its answers.
async fn serve(
    listener: UnixListener,
    keys: Keys,
    flights: Arc<Flights>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut bridges = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // Another user's process may not make this warm fetch with its token.
                if let Ok((stream, _)) = accepted
                    && warm_wire::same_user(&stream)
                {
                    let (flights, counters) = (Arc::clone(&flights), Arc::clone(&counters));
                    bridges.spawn(answer_bridge(stream, keys, flights, counters, stopped.clone()));
                }
            }
            Some(Ok(true)) = bridges.join_next() => return,
            _ = stopped.changed() => break,
        }
    }
    while bridges.join_next().await.is_some() {}
}

/// Answers one bridge's wants, each as soon as it is settled, until the bridge hangs up or
/// the warm stops (then what was asked is still answered). Returns whether it was a bridge
/// of the warm's own go command.
async fn answer_bridge(
    stream: UnixStream,
    keys: Keys,
    flights: Arc<Flights>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) -> bool {
    let (reader, mut writer) = stream.into_split();
    let mut lines = warm_wire::LineReader::new(reader);
    // A bridge without session keys (its preload is off) says no hello and starts wanting.
    let mut first = tokio::select! {
        line = lines.next_line() => line.ok().flatten(),
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    let ours = match first.as_deref().and_then(warm_wire::parse_session) {
        Some(theirs) => {
            first = None;
            let hello = if theirs == keys { warm_wire::JOINED } else { warm_wire::OTHER };
            if writer.write_all(format!("{hello}\n").as_bytes()).await.is_err() {
                return false;
            }
            theirs == keys
        }
        None => false,
    };
    let (answers, outgoing) = mpsc::unbounded_channel::<String>();
    let reading = async move {
        loop {
            if let Some(line) = first.take() {
                want_from(&line, &flights, &counters, &answers);
                continue;
            }
            let line = tokio::select! {
                line = lines.next_line() => line,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let Ok(Some(line)) = line else { break };
            want_from(&line, &flights, &counters, &answers);
        }
    };
    // A bridge that went away only ends the answers to it.
    let writing = async move {
        let _ = warm_wire::write_lines(writer, outgoing).await;
    };
    tokio::join!(reading, writing);
    ours
}

/// Starts answering a bridge's `want` line.
fn want_from(
    line: &str,
    flights: &Arc<Flights>,
    counters: &Arc<Counters>,
    answers: &mpsc::UnboundedSender<String>,
) {
    let Some(action_id) = warm_wire::parse_want(line) else { return };
    let (flights, counters, answers) = (Arc::clone(flights), Arc::clone(counters), answers.clone());
    cached_client::task::spawn("warm-want", async move {
        let answer = want(&flights, &counters, action_id).await;
        let _ = answers.send(warm_wire::answer(&action_id, answer));
    });
}

/// A lookup of the go command, on the bridge's behalf: from disk, from a fetch in flight, or
/// fetched now.
async fn want(flights: &Arc<Flights>, counters: &Counters, action_id: ActionId) -> Answer {
    bump(&counters.gets);
    if let Ok(Some(_)) = flights.disk().lookup(&action_id) {
        bump(&counters.local_hits);
        return Answer::Landed;
    }
    match Arc::clone(flights).join(action_id).await {
        Some(_) => {
            bump(&counters.remote_hits);
            Answer::Landed
        }
        None => Answer::Missing,
    }
}

fn summary(counters: &Counters, ended: &str, elapsed: Duration) -> String {
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    format!(
        "cachectl warm: {} preloaded, {} down in {:.2}s; {} lookups of the go command answered ({} already \
         landed, {} waited for); stopped because {ended}; {:.2}s CPU",
        get(&counters.preloaded),
        cached_client::size::human(get(&counters.bytes_down)),
        elapsed.as_secs_f64(),
        get(&counters.gets),
        get(&counters.local_hits),
        get(&counters.remote_hits),
        process_cpu().as_secs_f64(),
    )
}
