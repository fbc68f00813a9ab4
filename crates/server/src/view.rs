//! What the status page and `/metrics` show: a snapshot of the engine's
//! state taken after every step. Holds no secret: the model types carry none.

use std::collections::BTreeMap;

use runfleet_core::model::{InstanceState, JobState, LaunchState, Millis, Scope};
use runfleet_core::plan::{Observed, is_waiting_warm};
use runfleet_core::runs::{RunStatus, run_status};
use runfleet_engine::{Engine, Health};
use serde::Serialize;

/// Instance states as the status page and metrics name them.
pub const INSTANCE_STATES: [&str; 6] = [
    "launching",
    "booting",
    "warm",
    "idle",
    "busy",
    "terminating",
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolView {
    pub name: String,
    pub max_runners: u32,
    pub queued: usize,
    /// state (one of [`INSTANCE_STATES`]) -> count
    pub instances: BTreeMap<String, usize>,
    /// Warm instances the pool is meant to keep waiting at the view's
    /// time: its `warm`, or the `warm` of the `warm_schedule` window open then.
    pub warm_target: u32,
}

impl PoolView {
    /// Instances alive or coming, counted against `max_runners`.
    pub fn used(&self) -> usize {
        self.instances.values().sum()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QueuedView {
    pub job_id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    pub pool: Option<String>,
    pub queued_at: Millis,
    pub launches: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub pool: String,
    pub state: String,
    pub cloud_state: String,
    pub launched_at: Millis,
    pub runner_name: String,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    pub job_id: u64,
    pub repo: String,
    pub state: String,
    pub reason: String,
    pub at: Millis,
}

/// One snapshot of everything the page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    pub fleet: String,
    pub at: Millis,
    pub pools: Vec<PoolView>,
    pub queued: Vec<QueuedView>,
    pub instances: Vec<InstanceView>,
    pub failures: Vec<FailureView>,
    pub health: Health,
    pub published: bool,
    /// Reconciles and steps since start (tests and operators can wait on these).
    pub reconciles: u64,
    pub steps: u64,
    /// On-demand runs (`launch`, `/v1/start`) the engine holds, by id.
    pub runs: BTreeMap<String, RunView>,
}

/// One on-demand run and where its runner is registered (who may see it).
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub status: RunStatus,
    pub scope: Scope,
}

impl View {
    pub fn of(engine: &Engine, now: Millis) -> View {
        let cfg = engine.config();
        let obs = engine.observed();
        let mut pools: Vec<PoolView> = cfg
            .pools
            .iter()
            .map(|p| PoolView {
                name: p.name.clone(),
                max_runners: p.max_runners,
                queued: 0,
                instances: INSTANCE_STATES.iter().map(|s| (s.to_string(), 0)).collect(),
                warm_target: p.warm_at(now),
            })
            .collect();
        let mut bump = |pool: &str, state: &str| {
            if let Some(p) = pools.iter_mut().find(|p| p.name == pool) {
                *p.instances.entry(state.to_string()).or_default() += 1;
            }
        };
        for l in obs
            .launches
            .values()
            .filter(|l| l.state == LaunchState::Requested)
        {
            bump(&l.pool, "launching");
        }
        let mut instances = Vec::new();
        for i in obs
            .instances
            .values()
            .filter(|i| i.fleet == cfg.fleet && i.alive())
        {
            let state = instance_state(obs, i);
            bump(&i.pool, state);
            instances.push(InstanceView {
                id: i.id.clone(),
                pool: i.pool.clone(),
                state: state.to_string(),
                cloud_state: i.state.as_str().to_string(),
                launched_at: i.launched_at,
                runner_name: i.runner_name(),
                scope: i.scope.as_ref().map(|s| s.to_string()),
            });
        }
        let mut queued = Vec::new();
        let mut failures = Vec::new();
        for j in obs.jobs.values() {
            let pool = runfleet_core::labels::pool_for(cfg, &j.labels).map(|p| p.name.clone());
            match j.state {
                JobState::Queued => {
                    if let Some(p) = pools.iter_mut().find(|p| Some(&p.name) == pool.as_ref()) {
                        p.queued += 1;
                    }
                    queued.push(QueuedView {
                        job_id: j.id,
                        run_id: j.run_id,
                        repo: j.repo.clone(),
                        labels: j.labels.clone(),
                        pool,
                        queued_at: j.queued_at,
                        launches: j.launches,
                    });
                }
                JobState::Failed | JobState::Ignored => failures.push(FailureView {
                    job_id: j.id,
                    repo: j.repo.clone(),
                    state: j.state.as_str().to_string(),
                    reason: j.reason.clone().unwrap_or_default(),
                    at: j.queued_at,
                }),
                _ => {}
            }
        }
        // Launch errors are failures worth seeing too, even when retried.
        for l in obs.launches.values() {
            if let (LaunchState::Failed, Some((kind, msg))) = (l.state, &l.error) {
                failures.push(FailureView {
                    job_id: l.job_id.unwrap_or(0),
                    repo: l.scope.to_string(),
                    state: format!("launch {} ({})", l.id, kind.as_str()),
                    reason: msg.clone(),
                    at: l.requested_at,
                });
            }
        }
        queued.sort_by_key(|q| (q.queued_at, q.job_id));
        instances.sort_by_key(|i| (i.launched_at, i.id.clone()));
        failures.sort_by_key(|f| std::cmp::Reverse(f.at));
        failures.truncate(50);
        let runs = obs
            .launches
            .values()
            .filter(|l| l.unique_label.is_some())
            .filter_map(|l| {
                Some((
                    l.id.clone(),
                    RunView {
                        status: run_status(obs, &l.id)?,
                        scope: l.scope.clone(),
                    },
                ))
            })
            .collect();
        View {
            fleet: cfg.fleet.clone(),
            at: now,
            pools,
            queued,
            instances,
            failures,
            health: engine.health().clone(),
            published: true,
            reconciles: engine.stats().reconciles,
            steps: engine.stats().steps,
            runs,
        }
    }
}

/// `launching` (no instance yet) is counted from launches; an instance is
/// `terminating`, `busy`, `idle` (runner online, no job), `warm` (a warm
/// instance waiting for a job, no runner yet) or `booting`.
pub fn instance_state(obs: &Observed, i: &runfleet_core::model::Instance) -> &'static str {
    if i.terminate_requested_at.is_some()
        || i.job_done_at.is_some()
        || i.state == InstanceState::Stopping
    {
        "terminating"
    } else if i.busy {
        "busy"
    } else if i.runner_online_at.is_some() {
        "idle"
    } else if is_waiting_warm(obs, i) {
        "warm"
    } else {
        "booting"
    }
}
