//! Opens RocksDB with one column family per kind of record.
//!
//! Keys carry the digest function as their first byte (`DigestFunction`), so other digest
//! functions can live beside BLAKE3 later without a migration.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Options, SliceTransform,
};

use crate::error::{Error, Result};

/// Blob metadata: `BlobKey` → `BlobMeta`.
pub const CF_BLOBS: &str = "blobs";
/// Compressed frames: upload id (u64 BE) + frame index (u32 BE) → one zstd frame.
pub const CF_CHUNKS: &str = "chunks";
/// Access order for eviction: access time in ms (u64 BE) + `BlobKey` → empty.
pub const CF_LRU: &str = "lru";
/// Claims on blobs another owner holds: `BlobKey` + claimant owner (u64 BE) → version byte and
/// the claimant's name. Eviction from the holder's account passes such a blob to a claimant.
pub const CF_CLAIMS: &str = "blob_claims";
/// The part of a claim's key that names its blob.
pub const CLAIMS_PREFIX_LEN: usize = 33;
/// Uploads in progress: upload id → `BlobKey`. Whatever is left here at start-up was cut off by
/// a crash, and its chunks are deleted.
pub const CF_PENDING: &str = "pending";
/// Go action entries: namespace + 0x00 + ActionID → entry.
pub const CF_GO_ACTIONS: &str = "go_actions";
/// Go entries in the order they were put within their namespace, oldest first, for forgetting
/// the oldest beyond `max_go_entries`: namespace + 0x00 + number (u64 BE) + ActionID → the
/// entry put.
pub const CF_GO_QUEUE: &str = "go_queue";
/// The order of Go entries over all namespaces of earlier versions: sequence (u64 BE) +
/// namespace + 0x00 + ActionID → the entry put. Its rows move to `go_queue` on open.
pub const CF_GO_ORDER: &str = "go_order";
/// Store-wide totals, written in the same batches that change them.
pub const CF_COUNTERS: &str = "counters";
/// Remote execution jobs: job id → the job's record (spec, tasks, leases), a format version
/// byte then the stored job, see `scheduler::store::record`.
pub const CF_JOBS: &str = "jobs";
/// Whole-build entries: namespace + 0x00 + build key → outputs and build duration.
pub const CF_BUILD_ENTRIES: &str = "build_entries";
/// Build manifests by target: namespace, module, package, GOOS/GOARCH (each + 0x00), time in
/// ms (i64 BE) and build key → the build's manifest.
pub const CF_BUILD_INDEX: &str = "build_index";
/// Recorded builds oldest first, to keep them to `max_build_records`: time in ms (i64 BE) and
/// 16 bytes of the BLAKE3 of the build's `build_index` key → its size and that key.
pub const CF_BUILD_ORDER: &str = "build_order";
/// Build events (lookups, misses with their causes, records): namespace + 0x00 + time in ms
/// (i64 BE) + sequence (u64 BE) → event.
pub const CF_BUILD_EVENTS: &str = "build_events";

/// Registry blobs of a repository: repository + 0x00 + SHA-256 → the CAS digest (`registry::rocks`).
pub const CF_REGISTRY_BLOBS: &str = "registry_blobs";
/// Registry manifests: repository + 0x00 + SHA-256 → media type and the exact bytes pushed.
pub const CF_REGISTRY_MANIFESTS: &str = "registry_manifests";
/// Registry tags: repository + 0x00 + tag → the manifest's SHA-256.
pub const CF_REGISTRY_TAGS: &str = "registry_tags";
/// Referrers: repository + 0x00 + subject SHA-256 + referrer SHA-256 → the referrer's descriptor.
pub const CF_REGISTRY_REFERRERS: &str = "registry_referrers";
/// The registry's records oldest first, to keep them to `max_registry_records`: write time in
/// µs (i64 BE) and 16 bytes of a hash of what the row names → its size and what it names
/// (`registry::records::Recorded`).
pub const CF_REGISTRY_ORDER: &str = "registry_order";

const ALL_CFS: &[&str] = &[
    CF_BLOBS,
    CF_CHUNKS,
    CF_LRU,
    CF_CLAIMS,
    CF_PENDING,
    CF_GO_ACTIONS,
    CF_GO_ORDER,
    CF_GO_QUEUE,
    CF_COUNTERS,
    CF_JOBS,
    CF_BUILD_ENTRIES,
    CF_BUILD_INDEX,
    CF_BUILD_EVENTS,
    CF_BUILD_ORDER,
    CF_REGISTRY_BLOBS,
    CF_REGISTRY_MANIFESTS,
    CF_REGISTRY_TAGS,
    CF_REGISTRY_REFERRERS,
    CF_REGISTRY_ORDER,
];

/// Small enough that memtables and cache stay well inside the memory budget of a streaming
/// upload; frames bypass the block cache entirely because they live in blob files.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
const CHUNK_MEMTABLE_BYTES: usize = 8 << 20;
const META_MEMTABLE_BYTES: usize = 8 << 20;

pub fn open(path: &Path) -> Result<Arc<DB>> {
    std::fs::create_dir_all(path)
        .map_err(|err| Error::Internal(format!("cannot create data directory {}: {err}", path.display())))?;
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let descriptors = ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)))
        .collect::<Vec<_>>();
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(2);
    options.set_bytes_per_sync(1 << 20);
    options.set_max_total_wal_size(128 << 20);
    options.set_keep_log_file_num(4);
    let db = DB::open_cf_descriptors(&options, path, descriptors).map_err(|err| in_use(path, err))?;
    Ok(Arc::new(db))
}

/// RocksDB's own words for a held LOCK file ("While lock file: …: Resource temporarily
/// unavailable") do not say that another cached has the directory.
fn in_use(path: &Path, err: rocksdb::Error) -> Error {
    if err.as_ref().contains("While lock file") {
        return Error::FailedPrecondition(format!(
            "the data directory {} is in use by another cached process ({err}); stop that one or \
             give this one its own --data-dir",
            path.display()
        ));
    }
    err.into()
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut options = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&table);
    if name == CF_CHUNKS {
        // Frames are already zstd-compressed by the client: compressing again wastes CPU.
        // Integrated BlobDB keeps them out of the LSM tree so compaction does not rewrite them.
        options.set_compression_type(DBCompressionType::None);
        options.set_enable_blob_files(true);
        options.set_min_blob_size(4096);
        options.set_blob_file_size(CHUNK_MEMTABLE_BYTES as u64);
        options.set_blob_compression_type(DBCompressionType::None);
        options.set_enable_blob_gc(true);
        options.set_blob_gc_age_cutoff(0.25);
        options.set_write_buffer_size(CHUNK_MEMTABLE_BYTES);
        options.set_max_write_buffer_number(2);
        options.set_target_file_size_base(8 << 20);
    } else {
        if [CF_GO_QUEUE, CF_BUILD_ORDER, CF_REGISTRY_ORDER].contains(&name) {
            // A queue: rows are deleted from its front as fast as they are added at its end.
            // Files thick with deletions are compacted early, so a walk from the front does
            // not step over every deleted row.
            options.add_compact_on_deletion_collector_factory(16 << 10, 8 << 10, 0.5);
        }
        if name == CF_CLAIMS {
            // Eviction looks up the claims of every blob it takes, nearly all of which have
            // none: a filter over the blob key answers those without reading a block.
            options.set_prefix_extractor(SliceTransform::create_fixed_prefix(CLAIMS_PREFIX_LEN));
            options.set_memtable_prefix_bloom_ratio(0.1);
        }
        options.set_compression_type(DBCompressionType::Lz4);
        options.set_write_buffer_size(META_MEMTABLE_BYTES);
        options.set_max_write_buffer_number(2);
    }
    options
}

/// Writes every column family's memtable out, which lets RocksDB delete the WAL behind them.
pub fn flush_all(db: &DB) -> Result<()> {
    for name in ALL_CFS {
        db.flush_cf(cf(db, name)?)?;
    }
    Ok(())
}

pub fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Internal(format!("column family {name} is missing")))
}

/// Removes every record of `namespace` from `counted` and `others`; returns how many `counted`
/// held. Every such key starts with the namespace and a NUL, and namespaces hold no control
/// characters, so `namespace\0 .. namespace\x01` is exactly one namespace's range.
pub fn purge_namespace(db: &DB, counted: &str, others: &[&str], namespace: &str) -> Result<u64> {
    let from = [namespace.as_bytes(), b"\0"].concat();
    let to = [namespace.as_bytes(), b"\x01"].concat();
    let mut count = 0;
    let mut keys = db.raw_iterator_cf(cf(db, counted)?);
    keys.seek(&from);
    while keys.key().is_some_and(|key| key < to.as_slice()) {
        count += 1;
        keys.next();
    }
    keys.status()?;
    // Counted first, then removed by range: an entry written in between goes too, uncounted.
    for name in std::iter::once(&counted).chain(others) {
        db.delete_range_cf(cf(db, name)?, &from, &to)?;
    }
    Ok(count)
}
