//! How `cachectl submit` and `cachectl jobs watch` show a job: live progress while it runs (a
//! spinner per task on a terminal, a line per change otherwise) and the summary table.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use proto::platform::label;
use proto::v1::{self, JobEvent, TaskState, job_event::Kind};

/// `linux/arm64+cgo` for a build task, `image index` for the last step of an image job.
pub fn task_label(task: &v1::TaskStatus) -> String {
    if task.kind == v1::TaskKind::ImageIndex as i32 {
        "image index".to_owned()
    } else {
        label(&task.target.clone().unwrap_or_default())
    }
}

/// A task's build time for the table, `-` when it has none.
pub fn duration(ms: u64) -> String {
    if ms > 0 { format!("{:.1}s", ms as f64 / 1000.0) } else { "-".to_owned() }
}

pub fn outcome(state: TaskState, hit: bool, done: &str) -> String {
    match state {
        TaskState::Succeeded if hit => "hit".to_owned(),
        TaskState::Succeeded => done.to_owned(),
        TaskState::Failed => "FAILED".to_owned(),
        TaskState::Cancelled => "cancelled".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

pub fn print_table(rows: &[[String; 5]]) {
    // Agent and output names come from the agents' reports.
    let rows: Vec<[String; 5]> = rows.iter().map(|row| row.clone().map(|cell| printable(&cell))).collect();
    let header = ["TARGET", "AGENT", "CACHE", "TIME", "OUTPUT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 4 {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        outln!("{}", text.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// `text` from a job (its compiler's output, a failure's reason) as it may be shown on a
/// terminal: control characters other than newlines and tabs escaped (`\u{1b}`), so a pull
/// request's sources cannot retitle a maintainer's terminal, rewrite what it shows or set its
/// clipboard through escape sequences in an error message; and so are the marks that reorder
/// or hide text (bidirectional overrides, zero-width characters), which make a line read as
/// something other than what it says.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() || reorders_or_hides(c) => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The characters a terminal draws as nothing, breaks a line at, or uses to reorder what
/// follows: format characters, line and paragraph separators, variation selectors, tags and
/// the Hangul fillers.
fn reorders_or_hides(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}'
        | '\u{feff}' | '\u{ffa0}' | '\u{e0000}'..='\u{e007f}' | '\u{e0100}'..='\u{e01ef}')
}

/// Progress: one bar per target on a terminal, one line per change otherwise.
pub struct View {
    bars: Option<(MultiProgress, BTreeMap<u32, ProgressBar>)>,
    labels: BTreeMap<u32, String>,
    /// What each task last showed: a snapshot and the event after it can say the same.
    shown: BTreeMap<u32, String>,
}

impl View {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn on_stderr() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| (MultiProgress::new(), BTreeMap::new()));
        Self { bars, labels: BTreeMap::new(), shown: BTreeMap::new() }
    }

    pub fn note(&mut self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn set(&mut self, task: u32, text: &str) {
        let text = &printable(text);
        if self.shown.get(&task).is_some_and(|shown| shown == text) {
            return;
        }
        self.shown.insert(task, text.to_owned());
        // Only the image index task joins a job after its first snapshot.
        let label = self.labels.get(&task).cloned().unwrap_or_else(|| "image index".to_owned());
        match &mut self.bars {
            Some((multi, bars)) => {
                let bar = bars.entry(task).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:<22} {elapsed:>4} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(label.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(text.to_owned());
            }
            None => eprintln!("[{label}] {text}"),
        }
    }

    fn done(&mut self, task: u32, text: &str) {
        self.set(task, text);
        if let Some(bar) = self.bars.as_ref().and_then(|(_, bars)| bars.get(&task)) {
            bar.finish();
        }
    }

    /// Applies one event; the final status when the job finished.
    pub fn apply(&mut self, event: &JobEvent) -> Option<v1::JobStatus> {
        let kind = Kind::try_from(event.kind).unwrap_or(Kind::Unspecified);
        let task = event.task;
        match kind {
            Kind::Snapshot => {
                let status = event.status.as_ref()?;
                for task in &status.tasks {
                    self.labels.insert(task.index, task_label(task));
                    let state = TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified);
                    let text = match state {
                        TaskState::Queued => "queued".to_owned(),
                        TaskState::Leased => format!("building on {}", task.agent),
                        other => format!("{other:?}").to_lowercase(),
                    };
                    self.set(task.index, &text);
                }
            }
            Kind::Queued if !event.message.is_empty() => {
                self.set(task, &format!("requeued: {}", event.message))
            }
            Kind::Queued => self.set(task, "queued"),
            Kind::Leased => self.set(task, &format!("leased by {} (attempt {})", event.agent, event.attempt)),
            Kind::Started if self.labels.get(&task).is_some_and(|label| label != "image index") => {
                self.set(task, &format!("building on {}", event.agent))
            }
            Kind::Started => self.set(task, &format!("assembling on {}", event.agent)),
            Kind::Log => {
                if let Some(last) = event.message.lines().last().filter(|_| self.bars.is_some()) {
                    let text: String = last.chars().take(80).collect();
                    self.set(task, &format!("{}: {text}", event.agent));
                }
            }
            Kind::TaskSucceeded => {
                let result = event.result.clone().unwrap_or_default();
                let cache = match &result.index {
                    Some(index) => format!("index {}", index.digest),
                    None if result.hit => "hit".to_owned(),
                    None => "built".to_owned(),
                };
                self.done(
                    task,
                    &format!("{cache} on {} in {:.1}s", event.agent, result.duration_ms as f64 / 1000.0),
                );
            }
            Kind::TaskFailed => {
                let first = event.message.lines().next().unwrap_or("").to_owned();
                self.done(task, &format!("failed: {first}"));
            }
            Kind::TaskCancelled => self.done(task, "cancelled"),
            Kind::JobFinished => return event.status.clone(),
            Kind::Unspecified => {}
        }
        None
    }

    pub fn finish(&mut self) {
        if let Some((multi, bars)) = &self.bars {
            for bar in bars.values() {
                bar.finish();
            }
            let _ = multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_a_job_are_shown_not_obeyed() {
        let hostile = "main.go:3: error: \u{1b}]0;PWNED\u{7}\u{1b}[31mred\u{1b}[0m\r\n\tnext\u{9b}2J";
        assert_eq!(
            printable(hostile),
            "main.go:3: error: \\u{1b}]0;PWNED\\u{7}\\u{1b}[31mred\\u{1b}[0m\\u{d}\n\tnext\\u{9b}2J"
        );
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
        // Reads "ok: failed checks" where the override is honoured, though it says "deliaf".
        let reordered = "ok: \u{202e}deliaf\u{202c} checks\u{200b}";
        assert_eq!(printable(reordered), "ok: \\u{202e}deliaf\\u{202c} checks\\u{200b}");
        assert_eq!(printable("a\u{2028}b\u{e0041}\u{ad}"), "a\\u{2028}b\\u{e0041}\\u{ad}");
    }
}
