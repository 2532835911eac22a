//! The stores cached keeps its records in, each behind the trait its users hold, so that
//! another backend can take the place of one (a shared blob tier, a scheduler database)
//! without the services changing. One RocksDB database backs them all today.

use std::path::Path;
use std::sync::Arc;

use crate::builds::{BuildRecords, RocksBuildRecords};
use crate::error::Result;
use crate::gocache::{GoEntryStore, RocksGoEntries};
use crate::registry::{RegistryRecords, RocksRegistry};
use crate::scheduler::store::{JobRecords, RocksJobs};
use crate::shared::purges::{PurgeEpochs, PurgeFollower};
use crate::shared::{Bucket, SharedGoEntries};
use crate::store::{Budget, RocksStore, StoreUpkeep, StoreUsage};

pub struct Backends {
    /// Blobs, under the decorators of `store::layered`.
    pub blobs: RocksStore,
    /// The bucket replicas share behind `blobs` and `go_entries`, when there is one.
    pub shared: Option<Arc<Bucket>>,
    /// With `shared`: what keeps this replica's local entries in step with purges through
    /// the others.
    pub purges: Option<Arc<PurgeFollower>>,
    pub usage: Arc<dyn StoreUsage>,
    pub upkeep: Arc<dyn StoreUpkeep>,
    pub go_entries: Arc<dyn GoEntryStore>,
    pub build_records: Arc<dyn BuildRecords>,
    pub jobs: Arc<dyn JobRecords>,
    /// The OCI registry's blobs links, manifests, tags and referrers.
    pub registry: Arc<dyn RegistryRecords>,
}

impl Backends {
    /// Opens (or creates) the RocksDB database at `data_dir` with every store on it, discarding
    /// uploads a crash cut off, keeping about `max_go_entries` Go entries. Blocking.
    pub fn open_rocksdb(data_dir: &Path, budget: Budget, max_go_entries: u64) -> Result<Self> {
        let db = crate::db::open(data_dir)?;
        let blobs = RocksStore::open(Arc::clone(&db), budget)?;
        Ok(Self {
            usage: Arc::new(blobs.clone()),
            upkeep: Arc::new(blobs.clone()),
            blobs,
            shared: None,
            purges: None,
            go_entries: Arc::new(RocksGoEntries::open(Arc::clone(&db), max_go_entries)?),
            build_records: Arc::new(RocksBuildRecords::new(Arc::clone(&db))),
            registry: Arc::new(RocksRegistry::new(Arc::clone(&db))),
            jobs: Arc::new(RocksJobs::new(db)),
        })
    }
}

impl Backends {
    /// Puts the shared bucket behind the blobs and the Go entries: the local stores become
    /// its hot tier. Without it nothing changes.
    pub fn with_shared_store(mut self, bucket: Arc<Bucket>, data_dir: &Path) -> Self {
        let epochs = Arc::new(PurgeEpochs::default());
        let follower = PurgeFollower::new(
            Arc::clone(&bucket),
            Arc::clone(&self.go_entries),
            Arc::clone(&epochs),
            data_dir,
        );
        self.purges = Some(Arc::new(follower));
        let entries = SharedGoEntries::new(self.go_entries, self.blobs.clone(), Arc::clone(&bucket), epochs);
        self.go_entries = Arc::new(entries);
        self.shared = Some(bucket);
        self
    }
}
