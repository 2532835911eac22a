//! The shared tier: an S3-compatible bucket that several replicas keep their blobs and Go
//! entries in, behind each replica's RocksDB, which stays the hot tier. Writes go through (a
//! write is acknowledged once it is in the bucket and in RocksDB); reads fall through (a local
//! miss reads the bucket, verifies every frame, fills RocksDB and serves). No replication of
//! our own: the bucket is the durable tier any replica answers from.
//!
//! The layout of the bucket is in `layout`; the S3 calls, bridged from the blocking threads
//! stores run on, in `bucket`.

mod bucket;
mod counters;
mod credentials;
mod flights;
mod go_entries;
pub mod health;
mod layout;
mod lookups;
mod presence;
pub mod purges;
mod settings;
mod throttled;
mod tiered;
mod upload;

pub use bucket::Bucket;
pub use counters::{SharedCounters, SharedSnapshot};
pub use go_entries::SharedGoEntries;
pub use presence::{Presence, presence};
pub use settings::{SharedSettings, parse_store_url};
pub use tiered::Tiered;
#[cfg(test)]
pub(crate) use tiered::testing;
