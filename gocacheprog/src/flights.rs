//! The singleflight table: one fetch from cached per action at a time, whoever asks (a lookup
//! of the go command, a prefetch, the session preload). The preload claims actions before it
//! fetches them in batches; lookups of a claimed action wait for its [`Claim`] to be settled.
//! With a warm process running on the same local tier, a fetch asks it first
//! ([`super::warm_link`]), so the two processes do not fetch one action twice either.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use proto::ActionId;
use tokio::sync::oneshot;

use super::disk::{DiskTier, Entry};
use super::protocol::Hit;
use super::remote::RemoteTier;
use super::warm_link::WarmLink;
use super::warm_wire::Answer;

type Flight = Shared<BoxFuture<'static, Option<Hit>>>;

/// An action the preload is fetching: lookups of it wait for [`Flights::settle`].
pub struct Claim {
    action_id: ActionId,
    answer: oneshot::Sender<Option<Hit>>,
}

impl Claim {
    pub fn action_id(&self) -> ActionId {
        self.action_id
    }
}

/// What became of a claimed action.
pub enum PreloadOutcome {
    Found(Entry, PathBuf),
    /// cached has no (usable) entry: the go command's lookup is a miss.
    Missing,
    /// The preload could not tell: whoever waits fetches it the usual way.
    Failed,
}

pub struct Flights {
    disk: Arc<DiskTier>,
    remote: Option<Arc<RemoteTier>>,
    warm: Option<Arc<WarmLink>>,
    flights: Mutex<HashMap<ActionId, Flight>>,
}

impl Flights {
    pub fn new(disk: Arc<DiskTier>, remote: Option<Arc<RemoteTier>>, warm: Option<Arc<WarmLink>>) -> Self {
        Self { disk, remote, warm, flights: Mutex::new(HashMap::new()) }
    }

    pub fn disk(&self) -> &Arc<DiskTier> {
        &self.disk
    }

    /// Claims an action for the preload unless a fetch of it is under way. Until the claim is
    /// settled, lookups of the action wait for it; if it fails, they fetch it themselves.
    pub fn claim(self: &Arc<Self>, action_id: ActionId) -> Option<Claim> {
        let mut flights = self.table();
        if flights.contains_key(&action_id) {
            return None;
        }
        let (answer, answered) = oneshot::channel();
        let this = Arc::clone(self);
        let flight = async move {
            match answered.await {
                Ok(found) => found,
                Err(_) => this.fetch(action_id).await,
            }
        }
        .boxed()
        .shared();
        flights.insert(action_id, flight);
        Some(Claim { action_id, answer })
    }

    /// Answers the lookups waiting for a claimed action.
    pub fn settle(&self, claim: Claim, outcome: PreloadOutcome) {
        let Claim { action_id, answer } = claim;
        match outcome {
            PreloadOutcome::Found(entry, path) => {
                let _ = answer.send(Some(hit(entry, path)));
            }
            PreloadOutcome::Missing => {
                let _ = answer.send(None);
            }
            PreloadOutcome::Failed => drop(answer),
        }
        // After the answer: a lookup that finds the flight now gets it at once, and one that
        // comes later finds the action on disk.
        self.table().remove(&action_id);
    }

    /// The fetch of `action_id` in progress, or a new one.
    pub fn join(self: &Arc<Self>, action_id: ActionId) -> impl Future<Output = Option<Hit>> + use<> {
        let mut flights = self.table();
        if let Some(flight) = flights.get(&action_id) {
            return flight.clone();
        }
        let this = Arc::clone(self);
        let flight = async move {
            let found = Arc::clone(&this).fetch(action_id).await;
            this.table().remove(&action_id);
            found
        }
        .boxed()
        .shared();
        flights.insert(action_id, flight.clone());
        flight
    }

    /// Fetches an action from cached into the local tier, unless it landed there (by the
    /// preload or another process) since the lookup that missed, or a warm lands it.
    async fn fetch(self: Arc<Self>, action_id: ActionId) -> Option<Hit> {
        if let Ok(Some((entry, path))) = self.disk.lookup(&action_id) {
            return Some(hit(entry, path));
        }
        if let Some(warm) = &self.warm {
            match warm.ask(action_id).await {
                Answer::Landed => {
                    if let Ok(Some((entry, path))) = self.disk.lookup(&action_id) {
                        return Some(hit(entry, path));
                    }
                }
                Answer::Missing => return None,
                Answer::NotHere => {}
            }
        }
        let remote = self.remote.as_ref()?;
        let found = remote.fetch(action_id, Arc::clone(&self.disk)).await;
        found.map(|(entry, path)| hit(entry, path))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<ActionId, Flight>> {
        self.flights.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

pub fn hit(entry: Entry, path: PathBuf) -> Hit {
    Hit {
        output_id: entry.output_id,
        size: entry.size,
        time_unix_nanos: entry.time_unix_nanos,
        disk_path: path.to_string_lossy().into_owned(),
    }
}
