//! Crash safety at every step boundary (DESIGN invariants 1 and 2).
//!
//! A small scenario (three jobs in two pools, through launch, runner
//! config, online, job, completion and power-off; plus an orphan instance
//! of the fleet with a registered runner and a JIT parameter, left by an
//! earlier controller, that must be terminated, deregistered and deleted)
//! runs once to count its
//! boundaries: every durable store write (`intake_event`, `apply`) and every
//! GitHub and cloud call. Then, for every boundary N and both sides of it,
//! the scenario runs again and the process "dies" at the Nth boundary: the
//! call hangs forever (before it is made, or after it took effect but
//! before its answer is used), the engine is dropped mid-step with only the
//! store left, and a fresh `Engine` starts from that store and runs to the
//! end. After each one: every job ran exactly once, one instance per launch
//! id and per job (nothing launched twice), nothing left (instances,
//! runners, SSM parameters), no launch call whose id was not recorded in
//! the store first, no runner killed under a job, and the other fleet's
//! instance untouched.
//!
//! Reads of the store (`load`, `intake_since`, `timeline`) are not kill
//! points: dying before a read is dying after the write before it.
//! Webhook intake is a boundary too (the server's `Engine::intake`): a
//! delivery whose store write never finished is not acknowledged, GitHub
//! does not redeliver it, and the reconciler must find the job anyway.
//!
//! The black-box counterpart, `kill -9` of the real `runfleet serve` between
//! accepted webhooks and launches, is `crates/cli/tests/serve.rs`
//! (`kill_9_and_restart_launches_each_accepted_job_once`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runfleet_core::config::{Config, Secret};
use runfleet_core::model::{IntakeEvent, JobStatus, Millis, Runner, Scope};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{
    Cloud, CloudInstance, GitHub, Intake, JitConfig, JitRequest, LaunchOutcome, LaunchRequest,
    Mutation, PortResult, Snapshot, Store, TimelineEvent,
};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::world::{SimRunner, World, WorldConfig, param_path};

/// Which side of the boundary the process dies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Before the call leaves: it never happens.
    Before,
    /// After the call took effect, before its answer is used.
    After,
}

/// Counts boundaries and kills the process at one of them.
#[derive(Default)]
struct Killer {
    calls: AtomicU64,
    /// Kill at this boundary (1-based); 0: never.
    at: AtomicU64,
    side: Mutex<Option<Side>>,
    /// The boundary names, in order, of the run so far.
    names: Mutex<Vec<&'static str>>,
}

impl Killer {
    async fn around<T>(&self, name: &'static str, call: impl Future<Output = T>) -> T {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.names.lock().unwrap().push(name);
        let side = if n == self.at.load(Ordering::SeqCst) {
            *self.side.lock().unwrap()
        } else {
            None
        };
        if side == Some(Side::Before) {
            futures::future::pending::<()>().await;
        }
        let out = call.await;
        if side == Some(Side::After) {
            futures::future::pending::<()>().await;
        }
        out
    }
}

struct KStore(Arc<MemStore>, Arc<Killer>);

#[async_trait]
impl Store for KStore {
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake> {
        self.1
            .around(
                "store.intake_event",
                self.0.intake_event(delivery_id, event),
            )
            .await
    }
    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>> {
        self.0.intake_since(cursor, limit).await
    }
    async fn load(&self) -> PortResult<Snapshot> {
        self.0.load().await
    }
    async fn apply(&self, batch: &[Mutation]) -> PortResult<()> {
        self.1.around("store.apply", self.0.apply(batch)).await
    }
    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>> {
        self.0.timeline(job_id, limit).await
    }
}

struct KGitHub(SimGitHub, Arc<Killer>);

#[async_trait]
impl GitHub for KGitHub {
    async fn generate_jitconfig(&self, req: &JitRequest) -> PortResult<JitConfig> {
        self.1
            .around("github.generate_jitconfig", self.0.generate_jitconfig(req))
            .await
    }
    async fn list_runners(&self, scope: &Scope) -> PortResult<Vec<Runner>> {
        self.1
            .around("github.list_runners", self.0.list_runners(scope))
            .await
    }
    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<()> {
        self.1
            .around(
                "github.delete_runner",
                self.0.delete_runner(scope, runner_id),
            )
            .await
    }
    async fn list_active_runs(&self, repo: &str) -> PortResult<Vec<u64>> {
        self.1
            .around("github.list_active_runs", self.0.list_active_runs(repo))
            .await
    }
    async fn list_run_jobs(
        &self,
        repo: &str,
        run_id: u64,
    ) -> PortResult<Vec<runfleet_core::model::JobEvent>> {
        self.1
            .around("github.list_run_jobs", self.0.list_run_jobs(repo, run_id))
            .await
    }
    async fn get_job(&self, repo: &str, job_id: u64) -> PortResult<runfleet_core::model::JobEvent> {
        self.1
            .around("github.get_job", self.0.get_job(repo, job_id))
            .await
    }
    async fn list_repos(&self, owner: &str) -> PortResult<Vec<String>> {
        self.1
            .around("github.list_repos", self.0.list_repos(owner))
            .await
    }
}

struct KCloud(SimCloud, Arc<Killer>);

#[async_trait]
impl Cloud for KCloud {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        self.1.around("cloud.launch", self.0.launch(req)).await
    }
    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        self.1
            .around("cloud.list_instances", self.0.list_instances(fleet))
            .await
    }
    async fn terminate(&self, fleet: &str, ids: &[String]) -> PortResult<()> {
        self.1
            .around("cloud.terminate", self.0.terminate(fleet, ids))
            .await
    }
    async fn put_jit(&self, fleet: &str, id: &str, value: &Secret) -> PortResult<()> {
        self.1
            .around("cloud.put_jit", self.0.put_jit(fleet, id, value))
            .await
    }
    async fn delete_jit(&self, fleet: &str, id: &str) -> PortResult<()> {
        self.1
            .around("cloud.delete_jit", self.0.delete_jit(fleet, id))
            .await
    }
    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>> {
        self.1
            .around("cloud.list_jit", self.0.list_jit(fleet))
            .await
    }
}

/// Longer than any step can take when nothing hangs (virtual time: the
/// runtime's clock is paused and jumps when everything waits).
const HANG: Duration = Duration::from_secs(3600);
const TICK: Millis = 1_000;
const LIMIT: Millis = 3 * 60 * 60 * 1000;

/// What one run of the scenario did.
struct Run {
    /// Boundaries passed in the whole run (the kill, if any, included).
    names: Vec<&'static str>,
    /// Whether the kill happened.
    killed: bool,
    /// What is wrong at the end (empty: every invariant held).
    broken: Vec<String>,
}

fn jobs() -> Vec<(u64, Vec<&'static str>, Millis)> {
    vec![
        (11, vec!["self-hosted", "linux", "x64"], 0),
        (12, vec!["self-hosted", "linux", "arm64"], 1_500),
        (13, vec!["self-hosted", "linux", "x64"], 4_000),
    ]
}

async fn scenario(kill: Option<(u64, Side)>) -> Run {
    let cfg: Arc<Config> = Arc::new(runfleet_sim::demo_config());
    let world = Arc::new(Mutex::new(World::new(WorldConfig {
        job_duration: (20_000, 40_000),
        ..WorldConfig::default()
    })));
    let store = Arc::new(MemStore::new());
    let killer = Arc::new(Killer::default());
    if let Some((n, side)) = kill {
        killer.at.store(n, Ordering::SeqCst);
        *killer.side.lock().unwrap() = Some(side);
    }
    let foreign = {
        let mut w = world.lock().unwrap();
        w.repos = vec!["acme/app".into(), "acme/lib".into(), "acme/infra".into()];
        let recorded = store.clone();
        w.recorded = Some(Box::new(move |id| recorded.has_launch(id)));
        for (id, labels, at) in jobs() {
            let labels = labels.into_iter().map(String::from).collect();
            w.add_job(id, 100 + id, "acme/app", labels, at);
        }
        // Left by a controller that died before it recorded anything: an
        // instance of this fleet the store does not know, a runner
        // registered for it and its JIT parameter. The engine must
        // terminate, deregister and delete them (the terminate and
        // delete-runner boundaries).
        let orphan = w.add_foreign_instance("demo");
        let rid = w.new_runner_id();
        w.runners.insert(
            rid,
            SimRunner {
                id: rid,
                name: format!("runfleet-linux-x64-{orphan}"),
                scope: Scope::Repo("acme/app".into()),
                labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
                online: false,
                busy: false,
                job: None,
                instance: Some(orphan.clone()),
                jit: "stale-jit".into(),
                online_at: None,
            },
        );
        w.params
            .insert(param_path("demo", &orphan), "stale-jit".into());
        w.add_foreign_instance("other-fleet")
    };
    let github: Arc<dyn GitHub> = Arc::new(KGitHub(SimGitHub(world.clone()), killer.clone()));
    let cloud: Arc<dyn Cloud> = Arc::new(KCloud(SimCloud(world.clone()), killer.clone()));
    let kstore: Arc<dyn Store> = Arc::new(KStore(store.clone(), killer.clone()));
    let start = |now| {
        Engine::new(
            cfg.clone(),
            github.clone(),
            cloud.clone(),
            kstore.clone(),
            EngineOptions::default(),
            now,
        )
    };
    let mut engine = Some(start(0).await.expect("the engine starts"));
    let reconcile_every = cfg.server.reconcile_interval.as_millis() as Millis;
    let mut next_reconcile = 0;
    let mut killed = false;
    let mut now = 0;
    let mut broken = Vec::new();
    loop {
        let deliveries = {
            let mut w = world.lock().unwrap();
            w.advance_to(now);
            w.take_due_webhooks()
        };
        // One tick of the process: intake, reconcile, step. A hang anywhere
        // is the process dying there.
        let tick = async {
            for (id, ev) in &deliveries {
                Engine::intake(&*kstore, id, &ev.clone().into())
                    .await
                    .expect("intake");
            }
            let e = engine.as_mut().expect("an engine runs");
            if now >= next_reconcile {
                e.reconcile(now).await.expect("reconcile");
            }
            e.step(now).await.expect("step");
        };
        let died = tokio::time::timeout(HANG, tick).await.is_err();
        if died {
            assert!(!killed, "killed twice");
            killed = true;
            // The process is gone: only the store remains. A new one starts
            // from it and reconciles at once, as `serve` does on start.
            drop(engine.take());
            engine = Some(start(now).await.expect("the engine restarts"));
            next_reconcile = now;
            continue;
        } else if now >= next_reconcile {
            next_reconcile = now + reconcile_every;
        }
        let settled = {
            let w = world.lock().unwrap();
            w.jobs.values().all(|j| j.status == JobStatus::Completed)
                && w.alive_instances("demo") == 0
                && w.outbox.is_empty()
                && w.runners_named("runfleet-") == 0
                && w.params_under("demo") == 0
        };
        if settled {
            break;
        }
        if now >= LIMIT {
            broken.push("did not settle within 3 h of virtual time".to_string());
            break;
        }
        now += TICK;
    }

    let w = world.lock().unwrap();
    for j in w.jobs.values() {
        if j.runs != 1 || j.lost || j.status != JobStatus::Completed {
            broken.push(format!(
                "job {} ran {} times (lost: {}, {:?})",
                j.id, j.runs, j.lost, j.status
            ));
        }
    }
    let ours: Vec<_> = w
        .instances
        .values()
        .filter(|i| i.tag("runfleet:fleet") == Some("demo") && i.client_token != "foreign")
        .collect();
    let mut per_token: BTreeMap<&str, usize> = BTreeMap::new();
    for i in &ours {
        *per_token.entry(i.client_token.as_str()).or_default() += 1;
    }
    if let Some((t, n)) = per_token.iter().find(|(_, n)| **n != 1) {
        broken.push(format!("{n} instances for launch id {t}"));
    }
    if ours.len() != w.jobs.len() {
        broken.push(format!(
            "{} instances for {} jobs (tokens {:?})",
            ours.len(),
            w.jobs.len(),
            per_token.keys().collect::<Vec<_>>()
        ));
    }
    let left = (
        w.alive_instances("demo"),
        w.runners_named("runfleet-"),
        w.params_under("demo"),
    );
    if left != (0, 0, 0) {
        broken.push(format!("left (instances, runners, parameters): {left:?}"));
    }
    let v = &w.violations;
    if v.unrecorded_launches > 0 {
        broken.push(format!(
            "{} launch calls not recorded first",
            v.unrecorded_launches
        ));
    }
    if v.busy_killed > 0 {
        broken.push(format!("{} runners killed under a job", v.busy_killed));
    }
    if v.foreign_touched > 0 || w.instances[&foreign].state.is_gone() {
        broken.push("the other fleet's instance was touched".into());
    }
    Run {
        names: killer.names.lock().unwrap().clone(),
        killed,
        broken,
    }
}

#[tokio::test(start_paused = true)]
async fn killed_at_every_boundary_the_restart_finishes_every_job_exactly_once() {
    let clean = scenario(None).await;
    assert!(
        clean.broken.is_empty(),
        "without a kill: {:?}",
        clean.broken
    );
    let k = clean.names.len() as u64;
    let mut by_name: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for n in &clean.names {
        by_name.entry(n).or_default();
    }
    let mut failures = Vec::new();
    let mut kills = 0;
    for n in 1..=k {
        for side in [Side::Before, Side::After] {
            let run = scenario(Some((n, side))).await;
            // A run follows the clean one up to the kill, so the Nth
            // boundary is the same call.
            let name = clean.names[n as usize - 1];
            assert_eq!(run.names.get(n as usize - 1), Some(&name), "boundary {n}");
            assert!(
                run.killed,
                "boundary {n} ({name}, {side:?}) was never reached"
            );
            kills += 1;
            let e = by_name.get_mut(name).expect("named");
            match side {
                Side::Before => e.0 += 1,
                Side::After => e.1 += 1,
            }
            if !run.broken.is_empty() {
                failures.push(format!("boundary {n} ({name}, {side:?}): {:?}", run.broken));
            }
        }
    }
    println!("\n{k} boundaries in the scenario, {kills} kills (before and after each):");
    println!("  {:<28} {:>7} {:>7}", "boundary", "before", "after");
    for (name, (b, a)) in &by_name {
        println!("  {name:<28} {b:>7} {a:>7}");
    }
    assert!(
        failures.is_empty(),
        "{} of {kills} kills broke an invariant:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The scenario must go through every kind of boundary the engine has.
    for name in [
        "store.intake_event",
        "store.apply",
        "cloud.launch",
        "cloud.put_jit",
        "cloud.delete_jit",
        "cloud.list_instances",
        "cloud.list_jit",
        "cloud.terminate",
        "github.delete_runner",
        "github.generate_jitconfig",
        "github.list_runners",
        "github.list_active_runs",
        "github.list_run_jobs",
        "github.list_repos",
    ] {
        assert!(by_name.contains_key(name), "no {name} boundary was covered");
    }
}
