//! Launch batching through the real engine against the simulated EC2: a
//! burst goes out as few calls of at most `launch_batch_max` instances; a
//! lone job is sent at once; a job that comes due less than
//! `launch_batch_window` after its pool's last call waits for the window to
//! close and then shares one call with whatever else came in meanwhile.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runfleet_core::config::Config;
use runfleet_core::model::{JobEvent, JobStatus, LaunchState, Millis};
use runfleet_engine::Engine;
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::Store;
use runfleet_sim::demo_config;
use runfleet_sim::rig::EngineRig;
use runfleet_sim::world::World;

struct Rig {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    engine: Engine,
}

fn queued(job_id: u64) -> JobEvent {
    JobEvent {
        job_id,
        run_id: job_id,
        repo: "acme/app".into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        status: JobStatus::Queued,
        runner_name: None,
        conclusion: None,
        at: 0,
    }
}

async fn rig(config: Config) -> Rig {
    let EngineRig {
        world,
        store,
        engine,
    } = EngineRig::new(config, &["acme/app"]).await;
    Rig {
        world,
        store,
        engine,
    }
}

impl Rig {
    async fn job(&mut self, id: u64) {
        Engine::intake(&*self.store, &format!("d-{id}"), &queued(id).into())
            .await
            .unwrap();
    }
    async fn step(&mut self, now: Millis) {
        self.world.lock().unwrap().advance_to(now);
        self.engine.step(now).await.unwrap();
    }
    fn calls(&self) -> u64 {
        let w = self.world.lock().unwrap();
        w.calls.aws_by_op.get("CreateFleet").copied().unwrap_or(0)
    }
    /// Instances per launch call, in the order of the calls.
    fn call_sizes(&self) -> Vec<usize> {
        let w = self.world.lock().unwrap();
        let mut by_token: Vec<(String, usize)> = Vec::new();
        let mut instances: Vec<_> = w.instances.values().collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        for i in instances {
            match by_token.iter_mut().find(|(t, _)| *t == i.client_token) {
                Some((_, n)) => *n += 1,
                None => by_token.push((i.client_token.clone(), 1)),
            }
        }
        by_token.into_iter().map(|(_, n)| n).collect()
    }
    fn launched(&self) -> usize {
        self.engine
            .observed()
            .launches
            .values()
            .filter(|l| l.state == LaunchState::Launched)
            .count()
    }
}

fn config(window: Duration, max: u32) -> Config {
    let mut c = demo_config();
    c.server.launch_batch_window = window;
    c.server.launch_batch_max = max;
    for p in &mut c.pools {
        p.max_runners = 100;
        p.warm = 0;
        p.warm_schedule.clear();
    }
    c
}

#[tokio::test]
async fn a_burst_goes_out_in_calls_of_at_most_launch_batch_max() {
    let mut r = rig(config(Duration::from_millis(25), 20)).await;
    for j in 1..=50 {
        r.job(j).await;
    }
    r.step(0).await;
    assert_eq!(r.calls(), 3, "50 launches, 20 per call");
    let mut sizes = r.call_sizes();
    sizes.sort();
    assert_eq!(sizes, vec![10, 20, 20]);
    assert_eq!(r.launched(), 50);
    // Every launch has its own instance.
    let o = r.engine.observed();
    let mut ids: Vec<&str> = o
        .launches
        .values()
        .filter_map(|l| l.instance_id.as_deref())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

#[tokio::test]
async fn a_lone_job_goes_at_once_and_a_close_follower_waits_for_the_window() {
    let mut r = rig(config(Duration::from_millis(200), 20)).await;
    r.job(1).await;
    r.step(0).await;
    assert_eq!(r.calls(), 1, "a lone job is not held");

    // Two more jobs come 50 ms later, within the window of the first call.
    r.job(2).await;
    r.job(3).await;
    r.step(50).await;
    assert_eq!(r.calls(), 1, "held while the window is open");
    assert_eq!(
        r.engine.next_due(50),
        Some(200),
        "the driver wakes when it closes"
    );
    r.step(150).await;
    assert_eq!(r.calls(), 1);
    r.step(200).await;
    assert_eq!(r.calls(), 2, "both go out together when the window closes");
    assert_eq!(r.launched(), 3);
    let mut sizes = r.call_sizes();
    sizes.sort();
    assert_eq!(sizes, vec![1, 2]);

    // Long after: a lone job again goes at once.
    r.job(4).await;
    r.step(10_000).await;
    assert_eq!(r.calls(), 3);
}

#[tokio::test]
async fn a_zero_window_never_holds_a_launch() {
    let mut r = rig(config(Duration::ZERO, 20)).await;
    for (j, t) in [(1, 0), (2, 10), (3, 20)] {
        r.job(j).await;
        r.step(t).await;
        assert_eq!(r.calls(), j, "job {j} sent in its own step");
    }
}

#[tokio::test]
async fn launch_batch_max_one_sends_every_launch_alone() {
    let mut r = rig(config(Duration::from_millis(25), 1)).await;
    for j in 1..=4 {
        r.job(j).await;
    }
    r.step(0).await;
    assert_eq!(r.calls(), 4);
    assert_eq!(r.call_sizes(), vec![1, 1, 1, 1]);
    // Batches of one keep the launch id as the token (as before batching).
    let o = r.engine.observed();
    assert!(o.launches.values().all(|l| {
        l.batch
            .as_ref()
            .is_some_and(|b| b.id == l.id && b.size == 1)
    }));
}

#[tokio::test]
async fn a_held_launch_whose_job_no_longer_waits_is_dropped_unsent() {
    let mut r = rig(config(Duration::from_millis(200), 20)).await;
    r.job(1).await;
    r.step(0).await;
    assert_eq!(r.calls(), 1);
    // Jobs 2 and 3 come within the window and are held; job 3's workflow
    // is then cancelled while it waits.
    r.job(2).await;
    r.job(3).await;
    r.step(50).await;
    assert_eq!(r.calls(), 1, "held while the window is open");
    let mut cancelled = queued(3);
    cancelled.status = JobStatus::Completed;
    cancelled.conclusion = Some("cancelled".into());
    cancelled.at = 60;
    Engine::intake(&*r.store, "d-3-completed", &cancelled.into())
        .await
        .unwrap();
    r.step(60).await;
    r.step(200).await;
    assert_eq!(r.calls(), 2);
    assert_eq!(r.call_sizes(), vec![1, 1], "job 2's launch went alone");
    let o = r.engine.observed();
    let state = |job: u64| {
        o.launches
            .values()
            .find(|l| l.job_id == Some(job))
            .map(|l| l.state)
    };
    assert_eq!(state(2), Some(LaunchState::Launched));
    assert_eq!(state(3), Some(LaunchState::Cancelled));
    assert_eq!(
        r.engine.stats().launches_cancelled.get("linux-x64"),
        Some(&1)
    );
    // Durable: the store holds the cancellation, so a restart does not send it.
    let snap = r.store.load().await.unwrap();
    assert!(
        snap.launches
            .iter()
            .any(|l| l.job_id == Some(3) && l.state == LaunchState::Cancelled)
    );
}
