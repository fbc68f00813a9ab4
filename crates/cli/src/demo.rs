//! `runfleet demo`: the engine against the simulator, with a live view.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use runfleet_sim::{Progress, SimOptions, Summary, demo_config};

pub fn run(jobs: usize, seed: u64, faults: f64, json: bool) -> Result<ExitCode> {
    if !(0.0..=1.0).contains(&faults) {
        bail!("--faults must be between 0 and 1, got {faults}");
    }
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let opts = SimOptions::demo(jobs, seed, faults);
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::new(jobs as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30.green/white} {pos}/{len} done  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last_line: u64 = 0;
    let mut on_progress = |p: &Progress| {
        if let Some(bar) = &bar {
            if last_draw.elapsed() >= Duration::from_millis(50) {
                bar.set_position(p.done as u64);
                bar.set_message(line(p));
                last_draw = Instant::now();
            }
        } else if !json && p.now >= last_line + 60_000 {
            // Plain progress lines for logs, once per simulated minute.
            eprintln!("{}  done {}/{}", line(p), p.done, p.jobs);
            last_line = p.now;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = rt
        .block_on(runfleet_sim::run(&opts, demo_config(), &mut on_progress))
        .map_err(|e| anyhow!("simulation failed: {e}"))?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let wall = started.elapsed();
    if json {
        let mut v = serde_json::to_value(&summary)?;
        v["ok"] = serde_json::Value::Bool(summary.ok());
        v["wall_ms"] = serde_json::Value::from(wall.as_millis() as u64);
        println!("{v}");
    } else {
        print_summary(&summary, wall);
    }
    if summary.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in summary.failures() {
            eprintln!("runfleet demo: invariant broken: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn line(p: &Progress) -> String {
    format!(
        "t={:>4}s  queued {:>4}  launching {:>3}  booting {:>3}  running {:>3}  instances {:>3}",
        p.now / 1000,
        p.queued,
        p.launching,
        p.booting,
        p.running,
        p.instances_alive
    )
}

fn print_summary(s: &Summary, wall: Duration) {
    println!(
        "runfleet demo: {} jobs, seed {}, faults {}",
        s.jobs, s.seed, s.faults
    );
    println!("  completed            {}/{}", s.completed, s.jobs);
    println!("  instances launched   {}", s.instances_launched);
    println!("  instances left       {}", s.instances_left);
    println!("  runners left         {}", s.runners_left);
    println!("  parameters left      {}", s.parameters_left);
    println!("  duplicate runs       {}", s.duplicate_runs);
    println!(
        "  queued -> started    p50 {:.1}s  p99 {:.1}s  max {:.1}s",
        s.queue_to_start_ms.p50 as f64 / 1000.0,
        s.queue_to_start_ms.p99 as f64 / 1000.0,
        s.queue_to_start_ms.max as f64 / 1000.0
    );
    println!(
        "  instance-seconds     {} busy, {} idle",
        s.busy_instance_seconds, s.wasted_instance_seconds
    );
    println!(
        "  API calls            GitHub {}, AWS {} ({} mutating)",
        s.calls.github, s.calls.aws, s.calls.aws_mutating
    );
    println!(
        "  simulated time       {}s in {:.2}s wall",
        s.simulated_seconds,
        wall.as_secs_f64()
    );
    println!(
        "  result               {}",
        if s.ok() {
            "ok: every invariant held"
        } else {
            "FAILED"
        }
    );
}
