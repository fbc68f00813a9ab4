//! Crash safety of the launch path (DESIGN invariant 1): the controller is
//! killed around the cloud call and restarted from its store; each job still
//! gets exactly one instance, whether its launch went out alone or in a
//! batch with others (one call for several instances).

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

async fn crash_and_restart(fault: Fault, jobs: u64) {
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
    for j in 0..jobs {
        Engine::intake(&*store, &format!("d-{j}"), &queued(7 + j).into())
            .await
            .unwrap();
    }

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
        snap.launches.len() as u64,
        jobs,
        "the launches were recorded before the call"
    );
    // Sent together: one batch, recorded in every member before the call.
    let batch = snap.launches[0]
        .batch
        .clone()
        .expect("the batch is recorded");
    assert_eq!(batch.size as u64, jobs);
    assert!(
        snap.launches
            .iter()
            .all(|l| l.batch.as_ref() == Some(&batch))
    );
    let launch_ids: Vec<String> = snap.launches.iter().map(|l| l.id.clone()).collect();

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
    assert_eq!(ours.len() as u64, jobs, "exactly one instance per job");
    assert!(
        ours.iter().all(|i| i.client_token == batch.id),
        "launched with the recorded batch id as ClientToken"
    );
    if jobs == 1 {
        assert_eq!(
            batch.id, launch_ids[0],
            "a batch of one keeps the launch id"
        );
    }
    let launches = &second.observed().launches;
    assert_eq!(
        launches.len() as u64,
        jobs,
        "no second launch: {launches:?}"
    );
    let mut bound: Vec<&str> = launch_ids
        .iter()
        .map(|id| {
            let l = &launches[id];
            assert_eq!(l.state, LaunchState::Launched, "{id}");
            l.instance_id.as_deref().expect("bound to an instance")
        })
        .collect();
    bound.sort();
    let mut ids: Vec<&str> = ours.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    assert_eq!(bound, ids, "each instance bound to exactly one launch");
    for id in ids {
        assert!(second.observed().instances.contains_key(id));
    }
}

#[tokio::test(start_paused = true)]
async fn killed_before_the_cloud_call() {
    crash_and_restart(Fault::DieBeforeCall, 1).await;
}

#[tokio::test(start_paused = true)]
async fn killed_before_a_batch_call() {
    crash_and_restart(Fault::DieBeforeCall, 5).await;
}

#[tokio::test(start_paused = true)]
async fn killed_after_a_batch_call() {
    crash_and_restart(Fault::DieAfterCall, 5).await;
}

#[tokio::test(start_paused = true)]
async fn answer_to_a_batch_call_lost() {
    crash_and_restart(Fault::LoseAnswer, 5).await;
}

#[tokio::test(start_paused = true)]
async fn killed_after_the_cloud_call() {
    crash_and_restart(Fault::DieAfterCall, 1).await;
}

#[tokio::test(start_paused = true)]
async fn answer_lost_on_the_way_back() {
    crash_and_restart(Fault::LoseAnswer, 1).await;
}
