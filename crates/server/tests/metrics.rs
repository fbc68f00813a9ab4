//! `/metrics` families beyond jobs and instances, each moved by the thing it
//! counts: the engine against the simulated world on a virtual clock, its
//! counters folded into [`Metrics`] and read back from the text exposition,
//! as `GET /metrics` serves it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runfleet_core::config::{Config, Secret};
use runfleet_core::model::{ErrorKind, JobStatus, Millis};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{
    Cloud, CloudEvent, CloudEventKind, CloudInstance, LaunchOutcome, LaunchRequest, PortError,
    PortResult,
};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_server::metrics::Metrics;
use runfleet_server::page;
use runfleet_server::view::View;
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::world::{SPOT_NOTICE_MS, World, WorldConfig};

const LINUX: [&str; 3] = ["self-hosted", "linux", "x64"];
const POOL: &str = "linux-x64";

/// The simulated cloud, failing the first `fail_launches` launch calls
/// (throttled) and the first `fail_acks` event acknowledgements.
struct Flaky {
    inner: SimCloud,
    fail_launches: AtomicU32,
    fail_acks: AtomicU32,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Cloud for Flaky {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        if take(&self.fail_launches) {
            return Err(PortError::new(
                ErrorKind::Throttled,
                "RunInstances: RequestLimitExceeded",
            ));
        }
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
        if take(&self.fail_acks) {
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
    engine: Engine,
    metrics: Metrics,
    now: Millis,
}

impl Rig {
    async fn new(cfg: Config, wcfg: WorldConfig, fail_launches: u32, fail_acks: u32) -> Rig {
        let world = Arc::new(Mutex::new(World::new(WorldConfig {
            ec2_events: true,
            ..wcfg
        })));
        world.lock().unwrap().repos = vec!["acme/app".into()];
        let store = Arc::new(MemStore::new());
        let cloud = Flaky {
            inner: SimCloud(world.clone()),
            fail_launches: AtomicU32::new(fail_launches),
            fail_acks: AtomicU32::new(fail_acks),
        };
        let metrics = Metrics::new(&cfg);
        let engine = Engine::new(
            Arc::new(cfg),
            Arc::new(SimGitHub(world.clone())),
            Arc::new(cloud),
            store.clone(),
            EngineOptions::default(),
            0,
        )
        .await
        .unwrap();
        Rig {
            world,
            store,
            engine,
            metrics,
            now: 0,
        }
    }

    fn job(&self, id: u64) {
        let labels = LINUX.iter().map(|s| s.to_string()).collect();
        self.world
            .lock()
            .unwrap()
            .add_job(id, 100 + id, "acme/app", labels, self.now);
    }

    /// One second of the world and the controller, then the metrics
    /// updated as the server does after every step.
    async fn tick(&mut self) {
        let hooks = {
            let mut w = self.world.lock().unwrap();
            w.advance_to(self.now);
            w.take_due_webhooks()
        };
        for (id, ev) in hooks {
            Engine::intake(&*self.store, &id, &ev.into()).await.unwrap();
        }
        if self.now.is_multiple_of(5_000) {
            self.engine.reconcile(self.now).await.unwrap();
        }
        self.engine.step(self.now).await.unwrap();
        let view = View::of(&self.engine, self.now);
        self.metrics.update(&mut self.engine, &view);
        self.now += 1_000;
    }

    async fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.tick().await;
        }
    }

    async fn run_until(&mut self, limit: Millis, mut done: impl FnMut(&World, &Engine) -> bool) {
        let end = self.now + limit;
        while self.now < end {
            self.tick().await;
            if done(&self.world.lock().unwrap(), &self.engine) {
                return;
            }
        }
        panic!("condition not reached within {limit} ms");
    }

    /// The value of one series in `/metrics`' text.
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.render();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
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
        runfleet_core::model::instance_of_runner(&name)
            .unwrap()
            .to_string()
    }
}

fn demo() -> Config {
    runfleet_sim::demo_config()
}

fn p(pool: &str) -> String {
    format!("pool=\"{pool}\"")
}

#[tokio::test]
async fn a_burst_counts_one_launch_call_for_all_its_instances() {
    let mut rig = Rig::new(demo(), WorldConfig::default(), 0, 0).await;
    let calls = format!("runfleet_launch_calls_total{{{}}}", p(POOL));
    let asked = format!("runfleet_launch_batch_instances_total{{{}}}", p(POOL));
    let launched = format!("runfleet_instances_launched_total{{{}}}", p(POOL));
    // Every family is there from start, at zero.
    for s in [&calls, &asked, &launched] {
        assert_eq!(rig.metric(s), 0.0, "{s}");
    }
    assert_eq!(rig.metric("runfleet_engine_steps_total"), 0.0);
    assert_eq!(rig.metric("runfleet_reconciles_total"), 0.0);
    for id in 1..=6 {
        rig.job(id);
    }
    rig.run_until(60_000, |w, _| w.alive_instances("demo") == 6)
        .await;
    assert_eq!(rig.metric(&calls), 1.0, "one call for the burst");
    assert_eq!(rig.metric(&asked), 6.0, "asking for six instances");
    assert_eq!(rig.metric(&launched), 6.0);
    let other = format!("runfleet_launch_calls_total{{{}}}", p("linux-arm64"));
    assert_eq!(rig.metric(&other), 0.0, "no call for another pool");
    assert!(rig.metric("runfleet_engine_steps_total") >= 1.0);
    assert!(rig.metric("runfleet_reconciles_total") >= 1.0);
    // A lone job later is one call for one instance.
    rig.job(7);
    rig.run_until(60_000, |w, _| w.alive_instances("demo") >= 7)
        .await;
    assert_eq!(rig.metric(&calls), 2.0);
    assert_eq!(rig.metric(&asked), 7.0);
}

#[tokio::test]
async fn a_call_sent_again_after_throttling_counts_twice_and_the_error_by_operation() {
    let mut rig = Rig::new(demo(), WorldConfig::default(), 1, 0).await;
    let throttled = r#"runfleet_adapter_errors_total{operation="launch",kind="throttled"}"#;
    assert_eq!(rig.metric(throttled), 0.0, "there from start");
    rig.job(1);
    rig.run_until(60_000, |w, _| w.alive_instances("demo") == 1)
        .await;
    assert_eq!(rig.metric(throttled), 1.0);
    assert_eq!(
        rig.metric(&format!(
            "runfleet_launch_errors_total{{{},kind=\"throttled\"}}",
            p(POOL)
        )),
        1.0
    );
    assert_eq!(
        rig.metric(&format!("runfleet_launch_calls_total{{{}}}", p(POOL))),
        2.0,
        "the same call again"
    );
    assert_eq!(
        rig.metric(&format!(
            "runfleet_launch_batch_instances_total{{{}}}",
            p(POOL)
        )),
        2.0
    );
    assert_eq!(
        rig.metric(&format!("runfleet_instances_launched_total{{{}}}", p(POOL))),
        1.0
    );
}

#[tokio::test]
async fn a_spot_warning_on_a_busy_runner_counts_the_notice_the_event_and_the_rerun() {
    let long = WorldConfig {
        job_duration: (10 * 60 * 1000, 10 * 60 * 1000),
        ..WorldConfig::default()
    };
    let mut rig = Rig::new(demo(), long, 0, 1).await;
    let warned_busy = format!(
        "runfleet_interruptions_total{{{},notice=\"spot_warning\",runner=\"busy\"}}",
        p(POOL)
    );
    let applied = r#"runfleet_cloud_events_total{kind="spot_warning",outcome="applied"}"#;
    let repeated = r#"runfleet_cloud_events_total{kind="spot_warning",outcome="unchanged"}"#;
    let rerun = format!("runfleet_reruns_total{{{},outcome=\"requested\"}}", p(POOL));
    let ack_failed = r#"runfleet_adapter_errors_total{operation="ack_events",kind="transient"}"#;
    for s in [warned_busy.as_str(), applied, repeated, &rerun, ack_failed] {
        assert_eq!(rig.metric(s), 0.0, "{s} from start");
    }
    rig.job(1);
    let iid = rig.running_on(1).await;
    let ev = rig.world.lock().unwrap().interrupt_spot(&iid).unwrap();
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&iid].interruption.is_some()
    })
    .await;
    assert_eq!(rig.metric(&warned_busy), 1.0);
    assert_eq!(rig.metric(applied), 1.0);
    // The first acknowledgement was lost: the event comes again, and
    // changes nothing the second time.
    assert_eq!(rig.metric(ack_failed), 1.0);
    rig.world.lock().unwrap().redeliver(&ev);
    rig.run_for(45_000).await;
    assert!(
        rig.metric(repeated) >= 1.0,
        "the repeat counted as unchanged"
    );
    assert_eq!(
        rig.metric(&warned_busy),
        1.0,
        "one notice, not one per delivery"
    );
    // The job is lost when the instance is reclaimed, and re-run.
    rig.run_until(SPOT_NOTICE_MS + 5 * 60 * 1000, |w, _| {
        w.reruns.get(&1) == Some(&1)
    })
    .await;
    rig.run_until(10_000, |_, e| {
        e.stats()
            .reruns
            .get(POOL)
            .is_some_and(|r| r.get("requested") == Some(&1))
    })
    .await;
    assert_eq!(rig.metric(&rerun), 1.0);
    assert!(
        rig.metric(r#"runfleet_cloud_events_total{kind="state_change",outcome="applied"}"#) >= 1.0,
        "the reclaimed instance's state change"
    );
}

#[tokio::test]
async fn a_rebalance_on_an_idle_runner_and_an_event_for_a_foreign_instance() {
    // GitHub hands the job over 90 s after the runner is online: an idle runner.
    let idle = WorldConfig {
        assign_delay: 90_000,
        ..WorldConfig::default()
    };
    let mut rig = Rig::new(demo(), idle, 0, 0).await;
    rig.job(1);
    rig.run_until(3 * 60 * 1000, |_, e| {
        e.observed()
            .instances
            .values()
            .any(|i| i.runner_online_at.is_some() && !i.busy)
    })
    .await;
    let iid = rig
        .engine
        .observed()
        .instances
        .values()
        .find(|i| i.runner_online_at.is_some())
        .unwrap()
        .id
        .clone();
    let foreign = {
        let mut w = rig.world.lock().unwrap();
        w.send_event(&iid, CloudEventKind::RebalanceRecommendation)
            .unwrap();
        let foreign = w.add_foreign_instance("other-fleet");
        w.send_event(&foreign, CloudEventKind::RebalanceRecommendation)
            .unwrap();
        foreign
    };
    rig.run_until(10_000, |_, e| {
        e.observed().instances[&iid].interruption.is_some()
    })
    .await;
    rig.run_for(5_000).await;
    assert_eq!(
        rig.metric(&format!(
            "runfleet_interruptions_total{{{},notice=\"rebalance\",runner=\"idle\"}}",
            p(POOL)
        )),
        1.0
    );
    assert_eq!(
        rig.metric(&format!(
            "runfleet_interruptions_total{{{},notice=\"rebalance\",runner=\"busy\"}}",
            p(POOL)
        )),
        0.0
    );
    assert_eq!(
        rig.metric(r#"runfleet_cloud_events_total{kind="rebalance",outcome="applied"}"#),
        1.0
    );
    assert_eq!(
        rig.metric(r#"runfleet_cloud_events_total{kind="rebalance",outcome="foreign"}"#),
        1.0,
        "{foreign} is not this fleet's"
    );
}

/// The demo config with a warm schedule on linux-x64: `warm` 1, and 3
/// from 00:00 to 00:10 UTC every day (the virtual clock starts at
/// 1970-01-01T00:00:00Z).
fn scheduled() -> Config {
    let text = runfleet_sim::driver::DEMO_CONFIG.replacen(
        "max_runners = 60\n",
        "max_runners = 60\nwarm = 1\n[[pool.warm_schedule]]\nhours = \"00:00-00:10\"\nwarm = 3\n",
        1,
    );
    let secrets = runfleet_core::config::MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", "simulated-token")
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", "simulated-secret");
    runfleet_core::config::parse(&text, &secrets).expect("config")
}

#[tokio::test]
async fn the_warm_target_follows_the_schedule_and_waiting_instances_count_as_warm() {
    let mut rig = Rig::new(scheduled(), WorldConfig::default(), 0, 0).await;
    let target = format!("runfleet_warm_target{{{}}}", p(POOL));
    let warm = format!("runfleet_instances{{{},state=\"warm\"}}", p(POOL));
    let booting = format!("runfleet_instances{{{},state=\"booting\"}}", p(POOL));
    assert_eq!(rig.metric(&target), 0.0, "zero before the first update");
    rig.tick().await;
    assert_eq!(rig.metric(&target), 3.0, "the window is open at 00:00");
    assert_eq!(
        rig.metric(&format!("runfleet_warm_target{{{}}}", p("linux-arm64"))),
        0.0
    );
    rig.run_until(5 * 60 * 1000, |_, e| {
        let v = View::of(e, 0);
        v.pools[0].instances["warm"] == 3
    })
    .await;
    rig.tick().await;
    assert_eq!(rig.metric(&warm), 3.0, "three instances waiting");
    assert_eq!(
        rig.metric(&booting),
        0.0,
        "a waiting warm instance is not booting"
    );
    let view = View::of(&rig.engine, rig.now);
    let html = page::render(&view, &[], rig.now);
    assert!(html.contains("<th>warm/target</th>"), "{html}");
    assert!(html.contains("<td class=warm>3/3</td>"), "{html}");
    // The window closes at 00:10: the target drops to `warm`, the surplus
    // is retired.
    rig.run_until(10 * 60 * 1000, |_, e| {
        View::of(e, 0).pools[0].instances["warm"] == 1
    })
    .await;
    assert!(rig.now >= 10 * 60 * 1000);
    rig.tick().await;
    assert_eq!(rig.metric(&target), 1.0);
    assert_eq!(rig.metric(&warm), 1.0);
    let view = View::of(&rig.engine, rig.now);
    assert!(page::render(&view, &[], rig.now).contains("<td class=warm>1/1</td>"));
}
