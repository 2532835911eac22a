//! The cache the server loop serves: the local disk tier first, then the remote tier, with
//! identical concurrent remote lookups sharing one fetch (the session preload's included).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use proto::{ActionId, OutputId};

use super::counters::{Counters, add, bump};
use super::disk::{DiskError, DiskTier, Entry};
use super::flights::{Flights, hit};
use super::prefetch::{Prefetches, State, subkey};
use super::preload::Preload;
use super::protocol::{Hit, now_unix_nanos};
use super::remote::{RemoteTier, Upload};
use super::salt::Salt;
use super::server::{BodySink, Cache, Local};
use super::trust::Trust;
use super::uploads::Uploader;
use super::warm_link::WarmLink;

pub struct TierOptions {
    /// How long `close` waits for pending uploads.
    pub close_timeout: Duration,
    /// Print the session summary line on close.
    pub summary: bool,
    /// A warm landing into the same local tier, which lookups ask before fetching.
    pub warm: Option<Arc<WarmLink>>,
    /// Every action keyed under it (`--action-salt`).
    pub salt: Option<Salt>,
    /// Set for a session told it is trusted, over a disk tier [`DiskTier::awaiting_trust`]:
    /// it asks cached whether its token may record.
    pub trust_check: Option<TrustCheck>,
}

pub struct TrustCheck {
    /// Which sessions share its records if it is not trusted (`--untrusted-scope`).
    pub scope: Option<String>,
    /// cached's last yes to this token, for when it cannot answer.
    pub vouched: crate::vouched::Vouched,
}

pub struct Tiers {
    disk: Arc<DiskTier>,
    remote: Option<Arc<RemoteTier>>,
    /// None when there is no remote tier or it is read-only.
    uploader: Option<Uploader>,
    flights: Arc<Flights>,
    prefetches: Prefetches,
    /// None without a remote tier or with preload off.
    preload: Option<Arc<Preload>>,
    counters: Arc<Counters>,
    options: TierOptions,
    /// The question [`TierOptions::trust_check`] asks.
    trust: Option<Arc<Trust>>,
}

/// How long a lookup that found a test log naming files waits for the session's trust to be
/// known before it answers a miss (the test runs).
const TRUST_WAIT: Duration = Duration::from_secs(5);

impl Tiers {
    /// `upload` false makes the remote tier read-only. Needs a tokio runtime.
    pub fn new(
        disk: DiskTier,
        remote: Option<RemoteTier>,
        upload: bool,
        preload: Option<Preload>,
        counters: Arc<Counters>,
        options: TierOptions,
    ) -> Self {
        let remote = remote.map(Arc::new);
        let disk = Arc::new(disk);
        let uploader = remote
            .as_ref()
            .filter(|_| upload)
            .map(|remote| Uploader::start(Arc::clone(remote), Arc::clone(&counters)));
        let trust = options.trust_check.as_ref().zip(remote.as_ref()).map(|(check, remote)| {
            Arc::new(Trust::new(
                Arc::clone(&disk),
                Arc::clone(remote),
                check.scope.clone(),
                check.vouched.clone(),
            ))
        });
        Self {
            flights: Arc::new(Flights::new(Arc::clone(&disk), remote.clone(), options.warm.clone())),
            disk,
            uploader,
            prefetches: Prefetches::default(),
            preload: preload.filter(|_| remote.is_some()).map(Arc::new),
            remote,
            counters,
            options,
            trust,
        }
    }

    /// Starts the session preload, if there is one, and asks cached whether this session
    /// may record where trusted sessions read.
    pub fn start(self: &Arc<Self>) {
        if let Some(trust) = &self.trust {
            trust.start();
        }
        if let (Some(preload), Some(remote)) = (&self.preload, &self.remote) {
            // A warm that lands this session's list walks it; one that lands another's does not.
            let warm = self.options.warm.clone().filter(|warm| warm.lands_our_list());
            preload.start(Arc::clone(&self.flights), Arc::clone(remote), warm);
        }
    }

    fn local_miss(&self, action_id: &ActionId) -> Local {
        if self.remote.as_ref().is_some_and(|remote| remote.breaker.allows()) {
            Local::TryRemote
        } else {
            self.missed(action_id);
            Local::Miss
        }
    }

    /// Whether the preload brought this action in; true once per action.
    fn preloaded(&self, action_id: &ActionId) -> bool {
        self.preload.as_ref().is_some_and(|preload| preload.take(action_id))
    }

    /// A lookup found the action: it goes on the session list.
    fn used(&self, action_id: &ActionId, size: u64) {
        if let Some(preload) = &self.preload {
            preload.recorder.used(*action_id, size);
        }
    }

    fn missed(&self, action_id: &ActionId) {
        bump(&self.counters.misses);
        if let Some(preload) = &self.preload {
            preload.recorder.missed(*action_id);
        }
    }

    /// `hit`, unless this session may not answer with it ([`DiskTier::takes`]), waiting for
    /// its trust to be known where that decides.
    async fn answerable(&self, hit: Hit) -> Option<Hit> {
        let body = std::path::Path::new(&hit.disk_path);
        let takes = match self.disk.takes(body, hit.size) {
            Some(takes) => takes,
            None => {
                if let Some(trust) = &self.trust {
                    trust.known(TRUST_WAIT).await;
                }
                self.disk.takes(body, hit.size) == Some(true)
            }
        };
        takes.then_some(hit)
    }

    fn local_hit(&self, action_id: &ActionId, entry: Entry, path: PathBuf) -> Local {
        let prefetched = self.prefetches.take(action_id) == Some(State::Found);
        let counter = if self.preloaded(action_id) {
            &self.counters.preloaded_hits
        } else if prefetched {
            &self.counters.remote_hits
        } else {
            &self.counters.local_hits
        };
        bump(counter);
        self.used(action_id, entry.size);
        Local::Hit(hit(entry, path))
    }
}

impl Cache for Tiers {
    fn get_local(&self, action_id: &ActionId) -> Local {
        let action_id = &self.keyed(action_id);
        bump(&self.counters.gets);
        if let Some(preload) = &self.preload {
            preload.asked(action_id);
        }
        match self.disk.lookup(action_id) {
            Ok(Some((entry, path))) => match self.disk.takes(&path, entry.size) {
                Some(true) => self.local_hit(action_id, entry, path),
                // Not the session's to take; cached would answer the same.
                Some(false) => {
                    self.missed(action_id);
                    Local::Miss
                }
                // Known once the session's trust is: the remote path waits for it.
                None => self.local_miss(action_id),
            },
            // An unreadable record is as good as none; the next put of the action rewrites it.
            Ok(None) | Err(_) => {
                if self.prefetches.take(action_id) == Some(State::Missing) {
                    self.missed(action_id);
                    return Local::Miss; // The server was just asked.
                }
                self.local_miss(action_id)
            }
        }
    }

    fn get_remote(self: Arc<Self>, action_id: ActionId) -> BoxFuture<'static, Option<Hit>> {
        // The go command asks for the subkey of the action as it knows it, salted after.
        let stdout = self.keyed(&subkey(&action_id, "stdout"));
        let action_id = self.keyed(&action_id);
        Box::pin(async move {
            if let Some(stdout) = self.prefetches.start(&action_id, stdout) {
                self.prefetch(stdout);
            }
            let start = Instant::now();
            let found = self.flights.join(action_id).await;
            self.counters.waited(start.elapsed());
            // What cached serves is the namespace's, trusted: an untrusted session takes no
            // test result keyed by file times from it.
            let found = match found {
                Some(hit) => self.answerable(hit).await,
                None => None,
            };
            match &found {
                Some(hit) => {
                    let preloaded = self.preloaded(&action_id);
                    bump(if preloaded { &self.counters.preloaded_hits } else { &self.counters.remote_hits });
                    self.used(&action_id, hit.size);
                }
                None => self.missed(&action_id),
            }
            found
        })
    }

    fn begin_put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        size: u64,
    ) -> Result<Box<dyn BodySink>, String> {
        let action_id = self.keyed(&action_id);
        bump(&self.counters.puts);
        let writer = self.disk.put_writer(output_id, size).map_err(|err| self.put_failed(&err))?;
        Ok(Box::new(PutSink {
            tiers: PutTiers {
                disk: Arc::clone(&self.disk),
                uploader: self.uploader.clone(),
                preload: self.preload.clone(),
                counters: Arc::clone(&self.counters),
            },
            writer,
            action_id,
            output_id,
            head: crate::goindex::Head::default(),
        }))
    }

    fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(trust) = &self.trust {
                trust.close().await;
            }
            if let Some(preload) = &self.preload {
                preload.stop();
            }
            if let Some(uploader) = &self.uploader {
                let start = Instant::now();
                let left = uploader.drain(self.options.close_timeout).await;
                self.counters.waited(start.elapsed());
                if left > 0 {
                    add(&self.counters.uploads_lost, left as u64);
                    tracing::warn!(
                        "{left} uploads were still pending after {:?} (--close-timeout); they are \
                         not in cached",
                        self.options.close_timeout
                    );
                }
            }
            if let Some(remote) = &self.remote {
                let save = async {
                    if let Some(preload) = &self.preload {
                        preload.save(remote).await;
                    }
                };
                tokio::join!(remote.report(), save);
            }
            let disk = Arc::clone(&self.disk);
            let _ = cached_client::task::spawn_blocking("trim-disk", move || disk.trim_if_due()).await;
            if self.options.summary {
                let server = self.remote.as_ref().map(|remote| remote.server());
                tracing::info!("{}", self.counters.summary(server, super::counters::process_cpu()));
            }
        })
    }
}

impl Tiers {
    /// The action as this session keys it: under its salt, if any.
    fn keyed(&self, action_id: &ActionId) -> ActionId {
        self.options.salt.as_ref().map_or(*action_id, |salt| salt.apply(action_id))
    }

    /// Fetches a subkey into the local tier in the background (see `prefetch`).
    fn prefetch(self: &Arc<Self>, action_id: ActionId) {
        let this = Arc::clone(self);
        cached_client::task::spawn("prefetch", async move {
            let found = this.flights.join(action_id).await.is_some();
            this.prefetches.finished(&action_id, found);
        });
    }

    fn put_failed(&self, err: &DiskError) -> String {
        bump(&self.counters.put_errors);
        err.to_string()
    }
}

/// What a put needs once its body is complete.
struct PutTiers {
    disk: Arc<DiskTier>,
    uploader: Option<Uploader>,
    preload: Option<Arc<Preload>>,
    counters: Arc<Counters>,
}

struct PutSink {
    tiers: PutTiers,
    writer: super::disk::DigestingWriter,
    action_id: ActionId,
    output_id: OutputId,
    /// The body's first bytes, enough to tell go's index entries ([`crate::goindex`]).
    head: crate::goindex::Head,
}

impl PutSink {
    fn store(self) -> Result<PathBuf, DiskError> {
        let (path, digest) = self.writer.commit()?;
        let time_unix_nanos = now_unix_nanos();
        let entry = Entry { output_id: self.output_id, size: digest.size, time_unix_nanos };
        self.tiers.disk.record(&self.action_id, &entry)?;
        if self.head.is_index() {
            // True of this machine's files only: neither listed for nor sent to others.
            return Ok(path);
        }
        if let Some(preload) = &self.tiers.preload {
            preload.recorder.used(self.action_id, entry.size);
        }
        if let Some(uploader) = &self.tiers.uploader {
            uploader.enqueue(Upload {
                action_id: self.action_id,
                output_id: self.output_id,
                digest,
                time_unix_nanos,
                path: path.clone(),
            });
        }
        Ok(path)
    }
}

impl BodySink for PutSink {
    fn write(&mut self, piece: &[u8]) -> Result<(), String> {
        self.head.take(piece);
        self.writer.write(piece).map_err(|err| {
            bump(&self.tiers.counters.put_errors);
            err.to_string()
        })
    }

    fn finish(self: Box<Self>) -> Result<PathBuf, String> {
        let counters = Arc::clone(&self.tiers.counters);
        self.store().map_err(|err| {
            bump(&counters.put_errors);
            err.to_string()
        })
    }
}
