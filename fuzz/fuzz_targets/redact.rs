//! Redaction of text clients send (build output, failure reasons, explanations): arbitrary text
//! never panics and redacting twice changes nothing; a secret planted in arbitrary text, in one
//! of the shapes and after one of the separators cached promises to catch, never survives.
#![no_main]

use cached::redact::{REDACTED, text};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// What may stand before a secret: the start of a line, `=`, `:`, whitespace, quotes, `,`.
const BEFORE: &[&str] = &[" ", "\n", "\t", "=", ":", "\"", "'", ",", "(", "["];
/// What may follow one.
const AFTER: &[&str] = &[" ", "\n", "\"", "'", ",", ";", ")", "]"];
const KEYS: &[&str] = &[
    "password",
    "token",
    "api_key",
    "x-api-key",
    "secret",
    "GITHUB_TOKEN",
    "access_token",
    "client-secret",
    "db_passwd",
    "Cookie",
];
const KEY_SEPARATORS: &[&str] = &["=", ": ", ":", " = ", "\t:\t"];

fn word(u: &mut Unstructured, alphabet: &[u8], len: std::ops::RangeInclusive<usize>) -> Result<String> {
    let len = u.int_in_range(len)?;
    (0..len).map(|_| Ok(char::from(alphabet[u.choose_index(alphabet.len())?]))).collect()
}

fn any_case(u: &mut Unstructured, word: &str) -> Result<String> {
    word.chars()
        .map(|c| Ok(if u.arbitrary::<bool>()? { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }))
        .collect()
}

/// A secret in one of the promised shapes: (the text to plant, the part that must not survive).
fn secret(u: &mut Unstructured) -> Result<(String, String)> {
    Ok(match u.int_in_range(0u8..=8)? {
        0 => {
            let token = format!("cached_{}", word(u, BASE64URL, 43..=43)?);
            (token.clone(), token)
        }
        1 => {
            let lease = format!("cached_lease.{}.{}", word(u, ALNUM, 4..=12)?, word(u, BASE64URL, 16..=43)?);
            (lease.clone(), lease)
        }
        2 => {
            let jwt = format!(
                "eyJ{}.{}.{}",
                word(u, BASE64URL, 8..=40)?,
                word(u, BASE64URL, 8..=80)?,
                word(u, BASE64URL, 8..=43)?
            );
            (jwt.clone(), jwt)
        }
        3 => {
            let credential = word(u, BASE64URL, 8..=60)?;
            let scheme = if u.arbitrary()? { "bearer" } else { "basic" };
            let scheme = any_case(u, scheme)?;
            (format!("{scheme} {credential}"), credential)
        }
        4 => {
            let password = word(u, ALNUM, 8..=40)?;
            let scheme = *u.choose(&["https", "http", "git+ssh", "postgres"])?;
            let scheme = any_case(u, scheme)?;
            (format!("{scheme}://u:{password}@h.io/p"), password)
        }
        5 => {
            let value = word(u, ALNUM, 8..=40)?;
            let key = *u.choose(KEYS)?;
            let key = any_case(u, key)?;
            let separator = u.choose(KEY_SEPARATORS)?;
            let quote = *u.choose(&["", "\"", "'"])?;
            (format!("{key}{separator}{quote}{value}{quote}"), value)
        }
        6 => {
            let value = word(u, ALNUM, 8..=40)?;
            let key = any_case(u, "authorization")?;
            let scheme = *u.choose(&["bearer", "basic", "token"])?;
            let scheme = any_case(u, scheme)?;
            (format!("{key}: {scheme} {value}"), value)
        }
        7 => {
            let value = word(u, ALNUM, 8..=40)?;
            (format!("--{} {value}", u.choose(&["token", "password", "api-key"])?), value)
        }
        _ => {
            let token = format!("{}{}", u.choose(&["ghp_", "glpat-", "github_pat_"])?, word(u, ALNUM, 20..=40)?);
            (token.clone(), token)
        }
    })
}

fn planted(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let prefix: String = u.arbitrary()?;
    let before = u.choose(BEFORE)?;
    let (planted, hidden) = secret(&mut u)?;
    let after = u.choose(AFTER)?;
    let suffix: String = u.arbitrary()?;
    let line = format!("{prefix}{before}{planted}{after}{suffix}");
    // A secret that also appears outside the planted spot (or inside the marker) proves nothing.
    if line.replacen(&hidden, "", 1).contains(&hidden) || REDACTED.contains(hidden.as_str()) {
        return Ok(());
    }
    let clean = text(&line);
    assert!(!clean.contains(&hidden), "{hidden:?} survived in {clean:?} (from {line:?})");
    assert_eq!(text(&clean), clean, "redacting twice changed {clean:?}");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let any = String::from_utf8_lossy(data);
    let clean = text(&any);
    assert_eq!(text(&clean), clean, "redacting twice changed {clean:?}");
    let _ = planted(data);
});
