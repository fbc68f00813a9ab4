//! Crash safety of the launch path (DESIGN invariant 1): the controller is
//! killed around the cloud call and restarted from its store; the job still
//! gets exactly one instance.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runfleet_core::model::{JobEvent, JobStatus, LaunchState};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{Cloud, LaunchOutcome, LaunchRequest, PortError, PortResult};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{LaunchHook, OnLaunch, SimCloud, SimGitHub};
use runfleet_sim::world::{World, WorldConfig};

/// How the first launch call goes wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// The process dies before the request leaves.
    DieBeforeCall,
    /// The request reaches EC2, the process dies before the answer is stored.
    DieAfterCall,
    /// The answer is lost on the way back (a timeout): an error, but EC2 acted.
    LoseAnswer,
}

struct Faulty {
    fault: Fault,
    launches: AtomicU32,
}

#[async_trait]
impl OnLaunch for Faulty {
    async fn launch(&self, inner: &dyn Cloud, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        if self.launches.fetch_add(1, Ordering::SeqCst) == 0 {
            match self.fault {
                Fault::DieBeforeCall => futures::future::pending::<()>().await,
                Fault::DieAfterCall => {
                    let _ = inner.launch(req).await;
                    futures::future::pending::<()>().await;
                }
                Fault::LoseAnswer => {
                    let _ = inner.launch(req).await;
                    return Err(PortError::new(
                        runfleet_core::model::ErrorKind::Transient,
                        "timed out",
                    ));
                }
            }
        }
        inner.launch(req).await
    }
}

fn queued(job_id: u64) -> JobEvent {
    JobEvent {
        job_id,
        run_id: 1,
        repo: "acme/app".into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        status: JobStatus::Queued,
        runner_name: None,
        conclusion: None,
        at: 0,
    }
}

async fn crash_and_restart(fault: Fault) {
    let world = Arc::new(Mutex::new(World::new(WorldConfig::default())));
    world.lock().unwrap().repos = vec!["acme/app".into()];
    let store = Arc::new(MemStore::new());
    let cfg = Arc::new(runfleet_sim::demo_config());
    let github = Arc::new(SimGitHub(world.clone()));
    let faulty = Arc::new(LaunchHook {
        inner: Arc::new(SimCloud(world.clone())),
        hook: Faulty {
            fault,
            launches: AtomicU32::new(0),
        },
    });
    Engine::intake(&*store, "d-1", &queued(7).into())
        .await
        .unwrap();

    let mut first = Engine::new(
        cfg.clone(),
        github.clone(),
        faulty.clone(),
        store.clone(),
        EngineOptions::default(),
        0,
    )
    .await
    .unwrap();
    let step = tokio::time::timeout(Duration::from_millis(200), first.step(0)).await;
    let killed = step.is_err();
    drop(first); // the process is gone; only the store remains
    match fault {
        Fault::LoseAnswer => assert!(!killed),
        _ => assert!(killed, "the step should hang at the faulty call"),
    }
    let snap = runfleet_engine::ports::Store::load(&*store).await.unwrap();
    assert_eq!(
        snap.launches.len(),
        1,
        "the launch was recorded before the call"
    );
    let launch_id = snap.launches[0].id.clone();

    // Restart (on the same store) and let it settle.
    let mut second = Engine::new(
        cfg,
        github,
        faulty.clone(),
        store.clone(),
        EngineOptions::default(),
        1_000,
    )
    .await
    .unwrap();
    for t in [1_000, 10_000, 20_000, 30_000] {
        second.reconcile(t).await.unwrap();
        second.step(t).await.unwrap();
    }
    let w = world.lock().unwrap();
    let ours: Vec<_> = w
        .instances
        .values()
        .filter(|i| i.tag("runfleet:fleet") == Some("demo"))
        .collect();
    assert_eq!(ours.len(), 1, "exactly one instance for the job");
    assert_eq!(
        ours[0].client_token, launch_id,
        "launched with the recorded id as ClientToken"
    );
    let launches = &second.observed().launches;
    assert_eq!(launches.len(), 1, "no second launch: {launches:?}");
    assert_eq!(launches[&launch_id].state, LaunchState::Launched);
    assert!(second.observed().instances.contains_key(&ours[0].id));
}

#[tokio::test(start_paused = true)]
async fn killed_before_the_cloud_call() {
    crash_and_restart(Fault::DieBeforeCall).await;
}

#[tokio::test(start_paused = true)]
async fn killed_after_the_cloud_call() {
    crash_and_restart(Fault::DieAfterCall).await;
}

#[tokio::test(start_paused = true)]
async fn answer_lost_on_the_way_back() {
    crash_and_restart(Fault::LoseAnswer).await;
}
