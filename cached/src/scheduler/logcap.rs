//! How much build output one task attempt may add to its job's events, counted by cached: the
//! agent forwards at most 8 MiB of a build's log, but an agent is only as trusted as its token,
//! and in PostgreSQL every line is a stored row until the job is pruned. Past the cap the
//! attempt's further lines are dropped, after one line saying so; its Progress calls and its
//! completion are accepted as before.

/// The agent's own 8 MiB and room for what it and cached add (its note that it stopped, the
/// notes of cut lines), so an honest agent's log is never cut here.
pub const MAX_ATTEMPT_LOG: u64 = (8 << 20) + (64 << 10);

/// Counted once an attempt's log was cut: more than the cap, so nothing more is let in.
const SPENT: u64 = MAX_ATTEMPT_LOG + 1;

/// The line that ends a cut log.
pub fn truncated_note() -> String {
    format!(
        "[cached: log truncated: this attempt's build output passed {} MiB; the rest is dropped]",
        MAX_ATTEMPT_LOG >> 20
    )
}

/// The lines of one Progress call that fit after `spent` bytes of the attempt's log (each line
/// counts its bytes and a newline), and what the attempt has spent after them. The call that
/// crosses the cap keeps what fits and ends with [`truncated_note`]; later calls keep nothing.
pub fn admit(spent: u64, lines: Vec<String>) -> (Vec<String>, u64) {
    if spent > MAX_ATTEMPT_LOG {
        return (Vec::new(), spent);
    }
    let mut total = spent;
    let mut kept = Vec::with_capacity(lines.len());
    for line in lines {
        let cost = line.len() as u64 + 1;
        if total + cost > MAX_ATTEMPT_LOG {
            kept.push(truncated_note());
            return (kept, SPENT);
        }
        total += cost;
        kept.push(line);
    }
    (kept, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pass_until_the_cap_then_one_note_then_nothing() {
        let line = "x".repeat(999);
        let (kept, spent) = admit(0, vec![line.clone(); 3]);
        assert_eq!((kept.len(), spent), (3, 3000));
        let (kept, spent) = admit(MAX_ATTEMPT_LOG - 1500, vec![line.clone(); 3]);
        assert_eq!(kept, vec![line.clone(), truncated_note()]);
        assert!(spent > MAX_ATTEMPT_LOG);
        assert_eq!(admit(spent, vec![line; 3]), (Vec::new(), spent));
    }

    #[test]
    fn a_log_that_ends_exactly_at_the_cap_is_whole() {
        let (kept, spent) = admit(MAX_ATTEMPT_LOG - 10, vec!["x".repeat(9)]);
        assert_eq!((kept.len(), spent), (1, MAX_ATTEMPT_LOG));
        let (kept, _) = admit(spent, vec!["y".into()]);
        assert_eq!(kept, vec![truncated_note()]);
    }
}
