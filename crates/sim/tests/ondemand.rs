//! On-demand runs (`runfleet launch`, `POST /v1/start`) through the engine:
//! a start request becomes one launch whose runner carries a unique label;
//! the job that asks for that label runs on it and nothing else is launched
//! for that job; the run's state follows the instance and the runner.

use std::sync::{Arc, Mutex};

use runfleet_core::model::{IntakeEvent, LaunchState, Millis, StartRequest};
use runfleet_core::runs::{RunState, run_status};
use runfleet_engine::Engine;
use runfleet_engine::memstore::MemStore;
use runfleet_sim::rig::EngineRig;
use runfleet_sim::world::World;

fn start(id: &str, pool: &str) -> StartRequest {
    StartRequest {
        id: id.into(),
        repo: "acme/app".into(),
        pool: pool.into(),
        unique_label: format!("rf-{id}"),
        name: Some("broker-made".into()),
        at: 0,
    }
}

struct Rig {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    engine: Engine,
    now: Millis,
}

impl Rig {
    async fn new() -> Rig {
        let EngineRig {
            world,
            store,
            engine,
        } = EngineRig::new(runfleet_sim::demo_config(), &["acme/app"]).await;
        Rig {
            world,
            store,
            engine,
            now: 0,
        }
    }

    async fn submit(&mut self, req: StartRequest) {
        let id = req.id.clone();
        assert!(
            Engine::intake(&*self.store, &id, &IntakeEvent::Start(req))
                .await
                .unwrap()
        );
    }

    /// Runs the controller in simulated seconds until `done` holds or `limit` ms pass.
    async fn run_until(&mut self, limit: Millis, mut done: impl FnMut(&Engine) -> bool) {
        let end = self.now + limit;
        while self.now < end {
            self.world.lock().unwrap().advance_to(self.now);
            let hooks = self.world.lock().unwrap().take_due_webhooks();
            for (id, ev) in hooks {
                Engine::intake(&*self.store, &id, &ev.into()).await.unwrap();
            }
            self.engine.reconcile(self.now).await.unwrap();
            self.engine.step(self.now).await.unwrap();
            if done(&self.engine) {
                return;
            }
            self.now += 1_000;
        }
        let o = self.engine.observed();
        panic!(
            "condition not reached within {limit} ms\njobs: {:#?}\ninstances: {:#?}\nworld jobs: {:#?}",
            o.jobs,
            o.instances,
            self.world.lock().unwrap().jobs
        );
    }

    fn state(&self, id: &str) -> RunState {
        run_status(self.engine.observed(), id)
            .expect("the run is known")
            .state
    }
}

#[tokio::test]
async fn start_request_gets_one_runner_that_only_its_job_takes() {
    let mut rig = Rig::new().await;
    rig.submit(start("acme-r1", "linux-x64")).await;
    rig.run_until(120_000, |e| {
        run_status(e.observed(), "acme-r1").is_some_and(|r| r.state == RunState::Online)
    })
    .await;
    let status = run_status(rig.engine.observed(), "acme-r1").unwrap();
    assert_eq!(status.labels, vec!["self-hosted", "rf-acme-r1"]);
    let iid = status.instance_id.clone().expect("an instance");
    {
        let w = rig.world.lock().unwrap();
        assert_eq!(w.alive_instances("demo"), 1, "exactly one instance");
        let inst = &w.instances[&iid];
        assert_eq!(inst.tag("Name"), Some("broker-made"));
        let runner = w
            .runners
            .values()
            .find(|r| Some(r.name.as_str()) == status.runner_name.as_deref())
            .expect("its runner is registered");
        assert_eq!(
            runner.labels,
            vec!["self-hosted", "rf-acme-r1"],
            "no pool label, so no job of the pool can take it"
        );
    }

    // An ordinary job of the pool gets its own instance, not the run's runner.
    rig.world.lock().unwrap().add_job(
        10,
        1,
        "acme/app",
        vec!["self-hosted".into(), "linux".into(), "x64".into()],
        rig.now,
    );
    // The job that asks for the unique label takes the run's runner.
    rig.world.lock().unwrap().add_job(
        11,
        1,
        "acme/app",
        vec!["self-hosted".into(), "rf-acme-r1".into()],
        rig.now,
    );
    rig.run_until(600_000, |e| {
        let o = e.observed();
        o.jobs.get(&10).is_some_and(|j| j.completed_at.is_some())
            && o.jobs.get(&11).is_some_and(|j| j.completed_at.is_some())
            && o.instances.values().all(|i| !i.alive())
    })
    .await;
    assert_eq!(rig.state("acme-r1"), RunState::Done);
    let o = rig.engine.observed();
    assert_eq!(
        o.jobs[&11].runner_name, status.runner_name,
        "the unique-label job ran on the run's runner"
    );
    assert_ne!(o.jobs[&10].runner_name, status.runner_name);
    assert_eq!(o.jobs[&11].reason, None, "not marked ignored");
    assert!(
        o.launches.values().all(|l| l.job_id != Some(11)),
        "nothing was launched for the unique-label job"
    );
    assert_eq!(o.launches.len(), 2, "the run's launch and job 10's");
    let w = rig.world.lock().unwrap();
    assert_eq!(w.jobs[&11].runs, 1);
    assert_eq!(w.params_under("demo"), 0);
    assert_eq!(w.runners_named("runfleet-"), 0);
}

#[tokio::test]
async fn start_request_for_an_unknown_pool_fails_with_its_name() {
    let mut rig = Rig::new().await;
    rig.submit(start("acme-r2", "gpu")).await;
    rig.engine.step(0).await.unwrap();
    let status = run_status(rig.engine.observed(), "acme-r2").unwrap();
    assert_eq!(status.state, RunState::Failed);
    assert!(
        status.reason.as_deref().unwrap().contains("\"gpu\""),
        "{:?}",
        status.reason
    );
    assert_eq!(rig.world.lock().unwrap().calls.aws_mutating, 0);
}

#[tokio::test]
async fn repeated_start_request_launches_once() {
    let mut rig = Rig::new().await;
    let req = start("acme-r3", "linux-x64");
    rig.submit(req.clone()).await;
    assert!(
        !Engine::intake(&*rig.store, &req.id.clone(), &IntakeEvent::Start(req))
            .await
            .unwrap(),
        "the same request id is a duplicate"
    );
    rig.run_until(60_000, |e| {
        e.observed()
            .launches
            .get("acme-r3")
            .is_some_and(|l| l.state == LaunchState::Launched)
    })
    .await;
    assert_eq!(rig.engine.observed().launches.len(), 1);
    assert_eq!(rig.world.lock().unwrap().alive_instances("demo"), 1);
}

#[tokio::test]
async fn a_run_whose_runner_never_comes_fails_after_boot_timeout() {
    let mut rig = Rig::new().await;
    rig.submit(start("acme-r4", "linux-x64")).await;
    rig.run_until(30_000, |e| {
        e.observed()
            .launches
            .get("acme-r4")
            .is_some_and(|l| l.state == LaunchState::Launched)
    })
    .await;
    let iid = run_status(rig.engine.observed(), "acme-r4")
        .unwrap()
        .instance_id
        .unwrap();
    rig.world
        .lock()
        .unwrap()
        .instances
        .get_mut(&iid)
        .unwrap()
        .broken = true;
    rig.run_until(15 * 60_000, |e| {
        run_status(e.observed(), "acme-r4").is_some_and(|r| r.state == RunState::Failed)
    })
    .await;
    let status = run_status(rig.engine.observed(), "acme-r4").unwrap();
    assert!(
        status.reason.as_deref().unwrap().contains("boot_timeout"),
        "{:?}",
        status.reason
    );
}
