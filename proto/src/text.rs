//! Text that crosses the wire from a build (a failure's reason, an explanation) is bounded on
//! both ends: its lines are decided by the job's code, and a message past the server's
//! `max_message_size` is refused whole.

/// The most of a failure's reason or a build's explanation either end keeps.
pub const MAX_REPORT: usize = 64 << 10;

/// `text`, or its first and last [`MAX_REPORT`]` / 2` bytes around a line that says how much
/// was cut: the first lines say what failed, the last how the build ended.
pub fn keep_ends(text: String) -> String {
    if text.len() <= MAX_REPORT {
        return text;
    }
    let half = MAX_REPORT / 2 - 64;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[... {} bytes cut: a report is at most {} KiB ...]\n{}",
        &text[..head],
        tail - head,
        MAX_REPORT >> 10,
        &text[tail..]
    )
}

/// The largest character boundary of `text` at or before `max`.
pub fn char_floor(text: &str, max: usize) -> usize {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// Cuts `text` to at most `max` bytes at a character boundary, ending it with `…`, when it is
/// longer.
pub fn cut_marked(text: &mut String, max: usize) {
    if text.len() > max {
        text.truncate(char_floor(text, max.saturating_sub('…'.len_utf8())));
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(char_floor("aé", 2), 1);
        assert_eq!(char_floor("ab", 9), 2);
        let mut text = "ééé".to_owned();
        cut_marked(&mut text, 5);
        assert_eq!(text, "é…");
        let mut short = "ab".to_owned();
        cut_marked(&mut short, 2);
        assert_eq!(short, "ab");
    }

    #[test]
    fn a_long_text_keeps_its_start_and_its_end_within_the_cap() {
        let short = "go build failed (exit status 1):\n./main.go:3:1: syntax error".to_owned();
        assert_eq!(keep_ends(short.clone()), short);
        let long = format!("go build failed:\n{}é{}\nexit status 1", "x".repeat(40_000), "ü".repeat(100_000));
        let bounded = keep_ends(long);
        assert!(bounded.len() <= MAX_REPORT, "{}", bounded.len());
        assert!(bounded.starts_with("go build failed:\nxxx") && bounded.ends_with("üü\nexit status 1"));
        assert!(bounded.contains("bytes cut: a report is at most 64 KiB"), "{bounded:.200}");
    }
}
