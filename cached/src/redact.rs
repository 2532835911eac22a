//! Redaction of credentials before anything a client sent is stored, shown or logged: command
//! lines, environment variables, and free text (build output, failure reasons, explanations).
//! What counts as a credential is decided by name (`CACHED_TOKEN`, `--token`, `password:`,
//! `GOAUTH`, ...) in any case, by what precedes it (`Bearer`, `Basic`, `user:password@` in a
//! URL) and by shape (our own token secrets and lease credentials, JWTs, well-known token
//! formats, PEM private keys), wherever it stands in a line and however many there are. It errs
//! on the side of hiding, and redacting redacted text changes nothing.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

pub const REDACTED: &str = "[redacted]";

/// Parts of a name that mark its value as a credential (compared in upper case, `-` as `_`).
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
    "BEARER",
    "COOKIE",
    "SESSION",
    "NETRC",
];

/// Suffixes of names whose value is where a credential is, not the credential.
const LOCATIONS: &[&str] = &["_FILE", "_PATH", "_DIR"];

/// Whether a variable, flag or field of this name holds a credential (`--token-file` does not).
pub fn is_sensitive_name(name: &str) -> bool {
    let name = name.trim_start_matches('-').to_ascii_uppercase().replace(['-', '.'], "_");
    let marked = SENSITIVE.iter().any(|part| name.contains(part)) || name.ends_with("PASS");
    marked && !LOCATIONS.iter().any(|suffix| name.ends_with(suffix))
}

/// `value` as it may be shown: a credential by shape is hidden whole, a URL keeps everything
/// but its password.
pub fn redact_value(value: &str) -> String {
    text(value)
}

/// Free text with every credential replaced by [`REDACTED`]; everything else, whitespace
/// included, stays as it was.
pub fn text(text: &str) -> String {
    let mut current = text.to_owned();
    // One pass finds every secret of the original; a second confirms nothing new appeared
    // where a secret was joined to its neighbours. More are never needed, but cost nothing.
    for _ in 0..4 {
        let next = redact_once(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn redact_once(text: &str) -> String {
    let mut ranges = Vec::new();
    for rule in [shapes, url_passwords, schemes, named_values, flags] {
        rule(text, &mut ranges);
    }
    if ranges.is_empty() {
        return text.to_owned();
    }
    // A redacted value found again is its own replacement, so a second pass changes nothing.
    for range in &mut ranges {
        if text[range.start..].starts_with(REDACTED) {
            range.end = range.start + REDACTED.len();
        }
    }
    ranges.sort_by_key(|range| (range.start, range.end));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in ranges {
        if range.end <= at {
            continue;
        }
        let start = range.start.max(at);
        out.push_str(&text[at..start]);
        if start == range.start {
            out.push_str(REDACTED);
        }
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the redaction patterns are valid")
}

/// Secrets recognisable by their form alone.
static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    regex(concat!(
        // Our own token secrets and the per-lease credentials of builds.
        r"cached_lease\.[A-Za-z0-9._~+/=-]+",
        r"|cached_[A-Za-z0-9_-]{20,}",
        // JSON Web Tokens: three base64url parts, the first a JSON object.
        r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        // GitHub, GitLab, Slack and Stripe tokens, npm tokens.
        r"|\b(?:gh[pousr]_|github_pat_|glpat-|xox[abprs]-|sk_live_|npm_)[A-Za-z0-9_-]{16,}",
        // PEM private keys, to their end (or the end of the text).
        r"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
    ))
});

fn shapes(text: &str, ranges: &mut Vec<Range<usize>>) {
    ranges.extend(SHAPES.find_iter(text).map(|found| found.range()));
}

/// `scheme://userinfo@`: the authority up to its last `@`.
static USERINFO: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b[a-z][a-z0-9+.-]*://([^\s/?#@]*(?:@[^\s/?#@]*)*)@"));

/// The password of every URL with one (`user:[redacted]@`), and a lone user that is long
/// enough to be a token (`https://[redacted]@github.com`).
fn url_passwords(text: &str, ranges: &mut Vec<Range<usize>>) {
    for found in USERINFO.captures_iter(text) {
        let userinfo = found.get(1).expect("the pattern has a group");
        match userinfo.as_str().find(':') {
            Some(colon) if colon + 1 < userinfo.len() => {
                ranges.push(userinfo.start() + colon + 1..userinfo.end())
            }
            Some(_) => {}
            None if userinfo.len() >= 20 => ranges.push(userinfo.range()),
            None => {}
        }
    }
}

/// Authorization schemes whose next word is the credential, in any case.
static SCHEMES: LazyLock<Regex> =
    LazyLock::new(|| regex(r#"(?i)\b(?:bearer|basic)[ \t]+([^\s"'`,;)\]}>]+)"#));

fn schemes(text: &str, ranges: &mut Vec<Range<usize>>) {
    let mut from = 0;
    // Resume at the credential: `Bearer Bearer x` hides both words after the first.
    while let Some(found) = SCHEMES.captures_at(text, from) {
        let credential = found.get(1).expect("the pattern has a group");
        ranges.push(credential.range());
        from = credential.start();
    }
}

/// A name, perhaps quoted, then `=` or `:` and the value: `GITHUB_TOKEN=x`, `password: x`,
/// `"api_key": "x"`, `token = 'x y'`. The name is checked with [`is_sensitive_name`].
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    regex(concat!(
        r#"([A-Za-z0-9_.-]+)["'`]?[ \t]*[:=][ \t]*"#,
        r#"(?:"([^"\n]*)"?|'([^'\n]*)'?|`([^`\n]*)`?|([^\s"'`,;&)\]}>]+))"#,
    ))
});

/// Words that introduce the credential after them (`Authorization: Bearer x`).
const SCHEME_WORDS: &[&str] = &["bearer", "basic", "token", "digest", "negotiate"];

static NEXT_WORD: LazyLock<Regex> = LazyLock::new(|| regex(r#"^[ \t]+([^\s"'`,;)\]}>]+)"#));

fn named_values(text: &str, ranges: &mut Vec<Range<usize>>) {
    let mut from = 0;
    while let Some(found) = NAMED.captures_at(text, from) {
        let whole = found.get(0).expect("the whole match");
        let name = found.get(1).expect("the name");
        let value = (2..=5).find_map(|group| found.get(group)).expect("one value alternative matches");
        // Resume inside the value: it may itself hold `name=value` (`GIT_CONFIG=auth=x`).
        from = value.start().max(whole.start() + 1);
        // `token := x` is Go, `token::new` Rust, `https://` a URL: none names a value.
        let separator = text[name.end()..].trim_start_matches(['"', '\'', '`', ' ', '\t']);
        if separator.starts_with(":=") || separator.starts_with("::") || value.as_str().starts_with("//") {
            continue;
        }
        if !is_sensitive_name(name.as_str()) || value.as_str().is_empty() {
            continue;
        }
        if !SCHEME_WORDS.iter().any(|word| value.as_str().eq_ignore_ascii_case(word)) {
            ranges.push(value.range());
        } else if let Some(next) = NEXT_WORD.captures(&text[value.end()..]) {
            // The scheme stays readable; the credential after it goes.
            let next = next.get(1).expect("the pattern has a group");
            ranges.push(value.end() + next.start()..value.end() + next.end());
        }
    }
}

/// `--token hunter2` in a logged command line.
static FLAGS: LazyLock<Regex> = LazyLock::new(|| {
    regex(r#"(?:^|[^A-Za-z0-9_.-])(--?[A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]+([^\s\-"'`][^\s"'`]*)"#)
});

fn flags(text: &str, ranges: &mut Vec<Range<usize>>) {
    let mut from = 0;
    while let Some(found) = FLAGS.captures_at(text, from) {
        let flag = found.get(1).expect("the flag");
        let value = found.get(2).expect("the value");
        from = value.start();
        if is_sensitive_name(flag.as_str()) {
            ranges.push(value.range());
        }
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

    const TOKEN: &str = "cached_kyw6v5TNX_EtwjJ1L1M5IG-IJ-wq91wGdox9q9JqxRw";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.dGhpcyBpcyBub3QgYSBzaWduYXR1cmU";

    #[test]
    fn names() {
        for name in [
            "CACHED_TOKEN",
            "--token",
            "GOAUTH",
            "AWS_SECRET_ACCESS_KEY",
            "db-password",
            "GITHUB_TOKEN",
            "Password",
            "x-api-key",
            "DB_PASS",
            "http.extraheader.authorization",
        ] {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in ["CACHED_TOKEN_FILE", "--token-file", "CACHED_LISTEN", "--tls-key", "PATH", "HOME", "PWD"]
        {
            assert!(!is_sensitive_name(name), "{name}");
        }
    }

    #[test]
    fn command_lines() {
        let line = args([
            "cachectl",
            "--token",
            "hunter2",
            "--password=swordfish",
            "--token-file",
            "/run/token",
            "--server",
            "https://ci:pa55@cache:7070/x",
            TOKEN,
            "--verbose",
        ]);
        let text = line.join(" ");
        for leaked in ["hunter2", "swordfish", "pa55", TOKEN] {
            assert!(!text.contains(leaked), "{text}");
        }
        assert!(text.contains("/run/token") && text.contains("https://ci:[redacted]@cache:7070/x"), "{text}");
        assert_eq!(args(["--token", "--verbose"]), ["--token", "--verbose"]);
    }

    #[test]
    fn free_text() {
        let output = format!(
            "go: reading https://ci:pa55@proxy.corp/mod/@v/list: 404\n\
             \tGOAUTH='netrc' GITHUB_TOKEN=ghp_x (token {TOKEN}), header Authorization: Bearer eyJhbGc.x\n\
             GOPROXY=\"https://u:hunter2@p,direct\" ok"
        );
        let clean = text(&output);
        for leaked in ["pa55", "ghp_x", TOKEN, "eyJhbGc", "hunter2", "netrc"] {
            assert!(!clean.contains(leaked), "{clean}");
        }
        assert!(
            clean.starts_with("go: reading https://ci:[redacted]@proxy.corp/mod/@v/list: 404\n\t"),
            "{clean}"
        );
        assert!(clean.contains("https://u:[redacted]@p,direct") && clean.ends_with(" ok"), "{clean}");
    }

    /// Each line holds secrets (the words in capitals after `=`) and must come out as given.
    #[test]
    fn every_shape_in_any_case_after_any_separator() {
        let cases = [
            ("Authorization: Bearer SECRETA", "Authorization: Bearer [redacted]"),
            ("authorization: bearer SECRETA", "authorization: bearer [redacted]"),
            ("AUTHORIZATION: BEARER SECRETA", "AUTHORIZATION: BEARER [redacted]"),
            ("curl -H 'Authorization: Basic SECRETA' x", "curl -H 'Authorization: Basic [redacted]' x"),
            ("Authorization: token SECRETA", "Authorization: token [redacted]"),
            ("bearer SECRETA and Bearer SECRETB", "bearer [redacted] and Bearer [redacted]"),
            (&format!("t={TOKEN}"), "t=[redacted]"),
            (&format!("t:{TOKEN}"), "t:[redacted]"),
            (&format!("\"{TOKEN}\""), "\"[redacted]\""),
            (&format!("a,{TOKEN},b"), "a,[redacted],b"),
            (&format!("{TOKEN} first"), "[redacted] first"),
            (TOKEN, "[redacted]"),
            ("lease cached_lease.j1.t0.a2.SECRETA end", "lease [redacted] end"),
            ("x='cached_lease.abc.DEF'", "x='[redacted]'"),
            (&format!("jwt {JWT}."), "jwt [redacted]."),
            (&format!("id_token={JWT}&x=1"), "id_token=[redacted]&x=1"),
            (
                "https://user:SECRETA@host/x and ftp://u:SECRETB@h",
                "https://user:[redacted]@host/x and ftp://u:[redacted]@h",
            ),
            ("HTTPS://USER:SECRETA@HOST", "HTTPS://USER:[redacted]@HOST"),
            ("https://u:p@ss:w@rd@host/", "https://u:[redacted]@host/"),
            (
                "git clone https://ghp_SECRETSECRETSECRETSECRET@github.com/o/r",
                "git clone https://[redacted]@github.com/o/r",
            ),
            ("password=SECRETA", "password=[redacted]"),
            ("Password: SECRETA", "Password: [redacted]"),
            ("PASSWORD:SECRETA", "PASSWORD:[redacted]"),
            ("db_password = 'two words'", "db_password = '[redacted]'"),
            (
                "{\"api_key\": \"SECRETA\", \"user\": \"bob\"}",
                "{\"api_key\": \"[redacted]\", \"user\": \"bob\"}",
            ),
            ("X-Api-Key: SECRETA", "X-Api-Key: [redacted]"),
            (
                "GITHUB_TOKEN=SECRETA NPM_TOKEN=SECRETB go build",
                "GITHUB_TOKEN=[redacted] NPM_TOKEN=[redacted] go build",
            ),
            ("?access_token=SECRETA&page=2", "?access_token=[redacted]&page=2"),
            (
                "http.extraheader=AUTHORIZATION: basic SECRETA",
                "http.extraheader=AUTHORIZATION: basic [redacted]",
            ),
            ("run --token SECRETA --verbose", "run --token [redacted] --verbose"),
            ("cookie=SECRETA; session=SECRETB", "cookie=[redacted]; session=[redacted]"),
        ];
        for (input, expected) in cases {
            assert_eq!(text(input), expected, "{input}");
        }
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
        assert_eq!(text(&format!("key:\n{key}\nnext")), "key:\n[redacted]\nnext");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for plain in [
            "main.go:3:2: undefined: x\n  see https://go.dev/ref/spec@latest",
            "token := lexer.Next()",
            "./main.go:12:5: declared and not used: token",
            "go: downloading golang.org/x/mod v0.30.0",
            "GOFLAGS=-mod=mod GOOS=linux CGO_ENABLED=0",
            "--token-file /run/token",
            "ssh://git@github.com/o/r.git",
            "",
            "  \t\n",
        ] {
            assert_eq!(text(plain), plain);
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        for input in [
            "token=[redacted]] Bearer Bearer x",
            "password=\"unterminated",
            "a=b=c token=token=x",
            "https://a:b@c:d@e/",
            "Authorization: Bearer",
        ] {
            let once = text(input);
            assert_eq!(text(&once), once, "{input}");
        }
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
