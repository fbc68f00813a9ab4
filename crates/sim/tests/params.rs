//! JIT parameters: the instance's boot script deletes its own as soon as it
//! has read it, so in the normal path the controller makes no
//! DeleteParameter call; when the instance's delete fails
//! (`WorldConfig::self_delete_failure`, e.g. a role without
//! `ssm:DeleteParameter`), the controller finds the leftover in its listing
//! and deletes it within the grace (`plan::param_grace`) plus a reconcile
//! interval. Either way no parameter is left in SSM.

use std::sync::{Arc, Mutex};

use runfleet_core::model::{JobStatus, Millis};
use runfleet_core::plan::param_grace;
use runfleet_engine::memstore::MemStore;
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::world::{World, WorldConfig, param_path};
use runfleet_sim::{SimOptions, Summary, demo_config, run};

const TICK: Millis = 500;

/// What one job's parameter went through, seen from the world.
#[derive(Debug)]
struct Trace {
    /// The runner came online (after its instance read the parameter).
    online_at: Millis,
    /// The parameter was last seen in SSM (`None`: never seen).
    last_seen: Option<Millis>,
    /// The instance went away.
    gone_at: Millis,
    /// DeleteParameter calls the controller made.
    deletes: u64,
    self_delete_failures: u64,
    deleted_by_instance: u64,
}

/// One job through the real engine, reconciling every `reconcile_interval`
/// (30 s) and stepping every 0.5 s, as the driver does, until the job is
/// done and nothing is left.
async fn one_job(self_delete_failure: f64, job_ms: Millis) -> Trace {
    let world = Arc::new(Mutex::new(World::new(WorldConfig {
        self_delete_failure,
        job_duration: (job_ms, job_ms),
        ..WorldConfig::default()
    })));
    let config = Arc::new(demo_config());
    {
        let mut w = world.lock().unwrap();
        w.repos = vec!["acme/app".into()];
        w.add_job(
            1,
            1,
            "acme/app",
            vec!["self-hosted".into(), "linux".into(), "x64".into()],
            1_000,
        );
    }
    let store = Arc::new(MemStore::new());
    let mut engine = Engine::new(
        config.clone(),
        Arc::new(SimGitHub(world.clone())),
        Arc::new(SimCloud(world.clone())),
        store.clone(),
        EngineOptions::default(),
        0,
    )
    .await
    .unwrap();
    let every = config.server.reconcile_interval.as_millis() as Millis;
    let (mut now, mut next_reconcile) = (0, 0);
    let mut last_seen = None;
    loop {
        let hooks = {
            let mut w = world.lock().unwrap();
            w.advance_to(now);
            w.take_due_webhooks()
        };
        for (id, ev) in hooks {
            Engine::intake(&*store, &id, &ev.into()).await.unwrap();
        }
        if now >= next_reconcile {
            engine.reconcile(now).await.unwrap();
            next_reconcile = now + every;
        }
        engine.step(now).await.unwrap();
        let w = world.lock().unwrap();
        if w.params_under("demo") > 0 {
            last_seen = Some(now);
        }
        let done = w.jobs[&1].status == JobStatus::Completed;
        if done && w.alive_instances("demo") == 0 && w.params_under("demo") == 0 {
            assert!(!w.jobs[&1].lost, "the job ran to completion");
            assert_eq!(w.instances.len(), 1, "one instance");
            let inst = w.instances.values().next().unwrap();
            assert!(
                !w.params.contains_key(&param_path("demo", &inst.id)),
                "its parameter is gone"
            );
            return Trace {
                online_at: w.jobs[&1].started_at.expect("the job started"),
                last_seen,
                gone_at: inst.gone_at.expect("the instance is gone"),
                deletes: w
                    .calls
                    .aws_by_op
                    .get("DeleteParameter")
                    .copied()
                    .unwrap_or(0),
                self_delete_failures: w.faults.self_delete_failures,
                deleted_by_instance: w.params_deleted_by_instances,
            };
        }
        drop(w);
        assert!(now < 60 * 60 * 1000, "not settled after an hour");
        now += TICK;
    }
}

#[tokio::test]
async fn the_instance_deletes_its_own_parameter_and_the_controller_makes_no_delete_call() {
    let t = one_job(0.0, 300_000).await;
    assert_eq!(t.deleted_by_instance, 1, "{t:?}");
    assert_eq!(t.self_delete_failures, 0);
    assert_eq!(t.deletes, 0, "no DeleteParameter call: {t:?}");
    assert!(
        t.last_seen.is_some_and(|s| s < t.online_at),
        "gone before the runner came online: {t:?}"
    );
}

/// The instance's delete fails and its runner runs a long job: the
/// controller deletes the leftover while the instance still runs, once the
/// grace after the runner came online has passed, within one more
/// reconcile interval.
#[tokio::test]
async fn a_parameter_the_instance_could_not_delete_is_deleted_by_the_controller() {
    let grace = param_grace(&demo_config());
    let every = demo_config().server.reconcile_interval.as_millis() as Millis;
    let t = one_job(1.0, 600_000).await;
    assert_eq!(t.self_delete_failures, 1, "{t:?}");
    assert_eq!(t.deleted_by_instance, 0);
    assert_eq!(t.deletes, 1, "exactly one DeleteParameter call: {t:?}");
    let last = t.last_seen.expect("the parameter was in SSM");
    assert!(
        last + TICK >= t.online_at + grace,
        "not deleted before the grace: {t:?}"
    );
    assert!(
        last < t.online_at + grace + every + 2 * TICK,
        "deleted within the grace and one reconcile interval: {t:?}"
    );
    assert!(last < t.gone_at, "while the instance still ran: {t:?}");
}

/// Same, with a short job: the instance is gone before the grace has
/// passed; its leftover is deleted all the same.
#[tokio::test]
async fn a_leftover_outliving_its_instance_is_deleted() {
    let grace = param_grace(&demo_config());
    let every = demo_config().server.reconcile_interval.as_millis() as Millis;
    let t = one_job(1.0, 10_000).await;
    assert_eq!(t.self_delete_failures, 1, "{t:?}");
    assert_eq!(t.deletes, 1, "{t:?}");
    let last = t.last_seen.expect("the parameter was in SSM");
    assert!(t.gone_at < last, "outlived its instance: {t:?}");
    assert!(
        last < t.online_at + grace + every + 2 * TICK,
        "deleted within the grace and one reconcile interval: {t:?}"
    );
}

fn simulate(self_delete_failure: f64) -> Summary {
    let mut opts = SimOptions {
        jobs: 200,
        seed: 3,
        ..SimOptions::default()
    };
    opts.world.self_delete_failure = self_delete_failure;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(run(&opts, demo_config(), &mut |_| {}))
        .expect("the simulation runs")
}

fn deletes(s: &Summary) -> u64 {
    s.calls
        .aws_by_op
        .get("DeleteParameter")
        .copied()
        .unwrap_or(0)
}

/// 200 jobs, no faults: every instance deletes its own parameter; the
/// controller's only DeleteParameter calls are the ones each termination
/// makes.
#[test]
fn a_fault_free_run_makes_no_delete_call_of_its_own() {
    let s = simulate(0.0);
    assert!(s.ok(), "{:?}", s.failures());
    assert!(
        s.params_deleted_by_instances >= s.jobs as u64,
        "{} deleted by instances for {} jobs",
        s.params_deleted_by_instances,
        s.jobs
    );
    let terminations: u64 = s.terminations.values().sum();
    assert!(
        deletes(&s) <= terminations,
        "{} DeleteParameter calls, {terminations} terminations",
        deletes(&s)
    );
}

/// 200 jobs on instances that can never delete their parameter (a role
/// without `ssm:DeleteParameter`): the controller deletes every leftover,
/// nothing is left, and every job still ran once.
#[test]
fn when_no_instance_can_delete_its_parameter_the_controller_deletes_them_all() {
    let s = simulate(1.0);
    assert!(s.ok(), "{:?}", s.failures());
    assert_eq!(s.params_deleted_by_instances, 0);
    let failed = s.faults_injected.self_delete_failures;
    assert!(failed >= s.jobs as u64, "{failed} failed deletes");
    assert!(
        deletes(&s) >= failed,
        "{} DeleteParameter calls for {failed} leftovers",
        deletes(&s)
    );
}

/// The controller's record follows the listing: once a reconcile no longer
/// lists an instance's parameter (its instance deleted it), the instance is
/// no longer marked `param_present`, so housekeeping can drop its record an
/// hour after it is gone (`Engine::reconcile` clears `param_present` for
/// what a successful `list_jit` does not show; without that every record
/// of an instance that deleted its own parameter would stay for good).
#[tokio::test]
async fn records_of_instances_that_deleted_their_parameter_are_dropped() {
    let world = Arc::new(Mutex::new(World::new(WorldConfig::default())));
    let config = Arc::new(demo_config());
    {
        let mut w = world.lock().unwrap();
        w.repos = vec!["acme/app".into()];
        for j in 1..=5 {
            let labels = vec!["self-hosted".into(), "linux".into(), "x64".into()];
            w.add_job(j, j, "acme/app", labels, 1_000);
        }
    }
    let store = Arc::new(MemStore::new());
    let mut engine = Engine::new(
        config.clone(),
        Arc::new(SimGitHub(world.clone())),
        Arc::new(SimCloud(world.clone())),
        store.clone(),
        EngineOptions::default(),
        0,
    )
    .await
    .unwrap();
    let every = config.server.reconcile_interval.as_millis() as Millis;
    let (mut now, mut next_reconcile) = (0, 0);
    // Well past the engine's one-hour retention of gone instances.
    while now < 2 * 60 * 60 * 1000 {
        let hooks = {
            let mut w = world.lock().unwrap();
            w.advance_to(now);
            w.take_due_webhooks()
        };
        for (id, ev) in hooks {
            Engine::intake(&*store, &id, &ev.into()).await.unwrap();
        }
        if now >= next_reconcile {
            engine.reconcile(now).await.unwrap();
            next_reconcile = now + every;
        }
        engine.step(now).await.unwrap();
        now += 1_000;
    }
    let w = world.lock().unwrap();
    assert_eq!(w.params_deleted_by_instances, 5);
    assert_eq!(w.params_under("demo"), 0);
    let o = engine.observed();
    let marked: Vec<&String> = o
        .instances
        .values()
        .filter(|i| i.param_present)
        .map(|i| &i.id)
        .collect();
    assert!(marked.is_empty(), "still marked param_present: {marked:?}");
    assert!(o.instances.is_empty(), "{} records kept", o.instances.len());
}
