//! Warm pools through the real engine in the simulated world: warm
//! instances boot and wait unregistered, a job takes one without a launch
//! and starts within seconds, a replacement is launched within
//! `max_runners`, a waiting one is retired and replaced before its
//! `max_lifetime`, lowering `warm` terminates the extras, the warm count
//! follows a `[[pool.warm_schedule]]` window across midnight on the virtual
//! clock, and a whole run with warm pools (scheduled or not) keeps every
//! end-of-run invariant.

use std::sync::{Arc, Mutex};

use runfleet_core::config::{Config, MapSecrets, parse};
use runfleet_core::model::{JobStatus, Millis};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::driver::DEMO_CONFIG;
use runfleet_sim::world::{World, WorldConfig};
use runfleet_sim::{SimOptions, Summary, demo_config, run};

/// The demo config with `extra` lines added to the linux-x64 pool (after
/// its `max_runners`) and `max_runners` of that pool set to `max`.
fn config_with(max: u32, extra: &str) -> Config {
    let text = DEMO_CONFIG.replacen(
        "max_runners = 60",
        &format!("max_runners = {max}\n{extra}"),
        1,
    );
    let secrets = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "t")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "s");
    parse(&text, &secrets).expect("valid config")
}

/// Warm instances in every pool of the demo config.
fn demo_warm(n: u32) -> Config {
    let text = DEMO_CONFIG.replace("max_runners = ", &format!("warm = {n}\nmax_runners = "));
    let secrets = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "t")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "s");
    parse(&text, &secrets).expect("valid config")
}

fn simulate(config: Config, opts: &SimOptions) -> Summary {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s = rt
        .block_on(run(opts, config, &mut |_| {}))
        .expect("simulation runs");
    assert!(s.ok(), "invariants broken: {:?}", s.failures());
    s
}

#[test]
fn with_warm_pools_jobs_start_much_sooner_than_cold_in_the_same_world() {
    // Jobs about a minute apart: a warm pool refills between them.
    let opts = SimOptions {
        jobs: 40,
        seed: 3,
        arrival_window: 40 * 60 * 1000,
        ..SimOptions::default()
    };
    let cold = simulate(demo_config(), &opts);
    let warm = simulate(demo_warm(2), &opts);
    assert_eq!(warm.completed, 40);
    assert!(
        warm.queue_to_start_ms.p50 * 3 < cold.queue_to_start_ms.p50,
        "warm p50 {} ms vs cold p50 {} ms",
        warm.queue_to_start_ms.p50,
        cold.queue_to_start_ms.p50
    );
    assert!(
        warm.queue_to_start_ms.p90 < 10_000,
        "warm p90 {} ms",
        warm.queue_to_start_ms.p90
    );
    // Warm instances cost instance time: more than cold, and the run says so.
    assert!(warm.instances_launched > cold.instances_launched);
    assert!(warm.terminations.get("idle").copied().unwrap_or(0) > 0);
}

#[test]
fn warm_pools_with_faults_keep_every_invariant() {
    for seed in 1..=2 {
        let opts = SimOptions {
            jobs: 120,
            seed,
            faults: 0.1,
            ..SimOptions::default()
        };
        let s = simulate(demo_warm(3), &opts);
        assert_eq!(s.completed, 120);
    }
}

struct Rig {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    engine: Engine,
    now: Millis,
    max_alive: usize,
}

impl Rig {
    async fn new(cfg: Config) -> Rig {
        Self::starting_at(cfg, 0).await
    }

    /// A rig whose virtual clock starts at `start` (Unix ms): the planner's
    /// `now`, which warm schedules are read against.
    async fn starting_at(cfg: Config, start: Millis) -> Rig {
        let world = Arc::new(Mutex::new(World::new(WorldConfig::default())));
        world.lock().unwrap().repos = vec!["acme/app".into()];
        let store = Arc::new(MemStore::new());
        let engine = Self::engine(&world, &store, cfg, start).await;
        Rig {
            world,
            store,
            engine,
            now: start,
            max_alive: 0,
        }
    }

    async fn engine(
        world: &Arc<Mutex<World>>,
        store: &Arc<MemStore>,
        cfg: Config,
        now: Millis,
    ) -> Engine {
        Engine::new(
            Arc::new(cfg),
            Arc::new(SimGitHub(world.clone())),
            Arc::new(SimCloud(world.clone())),
            store.clone(),
            EngineOptions::default(),
            now,
        )
        .await
        .unwrap()
    }

    /// The controller restarted with another config (same store, same world).
    async fn reload(&mut self, cfg: Config) {
        self.engine = Self::engine(&self.world, &self.store, cfg, self.now).await;
    }

    /// Runs the controller for `ms` of simulated time, one step every 500 ms,
    /// a reconcile every 30 s.
    async fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.tick().await;
        }
    }

    async fn tick(&mut self) {
        self.world.lock().unwrap().advance_to(self.now);
        let hooks = self.world.lock().unwrap().take_due_webhooks();
        for (id, ev) in hooks {
            Engine::intake(&*self.store, &id, &ev.into()).await.unwrap();
        }
        if self.now.is_multiple_of(30_000) {
            self.engine.reconcile(self.now).await.unwrap();
        }
        self.engine.step(self.now).await.unwrap();
        let alive = self.alive("linux-x64");
        self.max_alive = self.max_alive.max(alive);
        self.now += 500;
    }

    fn alive(&self, pool: &str) -> usize {
        let w = self.world.lock().unwrap();
        w.instances
            .values()
            .filter(|i| {
                i.tag("runfleet:fleet") == Some("demo") && i.tag("runfleet:pool") == Some(pool)
            })
            .filter(|i| !i.state.is_gone())
            .count()
    }

    /// Alive warm-launched instances that never had a runner registered
    /// for them.
    fn waiting(&self) -> Vec<String> {
        let w = self.world.lock().unwrap();
        w.instances
            .values()
            .filter(|i| i.tag("runfleet:warm") == Some("true") && !i.state.is_gone())
            .filter(|i| {
                let name = format!("runfleet-linux-x64-{}", i.id);
                i.runner.is_none() && !w.runners.values().any(|r| r.name == name)
            })
            .map(|i| i.id.clone())
            .collect()
    }

    fn add_job(&self, id: u64) {
        let mut w = self.world.lock().unwrap();
        let now = self.now;
        w.add_job(
            id,
            id,
            "acme/app",
            vec!["self-hosted".into(), "linux".into(), "x64".into()],
            now,
        );
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn a_job_takes_a_warm_instance_without_a_launch_and_it_is_replaced() {
    rt().block_on(async {
        let mut rig = Rig::new(config_with(60, "warm = 2")).await;
        rig.run_for(90_000).await;
        // Two warm instances booted and waiting, nothing registered for them.
        let waiting = rig.waiting();
        assert_eq!(waiting.len(), 2, "{waiting:?}");
        {
            let w = rig.world.lock().unwrap();
            assert_eq!(w.runners_named("runfleet-"), 0);
            assert_eq!(w.params_under("demo"), 0);
        }
        // Past the boot timeout (5 m) they are still waiting, not replaced.
        rig.run_for(6 * 60_000).await;
        assert_eq!(
            rig.waiting(),
            waiting,
            "waiting warm instances were replaced"
        );
        assert_eq!(rig.engine.stats().terminations.get("boot_timeout"), None);

        let launched_before = rig.world.lock().unwrap().instances.len();
        let queued_at = rig.now;
        rig.add_job(7);
        let mut started = None;
        for _ in 0..60 {
            rig.tick().await;
            let w = rig.world.lock().unwrap();
            if let Some(t) = w.jobs[&7].started_at {
                started = Some((t, w.jobs[&7].runner.clone().unwrap()));
                break;
            }
        }
        let (t, runner) = started.expect("the job started");
        assert!(
            t - queued_at < 10_000,
            "warm pick-up took {} ms",
            t - queued_at
        );
        let iid = runner
            .rsplit_once("-i-")
            .map(|(_, r)| format!("i-{r}"))
            .unwrap();
        assert!(waiting.contains(&iid), "ran on {iid}, not a warm instance");
        // The assignment is recorded on the instance.
        let inst = &rig.engine.observed().instances[&iid];
        assert_eq!(inst.assigned.map(|a| a.job_id), Some(7));
        // Exactly one replacement launched, and two warm ones wait again.
        rig.run_for(90_000).await;
        let w = rig.world.lock().unwrap();
        assert_eq!(w.instances.len(), launched_before + 1);
        assert_eq!(w.jobs[&7].runs, 1);
        let dump = format!("{:#?}\n{:#?}", w.instances, w.jobs[&7]);
        drop(w);
        assert_eq!(rig.waiting().len(), 2, "{dump}");
    });
}

#[test]
fn warm_and_jobs_never_exceed_max_runners() {
    rt().block_on(async {
        let mut rig = Rig::new(config_with(3, "warm = 2")).await;
        rig.run_for(60_000).await;
        for id in 1..=6 {
            rig.add_job(id);
        }
        rig.run_for(20 * 60_000).await;
        assert!(rig.max_alive <= 3, "{} alive at once", rig.max_alive);
        let w = rig.world.lock().unwrap();
        for id in 1..=6 {
            assert_eq!(w.jobs[&id].status, JobStatus::Completed, "job {id}");
            assert_eq!(w.jobs[&id].runs, 1);
            assert!(!w.jobs[&id].lost);
        }
        assert_eq!(w.violations.busy_killed, 0);
        assert_eq!(w.violations.unrecorded_launches, 0);
    });
}

#[test]
fn a_waiting_warm_instance_is_retired_and_replaced_before_max_lifetime() {
    rt().block_on(async {
        // Retired at half of max_lifetime (10 m of 20 m).
        let mut rig = Rig::new(config_with(60, "warm = 1\nmax_lifetime = \"20m\"")).await;
        rig.run_for(60_000).await;
        let first = rig.waiting();
        assert_eq!(first.len(), 1);
        rig.run_for(8 * 60_000).await;
        assert_eq!(rig.waiting(), first, "retired too early");
        rig.run_for(4 * 60_000).await;
        let now_waiting = rig.waiting();
        assert_eq!(now_waiting.len(), 1);
        assert_ne!(now_waiting, first, "not replaced");
        let w = rig.world.lock().unwrap();
        assert!(w.instances[&first[0]].state.is_gone());
        assert_eq!(rig.engine.stats().terminations.get("idle"), Some(&1));
    });
}

#[test]
fn lowering_warm_terminates_the_extras() {
    rt().block_on(async {
        let mut rig = Rig::new(config_with(60, "warm = 3")).await;
        rig.run_for(60_000).await;
        assert_eq!(rig.waiting().len(), 3);
        rig.reload(config_with(60, "warm = 1")).await;
        rig.run_for(30_000).await;
        assert_eq!(rig.waiting().len(), 1);
        assert_eq!(rig.alive("linux-x64"), 1);
        rig.reload(config_with(60, "warm = 0")).await;
        rig.run_for(30_000).await;
        assert_eq!(rig.alive("linux-x64"), 0);
        let w = rig.world.lock().unwrap();
        assert_eq!(w.instances.len(), 3, "nothing else was launched");
    });
}

/// 2024-01-04 00:00 UTC, a Thursday.
const THURSDAY: Millis = 1_704_326_400_000;
const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;

/// One warm instance by default; three from Thursday 23:55 to 00:05 the
/// next day (a window that starts on Thursday and wraps past midnight).
const NIGHT_SCHEDULE: &str = "warm = 1\n\
    [[pool.warm_schedule]]\n\
    days = [\"thu\"]\n\
    hours = \"23:55-00:05\"\n\
    warm = 3\n";

#[test]
fn the_warm_count_follows_a_schedule_across_midnight() {
    rt().block_on(async {
        let start = THURSDAY + 23 * HOUR + 50 * MINUTE;
        let mut rig = Rig::starting_at(config_with(60, NIGHT_SCHEDULE), start).await;
        rig.run_for(4 * MINUTE + 30_000).await;
        let first = rig.waiting();
        assert_eq!(first.len(), 1, "23:54:30: the pool's warm = 1");

        // 23:55: the window opens; two more boot and wait.
        rig.run_for(MINUTE).await;
        let night = rig.waiting();
        assert_eq!(night.len(), 3, "23:55:30: {night:?}");
        assert!(night.contains(&first[0]));
        assert_eq!(rig.engine.stats().terminations.get("idle"), None);

        // Past midnight (Friday) the Thursday window is still open.
        rig.run_for(9 * MINUTE).await;
        assert_eq!(rig.now, THURSDAY + 24 * HOUR + 4 * MINUTE + 30_000);
        assert_eq!(rig.waiting(), night, "00:04:30 Friday: still three");

        // 00:05: it closes; the two oldest waiting are retired, first the
        // one that waited since 23:50.
        rig.run_for(MINUTE).await;
        let after = rig.waiting();
        assert_eq!(after.len(), 1, "00:05:30: {after:?}");
        assert_ne!(after, first, "the oldest was kept");
        assert!(night.contains(&after[0]), "nothing new was launched");
        assert_eq!(rig.engine.stats().terminations.get("idle"), Some(&2));
        assert_eq!(rig.alive("linux-x64"), 1);
        let w = rig.world.lock().unwrap();
        assert!(w.instances[&first[0]].state.is_gone());
        assert_eq!(w.instances.len(), 3, "three launched in all");
        assert_eq!(w.runners_named("runfleet-"), 0, "none ever registered");
    });
}

#[test]
fn a_window_opens_only_on_its_days() {
    rt().block_on(async {
        // The same schedule from Friday 23:50: Friday starts no window.
        let start = THURSDAY + 24 * HOUR + 23 * HOUR + 50 * MINUTE;
        let mut rig = Rig::starting_at(config_with(60, NIGHT_SCHEDULE), start).await;
        rig.run_for(20 * MINUTE).await;
        assert_eq!(rig.waiting().len(), 1);
        assert_eq!(rig.world.lock().unwrap().instances.len(), 1);
    });
}

#[test]
fn a_whole_run_through_a_scheduled_window_keeps_every_invariant() {
    // Jobs from Thursday 23:40 for 40 minutes, faults on; a window of five
    // warm instances from 23:50 to 00:10 at +01:00 (00:50-01:10 local,
    // Friday's), one outside it.
    let cfg = config_with(
        60,
        "warm = 1\n\
         [[pool.warm_schedule]]\n\
         days = [\"fri\"]\n\
         hours = \"00:50-01:10\"\n\
         timezone = \"+01:00\"\n\
         warm = 5\n",
    );
    let opts = SimOptions {
        jobs: 80,
        seed: 5,
        faults: 0.05,
        arrival_window: 40 * MINUTE,
        start: THURSDAY + 23 * HOUR + 40 * MINUTE,
        ..SimOptions::default()
    };
    let s = simulate(cfg.clone(), &opts);
    assert_eq!(s.completed, 80);
    assert!(s.simulated_seconds < 3 * 3600, "{} s", s.simulated_seconds);
    // The same run with the schedule's window never open launches fewer.
    let mut closed = cfg;
    closed.pools[0].warm_schedule.clear();
    let c = simulate(closed, &opts);
    assert!(
        s.instances_launched > c.instances_launched,
        "scheduled {} vs plain {}",
        s.instances_launched,
        c.instances_launched
    );
}
