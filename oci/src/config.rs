//! The image config of one platform: derived from the base's when there is one (its layers,
//! environment and history kept), with our layer on top and the entrypoint set to the binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::digest::Sha256;
use super::error::{OciError, Result};
use super::manifest::canonical_json;
use super::platform::ImagePlatform;

/// PATH of an image whose base sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The conventional "nonroot" user of distroless and Chainguard images.
pub const DEFAULT_USER: &str = "65532";

/// What we set in every config, beyond the platform and the layer.
#[derive(Clone, Debug, Default)]
pub struct ConfigOptions {
    /// Absolute path of the binary in the image: the entrypoint, and its directory joins PATH.
    pub binary_path: String,
    /// `KEY=VALUE` entries; a key the base also sets is replaced.
    pub env: Vec<String>,
    /// The user to run as; `None` keeps the base's, or 65532 without one.
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch for `created` and history (SOURCE_DATE_EPOCH or 0).
    pub created: u64,
    /// `created_by` of our history entry.
    pub created_by: String,
    /// diff_ids of the directory layers (`--layer`), which go between the base's and ours.
    pub tree_layers: Vec<Sha256>,
}

/// The last second of year 9999 (9999-12-31T23:59:59Z): RFC 3339 years have four digits.
pub const MAX_EPOCH: u64 = 253_402_300_799;

/// RFC 3339 UTC time of `seconds` since the epoch, as configs carry it. `seconds` comes from
/// whoever asked for the image (a job's spec, SOURCE_DATE_EPOCH), so a time no config can
/// hold is an error, never a panic of the agent or cachectl building it.
pub fn rfc3339(seconds: u64) -> Result<String> {
    let too_late = || {
        OciError::Usage(format!(
            "SOURCE_DATE_EPOCH {seconds} is after 9999-12-31T23:59:59Z ({MAX_EPOCH}), the last time an \
             image config can hold; give seconds since 1970-01-01, such as the last commit's time \
             (git log -1 --format=%ct)"
        ))
    };
    let time = (seconds <= MAX_EPOCH)
        .then(|| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds)))
        .flatten()
        .ok_or_else(too_late)?;
    let mut text = String::new();
    write!(text, "{}", humantime::format_rfc3339_seconds(time)).map_err(|_| too_late())?;
    Ok(text)
}

/// The config JSON (canonical bytes) for `platform`, over `base` when given.
pub fn image_config(
    base: Option<&Value>,
    platform: &ImagePlatform,
    diff_id: Sha256,
    options: &ConfigOptions,
) -> Result<Vec<u8>> {
    let mut root = match base {
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(OciError::Invalid("the base image config is not a JSON object".into())),
        None => Map::new(),
    };
    let created = rfc3339(options.created)?;
    root.insert("architecture".into(), json!(platform.architecture));
    root.insert("os".into(), json!(platform.os));
    match &platform.variant {
        Some(variant) => root.insert("variant".into(), json!(variant)),
        None => root.remove("variant"),
    };
    root.insert("created".into(), json!(created));
    // Fields only Docker's builder writes describe the base's own build, not this image.
    for stale in ["container", "container_config", "docker_version", "id", "parent"] {
        root.remove(stale);
    }

    let mut config = match root.remove("config") {
        Some(Value::Object(map)) => map,
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err(OciError::Invalid("the base image's config.config is not an object".into())),
    };
    config.insert("Entrypoint".into(), json!([options.binary_path]));
    config.remove("Cmd");
    config.insert("Env".into(), json!(environment(config.get("Env"), options)?));
    let user = match (&options.user, config.get("User").and_then(Value::as_str)) {
        (Some(user), _) => user.clone(),
        (None, Some(base)) if !base.is_empty() => base.to_owned(),
        (None, _) => DEFAULT_USER.to_owned(),
    };
    config.insert("User".into(), json!(user));
    if !options.labels.is_empty() {
        let mut labels = match config.remove("Labels") {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (key, value) in &options.labels {
            labels.insert(key.clone(), json!(value));
        }
        config.insert("Labels".into(), Value::Object(labels));
    }
    root.insert("config".into(), Value::Object(config));

    let mut diff_ids = match root.get("rootfs").and_then(|r| r.get("diff_ids")) {
        Some(Value::Array(ids)) => ids.clone(),
        _ => Vec::new(),
    };
    diff_ids.extend(options.tree_layers.iter().map(|id| json!(id.to_string())));
    diff_ids.push(json!(diff_id.to_string()));
    root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));

    let mut history = match root.remove("history") {
        Some(Value::Array(entries)) => entries,
        _ => Vec::new(),
    };
    for _ in &options.tree_layers {
        // Never the directory's path: where the tree was must not enter the digest.
        history.push(json!({"created": created, "created_by": "cachectl image --layer"}));
    }
    history.push(json!({
        "created": created,
        "created_by": options.created_by,
        "comment": format!("binary {}", options.binary_path),
    }));
    root.insert("history".into(), Value::Array(history));
    Ok(canonical_json(&Value::Object(root)))
}

/// The base's environment with PATH extended by the binary's directory and our entries applied.
fn environment(base: Option<&Value>, options: &ConfigOptions) -> Result<Vec<String>> {
    let mut env: Vec<String> = match base {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let dir = match options.binary_path.rsplit_once('/') {
        Some(("", _)) => "/".to_owned(),
        Some((dir, _)) => dir.to_owned(),
        None => {
            return Err(OciError::Usage(format!("image path {:?} must be absolute", options.binary_path)));
        }
    };
    match env.iter_mut().find(|entry| entry.starts_with("PATH=")) {
        Some(path) => {
            if !path["PATH=".len()..].split(':').any(|part| part == dir) {
                path.push(':');
                path.push_str(&dir);
            }
        }
        None => env.insert(0, format!("PATH={DEFAULT_PATH}:{dir}")),
    }
    for entry in &options.env {
        let Some((key, _)) = entry.split_once('=').filter(|(key, _)| !key.is_empty()) else {
            return Err(OciError::Usage(format!("--env {entry:?}: expected KEY=VALUE")));
        };
        let prefix = format!("{key}=");
        match env.iter_mut().find(|existing| existing.starts_with(&prefix)) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConfigOptions {
        ConfigOptions {
            binary_path: "/app/hello".into(),
            created_by: "cachectl image".into(),
            env: vec!["MODE=prod".into()],
            ..Default::default()
        }
    }

    #[test]
    fn scratch_config_has_platform_entrypoint_user_and_one_layer() {
        let platform: ImagePlatform = "linux/arm/v7".parse().unwrap();
        let bytes = image_config(None, &platform, Sha256::of(b"tar"), &options()).unwrap();
        let config: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(config["architecture"], "arm");
        assert_eq!(config["variant"], "v7");
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["config"]["Entrypoint"], json!(["/app/hello"]));
        assert_eq!(config["config"]["User"], "65532");
        assert_eq!(config["config"]["Env"], json!([format!("PATH={DEFAULT_PATH}:/app"), "MODE=prod"]));
        assert_eq!(config["rootfs"]["diff_ids"], json!([Sha256::of(b"tar").to_string()]));
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn base_config_is_extended_not_replaced() {
        let base = json!({
            "architecture": "amd64", "os": "linux", "container": "abc",
            "config": {"Env": ["PATH=/bin", "MODE=dev"], "Cmd": ["sh"], "User": "1000", "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "base"}],
        });
        let platform: ImagePlatform = "linux/amd64".parse().unwrap();
        let mut options = options();
        options.created = 1_700_000_000;
        let bytes = image_config(Some(&base), &platform, Sha256::of(b"tar"), &options).unwrap();
        let config: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin:/app", "MODE=prod"]));
        assert_eq!(config["config"]["User"], "1000");
        assert_eq!(config["config"]["WorkingDir"], "/w");
        assert!(config["config"].get("Cmd").is_none());
        assert!(config.get("container").is_none());
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_epoch_past_year_9999_is_an_error_not_a_panic() {
        let platform: ImagePlatform = "linux/amd64".parse().unwrap();
        let mut options = options();
        options.created = 253_402_300_799;
        let bytes = image_config(None, &platform, Sha256::of(b"tar"), &options).unwrap();
        let config: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(config["created"], "9999-12-31T23:59:59Z");
        // Year 10000, past what RFC 3339 writes; past i64::MAX seconds, past what SystemTime holds.
        for created in [253_402_300_800, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            options.created = created;
            let err = image_config(None, &platform, Sha256::of(b"tar"), &options).unwrap_err();
            assert!(matches!(err, OciError::Usage(_)), "{created}: {err:?}");
            assert!(err.to_string().contains("after 9999-12-31T23:59:59Z"), "{err}");
            assert!(rfc3339(created).is_err(), "{created}");
        }
        assert_eq!(rfc3339(MAX_EPOCH).unwrap(), "9999-12-31T23:59:59Z");
    }
}
