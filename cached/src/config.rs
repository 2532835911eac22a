//! Configuration from flags, `CACHED_*` environment variables and a TOML file, in that order
//! of precedence. Every setting has one name (`max_size`), one variable (`CACHED_MAX_SIZE`),
//! one flag (`--max-size`) and one parser, so an error names exactly what was wrong and where.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::TokenSpec;
use crate::auth::tokens;

/// One setting: its name in the file, its help, and its default as text.
pub struct Setting {
    pub key: &'static str,
    pub help: &'static str,
    pub default: &'static str,
}

/// The least `min_free_space` there is any point in: the room RocksDB waits for before it
/// writes again after a full disk.
const MIN_FREE_SPACE_FLOOR: u64 = 64 << 20;
/// The least `max_build_history`: a few of the largest events.
const MIN_BUILD_HISTORY: u64 = 64 << 10;
/// `max_go_entries` by default: one per 4 KiB of `max_size`, many more than the blobs of a
/// Go cache (most are larger), in a few percent of its disk (an entry takes 200-700 bytes).
const MAX_SIZE_PER_GO_ENTRY: u64 = 4 << 10;
/// `max_build_records` and `max_registry_records` by default: a sixteenth of `max_size` each.
const MAX_SIZE_PER_RECORDS: u64 = 16;
/// The least `max_build_records`: a few small builds.
const MIN_BUILD_RECORDS: u64 = 64 << 10;
/// The least `max_registry_records`: two of the largest manifests.
const MIN_REGISTRY_RECORDS: u64 = 8 << 20;

pub const SETTINGS: &[Setting] = &[
    Setting { key: "listen", help: "gRPC address to listen on", default: "127.0.0.1:7070" },
    Setting {
        key: "data_dir",
        help: "where RocksDB keeps the store [default: <user data dir>/cached]",
        default: "",
    },
    Setting {
        key: "metrics_listen",
        help: "address of the Prometheus /metrics endpoint, or \"off\"",
        default: "127.0.0.1:7071",
    },
    Setting { key: "max_size", help: "byte budget for stored blobs, e.g. 20GiB", default: "20GiB" },
    Setting {
        key: "min_free_space",
        help: "free space kept on the data directory's disk: below it uploads are refused and least \
               recently used blobs evicted (0 = off)",
        default: "1GiB",
    },
    Setting {
        key: "max_go_entries",
        help: "Go action entries kept, all namespaces together; beyond it the oldest puts of the \
               namespaces holding the most are forgotten [default: max_size / 4KiB]",
        default: "",
    },
    Setting {
        key: "max_build_records",
        help: "bytes the recorded whole builds (entries and manifests) may take; beyond it the oldest \
               are forgotten [default: max_size / 16]",
        default: "",
    },
    Setting {
        key: "max_registry_records",
        help: "bytes the registry's records (blob links, manifests, tags) may take; beyond it the \
               oldest of the namespaces holding the most are forgotten [default: max_size / 16, at least 8MiB]",
        default: "",
    },
    Setting {
        key: "max_build_history",
        help: "bytes the whole-build event log (cachectl stats/explain) may take; the oldest events go first",
        default: "256MiB",
    },
    Setting { key: "log_format", help: "text or json", default: "text" },
    Setting { key: "log_level", help: "tracing filter, e.g. info or cached=debug", default: "info" },
    Setting {
        key: "shutdown_grace",
        help: "how long in-flight streams may finish after SIGINT/SIGTERM",
        default: "30s",
    },
    Setting {
        key: "high_watermark",
        help: "fraction of max_size above which eviction starts",
        default: "0.95",
    },
    Setting {
        key: "low_watermark",
        help: "fraction of max_size eviction brings the store down to",
        default: "0.85",
    },
    Setting {
        key: "maintenance_interval",
        help: "how often access times are persisted and eviction checked",
        default: "10s",
    },
    Setting {
        key: "scrub_rate",
        help: "blob bytes per second read back in the background, decoded and checked against their digests (a blob counts its size, not what it stores); a blob that fails is removed (0 = off)",
        default: "32MiB",
    },
    Setting {
        key: "max_blob_size",
        help: "largest blob accepted, at most max_size [default: max_size]",
        default: "",
    },
    Setting { key: "max_message_size", help: "largest gRPC message accepted or sent", default: "16MiB" },
    Setting { key: "max_batch_items", help: "most digests or blobs in one batch request", default: "10000" },
    Setting {
        key: "max_concurrent_streams",
        help: "most Cas.Write/Cas.Read streams served at once",
        default: "256",
    },
    Setting {
        key: "max_streams_per_connection",
        help: "HTTP/2 concurrent streams per connection",
        default: "1024",
    },
    Setting {
        key: "max_watches_per_token",
        help: "Jobs.Watch streams one token may hold open at once",
        default: "1024",
    },
    Setting {
        key: "max_streams_per_token",
        help: "Cas.Read/Cas.Write streams one token may hold at once (of max_concurrent_streams)",
        default: "128",
    },
    Setting {
        key: "max_blocking_threads",
        help: "threads for blocking work: RocksDB, the disk, shared-store requests",
        default: "512",
    },
    Setting {
        key: "max_blocking_threads_per_token",
        help: "of max_blocking_threads, most one token's calls hold at once; the rest of its work \
               waits without a thread (0 = no bound)",
        default: "160",
    },
    Setting {
        key: "max_uploads_per_token",
        help: "uploads one token may send at once (of max_concurrent_uploads)",
        default: "64",
    },
    Setting {
        key: "max_upload_bytes_per_token",
        help: "bytes of unfinished uploads (CAS, and registry upload sessions apart) one token may hold on the disk",
        default: "8GiB",
    },
    Setting {
        key: "max_request_bytes_per_token",
        help: "bytes of unary requests (every call but streams) one token may have in flight at once",
        default: "256MiB",
    },
    Setting {
        key: "max_concurrent_uploads",
        help: "most Cas.Write and Cas.BatchWrite calls received at once",
        default: "128",
    },
    Setting {
        key: "rate_limit",
        help: "requests per second per token (a token's own rate_limit wins); 0 = unlimited",
        default: "10000",
    },
    Setting {
        key: "max_decode_rate",
        help: "bytes per second one token may make the server decompress beyond what it sends \
               (zstd uploads, rechecks), bursting to 16 seconds of it; 0 = unlimited",
        default: "128MiB",
    },
    Setting { key: "request_timeout", help: "deadline of every unary call", default: "60s" },
    Setting {
        key: "idle_timeout",
        help: "cut off a stream whose client sends or reads nothing this long; also the interval of \
               the HTTP/2 keepalive that drops dead connections",
        default: "60s",
    },
    Setting {
        key: "min_transfer_rate",
        help: "bytes per second an upload or a response must average once idle_timeout of waiting \
               on its client is spent (0 = no minimum)",
        default: "16KiB",
    },
    Setting {
        key: "handshake_timeout",
        help: "time a new connection has for its TLS handshake, and then for the HTTP/2 preface",
        default: "10s",
    },
    Setting {
        key: "max_connections",
        help: "open connections per listener (gRPC, the registry) from all peers together; more are \
               closed at accept. Keep it under the process's open-file limit",
        default: "16384",
    },
    Setting {
        key: "max_connections_per_peer",
        help: "open connections per client address (an IPv6 /64 is one); more are closed at accept",
        default: "256",
    },
    Setting {
        key: "max_handshakes_per_peer",
        help: "TLS handshakes in progress per client address; more are closed at accept",
        default: "16",
    },
    Setting {
        key: "tokens_file",
        help: "TOML file of [[tokens]] tables, added to those in --config (see `cached token new`); reloaded on SIGHUP",
        default: "",
    },
    Setting {
        key: "allow_anonymous",
        help: "serve without tokens on an address beyond loopback: anyone who can connect may write",
        default: "false",
    },
    Setting {
        key: "heartbeat_interval",
        help: "how often runner agents heartbeat their leases",
        default: "10s",
    },
    Setting {
        key: "lease_timeout",
        help: "a task lease not heartbeated this long expires and the task is requeued",
        default: "30s",
    },
    Setting {
        key: "max_attempts",
        help: "leases a task gets before it fails (expired leases and retryable failures count)",
        default: "3",
    },
    Setting { key: "job_timeout", help: "deadline of a job that does not set its own", default: "1h" },
    // A day: a cold matrix of a large module on busy agents takes hours; a job asking for more
    // is a mistake, or a tenant holding queue and agent slots for days.
    Setting {
        key: "max_job_timeout",
        help: "the longest deadline a submitted job may ask for (timeout_seconds)",
        default: "24h",
    },
    Setting {
        key: "max_open_jobs_per_namespace",
        help: "unfinished jobs one namespace may have; more are refused until some finish",
        default: "100",
    },
    Setting {
        key: "max_open_jobs_per_token",
        help: "unfinished jobs one submitting token may have, across all its namespaces",
        default: "100",
    },
    Setting { key: "max_open_jobs", help: "unfinished jobs in all namespaces together", default: "1000" },
    Setting { key: "tls_cert", help: "PEM certificate chain: serve TLS (reloaded on SIGHUP)", default: "" },
    Setting { key: "tls_key", help: "PEM private key of tls_cert", default: "" },
    Setting {
        key: "tls_client_ca",
        help: "PEM CA certificates: require client certificates they signed (mTLS)",
        default: "",
    },
    // The shared tier (several replicas on one bucket); empty shared_store: one machine.
    Setting {
        key: "shared_store",
        help: "s3://bucket/prefix of the S3-compatible bucket replicas share, behind the local RocksDB \
               tier (empty = one machine, no shared tier)",
        default: "",
    },
    Setting {
        key: "shared_store_endpoint",
        help: "URL of the S3 service (MinIO, SeaweedFS, Ceph...) [default: AWS, or AWS_ENDPOINT_URL]",
        default: "",
    },
    Setting {
        key: "shared_store_region",
        help: "region of the bucket [default: AWS_REGION, else us-east-1]",
        default: "",
    },
    Setting {
        key: "shared_store_path_style",
        help: "address the bucket in the path (http://host/bucket) rather than the host name",
        default: "false",
    },
    Setting {
        key: "shared_store_timeout",
        help: "how long one request to the shared store may take, retries included",
        default: "10s",
    },
    Setting {
        key: "max_shared_lookups",
        help: "requests to the shared store per second one token's local misses may cause, bursting \
               to 16 seconds of them; past it they are misses (0 = unlimited)",
        default: "2000",
    },
    // Replicas: one PostgreSQL database keeps jobs, leases and build records (crate::postgres).
    Setting {
        key: "database_url",
        help: "postgres://USER@HOST:PORT/DB: jobs, leases and build records in PostgreSQL, shared by \
               every cached replica (empty = in the local RocksDB); the password comes from \
               database_password_file or CACHED_DATABASE_PASSWORD",
        default: "",
    },
    Setting {
        key: "database_password_file",
        help: "file holding the password of database_url's user (its first line)",
        default: "",
    },
    Setting {
        key: "database_ca",
        help: "PEM file of the CA(s) the database's certificate must chain to: turns TLS to it on, verified (sslmode=require in database_url does too, with the system's roots)",
        default: "",
    },
    // The OCI registry (crate::registry): off unless registry_listen is set.
    Setting {
        key: "registry_listen",
        help: "address of the OCI distribution API (docker, skopeo, crane pull and push), with TLS when \
               tls_cert is set, or \"off\"",
        default: "off",
    },
    Setting {
        key: "registry_upload_timeout",
        help: "how long an unfinished registry blob upload is kept after its last request",
        default: "1h",
    },
    Setting {
        key: "registry_max_uploads",
        help: "registry blob uploads a namespace may have open at once",
        default: "64",
    },
];

/// Settings that are switches: `--allow-anonymous` alone means true.
pub const SWITCHES: &[&str] = &["allow_anonymous", "shared_store_path_style"];

/// Key of the setting that names the config file itself.
pub const CONFIG_FILE_ENV: &str = "CACHED_CONFIG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_blob_size: u64,
    pub max_message_size: usize,
    pub max_batch_items: usize,
    pub max_concurrent_streams: usize,
    pub max_streams_per_connection: u32,
    pub max_concurrent_uploads: usize,
    pub max_watches_per_token: usize,
    pub max_streams_per_token: usize,
    pub max_uploads_per_token: usize,
    pub max_blocking_threads: usize,
    /// Blocking threads one token's work may hold at once; 0 is no bound.
    pub max_blocking_threads_per_token: usize,
    /// Bytes of unary requests of one token being received (and so held) at once.
    pub max_request_bytes_per_token: u64,
    /// Bytes of one token's unfinished uploads on the disk (registry sessions counted apart).
    pub max_upload_bytes_per_token: u64,
    /// Requests per second per token; `None` is unlimited.
    pub rate_limit: Option<u32>,
    /// Bytes per second a token may make the server decode beyond what it sent; `None` is
    /// unlimited.
    pub max_decode_rate: Option<u64>,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bytes per second a stream must average past its grace; 0 is no minimum.
    pub min_transfer_rate: u64,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_handshakes_per_peer: usize,
}

/// Files of the server's TLS identity, read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub max_size: u64,
    pub min_free_space: u64,
    /// Go entries kept (all namespaces); beyond it the oldest puts are forgotten.
    pub max_go_entries: u64,
    /// Bytes recorded whole builds may take; beyond it the oldest of the namespaces holding the
    /// most are forgotten.
    pub max_build_records: u64,
    pub max_build_history: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub maintenance_interval: Duration,
    /// Stored bytes per second the scrub reads back; 0: no scrub.
    pub scrub_rate: u64,
    pub limits: Limits,
    /// With none, every caller is anonymous and may do everything (loopback only, unless
    /// `allow_anonymous`).
    pub tokens: Vec<TokenSpec>,
    pub allow_anonymous: bool,
    pub tls: Option<TlsFiles>,
    pub scheduler: crate::scheduler::Settings,
    /// The bucket replicas share, when there is one.
    pub shared_store: Option<crate::shared::SharedSettings>,
    /// With it, the scheduler and build records live in PostgreSQL rather than RocksDB.
    pub database: Option<crate::postgres::DatabaseSettings>,
    /// The OCI distribution API, when it is on.
    pub registry: Option<crate::registry::RegistrySettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {origin}: {reason}")]
    Invalid { origin: String, value: String, reason: String },
    #[error("unknown key `{key}` in {file}; known keys: {known}")]
    UnknownKey { key: String, file: String, known: String },
    #[error("cannot read config file {file}: {reason}")]
    File { file: String, reason: String },
    #[error("{0}")]
    Inconsistent(String),
    #[error("{0}")]
    Tokens(String),
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env,
    Flag,
}

pub fn env_name(key: &str) -> String {
    format!("CACHED_{}", key.to_ascii_uppercase())
}

pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn describe(origin: &Origin, key: &str) -> String {
    match origin {
        Origin::Default => format!("the default of `{key}`"),
        Origin::File(path) => format!("key `{key}` in {}", path.display()),
        Origin::Env => format!("environment variable {}", env_name(key)),
        Origin::Flag => format!("flag {}", flag_name(key)),
    }
}

impl Config {
    /// Builds the configuration. `flags` holds the settings given on the command line by key;
    /// `env` looks up environment variables (injected so tests never touch the process's).
    pub fn load(
        flags: &BTreeMap<String, String>,
        config_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = match config_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                file: path.display().to_string(),
                reason: err.to_string(),
            })?),
            None => None,
        };
        Self::load_text(flags, config_file.zip(text.as_deref()), env)
    }

    /// As [`Config::load`], with the config file's text in hand: `(path, text)`. What the
    /// config fuzz target drives.
    pub fn load_text(
        flags: &BTreeMap<String, String>,
        config_file: Option<(&Path, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<&'static str, (String, Origin)> = SETTINGS
            .iter()
            .map(|setting| (setting.key, (setting.default.to_owned(), Origin::Default)))
            .collect();
        let mut tokens = Vec::new();
        if let Some((path, text)) = config_file {
            let (settings, file_tokens) = parse_file(path, text)?;
            for (key, value) in settings {
                let setting = known_key(&key, path)?;
                values.insert(setting, (value, Origin::File(path.to_owned())));
            }
            tokens = file_tokens;
        }
        for setting in SETTINGS {
            if let Some(value) = env(&env_name(setting.key)) {
                values.insert(setting.key, (value, Origin::Env));
            }
            if let Some(value) = flags.get(setting.key) {
                values.insert(setting.key, (value.clone(), Origin::Flag));
            }
        }
        let mut config = Self::parse(&values)?;
        let (tokens_file, _) = &values["tokens_file"];
        if !tokens_file.trim().is_empty() {
            tokens.extend(read_tokens_file(Path::new(tokens_file.trim()))?);
        }
        tokens::check_unique(&tokens).map_err(ConfigError::Tokens)?;
        config.tokens = tokens;
        config.database = crate::postgres::DatabaseSettings::from_config(
            &values["database_url"].0,
            &values["database_password_file"].0,
            &values["database_ca"].0,
            env,
        )?;
        config.validate()?;
        Ok(config)
    }

    fn parse(values: &BTreeMap<&'static str, (String, Origin)>) -> Result<Self, ConfigError> {
        let get = |key: &str| -> Field<'_> {
            let (value, origin) = &values[key];
            Field { key: key.to_owned(), value, origin }
        };
        let data_dir = match get("data_dir").value.as_str() {
            "" => default_data_dir().map_err(|reason| get("data_dir").invalid(reason))?,
            dir => PathBuf::from(dir),
        };
        let max_size = get("max_size").size()?;
        let max_blob_size = match get("max_blob_size").value.trim() {
            "" => max_size,
            _ => get("max_blob_size").size()?,
        };
        let limits = Limits {
            max_blob_size,
            max_message_size: get("max_message_size").size()? as usize,
            max_batch_items: get("max_batch_items").count()? as usize,
            max_concurrent_streams: get("max_concurrent_streams").count()? as usize,
            max_streams_per_connection: get("max_streams_per_connection").count()? as u32,
            max_concurrent_uploads: get("max_concurrent_uploads").count()? as usize,
            max_watches_per_token: get("max_watches_per_token").count()? as usize,
            max_streams_per_token: get("max_streams_per_token").count()? as usize,
            max_uploads_per_token: get("max_uploads_per_token").count()? as usize,
            max_blocking_threads: get("max_blocking_threads").count()? as usize,
            max_blocking_threads_per_token: get("max_blocking_threads_per_token").count_or_off()? as usize,
            max_request_bytes_per_token: get("max_request_bytes_per_token").size()?,
            max_upload_bytes_per_token: get("max_upload_bytes_per_token").size()?,
            rate_limit: get("rate_limit").parse_with(|v| match v.parse::<u32>() {
                Ok(0) => Ok(None),
                Ok(rate) => Ok(Some(rate)),
                Err(_) => Err("expected a whole number of requests per second (0 = unlimited)".to_owned()),
            })?,
            max_decode_rate: Some(get("max_decode_rate").size()?).filter(|&rate| rate > 0),
            request_timeout: get("request_timeout").duration()?,
            idle_timeout: get("idle_timeout").duration()?,
            min_transfer_rate: get("min_transfer_rate").size()?,
            handshake_timeout: get("handshake_timeout").duration()?,
            max_connections: get("max_connections").count()? as usize,
            max_connections_per_peer: get("max_connections_per_peer").count()? as usize,
            max_handshakes_per_peer: get("max_handshakes_per_peer").count()? as usize,
        };
        let registry = registry_settings(&get, &limits)?;
        Ok(Self {
            listen: get("listen").parse_with(|v| v.parse::<SocketAddr>().map_err(|e| e.to_string()))?,
            data_dir,
            metrics_listen: get("metrics_listen").parse_with(|v| match v {
                "off" | "" => Ok(None),
                addr => addr.parse::<SocketAddr>().map(Some).map_err(|e| e.to_string()),
            })?,
            max_size,
            min_free_space: get("min_free_space").size()?,
            max_go_entries: match get("max_go_entries").value.trim() {
                "" => max_size / MAX_SIZE_PER_GO_ENTRY,
                _ => get("max_go_entries").count()?,
            },
            max_build_records: match get("max_build_records").value.trim() {
                "" => max_size / MAX_SIZE_PER_RECORDS,
                _ => get("max_build_records").size()?,
            },
            max_build_history: get("max_build_history").size()?,
            log_format: get("log_format").parse_with(|v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".to_owned()),
            })?,
            log_level: get("log_level").value.clone(),
            shutdown_grace: get("shutdown_grace").duration()?,
            high_watermark: get("high_watermark").fraction()?,
            low_watermark: get("low_watermark").fraction()?,
            maintenance_interval: get("maintenance_interval").duration()?,
            scrub_rate: get("scrub_rate").size()?,
            limits,
            tokens: Vec::new(),
            allow_anonymous: get("allow_anonymous").switch()?,
            tls: tls_files(get("tls_cert").path(), get("tls_key").path(), get("tls_client_ca").path())?,
            database: None,
            scheduler: crate::scheduler::Settings {
                heartbeat_interval: get("heartbeat_interval").duration()?,
                lease_timeout: get("lease_timeout").duration()?,
                max_attempts: get("max_attempts").count()? as u32,
                job_timeout: get("job_timeout").duration()?,
                max_job_timeout: get("max_job_timeout").duration()?,
                max_open_jobs_per_namespace: get("max_open_jobs_per_namespace").count()? as usize,
                max_open_jobs_per_token: get("max_open_jobs_per_token").count()? as usize,
                max_open_jobs: get("max_open_jobs").count()? as usize,
            },
            shared_store: shared_settings(&get)?,
            registry,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Inconsistent(message));
        if self.low_watermark >= self.high_watermark {
            return fail(format!(
                "low_watermark ({}) must be below high_watermark ({})",
                self.low_watermark, self.high_watermark
            ));
        }
        if self.max_size < 1 << 20 {
            return fail(format!("max_size ({} bytes) must be at least 1MiB", self.max_size));
        }
        if self.limits.max_blob_size > self.max_size {
            return fail(format!(
                "max_blob_size ({} bytes) is larger than max_size ({} bytes): the store could never \
                 hold such a blob, yet each upload of one would be read to its end before being \
                 refused. Lower max_blob_size or raise max_size",
                self.limits.max_blob_size, self.max_size
            ));
        }
        if self.min_free_space != 0 && self.min_free_space < MIN_FREE_SPACE_FLOOR {
            return fail(format!(
                "min_free_space ({} bytes) must be 0 (off) or at least 64MiB: RocksDB needs that much \
                 free to recover from a full disk",
                self.min_free_space
            ));
        }
        if self.max_build_records < MIN_BUILD_RECORDS {
            return fail(format!(
                "max_build_records ({} bytes) must be at least 64KiB, room for a few builds",
                self.max_build_records
            ));
        }
        if self.max_build_history < MIN_BUILD_HISTORY {
            return fail(format!(
                "max_build_history ({} bytes) must be at least 64KiB, room for a few events",
                self.max_build_history
            ));
        }
        // A compressed frame can be slightly larger than the 1 MiB it holds.
        if self.limits.max_message_size < 2 << 20 {
            return fail(format!(
                "max_message_size ({} bytes) must be at least 2MiB so a frame fits in a message",
                self.limits.max_message_size
            ));
        }
        if self.limits.max_message_size > u32::MAX as usize {
            return fail("max_message_size must be below 4GiB".to_owned());
        }
        for (key, value) in [
            ("request_timeout", self.limits.request_timeout),
            ("idle_timeout", self.limits.idle_timeout),
            ("handshake_timeout", self.limits.handshake_timeout),
        ] {
            if value.is_zero() {
                return fail(format!("{key} must be longer than 0s"));
            }
        }
        if self.scheduler.heartbeat_interval.is_zero()
            || self.scheduler.lease_timeout <= self.scheduler.heartbeat_interval
        {
            return fail(format!(
                "lease_timeout ({}) must be longer than heartbeat_interval ({}), which must be above 0s",
                humantime::format_duration(self.scheduler.lease_timeout),
                humantime::format_duration(self.scheduler.heartbeat_interval)
            ));
        }
        check_job_timeouts(&self.scheduler)?;
        check_blocking_threads(&self.limits)?;
        let scheduler = &self.scheduler;
        for (key, cap) in [
            ("max_open_jobs_per_namespace", scheduler.max_open_jobs_per_namespace),
            ("max_open_jobs_per_token", scheduler.max_open_jobs_per_token),
        ] {
            if cap > scheduler.max_open_jobs {
                return fail(format!(
                    "{key} ({cap}) must not exceed max_open_jobs ({})",
                    scheduler.max_open_jobs
                ));
            }
        }
        check_exposure(self.listen, !self.tokens.is_empty(), self.allow_anonymous)
            .map_err(ConfigError::Inconsistent)?;
        if let Some(registry) = &self.registry {
            check_exposure(registry.listen, !self.tokens.is_empty(), self.allow_anonymous)
                .map_err(|reason| ConfigError::Inconsistent(format!("registry_listen: {reason}")))?;
        }
        Ok(())
    }
}

/// `max_registry_records`: a sixteenth of `max_size` unless set, and in any case room for two
/// of the largest manifests (4 MiB): a push must not be forgotten as it is stored.
fn max_registry_records<'a>(get: &impl Fn(&str) -> Field<'a>) -> Result<u64, ConfigError> {
    let field = get("max_registry_records");
    let max = match field.value.trim() {
        "" => return Ok((get("max_size").size()? / MAX_SIZE_PER_RECORDS).max(MIN_REGISTRY_RECORDS)),
        _ => field.size()?,
    };
    if max < MIN_REGISTRY_RECORDS {
        return Err(field.invalid("must be at least 8MiB, room for two of the largest manifests"));
    }
    Ok(max)
}

/// The registry's settings, or `None` when `registry_listen` is off.
fn registry_settings<'a>(
    get: &impl Fn(&str) -> Field<'a>,
    limits: &Limits,
) -> Result<Option<crate::registry::RegistrySettings>, ConfigError> {
    let listen = get("registry_listen").parse_with(|v| match v {
        "off" | "" => Ok(None),
        addr => addr.parse::<SocketAddr>().map(Some).map_err(|e| e.to_string()),
    })?;
    let Some(listen) = listen else { return Ok(None) };
    let timeout = get("registry_upload_timeout");
    let upload_timeout = timeout.duration()?;
    if upload_timeout.is_zero() {
        return Err(timeout.invalid("must be longer than 0s"));
    }
    Ok(Some(crate::registry::RegistrySettings {
        listen,
        upload_timeout,
        max_uploads_per_namespace: get("registry_max_uploads").count()? as usize,
        min_free_space: get("min_free_space").size()?,
        max_upload_bytes_per_token: get("max_upload_bytes_per_token").size()?,
        max_records: max_registry_records(get)?,
        upload_pace: crate::conn::ConnLimits::from(limits).pace,
    }))
}

/// The shared-tier settings, or `None` without `shared_store`.
fn shared_settings<'a>(
    get: &impl Fn(&str) -> Field<'a>,
) -> Result<Option<crate::shared::SharedSettings>, ConfigError> {
    let url = get("shared_store");
    if url.value.trim().is_empty() {
        return Ok(None);
    }
    let (bucket, prefix) = url.parse_with(crate::shared::parse_store_url)?;
    let optional = |key: &str| Some(get(key).value.trim().to_owned()).filter(|value| !value.is_empty());
    let timeout = get("shared_store_timeout");
    let request_timeout = timeout.duration()?;
    if request_timeout.is_zero() {
        return Err(timeout.invalid("must be longer than 0s"));
    }
    Ok(Some(crate::shared::SharedSettings {
        bucket,
        prefix,
        endpoint: optional("shared_store_endpoint"),
        region: optional("shared_store_region"),
        path_style: get("shared_store_path_style").switch()?,
        request_timeout,
        lookups_per_token: Some(get("max_shared_lookups").count_or_off()? as u32).filter(|&rate| rate > 0),
    }))
}

/// A token's share of the blocking threads must leave the pool to the others, and hold more
/// than its streams: each stream holds a thread for its life, and with no share left the
/// token's other calls would wait for its streams to end.
fn check_blocking_threads(limits: &Limits) -> Result<(), ConfigError> {
    let (pool, share, streams) =
        (limits.max_blocking_threads, limits.max_blocking_threads_per_token, limits.max_streams_per_token);
    if pool == 0 {
        return Err(ConfigError::Inconsistent("max_blocking_threads must be at least 1".to_owned()));
    }
    if share != 0 && (share >= pool || share <= streams) {
        return Err(ConfigError::Inconsistent(format!(
            "max_blocking_threads_per_token ({share}) must be 0 (no bound) or above max_streams_per_token \
             ({streams}) and below max_blocking_threads ({pool}): each stream holds a thread, and one \
             token must leave threads to the others"
        )));
    }
    Ok(())
}

/// The longest `max_job_timeout`: a year keeps every deadline in milliseconds far from
/// overflowing, and no build needs more.
const MAX_JOB_TIMEOUT_CEILING: Duration = Duration::from_secs(365 * 24 * 3600);

fn check_job_timeouts(scheduler: &crate::scheduler::Settings) -> Result<(), ConfigError> {
    let (default, max) = (scheduler.job_timeout, scheduler.max_job_timeout);
    let show = |duration| humantime::format_duration(duration).to_string();
    if default.is_zero() || default > max || max > MAX_JOB_TIMEOUT_CEILING {
        return Err(ConfigError::Inconsistent(format!(
            "job_timeout ({}) must be above 0s and at most max_job_timeout ({}), which may be at most {}",
            show(default),
            show(max),
            show(MAX_JOB_TIMEOUT_CEILING)
        )));
    }
    Ok(())
}

/// The safe default: a server without tokens lets anyone write its action cache, so it serves
/// loopback only unless the operator says otherwise.
pub fn check_exposure(listen: SocketAddr, has_tokens: bool, allow_anonymous: bool) -> Result<(), String> {
    if has_tokens || allow_anonymous || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "listen ({listen}) is beyond loopback and no tokens are configured, so anyone who can connect \
         could write the cache: add tokens (`cached token new`, then [[tokens]] in --config or \
         --tokens-file), or pass --allow-anonymous to accept that"
    ))
}

fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key, client_ca })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(ConfigError::Inconsistent(
            "tls_client_ca needs tls_cert and tls_key: mTLS is TLS with client certificates".to_owned(),
        )),
        _ => {
            Err(ConfigError::Inconsistent("tls_cert and tls_key go together: set both or neither".to_owned()))
        }
    }
}

fn default_data_dir() -> Result<PathBuf, String> {
    dirs::data_dir()
        .map(|dir| dir.join("cached"))
        .ok_or_else(|| "this user has no data directory (no $HOME?); set --data-dir".to_owned())
}

fn known_key(key: &str, file: &Path) -> Result<&'static str, ConfigError> {
    SETTINGS.iter().find(|setting| setting.key == key).map(|setting| setting.key).ok_or_else(|| {
        ConfigError::UnknownKey {
            key: key.to_owned(),
            file: file.display().to_string(),
            known: format!("{}, [[tokens]]", SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")),
        }
    })
}

type FileSettings = Vec<(String, String)>;

fn parse_file(path: &Path, text: &str) -> Result<(FileSettings, Vec<TokenSpec>), ConfigError> {
    let file_error = |reason: String| ConfigError::File { file: path.display().to_string(), reason };
    let mut table: toml::Table = text.parse().map_err(|err: toml::de::Error| file_error(err.to_string()))?;
    let tokens = match table.remove("tokens") {
        Some(value) => {
            tokens::parse_tokens(&value, &path.display().to_string()).map_err(ConfigError::Tokens)?
        }
        None => Vec::new(),
    };
    let settings = table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Float(number) => number.to_string(),
                toml::Value::Boolean(switch) => switch.to_string(),
                other => {
                    return Err(ConfigError::Invalid {
                        origin: describe(&Origin::File(path.to_owned()), &key),
                        value: other.to_string(),
                        reason: "expected a string or a number".to_owned(),
                    });
                }
            };
            Ok((key, text))
        })
        .collect::<Result<_, _>>()?;
    Ok((settings, tokens))
}

/// A `tokens_file`: `[[tokens]]` tables and nothing else.
fn read_tokens_file(path: &Path) -> Result<Vec<TokenSpec>, ConfigError> {
    let file_error = |reason: String| ConfigError::File { file: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
    let mut table: toml::Table = text.parse().map_err(|err: toml::de::Error| file_error(err.to_string()))?;
    let tokens = match table.remove("tokens") {
        Some(value) => {
            tokens::parse_tokens(&value, &path.display().to_string()).map_err(ConfigError::Tokens)?
        }
        None => Vec::new(),
    };
    if let Some(key) = table.keys().next() {
        return Err(ConfigError::UnknownKey {
            key: key.clone(),
            file: path.display().to_string(),
            known: "tokens (only [[tokens]] tables belong in tokens_file)".to_owned(),
        });
    }
    Ok(tokens)
}

struct Field<'a> {
    key: String,
    value: &'a String,
    origin: &'a Origin,
}

impl Field<'_> {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: describe(self.origin, &self.key),
            value: self.value.clone(),
            reason: reason.into(),
        }
    }

    fn parse_with<T>(&self, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        parse(self.value.trim()).map_err(|reason| self.invalid(reason))
    }

    fn size(&self) -> Result<u64, ConfigError> {
        self.parse_with(parse_size)
    }

    fn count(&self) -> Result<u64, ConfigError> {
        self.parse_with(|v| match v.parse::<u64>() {
            Ok(0) => Err("must be at least 1".to_owned()),
            Ok(n) if n > u64::from(u32::MAX) => Err("too large".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err("expected a whole number".to_owned()),
        })
    }

    /// A count where 0 turns the bound off.
    fn count_or_off(&self) -> Result<u64, ConfigError> {
        self.parse_with(|v| match v.parse::<u64>() {
            Ok(n) if n > u64::from(u32::MAX) => Err("too large".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err("expected a whole number (0 = no bound)".to_owned()),
        })
    }

    fn duration(&self) -> Result<Duration, ConfigError> {
        self.parse_with(|v| {
            humantime::parse_duration(v).map_err(|e| format!("{e} (expected e.g. 30s or 5m)"))
        })
    }

    fn switch(&self) -> Result<bool, ConfigError> {
        self.parse_with(|v| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        })
    }

    /// A file path; empty means none.
    fn path(&self) -> Option<PathBuf> {
        let value = self.value.trim();
        (!value.is_empty()).then(|| PathBuf::from(value))
    }

    fn fraction(&self) -> Result<f64, ConfigError> {
        self.parse_with(|v| match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
            _ => Err("expected a number in (0, 1]".to_owned()),
        })
    }
}

/// Parses a byte size like `20GiB`, `512 MB` or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| "expected a size such as 20GiB, 512MiB or a number of bytes".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::load(&BTreeMap::new(), None, &no_env).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.max_size, 20 << 30);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cached.toml");
        std::fs::write(&file, "max_size = \"1GiB\"\nlisten = \"127.0.0.1:1\"\nmax_batch_items = 5\n")
            .unwrap();
        let env = |name: &str| (name == "CACHED_MAX_SIZE").then(|| "2GiB".to_owned());
        let flags = BTreeMap::from([("listen".to_owned(), "127.0.0.1:2".to_owned())]);
        let config = Config::load(&flags, Some(&file), &env).unwrap();
        assert_eq!(config.max_size, 2 << 30);
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.limits.max_batch_items, 5);
    }

    #[test]
    fn errors_name_the_key_and_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cached.toml");
        std::fs::write(&file, "max_sise = \"1GiB\"\n").unwrap();
        let err = Config::load(&BTreeMap::new(), Some(&file), &no_env).unwrap_err().to_string();
        assert!(err.contains("unknown key `max_sise`"), "{err}");

        let env = |name: &str| (name == "CACHED_MAX_SIZE").then(|| "lots".to_owned());
        let err = Config::load(&BTreeMap::new(), None, &env).unwrap_err().to_string();
        assert!(err.contains("CACHED_MAX_SIZE") && err.contains("lots"), "{err}");

        let flags = BTreeMap::from([("low_watermark".to_owned(), "0.99".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("low_watermark"), "{err}");

        let flags = BTreeMap::from([("min_free_space".to_owned(), "1MiB".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("min_free_space") && err.contains("64MiB"), "{err}");
        let flags = BTreeMap::from([("min_free_space".to_owned(), "0".to_owned())]);
        assert_eq!(Config::load(&flags, None, &no_env).unwrap().min_free_space, 0);
    }

    fn token_table(name: &str) -> String {
        let hash = crate::auth::SecretHash::new("secret").unwrap();
        format!(
            "[[tokens]]\nname = \"{name}\"\nscopes = [\"read\"]\nnamespaces = [\"*\"]\nsecret_hash = \"{hash}\"\n"
        )
    }

    #[test]
    fn tokens_come_from_the_file_and_the_tokens_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cached.toml");
        let tokens_file = dir.path().join("tokens.toml");
        std::fs::write(&file, format!("max_size = \"1GiB\"\n{}", token_table("dev"))).unwrap();
        std::fs::write(&tokens_file, token_table("ci")).unwrap();
        let flags = BTreeMap::from([("tokens_file".to_owned(), tokens_file.display().to_string())]);
        let config = Config::load(&flags, Some(&file), &no_env).unwrap();
        let names: Vec<&str> = config.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["dev", "ci"]);
        assert!(!format!("{config:?}").contains("blake3:"), "the config's Debug leaves hashes out");

        std::fs::write(&tokens_file, token_table("dev")).unwrap();
        let err = Config::load(&flags, Some(&file), &no_env).unwrap_err().to_string();
        assert!(err.contains("two tokens are named `dev`"), "{err}");
        std::fs::write(&tokens_file, format!("listen = \"0.0.0.0:1\"\n{}", token_table("ci"))).unwrap();
        let err = Config::load(&flags, Some(&file), &no_env).unwrap_err().to_string();
        assert!(err.contains("unknown key `listen`") && err.contains("tokens.toml"), "{err}");
        std::fs::write(&file, "[[tokens]]\nname = \"x\"\n").unwrap();
        let err = Config::load(&BTreeMap::new(), Some(&file), &no_env).unwrap_err().to_string();
        assert!(err.contains("tokens[0]") && err.contains("`scopes` is missing"), "{err}");
    }

    #[test]
    fn beyond_loopback_needs_tokens_or_an_explicit_switch() {
        let open = BTreeMap::from([("listen".to_owned(), "0.0.0.0:7070".to_owned())]);
        let err = Config::load(&open, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("beyond loopback") && err.contains("--allow-anonymous"), "{err}");
        let env = |name: &str| (name == "CACHED_ALLOW_ANONYMOUS").then(|| "true".to_owned());
        assert!(Config::load(&open, None, &env).unwrap().allow_anonymous);
        let ipv6 = BTreeMap::from([("listen".to_owned(), "[::1]:7070".to_owned())]);
        assert!(Config::load(&ipv6, None, &no_env).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cached.toml");
        std::fs::write(&file, token_table("ci")).unwrap();
        assert_eq!(Config::load(&open, Some(&file), &no_env).unwrap().tokens.len(), 1);
    }

    #[test]
    fn tls_and_limits_settings() {
        let flags = BTreeMap::from([("tls_cert".to_owned(), "/c.pem".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("tls_cert and tls_key"), "{err}");
        let flags = BTreeMap::from([("tls_client_ca".to_owned(), "/ca.pem".to_owned())]);
        assert!(Config::load(&flags, None, &no_env).is_err());
        let flags = BTreeMap::from([
            ("tls_cert".to_owned(), "/c.pem".to_owned()),
            ("tls_key".to_owned(), "/k.pem".to_owned()),
            ("rate_limit".to_owned(), "0".to_owned()),
        ]);
        let config = Config::load(&flags, None, &no_env).unwrap();
        assert_eq!(config.tls.unwrap().key, PathBuf::from("/k.pem"));
        assert_eq!(config.limits.rate_limit, None);
        let defaults = Config::load(&BTreeMap::new(), None, &no_env).unwrap();
        assert_eq!(defaults.limits.rate_limit, Some(10_000));
        assert!(defaults.tls.is_none() && defaults.tokens.is_empty() && !defaults.allow_anonymous);
        let flags = BTreeMap::from([("idle_timeout".to_owned(), "0s".to_owned())]);
        assert!(Config::load(&flags, None, &no_env).unwrap_err().to_string().contains("idle_timeout"));
    }

    #[test]
    fn job_timeouts() {
        let defaults = Config::load(&BTreeMap::new(), None, &no_env).unwrap();
        assert_eq!(defaults.scheduler.max_job_timeout, Duration::from_secs(24 * 3600));
        let env = |name: &str| (name == "CACHED_MAX_JOB_TIMEOUT").then(|| "2h".to_owned());
        assert_eq!(
            Config::load(&BTreeMap::new(), None, &env).unwrap().scheduler.max_job_timeout.as_secs(),
            7200
        );
        for (key, value) in [("max_job_timeout", "30m"), ("max_job_timeout", "2y"), ("job_timeout", "0s")] {
            let flags = BTreeMap::from([(key.to_owned(), value.to_owned())]);
            let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
            assert!(err.contains("job_timeout") && err.contains("max_job_timeout"), "{key}={value}: {err}");
        }
    }

    #[test]
    fn open_job_caps() {
        let defaults = Config::load(&BTreeMap::new(), None, &no_env).unwrap().scheduler;
        assert_eq!((defaults.max_open_jobs_per_namespace, defaults.max_open_jobs), (100, 1000));
        let env = |name: &str| (name == "CACHED_MAX_OPEN_JOBS").then(|| "50".to_owned());
        let err = Config::load(&BTreeMap::new(), None, &env).unwrap_err().to_string();
        assert!(
            err.contains("max_open_jobs_per_namespace (100)") && err.contains("max_open_jobs (50)"),
            "{err}"
        );
        let flags = BTreeMap::from([("max_open_jobs_per_namespace".to_owned(), "0".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("--max-open-jobs-per-namespace") && err.contains("at least 1"), "{err}");
    }

    #[test]
    fn connection_limits() {
        let defaults = Config::load(&BTreeMap::new(), None, &no_env).unwrap().limits;
        assert_eq!((defaults.max_connections_per_peer, defaults.max_handshakes_per_peer), (256, 16));
        assert_eq!(defaults.max_connections, 16384);
        assert_eq!(defaults.handshake_timeout, Duration::from_secs(10));
        assert_eq!(defaults.min_transfer_rate, 16 << 10);
        let env = |name: &str| (name == "CACHED_MIN_TRANSFER_RATE").then(|| "0".to_owned());
        assert_eq!(Config::load(&BTreeMap::new(), None, &env).unwrap().limits.min_transfer_rate, 0);
        for (key, value) in [("max_connections_per_peer", "0"), ("handshake_timeout", "0s")] {
            let flags = BTreeMap::from([(key.to_owned(), value.to_owned())]);
            let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
            assert!(err.contains(key) || err.contains(&flag_name(key)), "{err}");
        }
        let flags = BTreeMap::from([("max_build_history".to_owned(), "1KiB".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("max_build_history") && err.contains("64KiB"), "{err}");
    }

    #[test]
    fn max_blob_size_defaults_to_max_size_and_never_exceeds_it() {
        let flags = BTreeMap::from([("max_size".to_owned(), "2GiB".to_owned())]);
        assert_eq!(Config::load(&flags, None, &no_env).unwrap().limits.max_blob_size, 2 << 30);
        let env = |name: &str| (name == "CACHED_MAX_BLOB_SIZE").then(|| "1GiB".to_owned());
        assert_eq!(Config::load(&flags, None, &env).unwrap().limits.max_blob_size, 1 << 30);
        let env = |name: &str| (name == "CACHED_MAX_BLOB_SIZE").then(|| "3GiB".to_owned());
        let err = Config::load(&flags, None, &env).unwrap_err().to_string();
        assert!(err.contains("max_blob_size") && err.contains("max_size"), "{err}");
        let env = |name: &str| (name == "CACHED_MAX_BLOB_SIZE").then(|| "lots".to_owned());
        let err = Config::load(&flags, None, &env).unwrap_err().to_string();
        assert!(err.contains("CACHED_MAX_BLOB_SIZE"), "{err}");
    }

    #[test]
    fn max_go_entries_follows_max_size_unless_set() {
        let flags = BTreeMap::from([("max_size".to_owned(), "20GiB".to_owned())]);
        assert_eq!(Config::load(&flags, None, &no_env).unwrap().max_go_entries, 5 << 20);
        let env = |name: &str| (name == "CACHED_MAX_GO_ENTRIES").then(|| "100".to_owned());
        assert_eq!(Config::load(&flags, None, &env).unwrap().max_go_entries, 100);
        let env = |name: &str| (name == "CACHED_MAX_GO_ENTRIES").then(|| "0".to_owned());
        let err = Config::load(&flags, None, &env).unwrap_err().to_string();
        assert!(err.contains("CACHED_MAX_GO_ENTRIES") && err.contains("at least 1"), "{err}");
    }

    #[test]
    fn max_build_records_follows_max_size_unless_set() {
        let flags = BTreeMap::from([("max_size".to_owned(), "20GiB".to_owned())]);
        assert_eq!(Config::load(&flags, None, &no_env).unwrap().max_build_records, 1280 << 20);
        let env = |name: &str| (name == "CACHED_MAX_BUILD_RECORDS").then(|| "64KiB".to_owned());
        assert_eq!(Config::load(&flags, None, &env).unwrap().max_build_records, 64 << 10);
        let env = |name: &str| (name == "CACHED_MAX_BUILD_RECORDS").then(|| "1KiB".to_owned());
        let err = Config::load(&flags, None, &env).unwrap_err().to_string();
        assert!(err.contains("max_build_records") && err.contains("64KiB"), "{err}");
    }

    #[test]
    fn max_registry_records_follows_max_size_unless_set_and_holds_two_manifests() {
        let flags = |max_size: &str| {
            BTreeMap::from([
                ("max_size".to_owned(), max_size.to_owned()),
                ("registry_listen".to_owned(), "127.0.0.1:0".to_owned()),
            ])
        };
        let max = |config: Config| config.registry.expect("the registry is on").max_records;
        assert_eq!(max(Config::load(&flags("20GiB"), None, &no_env).unwrap()), 1280 << 20);
        assert_eq!(max(Config::load(&flags("4MiB"), None, &no_env).unwrap()), 8 << 20);
        let env = |name: &str| (name == "CACHED_MAX_REGISTRY_RECORDS").then(|| "1MiB".to_owned());
        let err = Config::load(&flags("20GiB"), None, &env).unwrap_err().to_string();
        assert!(err.contains("CACHED_MAX_REGISTRY_RECORDS") && err.contains("8MiB"), "{err}");
    }

    #[test]
    fn the_shared_store_comes_from_the_file_env_or_flags_and_is_off_without_one() {
        assert_eq!(Config::load(&BTreeMap::new(), None, &no_env).unwrap().shared_store, None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cached.toml");
        std::fs::write(&file, "shared_store = \"s3://cache/team/ci\"\nshared_store_path_style = true\n")
            .unwrap();
        let env =
            |name: &str| (name == "CACHED_SHARED_STORE_ENDPOINT").then(|| "http://127.0.0.1:9000".to_owned());
        let flags = BTreeMap::from([("shared_store_region".to_owned(), "eu-west-1".to_owned())]);
        let shared = Config::load(&flags, Some(&file), &env).unwrap().shared_store.expect("configured");
        assert_eq!((shared.bucket.as_str(), shared.prefix.as_str()), ("cache", "team/ci"));
        assert_eq!(shared.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(shared.region.as_deref(), Some("eu-west-1"));
        assert!(shared.path_style);
        assert_eq!(shared.request_timeout, Duration::from_secs(10));
        assert_eq!(shared.url(), "s3://cache/team/ci");

        let flags = BTreeMap::from([("shared_store".to_owned(), "cache/ci".to_owned())]);
        let err = Config::load(&flags, None, &no_env).unwrap_err().to_string();
        assert!(err.contains("--shared-store") && err.contains("s3://"), "{err}");
    }
}
