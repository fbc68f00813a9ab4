//! Runs the real engine against the simulated world on the virtual clock,
//! and judges the result.

use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runfleet_core::config::{Config, MapSecrets, parse};
use runfleet_core::model::{JobStatus, Millis};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{Cloud, GitHub, Store};
use runfleet_engine::{Engine, EngineOptions};
use serde::Serialize;

use crate::adapters::{SimCloud, SimGitHub};
use crate::world::{CallCounts, FaultCounts, World, WorldConfig};

/// The configuration `runfleet demo` runs with: three pools, three repositories.
pub const DEMO_CONFIG: &str = r#"
fleet = "demo"

[server]
reconcile_interval = "30s"
completed_grace = "60s"
boot_timeout = "5m"

[github]
token = "env:RUNFLEET_DEMO_TOKEN"
webhook_secret = "env:RUNFLEET_DEMO_WEBHOOK_SECRET"
repos = ["acme/app", "acme/lib", "acme/*"]

[aws]
region = "eu-west-2"

[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "lt-0123456789abcdef0"
instance_types = ["m7i.large", "m6i.large", "m5.large"]
subnets = ["subnet-a", "subnet-b"]
market = "spot-then-on-demand"
max_runners = 60

[[pool]]
name = "linux-arm64"
labels = ["self-hosted", "linux", "arm64"]
launch_template = "lt-0123456789abcdef1"
instance_types = ["m7g.large", "m6g.large"]
subnets = ["subnet-a", "subnet-b"]
market = "spot-then-on-demand"
arch = "arm64"
max_runners = 30

[[pool]]
name = "windows"
labels = ["self-hosted", "windows", "x64"]
launch_template = "lt-0123456789abcdef2"
instance_types = ["m6i.xlarge", "m5.xlarge"]
market = "on-demand"
os = "windows"
max_runners = 10
runner_version = "2.330.0"
"#;

/// The demo config, parsed; the simulator's GitHub needs no real credentials.
pub fn demo_config() -> Config {
    let secrets = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "simulated-token")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "simulated-secret");
    parse(DEMO_CONFIG, &secrets).expect("the embedded demo config is valid")
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub jobs: usize,
    pub seed: u64,
    pub faults: f64,
    /// Jobs arrive spread over this long.
    pub arrival_window: Millis,
    /// The engine steps this often (and whenever webhooks arrive).
    pub tick: Millis,
    /// Give up (and fail) after this much virtual time.
    pub time_limit: Millis,
    /// Probability per step that the controller is killed and restarted
    /// from its store, scaled by `faults`.
    pub restart_weight: f64,
    /// Probability per webhook delivery, scaled by `faults`, that the
    /// driver holds it back for 0.5–15 s so later deliveries overtake it
    /// (deliveries due in the same tick are also shuffled while faults are
    /// on). Drawn from the driver's own generator, so the world's run is
    /// the same with or without it; stops at the heal time like every fault.
    pub reorder_weight: f64,
    pub world: WorldConfig,
    /// Jobs to replay instead of `jobs` generated ones (`runfleet simulate`).
    pub trace: Option<Vec<TraceJob>>,
    /// Unix time (ms) the virtual clock starts at: what the planner sees
    /// as `now`, so warm schedules (`[[pool.warm_schedule]]`) are read
    /// against it. Arrivals, `time_limit`, a `world.heal_at` that is set,
    /// [`Progress::now`] and the summary's times all count from it. 0
    /// (the default) is 1970-01-01 00:00 UTC, a Thursday.
    pub start: Millis,
}

/// One job of a replayed trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceJob {
    /// Queued this long after the start of the run.
    pub at: Millis,
    pub labels: Vec<String>,
    /// How long it runs once a runner took it.
    pub duration: Millis,
    /// `owner/name`.
    pub repo: String,
}

/// The config with every pool's `warm` set to 0 and no `warm_schedule`:
/// what the driver restarts the controller with once every job is done, so
/// warm instances drain and the end-of-run invariants (nothing left) can be
/// judged.
pub fn without_warm(config: &Config) -> Config {
    let mut c = config.clone();
    for p in &mut c.pools {
        p.warm = 0;
        p.warm_schedule.clear();
    }
    c
}

/// Whether any pool of `config` ever keeps warm instances (its `warm` or
/// a `warm_schedule` entry is above 0).
pub fn ever_warm(config: &Config) -> bool {
    config
        .pools
        .iter()
        .any(|p| p.warm > 0 || p.warm_schedule.iter().any(|w| w.warm > 0))
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            jobs: 200,
            seed: 1,
            faults: 0.0,
            arrival_window: 60_000,
            tick: 500,
            time_limit: 12 * 60 * 60 * 1000,
            restart_weight: 0.01,
            reorder_weight: 0.2,
            world: WorldConfig::default(),
            trace: None,
            start: 0,
        }
    }
}

impl SimOptions {
    /// What `runfleet demo --jobs N --seed S --faults P` runs (and so what
    /// a failing chaos seed's reproduction line replays): every fault class
    /// at `faults`, spot interruptions included, and instances failing to
    /// delete their own JIT parameter (0.2 × `faults` of them).
    pub fn demo(jobs: usize, seed: u64, faults: f64) -> SimOptions {
        let mut o = SimOptions {
            jobs,
            seed,
            faults,
            ..SimOptions::default()
        };
        o.world.spot_interruption_weight = 1.0;
        // Instances whose own delete of their parameter fails: the
        // controller must find and delete the leftovers.
        o.world.self_delete_failure = (0.2 * faults).clamp(0.0, 1.0);
        o
    }
}

/// What is happening, for a live display.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Virtual time since the run started ([`SimOptions::start`]).
    pub now: Millis,
    pub jobs: usize,
    pub queued: usize,
    pub launching: usize,
    pub booting: usize,
    pub running: usize,
    pub done: usize,
    pub instances_alive: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut xs: Vec<u64>) -> Percentiles {
        if xs.is_empty() {
            return Percentiles {
                p50: 0,
                p90: 0,
                p99: 0,
                max: 0,
            };
        }
        xs.sort_unstable();
        let at = |q: f64| xs[(((xs.len() - 1) as f64) * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: *xs.last().expect("non-empty"),
        }
    }
}

/// The result of a run. `ok()` says whether every invariant held.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub faults: f64,
    pub jobs: usize,
    pub completed: usize,
    pub instances_launched: usize,
    pub instances_left: usize,
    pub runners_left: usize,
    pub parameters_left: usize,
    /// JIT parameters their instance deleted itself after reading them
    /// (not controller calls; the controller deletes only leftovers).
    pub params_deleted_by_instances: u64,
    pub orphans: u64,
    pub duplicate_runs: usize,
    /// Jobs whose last attempt lost its runner mid-run (a job lost to a
    /// spot interruption and re-run to completion is not lost).
    pub jobs_lost: usize,
    /// Jobs re-run after their spot instance was reclaimed under them.
    pub reruns: usize,
    pub foreign_touched: u64,
    pub foreign_alive: bool,
    pub untagged_launches: u64,
    pub queue_to_start_ms: Percentiles,
    pub wasted_instance_seconds: u64,
    pub busy_instance_seconds: u64,
    pub simulated_seconds: u64,
    /// Virtual time of the first and the last launch call that started an
    /// instance of this fleet (ms since the start), for burst measurements.
    pub launch_calls_ms: (Millis, Millis),
    pub timed_out: bool,
    pub calls: CallCounts,
    pub faults_injected: FaultCounts,
    /// Webhook deliveries the driver held back so that later ones overtook
    /// them (a fault class of the driver, next to the world's).
    pub webhooks_reordered: u64,
    pub terminations: std::collections::BTreeMap<String, u64>,
    /// Instance time of this fleet by instance type and market (what the
    /// run would be billed for).
    pub usage: Vec<Usage>,
    /// Jobs never launched for (no pool, repository not allowed, failed).
    pub jobs_unserved: usize,
}

/// Seconds of instance time of one instance type in one market.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub market: String,
    pub instances: u64,
    pub seconds: u64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// Each invariant that did not hold, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut check = |cond: bool, what: String| {
            if !cond {
                f.push(what);
            }
        };
        check(
            self.completed == self.jobs,
            format!("{} of {} jobs completed", self.completed, self.jobs),
        );
        check(
            self.instances_left == 0,
            format!("{} instances left running", self.instances_left),
        );
        check(
            self.runners_left == 0,
            format!("{} runners left registered", self.runners_left),
        );
        check(
            self.parameters_left == 0,
            format!("{} JIT parameters left in SSM", self.parameters_left),
        );
        check(
            self.orphans == 0,
            format!(
                "{} launch calls not recorded in the store first",
                self.orphans
            ),
        );
        check(
            self.duplicate_runs == 0,
            format!("{} jobs ran more than once", self.duplicate_runs),
        );
        check(
            self.jobs_lost == 0,
            format!("{} jobs lost their runner mid-run", self.jobs_lost),
        );
        check(
            self.foreign_touched == 0,
            format!(
                "{} termination requests for another fleet's instances",
                self.foreign_touched
            ),
        );
        check(
            self.foreign_alive,
            "another fleet's instance was terminated".to_string(),
        );
        check(
            self.untagged_launches == 0,
            format!(
                "{} launches without the fleet, pool and Name tags",
                self.untagged_launches
            ),
        );
        check(
            !self.timed_out,
            "the run did not settle within the time limit".to_string(),
        );
        f
    }
}

fn engine_opts() -> EngineOptions {
    EngineOptions::default()
}

/// Runs a whole simulation. `on_progress` is called after every step.
pub async fn run(
    opts: &SimOptions,
    config: Config,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, String> {
    run_wrapped(opts, config, &|g| g, &mut |_, _| {}, on_progress).await
}

/// [`run`] with the simulated GitHub passed through `wrap_github` before the
/// engine gets it, and `after_step` called with the engine after every
/// step: for tests that watch every GitHub call or render what the server
/// would show (the secrets test collects the JIT configs minted and checks
/// the metrics and status page with them).
pub async fn run_wrapped(
    opts: &SimOptions,
    config: Config,
    wrap_github: &dyn Fn(Arc<dyn GitHub>) -> Arc<dyn GitHub>,
    after_step: &mut dyn FnMut(&mut Engine, Millis),
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, String> {
    let config = Arc::new(config);
    let mut wcfg = opts.world.clone();
    wcfg.seed = opts.seed;
    wcfg.faults = opts.faults;
    wcfg.jit_poll_timeout = config.server.boot_timeout.as_millis() as Millis;
    let start = opts.start;
    if wcfg.heal_at == 0 {
        wcfg.heal_at = opts.arrival_window + 10 * 60 * 1000;
    }
    wcfg.heal_at += start;
    let world = Arc::new(Mutex::new(World::new(wcfg)));
    let store = Arc::new(MemStore::new());
    let foreign;
    let jobs = opts.trace.as_ref().map_or(opts.jobs, Vec::len);
    {
        let mut w = world.lock().unwrap();
        w.repos = vec!["acme/app".into(), "acme/lib".into(), "acme/infra".into()];
        for t in opts.trace.iter().flatten() {
            if !w.repos.contains(&t.repo) {
                w.repos.push(t.repo.clone());
            }
        }
        foreign = w.add_foreign_instance("other-fleet");
        let recorded_store = store.clone();
        w.recorded = Some(Box::new(move |id| recorded_store.has_launch(id)));
        let mixes: [(&[&str], u32); 4] = [
            (&["self-hosted", "linux", "x64"], 55),
            (&["self-hosted", "linux", "arm64"], 25),
            (&["self-hosted", "windows", "x64"], 10),
            (&["self-hosted", "linux"], 10),
        ];
        for (n, t) in opts.trace.iter().flatten().enumerate() {
            let id = 1_000_000 + n as u64;
            w.add_job(
                id,
                5_000 + n as u64,
                &t.repo,
                t.labels.clone(),
                start + t.at,
            );
            if let Some(j) = w.jobs.get_mut(&id) {
                j.duration = t.duration;
            }
        }
        let generated = if opts.trace.is_some() { 0 } else { opts.jobs };
        for n in 0..generated {
            let pick = w.rng.random_range(0..100);
            let mut acc = 0;
            let labels = mixes
                .iter()
                .find(|(_, p)| {
                    acc += p;
                    pick < acc
                })
                .map(|(l, _)| l.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            let repo = w.repos[n % 3].clone();
            let at = if opts.jobs <= 1 {
                0
            } else {
                opts.arrival_window * n as u64 / opts.jobs as u64
            };
            w.add_job(
                1_000_000 + n as u64,
                5_000 + (n / 4) as u64,
                &repo,
                labels,
                start + at,
            );
        }
    }
    let github: Arc<dyn GitHub> = wrap_github(Arc::new(SimGitHub(world.clone())));
    let cloud: Arc<dyn Cloud> = Arc::new(SimCloud(world.clone()));
    let dyn_store: Arc<dyn Store> = store.clone();
    let drained = Arc::new(without_warm(&config));
    let warm_any = ever_warm(&config);
    let mut draining = false;
    let new_engine = |now, config: &Arc<Config>| {
        Engine::new(
            config.clone(),
            github.clone(),
            cloud.clone(),
            dyn_store.clone(),
            engine_opts(),
            now,
        )
    };
    let mut engine = new_engine(start, &config)
        .await
        .map_err(|e| e.to_string())?;
    let reconcile_every = config.server.reconcile_interval.as_millis() as Millis;
    let mut next_reconcile = start;
    let mut now: Millis = start;
    let mut terminations = std::collections::BTreeMap::new();
    let timed_out;
    let heal_at = world.lock().unwrap().cfg.heal_at;
    let mut reorder_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x005e_ed0f_de11_7e71);
    let reorder_p = (opts.faults * opts.reorder_weight).clamp(0.0, 1.0);
    let mut held: Vec<(Millis, String, runfleet_core::model::JobEvent)> = Vec::new();
    let mut webhooks_reordered = 0u64;
    loop {
        let mut deliveries = {
            let mut w = world.lock().unwrap();
            w.advance_to(now);
            w.take_due_webhooks()
        };
        if now < heal_at && reorder_p > 0.0 {
            deliveries.shuffle(&mut reorder_rng);
            let mut kept = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                if reorder_rng.random_bool(reorder_p) {
                    webhooks_reordered += 1;
                    let at = now + reorder_rng.random_range(500..15_000);
                    held.push((at, d.0, d.1));
                } else {
                    kept.push(d);
                }
            }
            deliveries = kept;
        }
        held.retain(|(at, id, ev)| {
            if *at <= now {
                deliveries.push((id.clone(), ev.clone()));
                false
            } else {
                true
            }
        });
        for (id, ev) in &deliveries {
            Engine::intake(&*dyn_store, id, &ev.clone().into())
                .await
                .map_err(|e| e.to_string())?;
        }
        if now >= next_reconcile {
            engine.reconcile(now).await.map_err(|e| e.to_string())?;
            next_reconcile = now + reconcile_every;
        }
        engine.step(now).await.map_err(|e| e.to_string())?;
        after_step(&mut engine, now);
        let restart = { world.lock().unwrap().fault(opts.restart_weight) };
        if restart {
            for (k, v) in &engine.stats().terminations {
                *terminations.entry(k.clone()).or_insert(0) += v;
            }
            world.lock().unwrap().faults.controller_restarts += 1;
            let cfg = if draining { &drained } else { &config };
            engine = new_engine(now, cfg).await.map_err(|e| e.to_string())?;
            // A restarted controller reconciles at once.
            next_reconcile = now;
        }
        let (progress, settled) = {
            let w = world.lock().unwrap();
            let by = w.jobs_by_status();
            let alive = w.alive_instances(&config.fleet);
            let booting = w
                .instances
                .values()
                .filter(|i| {
                    i.tag("runfleet:fleet") == Some(config.fleet.as_str()) && !i.state.is_gone()
                })
                .filter(|i| {
                    i.runner
                        .is_none_or(|r| w.runners.get(&r).is_none_or(|r| !r.online))
                })
                .count();
            let launching = engine
                .observed()
                .launches
                .values()
                .filter(|l| l.state == runfleet_core::model::LaunchState::Requested)
                .count();
            let p = Progress {
                now: now - start,
                jobs,
                queued: by.get("queued").copied().unwrap_or(0)
                    + by.get("pending").copied().unwrap_or(0),
                launching,
                booting,
                running: by.get("running").copied().unwrap_or(0),
                done: by.get("done").copied().unwrap_or(0),
                instances_alive: alive,
            };
            // Every job, re-runs included, is done, and no job lost to a spot
            // interruption still waits for its re-run.
            let awaiting_rerun = w.jobs.values().any(|j| {
                j.interrupted
                    && j.rerun_as.is_none()
                    && runfleet_core::labels::pool_for(&config, &j.labels)
                        .is_some_and(|p| p.rerun_interrupted)
            });
            let settled = p.done == w.jobs.len()
                && !awaiting_rerun
                && alive == 0
                && w.outbox.is_empty()
                && held.is_empty()
                && w.runners_named("runfleet-") == 0
                && w.params_under(&config.fleet) == 0;
            (p, settled)
        };
        on_progress(&progress);
        if progress.done == jobs && warm_any && !draining {
            // Every job ran: the operator lowers `warm` to 0 and restarts,
            // so the warm instances drain and nothing is left to judge.
            draining = true;
            for (k, v) in &engine.stats().terminations {
                *terminations.entry(k.clone()).or_insert(0) += v;
            }
            engine = new_engine(now, &drained).await.map_err(|e| e.to_string())?;
            next_reconcile = now;
        }
        if settled {
            timed_out = false;
            break;
        }
        if now - start >= opts.time_limit {
            timed_out = true;
            break;
        }
        now += opts.tick;
    }
    for (k, v) in &engine.stats().terminations {
        *terminations.entry(k.clone()).or_insert(0) += v;
    }
    let w = world.lock().unwrap();
    let ours: Vec<_> = w
        .instances
        .values()
        .filter(|i| i.tag("runfleet:fleet") == Some(config.fleet.as_str()))
        .collect();
    let busy_ms: u64 = ours.iter().map(|i| i.busy_ms).sum();
    let alive_ms: u64 = ours
        .iter()
        .map(|i| i.gone_at.unwrap_or(w.now).saturating_sub(i.launched_at))
        .sum();
    let q2s: Vec<u64> = w
        .jobs
        .values()
        .filter_map(|j| Some(j.started_at?.saturating_sub(j.queued_at?)))
        .collect();
    let mut usage: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    for i in &ours {
        let market = match i.market {
            runfleet_core::config::CapacityMarket::Spot => "spot",
            runfleet_core::config::CapacityMarket::OnDemand => "on-demand",
        };
        let e = usage
            .entry((i.instance_type.clone(), market.to_string()))
            .or_default();
        e.0 += 1;
        e.1 += i.gone_at.unwrap_or(w.now).saturating_sub(i.launched_at);
    }
    let usage = usage
        .into_iter()
        .map(|((instance_type, market), (instances, ms))| Usage {
            instance_type,
            market,
            instances,
            seconds: ms / 1000,
        })
        .collect();
    let jobs_unserved = engine
        .observed()
        .jobs
        .values()
        .filter(|j| {
            matches!(
                j.state,
                runfleet_core::model::JobState::Ignored | runfleet_core::model::JobState::Failed
            )
        })
        .count();
    Ok(Summary {
        seed: opts.seed,
        faults: opts.faults,
        jobs,
        completed: w
            .jobs
            .values()
            .filter(|j| j.rerun_of.is_none())
            .filter_map(|j| w.final_attempt(j.id))
            .filter(|j| j.status == JobStatus::Completed && !j.lost)
            .count(),
        instances_launched: ours.len(),
        instances_left: ours.iter().filter(|i| !i.state.is_gone()).count(),
        runners_left: w.runners_named("runfleet-"),
        parameters_left: w.params_under(&config.fleet),
        params_deleted_by_instances: w.params_deleted_by_instances,
        orphans: w.violations.unrecorded_launches,
        duplicate_runs: w.jobs.values().filter(|j| j.runs > 1).count(),
        jobs_lost: w
            .jobs
            .values()
            .filter(|j| j.rerun_of.is_none())
            .filter_map(|j| w.final_attempt(j.id))
            .filter(|j| j.lost)
            .count(),
        reruns: w.reruns.values().map(|&n| n as usize).sum(),
        foreign_touched: w.violations.foreign_touched,
        foreign_alive: w
            .instances
            .get(&foreign)
            .is_some_and(|i| !i.state.is_gone()),
        untagged_launches: w.violations.untagged_launches,
        queue_to_start_ms: Percentiles::of(q2s),
        wasted_instance_seconds: alive_ms.saturating_sub(busy_ms) / 1000,
        busy_instance_seconds: busy_ms / 1000,
        simulated_seconds: w.now.saturating_sub(start) / 1000,
        launch_calls_ms: (
            ours.iter()
                .map(|i| i.launched_at - start)
                .min()
                .unwrap_or(0),
            ours.iter()
                .map(|i| i.launched_at - start)
                .max()
                .unwrap_or(0),
        ),
        timed_out,
        calls: w.calls.clone(),
        faults_injected: w.faults.clone(),
        webhooks_reordered,
        terminations,
        usage,
        jobs_unserved,
    })
}
