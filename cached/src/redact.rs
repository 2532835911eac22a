//! Redaction of credentials before anything reaches a log: command lines, environment
//! variables, and URLs with a password in them. What counts as a credential is decided by name
//! (`CACHED_TOKEN`, `--token`, `GOAUTH`, `AWS_SECRET_ACCESS_KEY`, ...) and by shape (our own
//! token secrets, `user:password@` in a URL), erring on the side of hiding.

pub const REDACTED: &str = "[redacted]";

/// Parts of a name that mark its value as a credential.
const SENSITIVE: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "APIKEY",
    "API_KEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "AUTH",
    "COOKIE",
    "SESSION",
    "NETRC",
];

/// Suffixes of names whose value is where a credential is, not the credential.
const LOCATIONS: &[&str] = &["_FILE", "_PATH", "_DIR"];

/// Whether a variable or flag of this name holds a credential (`--token-file` does not).
pub fn is_sensitive_name(name: &str) -> bool {
    let name = name.trim_start_matches('-').to_ascii_uppercase().replace('-', "_");
    SENSITIVE.iter().any(|part| name.contains(part)) && !LOCATIONS.iter().any(|suffix| name.ends_with(suffix))
}

/// Whether a value looks like a credential whatever its name.
fn is_sensitive_value(value: &str) -> bool {
    value.starts_with("cached_") && value.len() >= 40
}

/// `value`, with any `user:password@` in a URL reduced to `user:[redacted]@`.
pub fn redact_value(value: &str) -> String {
    if is_sensitive_value(value) {
        return REDACTED.to_owned();
    }
    let Some(scheme_end) = value.find("://") else {
        return value.to_owned();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{}{user}:{REDACTED}{}", &value[..scheme_end + 3], &rest[at..])
}

/// Free text (build output an agent sent, a task's failure) with credentials replaced:
/// `NAME=value` where the name marks a credential, the password of any URL with one, our own
/// token secrets, and what follows `Bearer` or `Basic`. Whitespace is kept as it was.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hide_next = false;
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        let space = &piece[word.len()..];
        if word.is_empty() {
            out.push_str(space);
            continue;
        }
        if std::mem::take(&mut hide_next) {
            out.push_str(REDACTED);
        } else {
            out.push_str(&redact_word(word));
            hide_next = matches!(word, "Bearer" | "Basic" | "bearer" | "basic");
        }
        out.push_str(space);
    }
    out
}

fn redact_word(word: &str) -> String {
    let bare = word.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '(' | ')' | '[' | ']' | ',' | ';'));
    if let Some((name, _)) = bare.split_once('=')
        && is_sensitive_name(name)
    {
        return word.replacen(bare, &format!("{name}={REDACTED}"), 1);
    }
    let mut word = word.to_owned();
    if let Some(start) = word.find("cached_") {
        let secret = word[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let end = secret.map_or(word.len(), |len| start + len);
        if is_sensitive_value(&word[start..end]) {
            word.replace_range(start..end, REDACTED);
        }
    }
    match word.find("://") {
        Some(separator) => {
            let scheme = word[..separator].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)));
            let start = scheme.map_or(0, |at| at + 1);
            format!("{}{}", &word[..start], redact_value(&word[start..]))
        }
        None => word,
    }
}

/// Environment variables with credential values replaced.
pub fn env<I, K, V>(vars: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: AsRef<str>,
{
    vars.into_iter()
        .map(|(name, value)| {
            let name = name.into();
            let value =
                if is_sensitive_name(&name) { REDACTED.to_owned() } else { redact_value(value.as_ref()) };
            (name, value)
        })
        .collect()
}

/// A command line with the values of credential flags replaced: `--token=x`, `--token x`.
pub fn args<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in args {
        let arg = arg.as_ref();
        if std::mem::take(&mut hide_next) && !arg.starts_with('-') {
            out.push(REDACTED.to_owned());
            continue;
        }
        if let Some((flag, _)) = arg.split_once('=')
            && flag.starts_with('-')
            && is_sensitive_name(flag)
        {
            out.push(format!("{flag}={REDACTED}"));
            continue;
        }
        if arg.starts_with('-') && is_sensitive_name(arg) {
            hide_next = true;
        }
        out.push(redact_value(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for name in
            ["CACHED_TOKEN", "--token", "GOAUTH", "AWS_SECRET_ACCESS_KEY", "db-password", "GITHUB_TOKEN"]
        {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in ["CACHED_TOKEN_FILE", "--token-file", "CACHED_LISTEN", "--tls-key", "PATH", "HOME"] {
            assert!(!is_sensitive_name(name), "{name}");
        }
    }

    #[test]
    fn command_lines() {
        let secret = format!("cached_{}", "A".repeat(43));
        let line = args([
            "cachectl",
            "--token",
            "hunter2",
            "--password=swordfish",
            "--token-file",
            "/run/token",
            "--server",
            "https://ci:pa55@cache:7070/x",
            secret.as_str(),
            "--verbose",
        ]);
        let text = line.join(" ");
        for leaked in ["hunter2", "swordfish", "pa55", &secret] {
            assert!(!text.contains(leaked), "{text}");
        }
        assert!(text.contains("/run/token") && text.contains("https://ci:[redacted]@cache:7070/x"), "{text}");
        assert_eq!(args(["--token", "--verbose"]), ["--token", "--verbose"]);
    }

    #[test]
    fn free_text() {
        let secret = format!("cached_{}", "B".repeat(43));
        let output = format!(
            "go: reading https://ci:pa55@proxy.corp/mod/@v/list: 404\n\
             \tGOAUTH='netrc' GITHUB_TOKEN=ghp_x (token {secret}), header Authorization: Bearer eyJhbGc.x\n\
             GOPROXY=\"https://u:hunter2@p,direct\" ok"
        );
        let clean = text(&output);
        for leaked in ["pa55", "ghp_x", &secret, "eyJhbGc", "hunter2", "netrc"] {
            assert!(!clean.contains(leaked), "{clean}");
        }
        assert!(
            clean.starts_with("go: reading https://ci:[redacted]@proxy.corp/mod/@v/list: 404\n\t"),
            "{clean}"
        );
        assert!(clean.contains("https://u:[redacted]@p,direct") && clean.ends_with(" ok"), "{clean}");
        let plain = "main.go:3:2: undefined: x\n  see https://go.dev/ref/spec@latest";
        assert_eq!(text(plain), plain);
    }

    #[test]
    fn environments() {
        let vars =
            env([("CACHED_TOKEN", "hunter2"), ("CACHED_LISTEN", "0.0.0.0:1"), ("PROXY", "http://u:p@h")]);
        assert_eq!(vars[0].1, REDACTED);
        assert_eq!(vars[1].1, "0.0.0.0:1");
        assert_eq!(vars[2].1, "http://u:[redacted]@h");
        assert_eq!(redact_value("http://host/a@b"), "http://host/a@b");
    }
}
