//! The layer cache in cached, so an unchanged binary is never re-tarred, recompressed or
//! re-uploaded, on this machine or any other sharing the server.
//!
//! It needs no server support: the Go action cache serves as a generic keyed index, in the
//! namespace of the build whose binaries the layers hold. Whoever may write a namespace's action
//! cache already decides what its builds get, so the layer cache trusts no one new; a record
//! one namespace wrote is never read in another, and a purge of the namespace takes its records
//! with its entries. (A namespace shared by every caller would let anyone with `ac-write`
//! anywhere in it choose the layer of another team's image.) The key (action ID) is SHA-256
//! over a canonical,
//! versioned encoding of the binary's BLAKE3 digest and every layer option, the encoder
//! included. The entry's body is a small JSON [`LayerRecord`] (the SHA-256 side index: OCI
//! digest, size and diff_id of the layer, and the CAS digest of its compressed bytes); the
//! compressed bytes are a CAS blob of their own, uploaded before the record, and the record
//! before the entry, so an entry never points at nothing it was stored with.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proto::v1;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::digest::Sha256;
use super::error::{OciError, Result};
use super::layer::{Layer, LayerOptions};
use cached_client::connect::{Client, ConnectOptions};
use cached_client::transfer;

/// Bumped whenever the layer bytes for the same inputs could change for a reason the key
/// does not already capture (tar entry layout, header fields).
const KEY_VERSION: &str = "cached oci layer key v1";
/// The largest layer record read: real ones are a few hundred bytes of JSON.
const MAX_RECORD_BYTES: u64 = 64 << 10;
/// Compressed layers hardly shrink further; level 1 keeps the CAS upload cheap.
const CAS_LEVEL: i32 = 1;

/// The JSON body of a cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    pub media_type: String,
    pub digest: Sha256,
    pub size: u64,
    pub diff_id: Sha256,
    /// `<blake3 hex>/<size>` of the compressed bytes in the CAS.
    pub cas: String,
}

impl LayerRecord {
    pub fn from_layer(layer: &Layer) -> Self {
        Self {
            media_type: layer.media_type.clone(),
            digest: layer.digest,
            size: layer.size,
            diff_id: layer.diff_id,
            cas: layer.cas.to_string(),
        }
    }

    pub fn to_layer(&self) -> Result<Layer> {
        let cas: proto::Digest = self
            .cas
            .parse()
            .map_err(|err| OciError::Invalid(format!("cached layer record: bad CAS digest: {err}")))?;
        if cas.size != self.size {
            return Err(OciError::Invalid("cached layer record: CAS and OCI sizes differ".into()));
        }
        Ok(Layer {
            media_type: self.media_type.clone(),
            digest: self.digest,
            size: self.size,
            diff_id: self.diff_id,
            cas,
        })
    }
}

/// The cache key of the layer holding a binary with `binary` digest under `options`.
pub fn layer_key(binary: &proto::Digest, options: &LayerOptions) -> [u8; 32] {
    let mut hasher = sha2::Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        for part in [name.as_bytes(), value] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    };
    field("version", KEY_VERSION.as_bytes());
    field("binary", binary.to_string().as_bytes());
    field("path", options.path.as_bytes());
    field("uid", &options.uid.to_le_bytes());
    field("gid", &options.gid.to_le_bytes());
    field("mode", &options.mode.to_le_bytes());
    field("mtime", &options.mtime.to_le_bytes());
    field("media_type", options.compression.media_type().as_bytes());
    field("encoder", options.compression.encoder_id().as_bytes());
    hasher.finalize().into()
}

/// The layer cache of one namespace: a connection to cached.
#[derive(Clone)]
pub struct LayerCache {
    client: Client,
    namespace: String,
}

impl LayerCache {
    /// The layer cache of `namespace` (empty: `default`, as for Go action entries).
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self { client, namespace: namespace.into() }
    }

    /// Connects, or says in one line why the cache is off.
    pub async fn connect(
        server: &str,
        options: &ConnectOptions,
        namespace: &str,
    ) -> std::result::Result<Self, String> {
        match Client::connect(server, options).await {
            Ok(client) => Ok(Self::new(client, namespace)),
            Err(err) => Err(format!(
                "layer cache off: {}",
                err.to_string().lines().next().unwrap_or("cached is unreachable")
            )),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Looks up every key at once. A hit is only returned when its layer bytes are still in
    /// the CAS (the record and the layer are separate blobs and may be evicted separately).
    pub async fn lookup(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Layer>>> {
        // Platforms with byte-identical binaries share a key; cached refuses a key asked twice.
        let mut unique = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let request = v1::GoGetManyRequest {
            namespace: self.namespace.clone(),
            action_ids: unique.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        };
        let response = self.client.go.clone().get_many(request).await.map_err(cache_error)?.into_inner();
        let mut found = Vec::with_capacity(unique.len());
        for result in response.results {
            // An unreadable entry is a miss; the layer is rebuilt and the entry replaced.
            found.push(self.record(result).await.unwrap_or_default());
        }
        found.resize(unique.len(), None);
        let mut layers: Vec<Option<Layer>> =
            keys.iter().map(|key| unique.binary_search(key).ok().and_then(|i| found[i].clone())).collect();
        let present: Vec<proto::Digest> = layers.iter().flatten().map(|layer| layer.cas).collect();
        if !present.is_empty() {
            let missing = transfer::find_missing(&self.client, &present).await.map_err(cache_error)?;
            for slot in &mut layers {
                if slot.as_ref().is_some_and(|layer| missing.contains(&layer.cas)) {
                    *slot = None;
                }
            }
        }
        Ok(layers)
    }

    async fn record(&self, result: v1::GoGetResponse) -> Result<Option<Layer>> {
        let Some(entry) = result.entry else { return Ok(None) };
        let digest = proto::Digest::from_wire(entry.digest.as_ref())
            .map_err(|err| OciError::Invalid(format!("cached layer entry: {err}")))?;
        // A record is a few hundred bytes of JSON; whoever writes the namespace could point a
        // key at gigabytes, which would be fetched and read into memory here.
        if digest.size > MAX_RECORD_BYTES {
            return Err(OciError::Invalid(format!(
                "cached layer entry names a {}-byte record; records are at most {MAX_RECORD_BYTES}",
                digest.size
            )));
        }
        let body = if result.body_inline {
            let mut decoder = proto::frames::FrameDecoder::new(digest.size, 0)
                .map_err(|err| OciError::Invalid(format!("cached layer entry: {err}")))?;
            decoder
                .decode(&result.body_zstd)
                .map_err(|err| OciError::Invalid(format!("cached layer entry: {err}")))?
                .to_vec()
        } else {
            let temp = tempfile::NamedTempFile::new().map_err(OciError::file(std::env::temp_dir()))?;
            transfer::download_to_file(&self.client, digest, temp.path()).await.map_err(cache_error)?;
            std::fs::read(temp.path()).map_err(OciError::file(temp.path()))?
        };
        // Go's OutputID rule: the entry's output_id is the SHA-256 of its body.
        if Sha256::of(&body).0.as_slice() != entry.output_id.as_ref() || proto::Digest::of(&body) != digest {
            return Err(OciError::Invalid("cached layer record does not match its digests".into()));
        }
        let record: LayerRecord = serde_json::from_slice(&body)
            .map_err(|err| OciError::Invalid(format!("cached layer record is not valid: {err}")))?;
        record.to_layer().map(Some)
    }

    /// Stores a freshly built layer: its bytes (unless the CAS has them), then the record,
    /// then the entry that points at the record.
    pub async fn store(&self, key: [u8; 32], layer: &Layer, file: &Path) -> Result<()> {
        let missing = transfer::find_missing(&self.client, &[layer.cas]).await.map_err(cache_error)?;
        if !missing.is_empty() {
            transfer::upload_file(&self.client, file, layer.cas, CAS_LEVEL).await.map_err(cache_error)?;
        }
        let body = serde_json::to_vec(&LayerRecord::from_layer(layer)).unwrap_or_default();
        let record = proto::Digest::of(&body);
        transfer::batch_write(&self.client, vec![(record, Bytes::from(body.clone()))], CAS_LEVEL)
            .await
            .map_err(cache_error)?;
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        let request = v1::GoPutRequest {
            namespace: self.namespace.clone(),
            action_id: Bytes::copy_from_slice(&key),
            entry: Some(v1::GoEntry {
                output_id: Bytes::copy_from_slice(&Sha256::of(&body).0),
                size: body.len() as u64,
                digest: Some(record.to_wire()),
                time_unix_nanos: time,
            }),
        };
        self.client.go.clone().put(request).await.map_err(cache_error)?;
        Ok(())
    }

    /// Downloads a cached layer's bytes to `dest`, verified by BLAKE3 (transfer) and SHA-256.
    pub async fn fetch(&self, layer: &Layer, dest: &Path) -> Result<()> {
        transfer::download_to_file(&self.client, layer.cas, dest).await.map_err(cache_error)?;
        let (digest, size) = super::digest::sha256_file(dest).map_err(OciError::file(dest))?;
        if digest != layer.digest || size != layer.size {
            let _ = std::fs::remove_file(dest);
            return Err(OciError::Invalid(format!(
                "cached layer {} does not match its record",
                layer.digest
            )));
        }
        Ok(())
    }
}

fn cache_error(err: impl std::fmt::Display) -> OciError {
    OciError::Invalid(format!("layer cache: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Compression;

    fn options() -> LayerOptions {
        LayerOptions {
            path: "/app/hello".into(),
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: 0,
            compression: Compression::Gzip,
        }
    }

    #[test]
    fn keys_change_with_every_option() {
        let binary = proto::Digest::of(b"binary");
        let base = layer_key(&binary, &options());
        assert_eq!(base, layer_key(&binary, &options()));
        let variants: Vec<LayerOptions> = vec![
            LayerOptions { path: "/app/other".into(), ..options() },
            LayerOptions { uid: 1, ..options() },
            LayerOptions { gid: 1, ..options() },
            LayerOptions { mode: 0o555, ..options() },
            LayerOptions { mtime: 1, ..options() },
            LayerOptions { compression: Compression::Zstd, ..options() },
        ];
        for variant in variants {
            assert_ne!(base, layer_key(&binary, &variant), "{variant:?}");
        }
        assert_ne!(base, layer_key(&proto::Digest::of(b"other"), &options()));
    }
}
