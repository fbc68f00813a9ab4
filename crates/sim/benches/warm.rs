//! Warm pick-up: queued -> job running with `warm = 0` and `warm = N` in the
//! simulator's model (jobs about a minute apart, so a warm pool refills
//! between them). Prints a table. The simulated times include the modelled
//! runner start (2–5 s from a JIT config to online) and the driver's step
//! granularity (`tick`, 500 ms); runfleet's own share of a warm pick-up is
//! what is left after the modelled runner start.
//!
//! `cargo bench -p runfleet-sim --bench warm [-- JOBS]` (default 60).

use runfleet_core::config::{Config, MapSecrets, parse};
use runfleet_sim::driver::DEMO_CONFIG;
use runfleet_sim::world::WorldConfig;
use runfleet_sim::{SimOptions, Summary, run};

fn config(warm: u32) -> Config {
    let text = DEMO_CONFIG.replace("max_runners = ", &format!("warm = {warm}\nmax_runners = "));
    let secrets = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "t")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "s");
    parse(&text, &secrets).expect("valid config")
}

fn simulate(warm: u32, jobs: usize) -> Summary {
    let opts = SimOptions {
        jobs,
        seed: 3,
        arrival_window: jobs as u64 * 60 * 1000,
        ..SimOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s = rt
        .block_on(run(&opts, config(warm), &mut |_| {}))
        .expect("simulation runs");
    assert!(s.ok(), "invariants broken: {:?}", s.failures());
    s
}

fn main() {
    let jobs: usize = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let w = WorldConfig::default();
    let start_ms = (w.runner_start.0 + w.runner_start.1) / 2;
    println!(
        "| {jobs} jobs a minute apart, seed 3 | queued -> running p50 | p90 | p99 | max | instances | wasted instance-s per job |"
    );
    println!("|---|---|---|---|---|---|---|");
    for warm in [0u32, 1, 2] {
        let s = simulate(warm, jobs);
        let q = &s.queue_to_start_ms;
        println!(
            "| warm = {warm} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {} | {:.0} |",
            q.p50 as f64 / 1000.0,
            q.p90 as f64 / 1000.0,
            q.p99 as f64 / 1000.0,
            q.max as f64 / 1000.0,
            s.instances_launched,
            s.wasted_instance_seconds as f64 / jobs as f64
        );
    }
    println!(
        "(modelled runner start, JIT config -> online: {:.1}-{:.1} s, mean {:.1} s; boot from launch: {:.0}-{:.0} s)",
        w.runner_start.0 as f64 / 1000.0,
        w.runner_start.1 as f64 / 1000.0,
        start_ms as f64 / 1000.0,
        (w.launch_latency.0 + w.boot_time.0) as f64 / 1000.0,
        (w.launch_latency.1 + w.boot_time.1) as f64 / 1000.0,
    );
}
