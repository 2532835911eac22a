//! Sizes, counts and characters of a job spec, checked before anything else looks at its text:
//! a spec is stored, kept in memory while the job lives and sent to every agent that builds it,
//! and its strings end up in argv, in environment variables and in messages.

use std::time::Duration;

/// Package patterns in one job.
pub(super) const MAX_PACKAGES: usize = 256;
/// Build flags in one job, and bytes in one flag or environment value (a long `-ldflags` with
/// many `-X` definitions fits).
pub(super) const MAX_FLAGS: usize = 64;
pub(super) const MAX_FLAG: usize = 8192;
/// Bytes of a whole spec as it arrives. The counts and lengths above allow about 1.6 MiB, and
/// a spec is kept while its job lives (and a while after), copied by Jobs.List and sent to
/// every agent that builds it; a real one, even with long `-ldflags`, is a few KiB.
pub(super) const MAX_SPEC_BYTES: usize = 64 << 10;
/// Bytes in a Go version (`go1.26.8`) and in a C compiler's name.
pub(super) const MAX_WORD: usize = 64;
/// The range of `priority`: higher runs first, 0 is the default.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// A spec of at most [`MAX_SPEC_BYTES`], encoded.
pub(super) fn check_spec_size(spec: &proto::v1::JobSpec) -> Result<(), String> {
    let bytes = prost::Message::encoded_len(spec);
    if bytes > MAX_SPEC_BYTES {
        return Err(format!(
            "the job spec is {bytes} bytes; at most {} KiB (package patterns, flags, environment \
             and image settings together): a real spec takes a few KiB, so pass long settings \
             in the source tree instead",
            MAX_SPEC_BYTES >> 10
        ));
    }
    Ok(())
}

/// The start of a long text, for messages.
fn shown(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Text of at most `max` bytes without control characters (NUL, newlines, escapes...).
pub(super) fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} {} is {} bytes long; at most {max}", shown(text), text.len()));
    }
    if let Some(bad) = text.chars().find(|c| c.is_control()) {
        return Err(format!("{what} {} holds the control character {bad:?}", shown(text)));
    }
    Ok(())
}

/// As [`check_text`], for what go splits into words: the only white space is the plain space,
/// so Go's splitting (on ASCII space) and trimming (on any Unicode space) agree with ours.
pub(super) fn check_words(what: &str, text: &str, max: usize) -> Result<(), String> {
    check_text(what, text, max)?;
    if let Some(bad) = text.chars().find(|&c| c.is_whitespace() && c != ' ') {
        return Err(format!("{what} {} holds the white space {bad:?}; use plain spaces", shown(text)));
    }
    Ok(())
}

pub(super) fn check_priority(priority: i32) -> Result<(), String> {
    if !PRIORITIES.contains(&priority) {
        return Err(format!(
            "priority {priority} is out of range: {} to {} (higher runs first, 0 is the default)",
            PRIORITIES.start(),
            PRIORITIES.end()
        ));
    }
    Ok(())
}

/// A job's own deadline may not exceed the server's `max_job_timeout`; 0 takes `job_timeout`.
pub(super) fn check_timeout(seconds: u64, max: Duration) -> Result<(), String> {
    if seconds > max.as_secs() {
        return Err(format!(
            "timeout_seconds {seconds} is above the server's max_job_timeout ({}); ask for at most {} \
             seconds, or 0 for the server's default",
            humantime::format_duration(max),
            max.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        check_text("x", "plain text, ünïcode", 64).unwrap();
        let err = check_text("module_dir", &"a".repeat(100), 64).unwrap_err();
        assert!(err.contains("100 bytes long; at most 64") && err.contains("..."), "{err}");
        for bad in ["a\0b", "a\nb", "a\tb", "\u{1b}[2J", "a\u{7f}", "a\u{85}"] {
            assert!(check_text("x", bad, 64).unwrap_err().contains("control character"), "{bad:?}");
        }
        check_words("x", "-s -w", 64).unwrap();
        assert!(check_words("x", "-s\u{a0}-w", 64).unwrap_err().contains("plain spaces"));
        assert!(check_words("x", "-s\u{3000}", 64).is_err());
    }

    #[test]
    fn priority_and_timeout() {
        for ok in [-1000, 0, 1000] {
            check_priority(ok).unwrap();
        }
        for bad in [-1001, 1001, i32::MIN, i32::MAX] {
            assert!(check_priority(bad).unwrap_err().contains("-1000 to 1000"));
        }
        let day = Duration::from_secs(86400);
        check_timeout(0, day).unwrap();
        check_timeout(86400, day).unwrap();
        let err = check_timeout(u64::MAX, day).unwrap_err();
        assert!(err.contains("max_job_timeout (1day)") && err.contains("at most 86400"), "{err}");
    }
}
