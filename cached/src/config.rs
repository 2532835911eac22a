//! Configuration from flags, `CACHED_*` environment variables and a TOML file, in that order
//! of precedence. Every setting has one name (`max_size`), one variable (`CACHED_MAX_SIZE`),
//! one flag (`--max-size`) and one parser, so an error names exactly what was wrong and where.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One setting: its name in the file, its help, and its default as text.
pub struct Setting {
    pub key: &'static str,
    pub help: &'static str,
    pub default: &'static str,
}

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
    Setting { key: "max_blob_size", help: "largest blob accepted", default: "64GiB" },
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
];

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
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub max_size: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub maintenance_interval: Duration,
    pub limits: Limits,
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
        let mut values: BTreeMap<&'static str, (String, Origin)> = SETTINGS
            .iter()
            .map(|setting| (setting.key, (setting.default.to_owned(), Origin::Default)))
            .collect();
        if let Some(path) = config_file {
            for (key, value) in read_file(path)? {
                let setting = known_key(&key, path)?;
                values.insert(setting, (value, Origin::File(path.to_owned())));
            }
        }
        for setting in SETTINGS {
            if let Some(value) = env(&env_name(setting.key)) {
                values.insert(setting.key, (value, Origin::Env));
            }
            if let Some(value) = flags.get(setting.key) {
                values.insert(setting.key, (value.clone(), Origin::Flag));
            }
        }
        let config = Self::parse(&values)?;
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
        Ok(Self {
            listen: get("listen").parse_with(|v| v.parse::<SocketAddr>().map_err(|e| e.to_string()))?,
            data_dir,
            metrics_listen: get("metrics_listen").parse_with(|v| match v {
                "off" | "" => Ok(None),
                addr => addr.parse::<SocketAddr>().map(Some).map_err(|e| e.to_string()),
            })?,
            max_size: get("max_size").size()?,
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
            limits: Limits {
                max_blob_size: get("max_blob_size").size()?,
                max_message_size: get("max_message_size").size()? as usize,
                max_batch_items: get("max_batch_items").count()? as usize,
                max_concurrent_streams: get("max_concurrent_streams").count()? as usize,
                max_streams_per_connection: get("max_streams_per_connection").count()? as u32,
            },
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
        Ok(())
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
            known: SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
        }
    })
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let file_error = |reason: String| ConfigError::File { file: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| file_error(err.to_string()))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Float(number) => number.to_string(),
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
        .collect()
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

    fn duration(&self) -> Result<Duration, ConfigError> {
        self.parse_with(|v| {
            humantime::parse_duration(v).map_err(|e| format!("{e} (expected e.g. 30s or 5m)"))
        })
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
    }
}
