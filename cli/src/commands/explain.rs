//! `cachectl explain TARGET-or-KEY`: the full component difference of the latest miss.

use proto::v1;
use serde::Serialize;

use cached_client::connect::Client;
use cached_client::error::{ClientError, Result};
use cached_gobuild::explain;
use cached_gobuild::manifest::hex;

/// The `--json` document. Fields are only ever added.
#[derive(Debug, Serialize)]
pub struct ExplainReport {
    pub namespace: String,
    pub key: String,
    pub module: String,
    pub package: String,
    pub goos: String,
    pub goarch: String,
    pub time_unix_ms: i64,
    /// `same_target`, `same_package`, `first_build` or `evicted`.
    pub basis: String,
    /// The build compared with (empty for a first build).
    pub nearest_key: String,
    pub nearest_time_unix_ms: i64,
    pub causes: Vec<String>,
    /// The summary lines the wrapper printed.
    pub summary: Vec<String>,
    pub changes: Vec<ChangeReport>,
    pub changes_omitted: u32,
}

#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub component: String,
    /// `changed`, `added` or `removed`.
    pub kind: String,
    /// Readable values; empty for file contents and flags that are never shown.
    pub before: String,
    pub after: String,
}

impl ExplainReport {
    pub fn new(event: v1::BuildEvent) -> Self {
        let target = event.target.unwrap_or_default();
        let explanation = event.explanation.unwrap_or_default();
        Self {
            namespace: event.namespace,
            key: hex(&event.key),
            module: target.module,
            package: target.package,
            goos: target.goos,
            goarch: target.goarch,
            time_unix_ms: event.time_unix_ms,
            basis: explanation.basis.clone(),
            nearest_key: hex(&explanation.nearest_key),
            nearest_time_unix_ms: explanation.nearest_time_unix_ms,
            causes: explanation.causes.clone(),
            summary: explain::summary(&explanation),
            changes: explanation
                .changes
                .iter()
                .map(|c| ChangeReport {
                    component: c.name.clone(),
                    kind: c.kind.clone(),
                    before: c.before.clone(),
                    after: c.after.clone(),
                })
                .collect(),
            changes_omitted: explanation.changes_omitted,
        }
    }

    pub fn to_text(&self, now_ms: i64) -> String {
        let mut lines = vec![format!(
            "miss of {} ({}/{}) in namespace {}, {}",
            self.package,
            self.goos,
            self.goarch,
            self.namespace,
            explain::ago(self.time_unix_ms, now_ms)
        )];
        lines.push(format!("key      {}", self.key));
        match self.basis.as_str() {
            "first_build" => lines.push("compared with nothing: first build of this target".to_owned()),
            "evicted" => lines.push("this build was cached, but its outputs had been evicted".to_owned()),
            "not_explained" => {
                lines.push("not compared: the server was explaining many other misses at the time".to_owned())
            }
            basis => lines.push(format!(
                "compared with {} ({}, built {})",
                self.nearest_key,
                if basis == "same_package" {
                    "the same package on another platform"
                } else {
                    "the same target"
                },
                explain::ago(self.nearest_time_unix_ms, now_ms)
            )),
        }
        if !self.causes.is_empty() {
            lines.push(format!("causes   {}", self.causes.join(", ")));
        }
        if !self.changes.is_empty() {
            lines.push(String::new());
            lines.push(format!(
                "{} differing components:",
                self.changes.len() + self.changes_omitted as usize
            ));
            let explanation = v1::MissExplanation {
                changes: self
                    .changes
                    .iter()
                    .map(|c| v1::ComponentChange {
                        name: c.component.clone(),
                        kind: c.kind.clone(),
                        before: c.before.clone(),
                        after: c.after.clone(),
                    })
                    .collect(),
                ..Default::default()
            };
            lines.extend(explain::full(&explanation).into_iter().map(|line| format!("  {line}")));
            if self.changes_omitted > 0 {
                lines.push(format!("  … and {} more the server did not keep", self.changes_omitted));
            }
        }
        lines.join("\n") + "\n"
    }
}

/// How long `explain` and `stats` wait for their token's turn at the build history: one call
/// per token reads it at a time, and a fleet's other calls queue behind it.
pub(crate) const HISTORY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn run(client: &Client, namespace: String, query: String, json: bool) -> Result<()> {
    let request = v1::BuildExplainRequest { namespace: namespace.clone(), query: query.clone() };
    // One Explain or Stats call per token reads the history at a time: others wait their turn.
    let explain = || async { Ok(client.builds.clone().explain(request.clone()).await?.into_inner()) };
    let response = cached_client::busy::retrying_within(HISTORY_PATIENCE, explain).await?;
    let Some(event) = response.event.filter(|_| response.found) else {
        let ns = if namespace.is_empty() { "default" } else { namespace.as_str() };
        return Err(ClientError::Usage(format!("no miss of {query:?} is recorded in namespace {ns}")));
    };
    let report = ExplainReport::new(event);
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        out!("{}", report.to_text(cached_client::clock::now_ms()));
    }
    Ok(())
}
