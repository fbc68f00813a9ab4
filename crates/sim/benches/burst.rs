//! Burst: N jobs queued at once in the simulator, with EC2's token buckets
//! modelled (launch requests 5 burst, 2 per second refill; instances 1,000
//! burst, 2 per second; the world rejects what a bucket does not allow).
//! Prints a table: the time until every launch call is made, as a ratio of
//! the theoretical minimum the buckets allow with launch batching, and the
//! API calls per job, GitHub and AWS separately.
//!
//! `cargo bench -p runfleet-sim --bench burst [-- JOBS]` (default 2000).

use std::time::Instant;

use runfleet_sim::world::WorldConfig;
use runfleet_sim::{SimOptions, demo_config, run};

fn main() {
    let jobs: usize = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut cfg = demo_config();
    // Room for every job at once: this measures the launch path, not the cap.
    for p in &mut cfg.pools {
        p.max_runners = jobs as u32;
    }
    let world = WorldConfig::default();
    let (burst, refill) = world.launch_bucket;
    let world_instances = world.instance_bucket;
    let batch_max = f64::from(cfg.server.launch_batch_max);
    let opts = SimOptions {
        jobs,
        seed: 1,
        arrival_window: 0,
        world,
        ..SimOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let wall = Instant::now();
    let s = rt
        .block_on(run(&opts, cfg, &mut |_| {}))
        .expect("the simulation runs");
    let wall = wall.elapsed();
    assert!(s.ok(), "invariants failed: {:?}", s.failures());

    // The least time the buckets allow for `n` instances launched at most
    // `per_call` per call: the request bucket for the calls, the instance
    // bucket for the instances, whichever is slower.
    let (ib, ir) = world_instances;
    let floor = |n: f64, per_call: f64| {
        let calls = (n / per_call).ceil();
        let by_calls = (calls - f64::from(burst)).max(0.0) / refill;
        let by_instances = (n - f64::from(ib)).max(0.0) / ir;
        by_calls.max(by_instances)
    };
    let floor_jobs_s = floor(jobs as f64, batch_max);
    let floor_launched_s = floor(s.instances_launched as f64, batch_max);
    let floor_single_s = floor(jobs as f64, 1.0);
    let (first, last) = s.launch_calls_ms;
    let span_s = last.saturating_sub(first) as f64 / 1000.0;
    let ratio = |floor_s: f64| {
        if span_s > 0.0 {
            100.0 * floor_s / span_s
        } else {
            100.0
        }
    };
    let by = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / jobs as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| burst of {jobs} jobs (simulated EC2 buckets: launch requests {burst} burst, {refill}/s; instances {ib} burst, {ir}/s; at most {batch_max} instances per call) | value |"
    );
    println!("|---|---|");
    println!("| first to last launch call (virtual time) | {span_s:.1} s |");
    println!("| theoretical minimum for {jobs} instances | {floor_jobs_s:.1} s |");
    println!(
        "| ratio of the limit (minimum / measured) | {:.1} % |",
        ratio(floor_jobs_s)
    );
    println!(
        "| minimum for the {} instances launched | {floor_launched_s:.1} s ({:.1} % of it) |",
        s.instances_launched,
        ratio(floor_launched_s)
    );
    println!("| minimum with one instance per call (no batching) | {floor_single_s:.1} s |");
    println!(
        "| launch calls | {} ({:.1} instances per call) |",
        s.calls.aws_by_op.get("CreateFleet").copied().unwrap_or(0),
        s.instances_launched as f64
            / s.calls
                .aws_by_op
                .get("CreateFleet")
                .copied()
                .unwrap_or(1)
                .max(1) as f64
    );
    println!("| instances launched | {} |", s.instances_launched);
    println!(
        "| GitHub calls per job | {:.2} ({}) |",
        s.calls.github as f64 / jobs as f64,
        by(&s.calls.github_by_op)
    );
    println!(
        "| AWS calls per job | {:.2} |",
        s.calls.aws as f64 / jobs as f64
    );
    println!(
        "| AWS mutating calls per job | {:.2} |",
        s.calls.aws_mutating as f64 / jobs as f64
    );
    println!(
        "| AWS calls by operation, per job | {} |",
        by(&s.calls.aws_by_op)
    );
    println!(
        "| JIT parameters deleted by their own instance, per job (not controller calls) | {:.2} |",
        s.params_deleted_by_instances as f64 / jobs as f64
    );
    println!(
        "| EC2 throttling errors | {} |",
        s.faults_injected.ec2_throttled
    );
    println!("| terminations by reason | {:?} |", s.terminations);
    println!(
        "| queued -> started p50 / p99 (virtual) | {:.1} s / {:.1} s |",
        s.queue_to_start_ms.p50 as f64 / 1000.0,
        s.queue_to_start_ms.p99 as f64 / 1000.0
    );
    println!(
        "| wall time of the simulation | {:.2} s |",
        wall.as_secs_f64()
    );
}
