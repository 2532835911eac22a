//! Credentials from the AWS shared credentials file, the one source AWS tools read that
//! object_store does not: `[profile]` sections of `AWS_SHARED_CREDENTIALS_FILE` (default
//! `~/.aws/credentials`), the profile `AWS_PROFILE` names or `default`. Used only when the
//! environment names no other source, so variables, web identity, container and instance
//! credentials keep their precedence.

use std::path::PathBuf;

/// Static keys of one profile.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProfileKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Variables that name a source object_store reads itself.
const OTHER_SOURCES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// The profile's keys, when the environment names no other source and the file has them.
pub(super) fn from_profile_file(env: &dyn Fn(&str) -> Option<String>) -> Option<ProfileKeys> {
    if OTHER_SOURCES.iter().any(|name| env(name).is_some()) {
        return None;
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(file).ok()?;
    parse(&text, &env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned()))
}

fn parse(text: &str, profile: &str) -> Option<ProfileKeys> {
    let mut in_profile = false;
    let (mut access_key_id, mut secret_access_key, mut session_token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_profile) else { continue };
        let value = Some(value.trim().to_owned());
        match key.trim() {
            "aws_access_key_id" => access_key_id = value,
            "aws_secret_access_key" => secret_access_key = value,
            "aws_session_token" => session_token = value,
            _ => {}
        }
    }
    Some(ProfileKeys { access_key_id: access_key_id?, secret_access_key: secret_access_key?, session_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[default]\naws_access_key_id = AK1\naws_secret_access_key = S1\n\n\
                        [ci]\naws_access_key_id=AK2\naws_secret_access_key=S2\naws_session_token = T2\n";

    #[test]
    fn the_named_profile_or_default_is_read() {
        let keys = parse(FILE, "default").unwrap();
        assert_eq!((keys.access_key_id.as_str(), keys.session_token), ("AK1", None));
        let keys = parse(FILE, "ci").unwrap();
        assert_eq!((keys.secret_access_key.as_str(), keys.session_token.as_deref()), ("S2", Some("T2")));
        assert_eq!(parse(FILE, "missing"), None);
    }

    #[test]
    fn other_sources_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, FILE).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let env = |name: &str| (name == "AWS_SHARED_CREDENTIALS_FILE").then(|| file.clone());
        assert_eq!(from_profile_file(&env).unwrap().access_key_id, "AK1");
        let with_web_identity = |name: &str| match name {
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/token".to_owned()),
            other => env(other),
        };
        assert_eq!(from_profile_file(&with_web_identity), None);
    }
}
