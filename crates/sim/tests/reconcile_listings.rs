//! What the reconciler asks GitHub for, through the real engine against the
//! simulated GitHub (which counts a request per page of 100, as GitHub
//! does). Listing the jobs of every active run every reconcile costs one
//! request per run: a burst of thousands of runs would spend a token's
//! hourly budget in minutes. With webhooks, a reconcile lists the jobs of
//! runs it knows nothing of (where a webhook was lost) and only a few
//! known runs, and still finds what webhooks did not tell.

use std::sync::{Arc, Mutex};

use runfleet_core::config::Config;
use runfleet_core::model::{JobState, JobStatus, Millis};
use runfleet_engine::Engine;
use runfleet_engine::memstore::MemStore;
use runfleet_sim::demo_config;
use runfleet_sim::rig::EngineRig;
use runfleet_sim::world::World;

const REPO: &str = "acme/app";

struct Rig {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    engine: Engine,
}

fn labels() -> Vec<String> {
    ["self-hosted", "linux", "x64"].map(String::from).to_vec()
}

async fn rig(poll: bool) -> Rig {
    let mut cfg: Config = demo_config();
    cfg.github.poll = poll;
    for p in &mut cfg.pools {
        p.warm = 0;
        p.warm_schedule.clear();
    }
    let EngineRig {
        world,
        store,
        engine,
    } = EngineRig::new(cfg, &[REPO]).await;
    Rig {
        world,
        store,
        engine,
    }
}

impl Rig {
    /// Jobs `ids`, each in its own run, queued at `at`; their webhooks
    /// (sent 50 ms later) are delivered unless `lost`.
    async fn queue(&mut self, ids: std::ops::RangeInclusive<u64>, at: Millis, lost: bool) {
        let hooks = {
            let mut w = self.world.lock().unwrap();
            for id in ids {
                w.add_job(id, 10_000 + id, REPO, labels(), at);
            }
            w.advance_to(at + 100);
            w.take_due_webhooks()
        };
        if !lost {
            for (delivery, ev) in hooks {
                Engine::intake(&*self.store, &delivery, &ev.into())
                    .await
                    .unwrap();
            }
        }
    }

    /// GitHub requests of `op` so far.
    fn calls(&self, op: &str) -> u64 {
        let w = self.world.lock().unwrap();
        w.calls.github_by_op.get(op).copied().unwrap_or(0)
    }

    async fn reconcile(&mut self, now: Millis) {
        self.world.lock().unwrap().advance_to(now);
        self.engine.reconcile(now).await.unwrap();
    }

    fn job_state(&self, id: u64) -> Option<JobState> {
        self.engine.observed().jobs.get(&id).map(|j| j.state)
    }
}

#[tokio::test]
async fn a_queued_job_whose_webhook_was_lost_is_found_by_the_next_reconcile() {
    let mut r = rig(false).await;
    r.queue(1..=1, 0, true).await;
    assert_eq!(r.job_state(1), None);
    r.reconcile(1_000).await;
    assert_eq!(r.job_state(1), Some(JobState::Queued));
    assert_eq!(r.calls("list_run_jobs"), 1, "its run, unknown, was listed");
}

#[tokio::test]
async fn known_runs_are_listed_a_few_at_a_time_not_all_every_reconcile() {
    let mut r = rig(false).await;
    r.queue(1..=300, 0, false).await;
    r.engine.step(0).await.unwrap();
    r.reconcile(1_000).await;
    assert_eq!(r.engine.observed().jobs.len(), 300);
    // Per repository, the queued runs and the runs in progress, at least
    // a page each: acme/app has 300 queued (3 pages) and none in progress
    // (1); acme/lib (also in the demo's repos) none of either (1 + 1).
    assert_eq!(r.calls("list_runs"), 6);
    assert_eq!(r.calls("list_run_jobs"), 10);
    r.reconcile(31_000).await;
    assert_eq!(r.calls("list_run_jobs"), 20, "ten more, never listed yet");

    // Polling has nothing else to go by: every active run, every time.
    let mut p = rig(true).await;
    p.queue(1..=300, 0, true).await;
    p.reconcile(1_000).await;
    assert_eq!(p.calls("list_run_jobs"), 300);
    assert_eq!(p.job_state(300), Some(JobState::Queued));
}

#[tokio::test]
async fn a_job_whose_run_ended_without_a_webhook_is_looked_up() {
    let mut r = rig(false).await;
    r.queue(1..=2, 0, false).await;
    r.engine.step(0).await.unwrap();
    {
        // Job 1's workflow is cancelled; the webhook never comes.
        let mut w = r.world.lock().unwrap();
        let j = w.jobs.get_mut(&1).unwrap();
        j.status = JobStatus::Completed;
        j.conclusion = Some("cancelled".into());
        j.completed_at = Some(10_000);
    }
    r.reconcile(20_000).await;
    assert_eq!(
        r.calls("get_job"),
        0,
        "not before a webhook would have come"
    );
    r.reconcile(40_000).await;
    assert_eq!(r.calls("get_job"), 1, "only the job whose run is over");
    assert_eq!(r.job_state(1), Some(JobState::Completed));
    assert_eq!(r.job_state(2), Some(JobState::Queued));
}
