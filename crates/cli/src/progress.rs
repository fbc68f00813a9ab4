//! What `launch` and `start` show while they work and print when done:
//! a spinner on a terminal or one plain line per change (CI logs) on
//! stderr, then the run's labels, instance and runner as one JSON object
//! on stdout and, inside GitHub Actions, as step outputs in `GITHUB_OUTPUT`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Progress on stderr: a spinner with the elapsed time and the state on a
/// terminal; otherwise one line each time the state or its detail changes.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last: Option<String>,
}

impl Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            last: None,
        }
    }

    /// Shows `state` (launching, booting, online, ...) and a detail.
    pub fn set(&mut self, state: &str, detail: &str) {
        let msg = if detail.is_empty() {
            state.to_string()
        } else {
            format!("{state}: {detail}")
        };
        if self.last.as_deref() == Some(msg.as_str()) {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(msg.clone()),
            None => eprintln!("runfleet: [{:>4}s] {msg}", self.started.elapsed().as_secs()),
        }
        self.last = Some(msg);
    }

    /// Removes the spinner (plain lines stay as they are).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The answer of `launch` and `start`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutput {
    /// What the job's `runs-on` takes: `["self-hosted", "<unique label>"]`.
    pub labels: Vec<String>,
    pub instance_id: Option<String>,
    pub runner_name: Option<String>,
}

impl RunOutput {
    /// Prints the JSON object on stdout and, when `GITHUB_OUTPUT` is set,
    /// appends `labels`, `instance-id` and `runner-name` to that file.
    pub fn emit(&self) -> Result<()> {
        let json = serde_json::to_string(self)?;
        println!("{json}");
        if let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
            let lines = format!(
                "labels={}\ninstance-id={}\nrunner-name={}\n",
                serde_json::to_string(&self.labels)?,
                self.instance_id.as_deref().unwrap_or(""),
                self.runner_name.as_deref().unwrap_or("")
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(lines.as_bytes()))
                .with_context(|| {
                    format!(
                        "cannot append to GITHUB_OUTPUT ({})",
                        path.to_string_lossy()
                    )
                })?;
        }
        Ok(())
    }
}

/// Random lowercase hex digits (`n` of them, at most 16).
pub fn random_hex(n: usize) -> String {
    let v: u64 = rand::random();
    format!("{v:016x}")[..n.min(16)].to_string()
}
