//! The chaos suite (issue 8): many seeds × many jobs with every fault class
//! at once — GitHub 5xx and rate limits, EC2 throttling and 5xx, capacity
//! errors, SSM errors, lost / duplicated / delayed / reordered webhooks,
//! slow boots, instances whose runner never registers, instances whose own
//! delete of their SSM parameter fails, controller restarts —
//! then the faults heal, and at the end of every run every invariant must
//! hold: each job ran exactly once, nothing is left (instances, runners,
//! SSM parameters), no launch call went out unrecorded, another fleet's
//! instance was never touched, and the instance time wasted per job stays
//! under [`waste_bound`].
//!
//! The default size fits CI (a debug build on 2 cores, about a minute);
//! the soak is the same test with more seeds and jobs:
//!
//! ```text
//! RUNFLEET_CHAOS_SEEDS=200 RUNFLEET_CHAOS_JOBS=5000 \
//!   cargo test --release -p runfleet-sim --test chaos -- --nocapture
//! ```
//!
//! Knobs (environment): `RUNFLEET_CHAOS_SEEDS` (seeds, default 12),
//! `RUNFLEET_CHAOS_JOBS` (jobs per seed, default 600),
//! `RUNFLEET_CHAOS_FAULTS` (fault knob, default 0.3),
//! `RUNFLEET_CHAOS_FIRST_SEED` (default 1), `RUNFLEET_CHAOS_THREADS`
//! (default: the machine's cores). A failing seed prints the `runfleet demo`
//! line that replays it (the demo runs the same `SimOptions`).
//! `docs/chaos.md` has the measured figures.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use runfleet_sim::world::FaultCounts;
use runfleet_sim::{SimOptions, Summary, demo_config, run};

/// Instance-seconds alive without running a job, per job, that a run at
/// fault knob `faults` may waste at most (each seed on its own):
/// 45 s + 40 s × `faults`.
///
/// Why: even a perfect run wastes the launch latency (1–4 s), the boot
/// (15–35 s), the runner start (2–5 s) and the power-off (3 s + 5 s to
/// terminated) of every instance: measured without faults, 37 s per job.
/// Faults add to it: an instance whose runner never registers (5 % × the
/// knob of launches) lives until `boot_timeout` (5 min) plus a reconcile
/// interval, slow boots take four times as long, a replacement repeats the
/// whole boot. Measured (debug build, `docs/chaos.md`): at 0.3, 12 × 600
/// jobs, mean 38.2 s, worst seed 40.3 s (bound 57 s); at 0.8, 6 × 400
/// jobs, mean 48.1 s, worst seed 53.6 s (bound 77 s). The fault-driven
/// part of the worst seed is about 21 s per unit of the knob; the slope
/// allows twice that, the intercept 8 s over the fault-free floor. It
/// still fails a controller that keeps one instance in twelve alive for an
/// extra boot timeout (300 s / 12 = 25 s per job more).
fn waste_bound(faults: f64) -> f64 {
    45.0 + 40.0 * faults
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn add(total: &mut FaultCounts, f: &FaultCounts) {
    total.github_5xx += f.github_5xx;
    total.github_rate_limited += f.github_rate_limited;
    total.ec2_throttled += f.ec2_throttled;
    total.ec2_5xx += f.ec2_5xx;
    total.capacity_errors += f.capacity_errors;
    total.ssm_errors += f.ssm_errors;
    total.webhooks_lost += f.webhooks_lost;
    total.webhooks_duplicated += f.webhooks_duplicated;
    total.webhooks_delayed += f.webhooks_delayed;
    total.slow_boots += f.slow_boots;
    total.broken_instances += f.broken_instances;
    total.controller_restarts += f.controller_restarts;
    total.spot_interruptions += f.spot_interruptions;
    total.self_delete_failures += f.self_delete_failures;
}

/// Every fault class by name, with the driver's reordered webhooks.
fn classes(f: &FaultCounts, reordered: u64) -> Vec<(&'static str, u64)> {
    vec![
        ("github 5xx", f.github_5xx),
        ("github rate limited", f.github_rate_limited),
        ("ec2 throttled", f.ec2_throttled),
        ("ec2 5xx", f.ec2_5xx),
        ("capacity errors", f.capacity_errors),
        ("ssm errors", f.ssm_errors),
        ("webhooks lost", f.webhooks_lost),
        ("webhooks duplicated", f.webhooks_duplicated),
        ("webhooks delayed", f.webhooks_delayed),
        ("webhooks reordered", reordered),
        ("slow boots", f.slow_boots),
        ("runner never registers", f.broken_instances),
        ("controller restarts", f.controller_restarts),
        ("spot interruptions", f.spot_interruptions),
        ("param self-delete failed", f.self_delete_failures),
    ]
}

fn wasted_per_job(s: &Summary) -> f64 {
    s.wasted_instance_seconds as f64 / s.jobs.max(1) as f64
}

/// What is wrong with one run, in words (empty when it is sound).
fn judge(s: &Summary) -> Vec<String> {
    let mut f = s.failures();
    let w = wasted_per_job(s);
    let bound = waste_bound(s.faults);
    if w > bound {
        f.push(format!(
            "{w:.1} wasted instance-seconds per job (bound {bound:.0})"
        ));
    }
    f
}

fn simulate(seed: u64, jobs: usize, faults: f64) -> Summary {
    // Exactly what `runfleet demo --seed S --jobs N --faults P` runs, so the
    // reproduction line replays the same run.
    let opts = SimOptions::demo(jobs, seed, faults);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(run(&opts, demo_config(), &mut |_| {}))
        .unwrap_or_else(|e| panic!("seed {seed}: the simulation could not run: {e}"))
}

#[test]
fn every_fault_class_at_once_then_heal_and_every_invariant_holds() {
    let seeds: u64 = env_num("RUNFLEET_CHAOS_SEEDS", 12);
    let jobs: usize = env_num("RUNFLEET_CHAOS_JOBS", 600);
    let faults: f64 = env_num("RUNFLEET_CHAOS_FAULTS", 0.3);
    let first: u64 = env_num("RUNFLEET_CHAOS_FIRST_SEED", 1);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: usize = env_num("RUNFLEET_CHAOS_THREADS", cores).clamp(1, seeds.max(1) as usize);
    let started = Instant::now();

    let next = AtomicU64::new(first);
    let results: Mutex<Vec<Summary>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= first + seeds {
                        return;
                    }
                    let s = simulate(seed, jobs, faults);
                    let bad = judge(&s);
                    if !bad.is_empty() {
                        // One line per failing seed, printed as soon as it is known.
                        eprintln!(
                            "chaos: seed {seed} FAILED: {}; reproduce: cargo run -p runfleet -- demo --jobs {jobs} --seed {seed} --faults {faults}",
                            bad.join("; ")
                        );
                    }
                    results.lock().unwrap().push(s);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|s| s.seed);
    assert_eq!(results.len() as u64, seeds);

    let mut total = FaultCounts::default();
    let mut reordered = 0;
    let (mut lost, mut dup, mut inst, mut runners, mut params) = (0, 0, 0, 0, 0);
    let (mut incomplete, mut orphans, mut foreign) = (0, 0, 0);
    let (mut wasted, mut busy, mut launched) = (0u64, 0u64, 0usize);
    let mut worst = (0.0f64, 0u64);
    let mut failing = Vec::new();
    for s in &results {
        add(&mut total, &s.faults_injected);
        reordered += s.webhooks_reordered;
        lost += s.jobs_lost;
        dup += s.duplicate_runs;
        inst += s.instances_left;
        runners += s.runners_left;
        params += s.parameters_left;
        incomplete += s.jobs - s.completed;
        orphans += s.orphans;
        foreign += s.foreign_touched + u64::from(!s.foreign_alive);
        wasted += s.wasted_instance_seconds;
        busy += s.busy_instance_seconds;
        launched += s.instances_launched;
        let w = wasted_per_job(s);
        if w > worst.0 {
            worst = (w, s.seed);
        }
        let bad = judge(s);
        if !bad.is_empty() {
            failing.push(format!(
                "seed {}: {}\n  reproduce: cargo run -p runfleet -- demo --jobs {} --seed {} --faults {}",
                s.seed,
                bad.join("; "),
                s.jobs,
                s.seed,
                s.faults
            ));
        }
    }
    let all_jobs = seeds as usize * jobs;
    println!();
    println!(
        "chaos: {seeds} seeds ({first}..={}) × {jobs} jobs = {all_jobs} jobs at faults {faults}, {threads} threads, {:.1} s",
        first + seeds - 1,
        started.elapsed().as_secs_f64()
    );
    println!("  {:<34} {:>12}", "faults injected", "count");
    for (name, n) in classes(&total, reordered) {
        println!("  {name:<34} {n:>12}");
    }
    println!("  {:<34} {:>12}", "jobs not completed", incomplete);
    println!("  {:<34} {:>12}", "jobs lost (runner died mid-job)", lost);
    println!("  {:<34} {:>12}", "duplicate runs", dup);
    println!("  {:<34} {:>12}", "leaked instances", inst);
    println!("  {:<34} {:>12}", "leaked runners", runners);
    println!("  {:<34} {:>12}", "leaked SSM parameters", params);
    println!("  {:<34} {:>12}", "unrecorded launch calls", orphans);
    println!("  {:<34} {:>12}", "other fleet's instance touched", foreign);
    println!("  {:<34} {:>12}", "instances launched", launched);
    println!(
        "  {:<34} {:>12.2}",
        "instances per job",
        launched as f64 / all_jobs.max(1) as f64
    );
    println!("  {:<34} {:>12}", "busy instance-seconds", busy);
    println!("  {:<34} {:>12}", "wasted instance-seconds", wasted);
    println!(
        "  {:<34} {:>12.1}",
        "wasted s per job (mean)",
        wasted as f64 / all_jobs.max(1) as f64
    );
    println!(
        "  {:<34} {:>12}",
        "wasted s per job (worst seed)",
        format!("{:.1} (seed {})", worst.0, worst.1)
    );
    println!("  {:<34} {:>12.0}", "bound, per seed", waste_bound(faults));

    assert!(
        failing.is_empty(),
        "{} of {seeds} seeds broke an invariant:\n{}",
        failing.len(),
        failing.join("\n")
    );
    // The suite proves something only if every class of fault fired.
    for (name, n) in classes(&total, reordered) {
        assert!(
            n > 0,
            "no {name} were injected: raise the seeds or the faults"
        );
    }
}

#[test]
fn the_waste_bound_fails_a_wasteful_run() {
    let mut s = simulate(3, 20, 0.0);
    assert!(judge(&s).is_empty(), "{:?}", judge(&s));
    s.wasted_instance_seconds = (waste_bound(0.0) as u64 + 1) * 20;
    let f = judge(&s);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("wasted instance-seconds per job"), "{f:?}");
}
