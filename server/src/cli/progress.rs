//! Progress of pull, push and create: indicatif bars on a terminal, one plain line per status otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::Result;
use futures::{Stream, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

/// Follows a progress stream to its end, rendering it.
pub async fn follow(mut lines: impl Stream<Item = Result<Value>> + Unpin) -> Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let mut by_digest: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut spinner: Option<ProgressBar> = None;
    let mut last_status = String::new();
    let style = ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    while let Some(line) = lines.next().await {
        let line = line?;
        let status = line
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // A transfer's bar is keyed by its blob; a quantization's (no digest) by its status line.
        let digest = line
            .get("digest")
            .and_then(Value::as_str)
            .map_or_else(|| status.clone(), str::to_string);
        let total = line.get("total").and_then(Value::as_u64);
        let completed = line.get("completed").and_then(Value::as_u64).unwrap_or(0);
        if !terminal {
            if status != last_status {
                eprintln!("{status}");
                last_status = status;
            }
            continue;
        }
        match total {
            Some(total) if total > 0 => {
                if let Some(spinner) = spinner.take() {
                    spinner.finish();
                }
                let bar = by_digest.entry(digest).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(total));
                    bar.set_style(style.clone());
                    bar.set_message(status.clone());
                    bar
                });
                bar.set_position(completed);
            }
            _ => {
                if status != last_status {
                    if let Some(spinner) = spinner.take() {
                        spinner.finish();
                    }
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_message(status.clone());
                    spinner = Some(bar);
                    last_status = status;
                }
            }
        }
    }
    for bar in by_digest.values() {
        bar.finish();
    }
    if let Some(spinner) = spinner {
        spinner.finish();
    }
    Ok(())
}
