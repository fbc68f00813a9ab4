//! Spot interruptions through the engine (issue 8, item 1): EC2's warning
//! reaches the controller through the event feed; a busy runner's job runs
//! its last two minutes, fails when the instance is reclaimed and is re-run
//! once, on-demand first; an idle runner is replaced at once; repeated and
//! foreign events change nothing; an event received but not handled comes
//! again. Every scenario ends with nothing left: no instance, runner or
//! parameter of the fleet.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runfleet_core::config::{CapacityMarket, Config, MapSecrets, Secret, parse};
use runfleet_core::model::{
    ErrorKind, InstanceState, InterruptionKind, JobStatus, Millis, Offering, TerminateReason,
};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{
    Cloud, CloudEvent, CloudEventKind, CloudInstance, LaunchOutcome, LaunchRequest, PortError,
    PortResult, Store,
};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::driver::DEMO_CONFIG;
use runfleet_sim::world::{SPOT_NOTICE_MS, World, WorldConfig};
use runfleet_sim::{SimOptions, run};

const LINUX: [&str; 3] = ["self-hosted", "linux", "x64"];

fn config(text: &str) -> Config {
    let secrets = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "simulated-token")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "simulated-secret");
    parse(text, &secrets).expect("config")
}

/// The demo config; `rerun = false` turns re-runs off for linux-x64.
fn demo(rerun: bool) -> Config {
    if rerun {
        return config(DEMO_CONFIG);
    }
    let text = DEMO_CONFIG.replacen(
        "max_runners = 60\n",
        "max_runners = 60\nrerun_interrupted = false\n",
        1,
    );
    let cfg = config(&text);
    assert!(!cfg.pool("linux-x64").unwrap().rerun_interrupted);
    cfg
}

/// A cloud that loses the first `fail_acks` acknowledgements (the
/// controller dies, or SQS does not answer, after the effect was stored).
struct LosingAcks {
    inner: Arc<dyn Cloud>,
    fail_acks: AtomicU32,
}

#[async_trait]
impl Cloud for LosingAcks {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        self.inner.launch(req).await
    }
    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        self.inner.list_instances(fleet).await
    }
    async fn terminate(&self, fleet: &str, ids: &[String]) -> PortResult<()> {
        self.inner.terminate(fleet, ids).await
    }
    async fn put_jit(&self, fleet: &str, id: &str, value: &Secret) -> PortResult<()> {
        self.inner.put_jit(fleet, id, value).await
    }
    async fn delete_jit(&self, fleet: &str, id: &str) -> PortResult<()> {
        self.inner.delete_jit(fleet, id).await
    }
    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>> {
        self.inner.list_jit(fleet).await
    }
    async fn poll_events(&self) -> PortResult<Vec<CloudEvent>> {
        self.inner.poll_events().await
    }
    async fn ack_events(&self, acks: &[String]) -> PortResult<()> {
        if self
            .fail_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PortError::new(
                ErrorKind::Transient,
                "DeleteMessageBatch: timed out",
            ));
        }
        self.inner.ack_events(acks).await
    }
}

struct Rig {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    cfg: Arc<Config>,
    cloud: Arc<dyn Cloud>,
    engine: Engine,
    now: Millis,
    /// Every webhook is lost: the controller learns only by polling.
    drop_webhooks: bool,
    /// Reconcile (poll GitHub and EC2) this often.
    reconcile_every: Millis,
}

impl Rig {
    async fn new(cfg: Config, wcfg: WorldConfig, fail_acks: u32) -> Rig {
        let world = Arc::new(Mutex::new(World::new(WorldConfig {
            ec2_events: true,
            ..wcfg
        })));
        world.lock().unwrap().repos = vec!["acme/app".into()];
        let store = Arc::new(MemStore::new());
        let sim: Arc<dyn Cloud> = Arc::new(SimCloud(world.clone()));
        let cloud: Arc<dyn Cloud> = Arc::new(LosingAcks {
            inner: sim,
            fail_acks: AtomicU32::new(fail_acks),
        });
        let cfg = Arc::new(cfg);
        let engine = Engine::new(
            cfg.clone(),
            Arc::new(SimGitHub(world.clone())),
            cloud.clone(),
            store.clone(),
            EngineOptions::default(),
            0,
        )
        .await
        .unwrap();
        Rig {
            world,
            store,
            cfg,
            cloud,
            engine,
            now: 0,
            drop_webhooks: false,
            reconcile_every: 1_000,
        }
    }

    /// A controller killed now and started again from its store.
    async fn restart(&mut self) {
        self.engine = Engine::new(
            self.cfg.clone(),
            Arc::new(SimGitHub(self.world.clone())),
            self.cloud.clone(),
            self.store.clone(),
            EngineOptions::default(),
            self.now,
        )
        .await
        .unwrap();
    }

    fn job(&self, id: u64, at: Millis) {
        let labels = LINUX.iter().map(|s| s.to_string()).collect();
        self.world
            .lock()
            .unwrap()
            .add_job(id, 100 + id, "acme/app", labels, at);
    }

    /// One second of the world and the controller.
    async fn tick(&mut self) {
        let hooks = {
            let mut w = self.world.lock().unwrap();
            w.advance_to(self.now);
            w.take_due_webhooks()
        };
        for (id, ev) in hooks {
            if !self.drop_webhooks {
                Engine::intake(&*self.store, &id, &ev.into()).await.unwrap();
            }
        }
        if self.now.is_multiple_of(self.reconcile_every) {
            self.engine.reconcile(self.now).await.unwrap();
        }
        self.engine.step(self.now).await.unwrap();
        self.now += 1_000;
    }

    /// Runs for `ms` of simulated time.
    async fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.tick().await;
        }
    }

    /// Runs until `done` holds or `limit` ms pass (then panics with the state).
    async fn run_until(&mut self, limit: Millis, mut done: impl FnMut(&World, &Engine) -> bool) {
        let end = self.now + limit;
        while self.now < end {
            self.tick().await;
            if done(&self.world.lock().unwrap(), &self.engine) {
                return;
            }
        }
        let w = self.world.lock().unwrap();
        panic!(
            "condition not reached within {limit} ms\nengine jobs: {:#?}\nengine instances: {:#?}\nworld jobs: {:#?}\nqueue: {:#?}",
            self.engine.observed().jobs,
            self.engine.observed().instances,
            w.jobs,
            w.queue
        );
    }

    /// Runs until every job is done and nothing of the fleet is left, then
    /// checks the invariants that hold after any scenario.
    async fn settle(&mut self) {
        self.run_until(30 * 60 * 1000, |w, _| {
            w.jobs.values().all(|j| j.status == JobStatus::Completed)
                && w.alive_instances("demo") == 0
                && w.runners_named("runfleet-") == 0
                && w.params_under("demo") == 0
                && w.outbox.is_empty()
                && w.queue
                    .iter()
                    .all(|m| m.event.instance_id.starts_with("foreign"))
        })
        .await;
        let w = self.world.lock().unwrap();
        assert_eq!(
            w.violations.busy_killed, 0,
            "the controller killed a busy runner"
        );
        assert_eq!(w.violations.foreign_touched, 0);
        assert_eq!(w.violations.unrecorded_launches, 0);
        assert_eq!(w.violations.untagged_launches, 0);
        assert!(
            w.jobs.values().all(|j| j.runs <= 1),
            "a job ran twice: {:#?}",
            w.jobs
        );
    }

    /// The instance job `id` runs on, once it runs.
    async fn running_on(&mut self, id: u64) -> String {
        self.run_until(5 * 60 * 1000, |w, e| {
            w.jobs[&id].status == JobStatus::InProgress
                && e.observed().instances.values().any(|i| i.busy)
        })
        .await;
        let w = self.world.lock().unwrap();
        let name = w.jobs[&id].runner.clone().unwrap();
        let runner_instance = runfleet_core::model::instance_of_runner(&name).unwrap();
        runner_instance.to_string()
    }

    fn stat(&self, pool: &str, what: &str) -> u64 {
        self.engine
            .stats()
            .interruptions
            .get(pool)
            .and_then(|m| m.get(what))
            .copied()
            .unwrap_or(0)
    }

    async fn timeline_of(&self, instance_id: &str) -> Vec<String> {
        self.store
            .timeline(None, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.instance_id.as_deref() == Some(instance_id))
            .map(|t| t.what)
            .collect()
    }
}

fn long_jobs() -> WorldConfig {
    WorldConfig {
        job_duration: (10 * 60 * 1000, 10 * 60 * 1000),
        ..WorldConfig::default()
    }
}

#[tokio::test]
async fn busy_job_runs_its_last_two_minutes_then_is_rerun_once_on_demand() {
    let mut rig = Rig::new(demo(true), long_jobs(), 0).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    let (warned_at, offering) = {
        let mut w = rig.world.lock().unwrap();
        let inst = &w.instances[&iid];
        assert_eq!(
            inst.market,
            CapacityMarket::Spot,
            "the chain starts with spot"
        );
        let offering = (inst.instance_type.clone(), inst.subnet.clone());
        assert!(w.interrupt_spot(&iid).is_some());
        (w.now, offering)
    };
    // The warning is recorded; the busy instance is left to its job.
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&iid]
            .interruption
            .is_some_and(|i| i.kind == InterruptionKind::SpotWarning)
    })
    .await;
    assert_eq!(rig.stat("linux-x64", "spot_warning_busy"), 1);
    let reclaimed = Offering {
        instance_type: offering.0,
        subnet: offering.1,
        market: CapacityMarket::Spot,
    };
    assert!(
        rig.engine
            .observed()
            .unavailable
            .iter()
            .any(|u| u.offering == reclaimed && u.until > rig.now),
        "the reclaimed offering is skipped for a while"
    );
    assert!(
        rig.timeline_of(&iid)
            .await
            .iter()
            .any(|t| t.contains("spot interruption warning")),
        "the warning is on the instance's timeline"
    );
    rig.run_for(SPOT_NOTICE_MS - 15_000).await;
    {
        let w = rig.world.lock().unwrap();
        assert!(
            !w.instances[&iid].state.is_gone(),
            "not terminated under its job"
        );
        assert_eq!(w.jobs[&1].status, JobStatus::InProgress);
    }
    rig.settle().await;

    let w = rig.world.lock().unwrap();
    let lost = &w.jobs[&1];
    assert!(
        lost.lost && lost.interrupted,
        "the job was lost to the reclaim"
    );
    assert_eq!(lost.conclusion.as_deref(), Some("failure"));
    assert_eq!(
        lost.completed_at.unwrap() - warned_at,
        SPOT_NOTICE_MS,
        "it ran its last two minutes"
    );
    assert_eq!(w.reruns.get(&1), Some(&1), "re-run exactly once");
    assert_eq!(w.reruns.len(), 1);
    let rerun = w.final_attempt(1).unwrap();
    assert_ne!(rerun.id, 1);
    assert_eq!(rerun.status, JobStatus::Completed);
    assert!(!rerun.lost);
    assert_eq!(rerun.conclusion.as_deref(), Some("success"));
    assert_eq!(rerun.runs, 1);
    let second = runfleet_core::model::instance_of_runner(rerun.runner.as_deref().unwrap())
        .unwrap()
        .to_string();
    assert_ne!(second, iid, "on another instance");
    assert_eq!(
        w.instances[&second].market,
        CapacityMarket::OnDemand,
        "the re-run goes on-demand first"
    );
    let reruns = &rig.engine.stats().reruns["linux-x64"];
    assert_eq!(reruns.get("requested"), Some(&1));
    let job = &rig.engine.observed().jobs[&1];
    assert!(job.rerun_requested_at.is_some());
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
}

#[tokio::test]
async fn idle_runner_on_an_interrupted_instance_is_replaced_at_once() {
    // GitHub hands the job over 90 s after the runner is online: an idle runner.
    let mut rig = Rig::new(
        demo(true),
        WorldConfig {
            assign_delay: 90_000,
            ..WorldConfig::default()
        },
        0,
    )
    .await;
    rig.job(1, 0);
    rig.run_until(3 * 60 * 1000, |w, e| {
        w.runners.values().any(|r| r.online)
            && e.observed()
                .instances
                .values()
                .any(|i| i.runner_online_at.is_some())
    })
    .await;
    let iid = {
        let w = rig.world.lock().unwrap();
        let r = w.runners.values().find(|r| r.online).unwrap();
        assert!(!r.busy && r.job.is_none(), "online and idle");
        r.instance.clone().unwrap()
    };
    let warned_at = {
        let mut w = rig.world.lock().unwrap();
        w.interrupt_spot(&iid).unwrap();
        w.now
    };
    rig.run_until(10_000, |w, _| w.instances[&iid].state.is_gone())
        .await;
    let gone_after = rig.world.lock().unwrap().instances[&iid].gone_at.unwrap() - warned_at;
    assert!(
        gone_after <= 5_000,
        "terminated {gone_after} ms after the warning"
    );
    assert_eq!(
        rig.engine.observed().instances[&iid].terminate_reason,
        Some(TerminateReason::Interrupted)
    );
    assert_eq!(rig.stat("linux-x64", "spot_warning_idle"), 1);
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    let job = &w.jobs[&1];
    assert!(
        !job.lost && job.runs == 1,
        "the job ran once, on the replacement"
    );
    let on = runfleet_core::model::instance_of_runner(job.runner.as_deref().unwrap()).unwrap();
    assert_ne!(on, iid);
    assert!(w.reruns.is_empty(), "nothing to re-run");
    assert_eq!(rig.engine.stats().terminations.get("interrupted"), Some(&1));
}

#[tokio::test]
async fn rebalance_recommendation_replaces_an_idle_runner_and_leaves_a_busy_one() {
    let mut rig = Rig::new(
        demo(true),
        WorldConfig {
            assign_delay: 90_000,
            job_duration: (5 * 60 * 1000, 5 * 60 * 1000),
            ..WorldConfig::default()
        },
        0,
    )
    .await;
    rig.job(1, 0);
    rig.run_until(3 * 60 * 1000, |w, e| {
        w.runners.values().any(|r| r.online)
            && e.observed()
                .instances
                .values()
                .any(|i| i.runner_online_at.is_some())
    })
    .await;
    let idle = rig
        .world
        .lock()
        .unwrap()
        .runners
        .values()
        .next()
        .unwrap()
        .instance
        .clone()
        .unwrap();
    rig.world
        .lock()
        .unwrap()
        .send_event(&idle, CloudEventKind::RebalanceRecommendation);
    rig.run_until(10_000, |w, _| w.instances[&idle].state.is_gone())
        .await;
    assert_eq!(rig.stat("linux-x64", "rebalance_idle"), 1);
    let busy = rig.running_on(1).await;
    assert_ne!(busy, idle);
    rig.world
        .lock()
        .unwrap()
        .send_event(&busy, CloudEventKind::RebalanceRecommendation);
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&busy].interruption.is_some()
    })
    .await;
    assert_eq!(rig.stat("linux-x64", "rebalance_busy"), 1);
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    assert_eq!(
        w.jobs[&1].conclusion.as_deref(),
        Some("success"),
        "the job kept running"
    );
    assert!(w.reruns.is_empty());
}

#[tokio::test]
async fn repeated_events_change_nothing() {
    let mut rig = Rig::new(demo(true), long_jobs(), 0).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    let warning = rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&iid].interruption.is_some()
    })
    .await;
    let before = rig.engine.observed().instances[&iid].clone();
    let timeline_before = rig.timeline_of(&iid).await;
    let stats_before = rig.engine.stats().interruptions.clone();
    for _ in 0..3 {
        assert!(rig.world.lock().unwrap().redeliver(&warning));
    }
    rig.run_until(10_000, |w, _| w.queue.is_empty()).await;
    assert_eq!(rig.engine.observed().instances[&iid], before);
    assert_eq!(rig.timeline_of(&iid).await, timeline_before);
    assert_eq!(rig.engine.stats().interruptions, stats_before);
    assert!(rig.engine.stats().cloud_events["unchanged"] >= 3);

    // After the reclaim: every event about the instance delivered again,
    // the warning once more after the job failed.
    rig.run_until(SPOT_NOTICE_MS + 30_000, |w, _| w.jobs[&1].lost)
        .await;
    rig.run_until(30_000, |w, _| {
        w.reruns.contains_key(&1) && w.instances[&iid].state == InstanceState::Terminated
    })
    .await;
    let ids: Vec<String> = rig
        .world
        .lock()
        .unwrap()
        .events_sent
        .iter()
        .filter(|e| e.instance_id == iid)
        .map(|e| e.id.clone())
        .collect();
    assert!(
        ids.len() >= 3,
        "warning, shutting-down, terminated: {ids:?}"
    );
    for id in &ids {
        rig.world.lock().unwrap().redeliver(id);
        rig.world.lock().unwrap().redeliver(id);
    }
    rig.settle().await;
    assert_eq!(
        rig.world.lock().unwrap().reruns.get(&1),
        Some(&1),
        "re-run once"
    );
    assert_eq!(rig.stat("linux-x64", "spot_warning_busy"), 1);
    let inst = &rig.engine.observed().instances[&iid];
    assert_eq!(inst.state, InstanceState::Terminated);
}

#[tokio::test]
async fn events_of_a_foreign_instance_are_ignored() {
    let mut rig = Rig::new(demo(true), WorldConfig::default(), 0).await;
    let foreign = {
        let mut w = rig.world.lock().unwrap();
        let id = w.add_foreign_instance("other-fleet");
        w.instances.get_mut(&id).unwrap().market = CapacityMarket::Spot;
        w.interrupt_spot(&id).unwrap();
        w.send_event(&id, CloudEventKind::RebalanceRecommendation);
        id
    };
    rig.job(1, 0);
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    assert!(w.queue.is_empty(), "foreign events are acknowledged too");
    assert!(!rig.engine.observed().instances.contains_key(&foreign));
    assert!(rig.engine.stats().cloud_events["foreign"] >= 4);
    assert!(rig.engine.stats().interruptions.is_empty());
    assert_eq!(w.violations.foreign_touched, 0);
    assert!(!w.jobs[&1].lost);
}

#[tokio::test]
async fn a_state_change_event_marks_the_instance_gone_before_any_reconcile() {
    let mut rig = Rig::new(demo(true), long_jobs(), 0).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    // From here the controller only steps: events, no listing.
    let end = rig.now + SPOT_NOTICE_MS + 5_000;
    while rig.now < end {
        let hooks = {
            let mut w = rig.world.lock().unwrap();
            w.advance_to(rig.now);
            w.take_due_webhooks()
        };
        for (id, ev) in hooks {
            Engine::intake(&*rig.store, &id, &ev.into()).await.unwrap();
        }
        rig.engine.step(rig.now).await.unwrap();
        rig.now += 1_000;
    }
    let inst = &rig.engine.observed().instances[&iid];
    assert!(
        inst.state.is_gone(),
        "state from the event: {:?}",
        inst.state
    );
    assert!(
        rig.timeline_of(&iid)
            .await
            .iter()
            .any(|t| t.contains("per EC2 event")),
    );
    rig.settle().await;
}

#[tokio::test]
async fn an_event_received_but_not_stored_comes_again() {
    // The first acknowledgement is lost: the event is delivered again after
    // the visibility timeout and changes nothing the second time.
    let mut rig = Rig::new(demo(true), long_jobs(), 1).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&iid].interruption.is_some()
    })
    .await;
    assert_eq!(rig.world.lock().unwrap().queue.len(), 1, "not acknowledged");
    rig.run_until(40_000, |w, _| w.queue.is_empty()).await;
    assert_eq!(rig.stat("linux-x64", "spot_warning_busy"), 1);

    // Received, then the controller dies before storing anything.
    let mut rig = Rig::new(demo(true), long_jobs(), 0).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.now += 2_000;
    rig.world.lock().unwrap().advance_to(rig.now);
    let received = rig.cloud.poll_events().await.unwrap();
    assert_eq!(received.len(), 1);
    assert!(matches!(
        received[0].kind,
        CloudEventKind::SpotInterruption { .. }
    ));
    rig.restart().await;
    rig.tick().await;
    assert!(
        rig.engine.observed().instances[&iid].interruption.is_none(),
        "invisible until the visibility timeout"
    );
    rig.run_until(40_000, |_, e| {
        e.observed().instances[&iid].interruption.is_some()
    })
    .await;
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    assert_eq!(w.reruns.get(&1), Some(&1));
    assert!(!w.final_attempt(1).unwrap().lost);
}

#[tokio::test]
async fn without_rerun_interrupted_the_lost_job_stays_failed() {
    let mut rig = Rig::new(demo(false), long_jobs(), 0).await;
    rig.job(1, 0);
    let iid = rig.running_on(1).await;
    rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    assert!(w.jobs[&1].lost);
    assert!(w.reruns.is_empty());
    assert!(rig.engine.observed().jobs[&1].rerun_requested_at.is_none());
}

#[tokio::test]
async fn interruption_fault_class_with_other_faults_keeps_every_invariant() {
    // Whether a given seed's reclaims hit a busy runner is chance; over the
    // seeds together some must, so the re-run path is exercised.
    let mut reruns = 0;
    for seed in [1, 2, 3] {
        let opts = SimOptions {
            jobs: 80,
            seed,
            faults: 0.4,
            world: WorldConfig {
                spot_interruption_weight: 1.0,
                ..WorldConfig::default()
            },
            ..SimOptions::default()
        };
        let s = run(&opts, runfleet_sim::demo_config(), &mut |_| {})
            .await
            .unwrap();
        assert!(s.ok(), "seed {seed}: {:?}\n{s:#?}", s.failures());
        assert!(
            s.faults_injected.spot_interruptions > 0,
            "seed {seed}: no interruption injected"
        );
        reruns += s.reruns;
    }
    assert!(reruns > 0, "no job was re-run in any seed");
}

#[tokio::test]
async fn a_job_no_webhook_told_of_is_found_on_the_warned_runner_and_rerun() {
    let mut rig = Rig::new(demo(true), long_jobs(), 0).await;
    rig.drop_webhooks = true;
    rig.reconcile_every = 60_000;
    rig.job(1, 0);
    rig.run_until(5 * 60 * 1000, |w, _| {
        w.jobs[&1].status == JobStatus::InProgress
    })
    .await;
    let iid = {
        let w = rig.world.lock().unwrap();
        let name = w.jobs[&1].runner.clone().unwrap();
        runfleet_core::model::instance_of_runner(&name)
            .unwrap()
            .to_string()
    };
    assert!(
        rig.engine.observed().jobs[&1].runner_name.is_none(),
        "the controller does not know where the job runs"
    );
    rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.run_until(10_000, |_, e| {
        e.observed().jobs[&1].runner_name.as_deref()
            == Some(runfleet_core::model::runner_name("linux-x64", &iid).as_str())
    })
    .await;
    rig.settle().await;
    let w = rig.world.lock().unwrap();
    assert_eq!(w.reruns.get(&1), Some(&1));
    assert!(!w.final_attempt(1).unwrap().lost);
    assert_eq!(w.calls.github_by_op.get("list_running_jobs"), Some(&1));
}
