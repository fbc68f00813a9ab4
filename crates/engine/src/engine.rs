//! The controller loop body: intake -> plan -> execute -> observe.

mod batch;
mod interruptions;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use runfleet_core::bucket::TokenBucket;
use runfleet_core::config::Config;
use runfleet_core::model::{
    ErrorKind, Instance, InstanceState, IntakeEvent, Job, JobEvent, JobState, JobStatus, Launch,
    LaunchBatch, LaunchState, Millis, Scope, StartRequest, Unavailable, WarmAssignment,
    instance_of_runner,
};
use runfleet_core::plan::{
    Action, LaunchPlan, Observed, UNAVAILABLE_FOR_MS, marks_unavailable, plan, retry_backoff,
    scope_for,
};
use runfleet_core::userdata::{UserDataParams, render};
use serde::Serialize;
use tracing::{info, warn};

use crate::ports::{
    Cloud, GitHub, JitRequest, LaunchOutcome, LaunchRequest, Launched, Mutation, PortError,
    PortResult, Store, TimelineEvent,
};

/// Tag keys runfleet sets on every instance.
pub const TAG_FLEET: &str = "runfleet:fleet";
pub const TAG_POOL: &str = "runfleet:pool";
pub const TAG_LAUNCH: &str = "runfleet:launch";
/// Set (`"true"`) on instances launched for a warm pool: they boot and wait
/// for a job, their boot script polling SSM until `max_lifetime`.
pub const TAG_WARM: &str = "runfleet:warm";

/// Terminal jobs and gone instances are forgotten after this long.
const RETENTION_MS: Millis = 60 * 60 * 1000;
/// An instance missing from the cloud's listing this long after launch is gone.
const VANISHED_AFTER_MS: Millis = 2 * 60 * 1000;
/// A store-queued job absent from GitHub's queued list this long is looked up.
const RECHECK_AFTER_MS: Millis = 30 * 1000;
/// At most this many single-job lookups per reconcile.
const MAX_JOB_LOOKUPS: usize = 50;
/// With webhooks, a reconcile lists the jobs of at most this many active
/// runs that the state knows no job of (a run whose webhooks were lost);
/// the rest wait for the next reconcile.
const NEW_RUN_LISTINGS: usize = 100;
/// With webhooks, a reconcile lists again the jobs of at most this many
/// runs it already knows, listed longest ago first and none listed less
/// than [`RELIST_RUN_AFTER_MS`] ago: the safety net for a lost webhook of
/// a job in a known run, at a cost that does not grow with the burst
/// (listing every active run's jobs every reconcile costs one request per
/// run: 2,000 queued runs would spend a token's 5,000 requests an hour in
/// a minute and a half, and then nothing, not even a runner, gets made).
const KNOWN_RUN_LISTINGS: usize = 10;
const RELIST_RUN_AFTER_MS: Millis = 5 * 60 * 1000;

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Adapter calls in flight at once.
    pub concurrency: usize,
    /// Client-side pacing of launch calls (EC2's RunInstances/CreateFleet bucket).
    pub launch_bucket: (u32, f64),
    /// Client-side pacing of instances launched (EC2's instance bucket:
    /// a call for more instances than it holds is refused whole).
    pub instance_bucket: (u32, f64),
    /// Client-side pacing of runner configs written (SSM PutParameter's
    /// default throughput, 40 per second): a batch of instances launched
    /// at once is provisioned at the rate SSM takes, instead of minting
    /// runners whose configs then cannot be written.
    pub provision_bucket: (u32, f64),
    /// Plan/execute rounds per step at most.
    pub max_rounds: usize,
    /// List runners in every scope the config can use (each allowed
    /// repository, each owner with an org-scoped pool), not only in the
    /// scopes of known instances: finds a busy runner on an instance the
    /// store does not know. One request per repository per reconcile, so
    /// `reap` uses it and `serve` does not.
    pub list_all_scopes: bool,
    /// Several replicas on one store: act only while holding this lease
    /// (the driver's concern; the store given to the engine should be a
    /// [`crate::lease::LeasedStore`] on the same lease). `None`: the only
    /// replica, always acting.
    pub lease: Option<crate::lease::Lease>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency: 16,
            launch_bucket: (5, 2.0),
            instance_bucket: (1000, 2.0),
            provision_bucket: (40, 40.0),
            max_rounds: 6,
            list_all_scopes: false,
            lease: None,
        }
    }
}

/// Counters the server exports as metrics and the demo summarises.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// pool -> outcome (`started`, `completed`, `ignored`, `failed`) -> count
    pub jobs: BTreeMap<String, BTreeMap<String, u64>>,
    /// pool -> error kind -> count
    pub launch_errors: BTreeMap<String, BTreeMap<String, u64>>,
    /// pool -> instances launched
    pub launched: BTreeMap<String, u64>,
    /// reason -> terminations requested
    pub terminations: BTreeMap<String, u64>,
    /// queued -> started, per started job, in milliseconds
    pub queue_to_start_ms: Vec<u64>,
    /// adapter calls that failed, by port and kind
    pub adapter_errors: BTreeMap<String, u64>,
    pub steps: u64,
    pub reconciles: u64,
    /// pool -> notice and what its runner was doing (`spot_warning_busy`,
    /// `spot_warning_idle`, `rebalance_busy`, `rebalance_idle`) -> count;
    /// repeated deliveries are not counted
    pub interruptions: BTreeMap<String, BTreeMap<String, u64>>,
    /// pool -> `requested` / `refused` -> re-runs of jobs lost to a spot interruption
    pub reruns: BTreeMap<String, BTreeMap<String, u64>>,
    /// cloud events received, by outcome: `applied`, `unchanged` (a
    /// repeat, or nothing to do), `foreign` (an instance the state does not hold)
    pub cloud_events: BTreeMap<String, u64>,
    /// the same events by kind (`spot_warning`, `rebalance`,
    /// `state_change`) -> outcome -> count
    pub cloud_event_kinds: BTreeMap<String, BTreeMap<String, u64>>,
    /// pool -> launch calls sent to the cloud (a call sent again after an
    /// answer that may not have come counts again)
    pub launch_calls: BTreeMap<String, u64>,
    /// pool -> instances those launch calls asked for
    pub launch_call_instances: BTreeMap<String, u64>,
    /// pool -> launches dropped before they were sent because no queued
    /// job needed them any more
    pub launches_cancelled: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts one cloud event received, by its kind and `outcome`.
    fn cloud_event(&mut self, kind: &crate::ports::CloudEventKind, outcome: &str) {
        use crate::ports::CloudEventKind as K;
        let kind = match kind {
            K::SpotInterruption { .. } => "spot_warning",
            K::RebalanceRecommendation => "rebalance",
            K::StateChange(_) => "state_change",
        };
        *self.cloud_events.entry(outcome.to_string()).or_default() += 1;
        bump(&mut self.cloud_event_kinds, kind, outcome);
    }

    /// Counts one launch call of `pool` sent for `instances` instances.
    fn launch_call(&mut self, pool: &str, instances: u32) {
        *self.launch_calls.entry(pool.to_string()).or_default() += 1;
        *self
            .launch_call_instances
            .entry(pool.to_string())
            .or_default() += u64::from(instances);
    }
}

fn bump(map: &mut BTreeMap<String, BTreeMap<String, u64>>, a: &str, b: &str) {
    *map.entry(a.to_string())
        .or_default()
        .entry(b.to_string())
        .or_default() += 1;
}

/// What the last contact with each dependency said: `None` = fine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// Whether each dependency has answered at least once since start.
    pub github_reached: bool,
    pub cloud_reached: bool,
    pub store_reached: bool,
    pub github_error: Option<String>,
    pub cloud_error: Option<String>,
    pub store_error: Option<String>,
    /// With several replicas: whether this one leads. `None`: the only one.
    pub lease: Option<crate::lease::LeaseView>,
}

impl Health {
    fn github(&mut self, r: Result<(), &PortError>) {
        match r {
            Ok(()) => {
                self.github_reached = true;
                self.github_error = None;
            }
            Err(e) => self.github_error = Some(e.to_string()),
        }
    }
    fn cloud(&mut self, r: Result<(), &PortError>) {
        match r {
            Ok(()) => {
                self.cloud_reached = true;
                self.cloud_error = None;
            }
            Err(e) => self.cloud_error = Some(e.to_string()),
        }
    }
    /// Ready: every dependency reached at least once. A replica that does
    /// not lead only takes intake, so for it the store is enough.
    pub fn ready(&self) -> bool {
        match &self.lease {
            Some(l) if !l.leader => self.store_reached,
            _ => self.github_reached && self.cloud_reached && self.store_reached,
        }
    }

    /// Whether this replica leads (the only replica always does).
    pub fn leader(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.leader)
    }
}

/// One piece of I/O to run: an action, or a launch call for a batch.
enum Io {
    Act(Action),
    Launch(batch::LaunchCall),
}

enum Outcome {
    Launch {
        batch: String,
        result: PortResult<LaunchOutcome>,
    },
    Provision {
        instance_id: String,
        result: PortResult<u64>,
    },
    ParamDeleted {
        instance_id: String,
        result: PortResult<()>,
    },
    Terminate {
        instance_id: String,
        reason: runfleet_core::model::TerminateReason,
        result: PortResult<()>,
    },
    RunnerDeleted {
        runner_id: u64,
        result: PortResult<()>,
    },
    Rerun {
        job_id: u64,
        result: PortResult<()>,
    },
}

/// The state as the store holds it, before any listing.
fn observed_from(jobs: Vec<Job>, launches: Vec<Launch>, instances: Vec<Instance>) -> Observed {
    let mut obs = Observed {
        jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
        launches: launches.into_iter().map(|l| (l.id.clone(), l)).collect(),
        instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
        ..Observed::default()
    };
    obs.params = obs
        .instances
        .values()
        .filter(|i| i.param_present)
        .map(|i| i.id.clone())
        .collect();
    obs
}

/// The controller. Holds its state in memory, writes every change through
/// to the store before acting on it, and resumes from the store.
pub struct Engine {
    cfg: Arc<Config>,
    github: Arc<dyn GitHub>,
    cloud: Arc<dyn Cloud>,
    store: Arc<dyn Store>,
    obs: Observed,
    cursor: u64,
    stats: Stats,
    health: Health,
    opts: EngineOptions,
    launch_bucket: TokenBucket,
    instance_bucket: TokenBucket,
    provision_bucket: TokenBucket,
    /// When each pool's last launch call went out (batching window).
    last_launch_call: HashMap<String, Millis>,
    user_data: HashMap<String, Result<String, String>>,
    /// The boot script of each pool's warm instances: the same, but it
    /// waits for its runner config until `max_lifetime` (it is handed a job
    /// whenever one comes) instead of `boot_timeout`.
    warm_user_data: HashMap<String, Result<String, String>>,
    repos: Option<(Millis, Vec<String>)>,
    /// Active workflow run -> when the reconcile last listed its jobs.
    run_listed_at: HashMap<u64, Millis>,
    /// Waiting job -> when the reconcile last looked it up because a
    /// runner launched for it took a job (see `own_runner_took_an_unknown_job`).
    job_checked_at: HashMap<u64, Millis>,
    last_error: Option<(String, PortError)>,
    /// No cloud event poll before this (see `interruptions`).
    events_next_poll: Millis,
}

impl Engine {
    /// Loads the durable state and is ready to step.
    pub async fn new(
        cfg: Arc<Config>,
        github: Arc<dyn GitHub>,
        cloud: Arc<dyn Cloud>,
        store: Arc<dyn Store>,
        opts: EngineOptions,
        now: Millis,
    ) -> PortResult<Engine> {
        let snap = store.load().await?;
        let obs = observed_from(snap.jobs, snap.launches, snap.instances);
        let render_all = |warm: bool| {
            cfg.pools
                .iter()
                .map(|p| {
                    let rendered = render(&UserDataParams {
                        fleet: &cfg.fleet,
                        os: p.os,
                        arch: p.arch,
                        runner_version: p.runner_version.as_deref(),
                        setup_script: p.setup_script.as_deref(),
                        max_lifetime_secs: p.max_lifetime.as_secs(),
                        jit_poll_timeout_secs: if warm {
                            p.max_lifetime.as_secs()
                        } else {
                            cfg.server.boot_timeout.as_secs()
                        },
                    })
                    .map_err(|e| e.to_string());
                    (p.name.clone(), rendered)
                })
                .collect()
        };
        let user_data = render_all(false);
        let warm_user_data = render_all(true);
        let (cap, rate) = opts.launch_bucket;
        let (icap, irate) = opts.instance_bucket;
        let (pcap, prate) = opts.provision_bucket;
        Ok(Engine {
            cfg,
            github,
            cloud,
            store,
            obs,
            cursor: snap.cursor,
            stats: Stats::default(),
            health: Health {
                store_reached: true,
                ..Health::default()
            },
            launch_bucket: TokenBucket::new(cap, rate, now),
            instance_bucket: TokenBucket::new(icap, irate, now),
            provision_bucket: TokenBucket::new(pcap, prate, now),
            last_launch_call: HashMap::new(),
            opts,
            user_data,
            warm_user_data,
            repos: None,
            run_listed_at: HashMap::default(),
            job_checked_at: HashMap::default(),
            last_error: None,
            events_next_poll: 0,
        })
    }

    pub fn observed(&self) -> &Observed {
        &self.obs
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn health(&self) -> &Health {
        &self.health
    }
    /// Takes the queued -> started samples recorded since the last call.
    pub fn drain_queue_to_start(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.stats.queue_to_start_ms)
    }
    pub fn github(&self) -> &Arc<dyn GitHub> {
        &self.github
    }
    pub fn cloud(&self) -> &Arc<dyn Cloud> {
        &self.cloud
    }

    /// Records that the store failed (readiness shows it).
    pub fn note_store_error(&mut self, e: &PortError) {
        self.health.store_error = Some(e.to_string());
    }

    /// The options it was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Records what the lease looks like (status page, readiness).
    pub fn set_lease_view(&mut self, view: Option<crate::lease::LeaseView>) {
        self.health.lease = view;
    }

    /// Replaces the in-memory state with what the store holds (a replica
    /// that starts leading, or a follower refreshing its status view).
    /// Runners, parameters and other observations not kept in the store
    /// come back with the next reconcile.
    pub async fn reload(&mut self) -> PortResult<()> {
        let snap = self.store.load().await?;
        self.health.store_reached = true;
        self.health.store_error = None;
        self.obs = observed_from(snap.jobs, snap.launches, snap.instances);
        self.cursor = snap.cursor;
        Ok(())
    }

    /// The durable store this engine writes through.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Durably records an observation (webhook or API): the caller may
    /// acknowledge once this returns Ok. Does not change the engine's state;
    /// the next [`Engine::step`] folds it in.
    pub async fn intake(
        store: &dyn Store,
        delivery_id: &str,
        ev: &IntakeEvent,
    ) -> PortResult<bool> {
        Ok(matches!(
            store.intake_event(delivery_id, ev).await?,
            crate::ports::Intake::Stored(_)
        ))
    }

    /// Folds stored observations into jobs and instances.
    pub async fn pull_intake(&mut self, now: Millis) -> PortResult<usize> {
        let mut total = 0;
        loop {
            let batch = self.store.intake_since(self.cursor, 1000).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len();
            let mut muts = Vec::new();
            let mut jobs_touched = BTreeSet::new();
            let mut inst_touched = BTreeSet::new();
            for (seq, ev) in &batch {
                self.cursor = *seq;
                match ev {
                    IntakeEvent::Job(ev) => {
                        self.fold_event(ev, now, &mut muts, &mut jobs_touched, &mut inst_touched)
                    }
                    IntakeEvent::Start(req) => self.fold_start(req, now, &mut muts),
                }
            }
            for id in jobs_touched {
                muts.push(Mutation::PutJob(self.obs.jobs[&id].clone()));
            }
            for id in inst_touched {
                muts.push(Mutation::PutInstance(self.obs.instances[&id].clone()));
            }
            muts.push(Mutation::Cursor(self.cursor));
            self.store.apply(&muts).await?;
        }
    }

    fn fold_event(
        &mut self,
        ev: &JobEvent,
        now: Millis,
        muts: &mut Vec<Mutation>,
        jobs_touched: &mut BTreeSet<u64>,
        inst_touched: &mut BTreeSet<String>,
    ) {
        let pool_name = runfleet_core::labels::pool_for(&self.cfg, &ev.labels)
            .map_or_else(|| "none".to_string(), |p| p.name.clone());
        let (changed, started_now, completed_now) = match self.obs.jobs.get_mut(&ev.job_id) {
            Some(job) => {
                let was_started = job.started_at.is_some();
                let was_completed = job.state == JobState::Completed;
                let changed = job.apply(ev);
                (
                    changed,
                    !was_started && job.started_at.is_some(),
                    !was_completed && job.state == JobState::Completed,
                )
            }
            None => {
                let job = Job::new(ev);
                let s = job.started_at.is_some();
                let c = job.state == JobState::Completed;
                self.obs.jobs.insert(ev.job_id, job);
                muts.push(timeline(
                    ev.at,
                    Some(ev.job_id),
                    None,
                    format!("job queued in {} ({:?})", ev.repo, ev.labels),
                ));
                (true, s, c)
            }
        };
        if !changed {
            return;
        }
        jobs_touched.insert(ev.job_id);
        let job = &self.obs.jobs[&ev.job_id];
        if started_now {
            let at = job.started_at.unwrap_or(now);
            self.stats
                .queue_to_start_ms
                .push(at.saturating_sub(job.queued_at));
            bump(&mut self.stats.jobs, &pool_name, "started");
            muts.push(timeline(
                at,
                Some(job.id),
                None,
                format!(
                    "job started on {}",
                    job.runner_name.as_deref().unwrap_or("?")
                ),
            ));
            info!(job_id = job.id, run_id = job.run_id, repo = %job.repo, pool = %pool_name, runner_name = job.runner_name.as_deref().unwrap_or(""), "job started");
        }
        if completed_now {
            bump(&mut self.stats.jobs, &pool_name, "completed");
            muts.push(timeline(
                ev.at,
                Some(job.id),
                None,
                format!(
                    "job completed ({})",
                    ev.conclusion.as_deref().unwrap_or("unknown")
                ),
            ));
            info!(job_id = job.id, run_id = job.run_id, repo = %job.repo, pool = %pool_name, "job completed");
        }
        let Some(iid) = ev.runner_name.as_deref().and_then(instance_of_runner) else {
            return;
        };
        let Some(inst) = self.obs.instances.get_mut(iid) else {
            return;
        };
        let before = inst.clone();
        match ev.status {
            JobStatus::InProgress if inst.job_done_at.is_none() => {
                inst.busy = true;
                inst.runner_online_at.get_or_insert(ev.at);
            }
            JobStatus::Completed => {
                inst.busy = false;
                inst.runner_online_at.get_or_insert(ev.at);
                inst.job_done_at.get_or_insert(ev.at);
            }
            _ => {}
        }
        if *inst != before {
            inst_touched.insert(inst.id.clone());
        }
    }

    /// A start request becomes a recorded launch (the planner makes the
    /// call, as for a launch resumed after a crash). A request for a pool
    /// that is not configured is recorded as a failed launch, so its
    /// requester learns why.
    fn fold_start(&mut self, req: &StartRequest, now: Millis, muts: &mut Vec<Mutation>) {
        if self.obs.launches.contains_key(&req.id) {
            return;
        }
        let pool = self.cfg.pool(&req.pool);
        let scope = pool.map_or_else(
            || Scope::Repo(req.repo.clone()),
            |p| scope_for(p, &req.repo),
        );
        let mut launch = Launch {
            id: req.id.clone(),
            pool: req.pool.clone(),
            scope,
            job_id: None,
            unique_label: Some(req.unique_label.clone()),
            name: req.name.clone(),
            state: LaunchState::Requested,
            requested_at: req.at.min(now),
            instance_id: None,
            error: None,
            not_before: 0,
            batch: None,
        };
        let what = if pool.is_none() {
            let msg = format!("pool {:?} is not configured", req.pool);
            launch.state = LaunchState::Failed;
            launch.error = Some((ErrorKind::Invalid, msg.clone()));
            warn!(launch_id = %req.id, repo = %req.repo, "start request refused: {msg}");
            format!("start {} for {} refused: {msg}", req.id, req.repo)
        } else {
            info!(launch_id = %req.id, repo = %req.repo, pool = %req.pool, "start request accepted");
            format!(
                "start {} for {} in pool {} (label {})",
                req.id, req.repo, req.pool, req.unique_label
            )
        };
        muts.push(timeline(now, None, None, what));
        muts.push(Mutation::PutLaunch(launch.clone()));
        self.obs.launches.insert(req.id.clone(), launch);
    }

    /// What the planner would do now, without doing it.
    pub fn plan(&self, now: Millis) -> Vec<Action> {
        plan(&self.cfg, &self.obs, now)
    }

    /// Executes chosen actions (from [`Engine::plan`]) once; returns how
    /// many succeeded.
    pub async fn execute_actions(
        &mut self,
        actions: Vec<Action>,
        now: Millis,
    ) -> PortResult<usize> {
        self.execute(actions, now).await
    }

    /// Takes the most recent adapter failure (`(operation, error)`, e.g.
    /// `("provision", Auth: ...)`) recorded since the last call. A caller
    /// that executes only its own actions (`runfleet launch`) learns from it
    /// why its action did not happen; the messages hold no secret.
    pub fn take_last_error(&mut self) -> Option<(String, PortError)> {
        self.last_error.take()
    }

    /// Gives up a launch that has not been made yet (state `Requested`):
    /// records it as failed with `kind` and `msg`, so no one resumes it
    /// later. A launch whose call did go through after all is found again
    /// by its `runfleet:launch` tag and adopted by the next reconcile.
    /// Returns whether the launch was given up.
    pub async fn give_up_launch(
        &mut self,
        launch_id: &str,
        kind: ErrorKind,
        msg: &str,
    ) -> PortResult<bool> {
        let Some(l) = self
            .obs
            .launches
            .get_mut(launch_id)
            .filter(|l| l.state == LaunchState::Requested)
        else {
            return Ok(false);
        };
        l.state = LaunchState::Failed;
        l.error = Some((kind, msg.to_string()));
        let put = Mutation::PutLaunch(l.clone());
        self.store.apply(&[put]).await?;
        Ok(true)
    }

    /// Observes one on-demand run only (`runfleet launch --wait`): lists the
    /// runners of its scope and, with `cloud`, this fleet's instances, and
    /// folds what they say about the run's instance and its runner into the
    /// state (and the store). Nothing else in the state changes, so a
    /// broker that shares its store with others never reconciles their
    /// instances. Does nothing while the run has no instance.
    pub async fn observe_run(
        &mut self,
        launch_id: &str,
        now: Millis,
        cloud: bool,
    ) -> PortResult<()> {
        let Some(iid) = self
            .obs
            .launches
            .get(launch_id)
            .and_then(|l| l.instance_id.clone())
        else {
            return Ok(());
        };
        let Some((scope, name)) = self
            .obs
            .instances
            .get(&iid)
            .and_then(|i| Some((i.scope.clone()?, i.runner_name())))
        else {
            return Ok(());
        };
        let listed_state = if cloud {
            match self.cloud.list_instances(&self.cfg.fleet).await {
                Ok(l) => {
                    self.health.cloud(Ok(()));
                    l.into_iter().find(|ci| ci.id == iid).map(|ci| ci.state)
                }
                Err(e) => {
                    self.health.cloud(Err(&e));
                    self.adapter_error("list_instances", &e);
                    None
                }
            }
        } else {
            None
        };
        let runner = match self.github.list_runners(&scope).await {
            Ok(rs) => {
                self.health.github(Ok(()));
                Some(rs.into_iter().find(|r| r.name == name))
            }
            Err(e) => {
                self.health.github(Err(&e));
                self.adapter_error("list_runners", &e);
                None
            }
        };
        let Some(inst) = self.obs.instances.get_mut(&iid) else {
            return Ok(());
        };
        let before = inst.clone();
        if let Some(state) = listed_state {
            inst.state = state;
        }
        match &runner {
            Some(Some(r)) => {
                if r.online || r.busy {
                    inst.runner_online_at.get_or_insert(now);
                }
                if inst.job_done_at.is_none() {
                    inst.busy = r.busy;
                }
            }
            // An ephemeral runner disappears after its job.
            Some(None)
                if inst.runner_online_at.is_some()
                    && inst.job_done_at.is_none()
                    && inst.jit_written =>
            {
                inst.busy = false;
                inst.job_done_at = Some(now);
            }
            Some(None) | None => {}
        }
        if let Some(found) = runner {
            self.obs.runners.retain(|r| r.name != name);
            self.obs.runners.extend(found);
        }
        if *inst != before {
            let mut muts = vec![Mutation::PutInstance(inst.clone())];
            if before.runner_online_at.is_none() && inst.runner_online_at.is_some() {
                muts.push(timeline(
                    now,
                    None,
                    Some(&iid),
                    format!("runner {name} online"),
                ));
            }
            self.store.apply(&muts).await?;
        }
        Ok(())
    }

    /// Plans and executes until there is nothing left to do right now.
    pub async fn step(&mut self, now: Millis) -> PortResult<usize> {
        self.stats.steps += 1;
        self.pull_intake(now).await?;
        self.pull_cloud_events(now).await?;
        self.health.store_error = None;
        let mut done = 0;
        for _ in 0..self.opts.max_rounds {
            let actions = plan(&self.cfg, &self.obs, now);
            if actions.is_empty() {
                break;
            }
            let progressed = self.execute(actions, now).await?;
            done += progressed;
            if progressed == 0 {
                break;
            }
        }
        Ok(done)
    }

    /// Executes planned actions; returns how many changed something.
    async fn execute(&mut self, actions: Vec<Action>, now: Millis) -> PortResult<usize> {
        let mut pre = Vec::new();
        let mut io = Vec::new();
        let mut launches = Vec::new();
        let mut progressed = 0;
        for a in actions {
            match a {
                Action::MarkJob {
                    job_id,
                    state,
                    reason,
                } => {
                    if let Some(job) = self.obs.jobs.get_mut(&job_id) {
                        job.state = state;
                        job.reason = Some(reason.clone());
                        let pool = runfleet_core::labels::pool_for(&self.cfg, &job.labels)
                            .map_or("none", |p| p.name.as_str());
                        bump(&mut self.stats.jobs, pool, state.as_str());
                        warn!(job_id, run_id = job.run_id, repo = %job.repo, %reason, "job {}", state.as_str());
                        pre.push(Mutation::PutJob(job.clone()));
                        pre.push(timeline(
                            now,
                            Some(job_id),
                            None,
                            format!("job {}: {reason}", state.as_str()),
                        ));
                        progressed += 1;
                    }
                }
                Action::CancelLaunch {
                    id,
                    pool,
                    job_id,
                    reason,
                } => {
                    if let Some(l) = self.obs.launches.get_mut(&id)
                        && l.state == LaunchState::Requested
                        && l.batch.is_none()
                    {
                        l.state = LaunchState::Cancelled;
                        *self
                            .stats
                            .launches_cancelled
                            .entry(pool.clone())
                            .or_default() += 1;
                        info!(launch = %id, %pool, ?job_id, %reason, "launch cancelled");
                        pre.push(Mutation::PutLaunch(l.clone()));
                        pre.push(timeline(
                            now,
                            job_id,
                            None,
                            format!("launch {id} cancelled before it was sent: {reason}"),
                        ));
                        progressed += 1;
                    }
                }
                Action::AssignWarm {
                    instance_id,
                    scope,
                    job_id,
                    ..
                } => {
                    if self.assign_warm(&instance_id, scope, job_id, now, &mut pre) {
                        progressed += 1;
                    }
                }
                Action::Launch(lp) => launches.push(lp),
                // Paced: planned again next step while SSM's rate is used up.
                Action::ProvisionRunner { .. } if !self.provision_bucket.try_take(1, now) => {}
                other => io.push(Io::Act(other)),
            }
        }
        let (calls, sent) = self.form_launch_calls(launches, now, &mut pre);
        progressed += sent;
        io.extend(calls.into_iter().map(Io::Launch));
        // Invariant: launches are durable before any cloud call.
        if !pre.is_empty() {
            self.store.apply(&pre).await?;
        }
        for a in &io {
            if let Io::Launch(call) = a {
                self.stats.launch_call(&call.plan.pool, call.batch.size);
            }
        }
        let outcomes: Vec<Outcome> = {
            let this = &*self;
            futures::stream::iter(io)
                .map(|a| this.run(a))
                .buffered(this.opts.concurrency.max(1))
                .collect()
                .await
        };
        let mut muts = Vec::new();
        for o in outcomes {
            if self.absorb(o, now, &mut muts) {
                progressed += 1;
            }
        }
        if !muts.is_empty() {
            self.store.apply(&muts).await?;
        }
        Ok(progressed)
    }

    /// Records that a waiting warm instance now serves `job_id`: its
    /// runner is registered in `scope` (the planner's ProvisionRunner, in
    /// the same plan, mints and writes the config). Durable before any call.
    fn assign_warm(
        &mut self,
        instance_id: &str,
        scope: Scope,
        job_id: u64,
        now: Millis,
        muts: &mut Vec<Mutation>,
    ) -> bool {
        let Some(inst) = self.obs.instances.get_mut(instance_id) else {
            return false;
        };
        if inst.assigned.is_some() || inst.scope.is_some() || !inst.alive() {
            return false; // planned on stale state: not twice
        }
        inst.scope = Some(scope);
        inst.assigned = Some(WarmAssignment { job_id, at: now });
        info!(instance_id = %inst.id, pool = %inst.pool, job_id, "warm instance assigned");
        muts.push(Mutation::PutInstance(inst.clone()));
        muts.push(timeline(
            now,
            Some(job_id),
            Some(instance_id),
            format!("warm instance {instance_id} assigned to job {job_id}"),
        ));
        true
    }

    fn record_launch(
        &mut self,
        lp: &LaunchPlan,
        now: Millis,
        muts: &mut Vec<Mutation>,
    ) -> &mut Launch {
        if let Some(job) = lp.job_id.and_then(|j| self.obs.jobs.get_mut(&j)) {
            job.launches += 1;
            muts.push(Mutation::PutJob(job.clone()));
            muts.push(timeline(
                now,
                Some(job.id),
                None,
                format!("launch {} requested in pool {}", lp.id, lp.pool),
            ));
        }
        self.obs.launches.insert(
            lp.id.clone(),
            Launch {
                id: lp.id.clone(),
                pool: lp.pool.clone(),
                scope: lp.scope.clone(),
                job_id: lp.job_id,
                unique_label: lp.unique_label.clone(),
                name: lp.name.clone(),
                state: LaunchState::Requested,
                requested_at: now,
                instance_id: None,
                error: None,
                not_before: 0,
                batch: None,
            },
        );
        self.obs.launches.get_mut(&lp.id).expect("just inserted")
    }

    async fn run(&self, io: Io) -> Outcome {
        let fleet = self.cfg.fleet.as_str();
        let a = match io {
            Io::Launch(call) => {
                let result = match self.launch_request(&call.plan, &call.batch, call.resend) {
                    Ok(req) => self.cloud.launch(&req).await,
                    Err(e) => Err(e),
                };
                return Outcome::Launch {
                    batch: call.batch.id,
                    result,
                };
            }
            Io::Act(a) => a,
        };
        match a {
            Action::ProvisionRunner {
                instance_id,
                scope,
                runner_name,
                labels,
                runner_group_id,
                ..
            } => {
                let req = JitRequest {
                    scope: scope.clone(),
                    name: runner_name.clone(),
                    labels,
                    runner_group_id,
                };
                let result = self.provision(fleet, &instance_id, &req).await;
                Outcome::Provision {
                    instance_id,
                    result,
                }
            }
            Action::DeleteParameter { instance_id } => {
                let result = self.cloud.delete_jit(fleet, &instance_id).await;
                Outcome::ParamDeleted {
                    instance_id,
                    result,
                }
            }
            Action::Terminate {
                instance_id,
                runner,
                reason,
                ..
            } => {
                let result = async {
                    if let Some((scope, id)) = &runner {
                        match self.github.delete_runner(scope, *id).await {
                            Ok(()) => {}
                            Err(e) if e.kind == ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                    let _ = self.cloud.delete_jit(fleet, &instance_id).await;
                    self.cloud
                        .terminate(fleet, std::slice::from_ref(&instance_id))
                        .await
                }
                .await;
                Outcome::Terminate {
                    instance_id,
                    reason,
                    result,
                }
            }
            Action::DeleteRunner {
                scope, runner_id, ..
            } => {
                let result = match self.github.delete_runner(&scope, runner_id).await {
                    Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                    r => r,
                };
                Outcome::RunnerDeleted { runner_id, result }
            }
            Action::RerunJob { job_id, repo } => {
                let result = self.github.rerun_job(&repo, job_id).await;
                Outcome::Rerun { job_id, result }
            }
            Action::MarkJob { .. }
            | Action::AssignWarm { .. }
            | Action::CancelLaunch { .. }
            | Action::Launch(_) => {
                unreachable!("applied before I/O")
            }
        }
    }

    async fn provision(&self, fleet: &str, instance_id: &str, req: &JitRequest) -> PortResult<u64> {
        let jit = match self.github.generate_jitconfig(req).await {
            Ok(j) => j,
            Err(e) if e.kind == ErrorKind::Invalid => {
                // Most likely a runner of that name exists from an attempt that
                // crashed before its config reached SSM: replace it.
                let runners = self.github.list_runners(&req.scope).await?;
                match runners.iter().find(|r| r.name == req.name) {
                    Some(r) if !r.busy => {
                        self.github.delete_runner(&req.scope, r.id).await?;
                        self.github.generate_jitconfig(req).await?
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.cloud.put_jit(fleet, instance_id, &jit.encoded).await?;
        Ok(jit.runner_id)
    }

    fn launch_request(
        &self,
        lp: &LaunchPlan,
        batch: &LaunchBatch,
        resend: bool,
    ) -> PortResult<LaunchRequest> {
        let pool = self.cfg.pool(&lp.pool).ok_or_else(|| {
            PortError::new(
                ErrorKind::Invalid,
                format!("pool {} is not configured", lp.pool),
            )
        })?;
        let scripts = if lp.is_warm() {
            &self.warm_user_data
        } else {
            &self.user_data
        };
        let user_data = match scripts.get(&pool.name) {
            Some(Ok(u)) => u.clone(),
            Some(Err(e)) => {
                return Err(PortError::new(
                    ErrorKind::Invalid,
                    format!("user data of pool {}: {e}", pool.name),
                ));
            }
            None => {
                return Err(PortError::new(
                    ErrorKind::Invalid,
                    format!("no user data for pool {}", pool.name),
                ));
            }
        };
        if lp.offerings.is_empty() {
            return Err(PortError::new(
                ErrorKind::Capacity,
                "every offering is cooling down after capacity errors",
            ));
        }
        let name = lp
            .name
            .clone()
            .unwrap_or_else(|| format!("runfleet-{}", pool.name));
        let mut tags = vec![
            (TAG_FLEET.to_string(), self.cfg.fleet.clone()),
            (TAG_POOL.to_string(), pool.name.clone()),
            ("Name".to_string(), name),
            (TAG_LAUNCH.to_string(), batch.id.clone()),
        ];
        if lp.is_warm() {
            tags.push((TAG_WARM.to_string(), "true".to_string()));
        }
        Ok(LaunchRequest {
            client_token: batch.id.clone(),
            count: batch.size.max(1),
            fleet: self.cfg.fleet.clone(),
            pool: pool.name.clone(),
            launch_template: pool.launch_template.clone(),
            launch_template_version: pool.launch_template_version.clone(),
            offerings: lp.offerings.to_vec(),
            tags,
            user_data,
            role_arn: pool
                .role_arn
                .clone()
                .or_else(|| self.cfg.aws.role_arn.clone()),
            external_id: pool
                .external_id
                .clone()
                .or_else(|| self.cfg.aws.external_id.clone()),
            resend,
        })
    }

    /// Applies one outcome to the state; returns whether it succeeded.
    fn absorb(&mut self, o: Outcome, now: Millis, muts: &mut Vec<Mutation>) -> bool {
        match o {
            Outcome::Launch { batch, result } => self.absorb_launch(&batch, result, now, muts),
            Outcome::Provision {
                instance_id,
                result,
            } => {
                let Some(inst) = self.obs.instances.get_mut(&instance_id) else {
                    return false;
                };
                match result {
                    Ok(runner_id) => {
                        inst.jit_written = true;
                        inst.param_present = true;
                        self.obs.params.insert(instance_id.clone());
                        info!(instance_id = %inst.id, pool = %inst.pool, runner_name = %inst.runner_name(), runner_id, "runner config written");
                        muts.push(Mutation::PutInstance(inst.clone()));
                        muts.push(timeline(
                            now,
                            None,
                            Some(&instance_id),
                            format!("runner {} registered, config in SSM", inst.runner_name()),
                        ));
                        true
                    }
                    Err(e) => {
                        self.adapter_error("provision", &e);
                        warn!(instance_id = %instance_id, error = %e, "runner config not written");
                        false
                    }
                }
            }
            Outcome::ParamDeleted {
                instance_id,
                result,
            } => match result {
                Ok(()) => {
                    self.obs.params.remove(&instance_id);
                    if let Some(inst) = self.obs.instances.get_mut(&instance_id) {
                        inst.param_present = false;
                        muts.push(Mutation::PutInstance(inst.clone()));
                    }
                    true
                }
                Err(e) => {
                    self.adapter_error("delete_parameter", &e);
                    false
                }
            },
            Outcome::Terminate {
                instance_id,
                reason,
                result,
            } => match result {
                Ok(()) => {
                    *self
                        .stats
                        .terminations
                        .entry(reason.as_str().to_string())
                        .or_default() += 1;
                    self.obs.params.remove(&instance_id);
                    if let Some(inst) = self.obs.instances.get_mut(&instance_id) {
                        inst.terminate_requested_at = Some(now);
                        inst.terminate_reason = Some(reason);
                        inst.param_present = false;
                        info!(instance_id = %inst.id, pool = %inst.pool, runner_name = %inst.runner_name(), reason = reason.as_str(), "instance terminated");
                        muts.push(Mutation::PutInstance(inst.clone()));
                        let job = self.job_of_instance(&instance_id);
                        muts.push(timeline(
                            now,
                            job,
                            Some(&instance_id),
                            format!("instance terminated ({})", reason.as_str()),
                        ));
                    }
                    true
                }
                Err(e) => {
                    self.adapter_error("terminate", &e);
                    warn!(instance_id = %instance_id, error = %e, "termination not done");
                    false
                }
            },
            Outcome::Rerun { job_id, result } => self.absorb_rerun(job_id, result, now, muts),
            Outcome::RunnerDeleted { runner_id, result } => match result {
                Ok(()) => {
                    self.obs.runners.retain(|r| r.id != runner_id);
                    true
                }
                Err(e) => {
                    self.adapter_error("delete_runner", &e);
                    false
                }
            },
        }
    }

    /// Applies a launch call's answer to the members of its batch: the
    /// instances go to the members still waiting, in order of launch id
    /// (an instance already known keeps its launch); a member left without
    /// one has failed. An error that may pass leaves them all waiting, to
    /// be sent again whole.
    fn absorb_launch(
        &mut self,
        batch_id: &str,
        result: PortResult<LaunchOutcome>,
        now: Millis,
        muts: &mut Vec<Mutation>,
    ) -> bool {
        let members = self.batch_members(batch_id);
        let Some(pool) = members
            .first()
            .and_then(|id| self.obs.launches.get(id))
            .map(|l| l.pool.clone())
        else {
            return false;
        };
        let waiting: Vec<String> = members
            .into_iter()
            .filter(|id| {
                self.obs
                    .launches
                    .get(id)
                    .is_some_and(|l| l.state == LaunchState::Requested)
            })
            .collect();
        match result {
            Ok(out) => {
                for (offering, err) in &out.errors {
                    bump(&mut self.stats.launch_errors, &pool, err.kind.as_str());
                    if marks_unavailable(err.kind) {
                        self.obs.unavailable.retain(|u| &u.offering != offering);
                        self.obs.unavailable.push(Unavailable {
                            offering: offering.clone(),
                            until: now + UNAVAILABLE_FOR_MS,
                        });
                    }
                }
                let fresh: Vec<Launched> = out
                    .instances
                    .into_iter()
                    .filter(|i| !self.obs.instances.contains_key(&i.instance_id))
                    .collect();
                let mut fresh = fresh.into_iter();
                for id in waiting {
                    let Some(launch) = self.obs.launches.get(&id).cloned() else {
                        continue;
                    };
                    match fresh.next() {
                        Some(inst) => self.launched(launch, &inst, now, muts),
                        None => {
                            let (kind, msg) = out
                                .errors
                                .last()
                                .map(|(o, e)| (e.kind, format!("{o}: {}", e.message)))
                                .unwrap_or((ErrorKind::Capacity, "no offering launched".into()));
                            let mut l = launch;
                            l.state = LaunchState::Failed;
                            l.error = Some((kind, msg.clone()));
                            self.fail_launch_job(&l, kind, &msg, now, muts);
                            muts.push(Mutation::PutLaunch(l.clone()));
                            self.obs.launches.insert(l.id.clone(), l);
                        }
                    }
                }
                for extra in fresh {
                    warn!(instance_id = %extra.instance_id, batch = %batch_id, "launch call returned more instances than it asked for");
                }
                true
            }
            Err(e) => {
                bump(&mut self.stats.launch_errors, &pool, e.kind.as_str());
                self.adapter_error("launch", &e);
                for id in waiting {
                    let Some(mut l) = self.obs.launches.get(&id).cloned() else {
                        continue;
                    };
                    if e.kind.is_permanent()
                        || matches!(e.kind, ErrorKind::Capacity | ErrorKind::Quota)
                    {
                        l.state = LaunchState::Failed;
                        l.error = Some((e.kind, e.message.clone()));
                        self.fail_launch_job(&l, e.kind, &e.message, now, muts);
                    } else {
                        // May have happened: call again later with the same token.
                        let attempt = (now.saturating_sub(l.requested_at) / 5_000) as u32 + 1;
                        let wait = e
                            .retry_after_ms
                            .unwrap_or(0)
                            .max(retry_backoff(attempt) / 5 + jitter(batch_id, attempt));
                        l.not_before = now + wait;
                    }
                    muts.push(Mutation::PutLaunch(l.clone()));
                    self.obs.launches.insert(l.id.clone(), l);
                }
                false
            }
        }
    }

    /// Binds a launched instance to its launch and starts tracking it.
    fn launched(&mut self, mut l: Launch, inst: &Launched, now: Millis, muts: &mut Vec<Mutation>) {
        let pool = l.pool.clone();
        l.state = LaunchState::Launched;
        l.instance_id = Some(inst.instance_id.clone());
        *self.stats.launched.entry(pool.clone()).or_default() += 1;
        let instance = Instance {
            launch_id: Some(l.id.clone()),
            // A warm instance has no scope until it is given a job.
            scope: (!l.is_warm()).then(|| l.scope.clone()),
            unique_label: l.unique_label.clone(),
            market: Some(inst.offering.market),
            offering: Some(inst.offering.clone()),
            ..Instance::new(
                &inst.instance_id,
                &self.cfg.fleet,
                &pool,
                InstanceState::Pending,
                inst.launched_at,
            )
        };
        info!(job_id = l.job_id, pool = %pool, instance_id = %instance.id, offering = %inst.offering, launch_id = %l.id, "instance launched");
        muts.push(timeline(
            now,
            l.job_id,
            Some(&instance.id),
            format!("instance {} launched ({})", instance.id, inst.offering),
        ));
        muts.push(Mutation::PutInstance(instance.clone()));
        self.obs.instances.insert(instance.id.clone(), instance);
        muts.push(Mutation::PutLaunch(l.clone()));
        self.obs.launches.insert(l.id.clone(), l);
    }

    fn fail_launch_job(
        &mut self,
        l: &Launch,
        kind: ErrorKind,
        msg: &str,
        now: Millis,
        muts: &mut Vec<Mutation>,
    ) {
        warn!(job_id = l.job_id, pool = %l.pool, launch_id = %l.id, kind = kind.as_str(), error = %msg, "launch failed");
        if let Some(job) = l.job_id.and_then(|j| self.obs.jobs.get_mut(&j)) {
            job.retry_at = now + retry_backoff(job.launches);
            muts.push(Mutation::PutJob(job.clone()));
            muts.push(timeline(
                now,
                Some(job.id),
                None,
                format!("launch {} failed ({}): {msg}", l.id, kind.as_str()),
            ));
        }
    }

    fn adapter_error(&mut self, port: &str, e: &PortError) {
        self.last_error = Some((port.to_string(), e.clone()));
        *self
            .stats
            .adapter_errors
            .entry(format!("{port}:{}", e.kind.as_str()))
            .or_default() += 1;
    }

    fn job_of_instance(&self, instance_id: &str) -> Option<u64> {
        let inst = self.obs.instances.get(instance_id)?;
        self.obs.launches.get(inst.launch_id.as_ref()?)?.job_id
    }

    /// Compares GitHub and the cloud with the state and repairs the state;
    /// the next step acts on the difference.
    pub async fn reconcile(&mut self, now: Millis) -> PortResult<()> {
        self.stats.reconciles += 1;
        let mut muts = Vec::new();
        self.reconcile_instances(now, &mut muts).await;
        self.reconcile_runners(now, &mut muts).await;
        match self.cloud.list_jit(&self.cfg.fleet).await {
            Ok(ids) => {
                self.obs.params = ids.into_iter().collect();
                // Instances delete their own parameter once read: what the
                // listing no longer shows is gone, whoever deleted it.
                for inst in self.obs.instances.values_mut() {
                    if inst.param_present && !self.obs.params.contains(&inst.id) {
                        inst.param_present = false;
                        muts.push(Mutation::PutInstance(inst.clone()));
                    }
                }
            }
            Err(e) => self.adapter_error("list_jit", &e),
        }
        self.housekeeping(now, &mut muts);
        if !muts.is_empty() {
            self.store.apply(&muts).await?;
        }
        self.reconcile_jobs(now).await?;
        self.pull_intake(now).await?;
        Ok(())
    }

    async fn reconcile_instances(&mut self, now: Millis, muts: &mut Vec<Mutation>) {
        let fleet = self.cfg.fleet.clone();
        let listed = match self.cloud.list_instances(&fleet).await {
            Ok(l) => {
                self.health.cloud(Ok(()));
                l
            }
            Err(e) => {
                self.health.cloud(Err(&e));
                self.adapter_error("list_instances", &e);
                warn!(error = %e, "cannot list instances; keeping what is known");
                return;
            }
        };
        let mut seen = HashSet::new();
        for ci in listed {
            if ci.tag(TAG_FLEET) != Some(fleet.as_str()) {
                continue;
            }
            seen.insert(ci.id.clone());
            match self.obs.instances.get_mut(&ci.id) {
                Some(inst) => {
                    if inst.state != ci.state {
                        inst.state = ci.state;
                        muts.push(Mutation::PutInstance(inst.clone()));
                        if ci.state == InstanceState::Terminated {
                            muts.push(timeline(
                                now,
                                None,
                                Some(&ci.id),
                                "instance gone".to_string(),
                            ));
                        }
                    }
                }
                None => {
                    let launch = ci
                        .tag(TAG_LAUNCH)
                        .and_then(|tag| self.launch_for_tag(tag))
                        .and_then(|id| self.obs.launches.get_mut(&id));
                    let (launch_id, scope, unique_label) = match launch {
                        Some(l) => {
                            if l.state != LaunchState::Launched {
                                l.state = LaunchState::Launched;
                                l.instance_id = Some(ci.id.clone());
                                muts.push(Mutation::PutLaunch(l.clone()));
                            }
                            (
                                Some(l.id.clone()),
                                (!l.is_warm()).then(|| l.scope.clone()),
                                l.unique_label.clone(),
                            )
                        }
                        None => (None, None, None),
                    };
                    if launch_id.is_none() && !ci.state.is_gone() {
                        warn!(instance_id = %ci.id, "instance of this fleet unknown to the store");
                    }
                    let inst = Instance {
                        launch_id,
                        scope,
                        unique_label,
                        market: ci.market,
                        ..Instance::new(
                            &ci.id,
                            &fleet,
                            ci.tag(TAG_POOL).unwrap_or(""),
                            ci.state,
                            ci.launched_at,
                        )
                    };
                    muts.push(Mutation::PutInstance(inst.clone()));
                    self.obs.instances.insert(inst.id.clone(), inst);
                }
            }
        }
        for inst in self.obs.instances.values_mut() {
            if inst.alive()
                && !seen.contains(&inst.id)
                && now.saturating_sub(inst.launched_at) > VANISHED_AFTER_MS
            {
                inst.state = InstanceState::Terminated;
                muts.push(Mutation::PutInstance(inst.clone()));
                muts.push(timeline(
                    now,
                    None,
                    Some(&inst.id),
                    "instance gone".to_string(),
                ));
            }
        }
    }

    async fn reconcile_runners(&mut self, now: Millis, muts: &mut Vec<Mutation>) {
        let mut scopes: BTreeSet<Scope> = self
            .obs
            .instances
            .values()
            .filter_map(|i| i.scope.clone())
            .collect();
        if self.opts.list_all_scopes {
            for repo in self.allowed_repos(now).await {
                for pool in &self.cfg.pools {
                    scopes.insert(runfleet_core::plan::scope_for(pool, &repo));
                }
            }
        }
        let mut fresh = Vec::new();
        let mut listed: BTreeSet<Scope> = BTreeSet::new();
        for scope in scopes {
            match self.github.list_runners(&scope).await {
                Ok(rs) => {
                    fresh.extend(rs);
                    listed.insert(scope);
                }
                Err(e) => {
                    self.adapter_error("list_runners", &e);
                    warn!(scope = %scope, error = %e, "cannot list runners");
                }
            }
        }
        // Keep what we knew of scopes that could not be listed.
        fresh.extend(
            self.obs
                .runners
                .iter()
                .filter(|r| !listed.contains(&r.scope))
                .cloned(),
        );
        let by_name: HashMap<&str, &runfleet_core::model::Runner> =
            fresh.iter().map(|r| (r.name.as_str(), r)).collect();
        for inst in self.obs.instances.values_mut() {
            let Some(scope) = &inst.scope else { continue };
            if !listed.contains(scope) {
                continue;
            }
            let before = inst.clone();
            match by_name.get(inst.runner_name().as_str()) {
                Some(r) => {
                    if r.online || r.busy {
                        inst.runner_online_at.get_or_insert(now);
                    }
                    if inst.job_done_at.is_none() {
                        inst.busy = r.busy;
                    }
                }
                None => {
                    // An ephemeral runner disappears after its job.
                    if inst.runner_online_at.is_some()
                        && inst.job_done_at.is_none()
                        && inst.jit_written
                    {
                        inst.busy = false;
                        inst.job_done_at = Some(now);
                    }
                }
            }
            if *inst != before {
                if before.runner_online_at.is_none() && inst.runner_online_at.is_some() {
                    let id = inst.id.clone();
                    muts.push(timeline(
                        now,
                        None,
                        Some(&id),
                        format!("runner {} online", inst.runner_name()),
                    ));
                }
                muts.push(Mutation::PutInstance(inst.clone()));
            }
        }
        self.obs.runners = fresh;
    }

    async fn allowed_repos(&mut self, now: Millis) -> Vec<String> {
        if let Some((at, repos)) = &self.repos
            && now.saturating_sub(*at) < 10 * 60 * 1000
        {
            return repos.clone();
        }
        let mut out = BTreeSet::new();
        if self.cfg.github.repos.is_none() {
            warn!("github.repos is absent: polling needs a repository list (webhooks still work)");
        }
        let patterns = self.cfg.github.repos.clone().unwrap_or_default();
        let mut complete = true;
        for p in patterns {
            match p.strip_suffix("/*") {
                Some(owner) => match self.github.list_repos(owner).await {
                    Ok(rs) => out.extend(rs),
                    Err(e) => {
                        complete = false;
                        self.adapter_error("list_repos", &e);
                    }
                },
                None => {
                    out.insert(p);
                }
            }
        }
        let repos: Vec<String> = out.into_iter().collect();
        if complete {
            self.repos = Some((now, repos.clone()));
        }
        repos
    }

    /// Finds what webhooks did not tell. For each allowed repository: its
    /// active (queued or in-progress) runs, then the jobs of some of them:
    /// when polling (`github.poll`), every active run, every reconcile;
    /// with webhooks, runs the state knows no job of (at most
    /// [`NEW_RUN_LISTINGS`]) and a few known runs not listed for a while
    /// (at most [`KNOWN_RUN_LISTINGS`]). Queued jobs found are taken in,
    /// and so are known jobs whose status moved on. A job the state has as
    /// waiting whose run is no longer active, or as running on a runner
    /// that is gone, is looked up alone (at most [`MAX_JOB_LOOKUPS`]).
    async fn reconcile_jobs(&mut self, now: Millis) -> PortResult<()> {
        let repos = self.allowed_repos(now).await;
        let poll = self.cfg.github.poll;
        // Runs the state knows a job of.
        let known: HashSet<u64> = self.obs.jobs.values().map(|j| j.run_id).collect();
        let mut active: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut to_list: Vec<(String, u64)> = Vec::new();
        let mut relist: Vec<(Millis, String, u64)> = Vec::new();
        for repo in &repos {
            let runs = match self.github.list_active_runs(repo).await {
                Ok(runs) => runs,
                Err(e) => {
                    self.health.github(Err(&e));
                    self.adapter_error("list_runs", &e);
                    warn!(repo = %repo, error = %e, "cannot list workflow runs");
                    continue;
                }
            };
            self.health.github(Ok(()));
            for &run in &runs {
                if poll {
                    to_list.push((repo.clone(), run));
                } else if !known.contains(&run) {
                    if to_list.len() < NEW_RUN_LISTINGS {
                        to_list.push((repo.clone(), run));
                    }
                } else {
                    // Never listed first, then the longest ago.
                    let last = self.run_listed_at.get(&run).copied();
                    if last.is_none_or(|t| now.saturating_sub(t) >= RELIST_RUN_AFTER_MS) {
                        relist.push((last.unwrap_or(0), repo.clone(), run));
                    }
                }
            }
            active.insert(repo.to_ascii_lowercase(), runs.into_iter().collect());
        }
        relist.sort();
        to_list.extend(
            relist
                .into_iter()
                .take(KNOWN_RUN_LISTINGS)
                .map(|(_, repo, run)| (repo, run)),
        );
        // Forget runs that are no longer active anywhere listed.
        self.run_listed_at
            .retain(|run, _| active.values().any(|runs| runs.contains(run)));
        for (repo, run) in to_list {
            let jobs = match self.github.list_run_jobs(&repo, run).await {
                Ok(jobs) => jobs,
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => {
                    self.adapter_error("list_run_jobs", &e);
                    warn!(repo = %repo, run, error = %e, "cannot list a run's jobs");
                    continue;
                }
            };
            self.run_listed_at.insert(run, now);
            for ev in jobs {
                let take = match self.obs.jobs.get(&ev.job_id) {
                    None => ev.status == JobStatus::Queued,
                    Some(j) => {
                        j.state == JobState::Queued && ev.status != JobStatus::Queued
                            || j.state == JobState::InProgress && ev.status == JobStatus::Completed
                    }
                };
                if !take {
                    continue;
                }
                if ev.status == JobStatus::Queued {
                    info!(job_id = ev.job_id, run_id = ev.run_id, repo = %ev.repo, "queued job found by reconcile");
                } else {
                    info!(job_id = ev.job_id, run_id = ev.run_id, repo = %ev.repo, status = ?ev.status, "job status found by reconcile");
                }
                self.store.intake(&poll_delivery(&ev), &ev).await?;
            }
        }
        // Jobs the state has as waiting or running that GitHub may have
        // moved on without a webhook saying so.
        let claimed: HashSet<&str> = self
            .obs
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::InProgress | JobState::Completed))
            .filter_map(|j| j.runner_name.as_deref())
            .collect();
        let stale: Vec<(String, u64)> = self
            .obs
            .jobs
            .values()
            .filter(|j| {
                active
                    .get(&j.repo.to_ascii_lowercase())
                    .is_some_and(|runs| match j.state {
                        JobState::Queued | JobState::Failed => {
                            now.saturating_sub(j.queued_at) > RECHECK_AFTER_MS
                                && (!runs.contains(&j.run_id)
                                    || self.own_runner_took_an_unknown_job(j, &claimed)
                                        && self.job_checked_at.get(&j.id).is_none_or(|&t| {
                                            now.saturating_sub(t) >= RELIST_RUN_AFTER_MS
                                        }))
                        }
                        JobState::InProgress => self.runner_gone(j, now),
                        _ => false,
                    })
            })
            .take(MAX_JOB_LOOKUPS)
            .map(|j| (j.repo.clone(), j.id))
            .collect();
        let jobs = &self.obs.jobs;
        self.job_checked_at.retain(|id, _| jobs.contains_key(id));
        for (repo, id) in stale {
            self.job_checked_at.insert(id, now);
            match self.github.get_job(&repo, id).await {
                Ok(ev) => {
                    self.store.intake(&poll_delivery(&ev), &ev).await?;
                }
                Err(e) => self.adapter_error("get_job", &e),
            }
        }
        Ok(())
    }

    /// A runner launched for this waiting job took a job (busy, or done)
    /// that no job the state knows names as its runner: most likely this
    /// one, whose `in_progress` webhook was lost (when another job took
    /// it, that job's webhook names the runner). Looked up so the planner
    /// does not launch for it again.
    fn own_runner_took_an_unknown_job(&self, job: &Job, claimed: &HashSet<&str>) -> bool {
        (1..=job.launches).any(|n| {
            self.obs
                .launches
                .get(&runfleet_core::plan::launch_id(&self.cfg.fleet, job.id, n))
                .and_then(|l| l.instance_id.as_ref())
                .and_then(|iid| self.obs.instances.get(iid))
                .is_some_and(|i| {
                    (i.busy || i.job_done_at.is_some())
                        && !claimed.contains(i.runner_name().as_str())
                })
        })
    }

    /// The job's runner is gone (its instance is, or its runner left
    /// after a job) for longer than a webhook takes: the job is over
    /// without a `completed` webhook.
    fn runner_gone(&self, job: &Job, now: Millis) -> bool {
        let Some(iid) = job.runner_name.as_deref().and_then(instance_of_runner) else {
            return false;
        };
        self.obs.instances.get(iid).is_none_or(|i| {
            !i.alive()
                || i.job_done_at
                    .is_some_and(|t| now.saturating_sub(t) > RECHECK_AFTER_MS)
        })
    }

    fn housekeeping(&mut self, now: Millis, muts: &mut Vec<Mutation>) {
        self.obs.unavailable.retain(|u| u.until > now);
        let old_jobs: Vec<u64> = self
            .obs
            .jobs
            .values()
            .filter(|j| j.state.is_terminal())
            .filter(|j| now.saturating_sub(j.completed_at.unwrap_or(j.queued_at)) > RETENTION_MS)
            .map(|j| j.id)
            .collect();
        for id in old_jobs {
            self.obs.jobs.remove(&id);
            self.obs.launches.retain(|_, l| l.job_id != Some(id));
            muts.push(Mutation::DropJob(id));
        }
        let old_instances: Vec<String> = self
            .obs
            .instances
            .values()
            .filter(|i| i.state == InstanceState::Terminated && !i.param_present)
            .filter(|i| {
                now.saturating_sub(i.terminate_requested_at.unwrap_or(i.launched_at)) > RETENTION_MS
            })
            .map(|i| i.id.clone())
            .collect();
        for id in old_instances {
            if let Some(inst) = self.obs.instances.remove(&id)
                && let Some(lid) = inst.launch_id
                && self.obs.launches.get(&lid).is_some_and(Launch::is_warm)
            {
                // A warm launch has no job to be forgotten with.
                self.obs.launches.remove(&lid);
            }
            muts.push(Mutation::DropInstance(id));
        }
        self.obs.launches.retain(|_, l| {
            !(l.is_warm()
                && l.state == LaunchState::Failed
                && now.saturating_sub(l.requested_at) > RETENTION_MS)
        });
    }
}

/// A stable pseudo-random spread (0..1 s) so retries of many launches do not
/// all land at once, and the simulator stays deterministic.
fn jitter(id: &str, attempt: u32) -> Millis {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h % 1000
}

/// The delivery id of a polled observation: one per job and status.
pub fn poll_delivery(ev: &JobEvent) -> String {
    let status = match ev.status {
        JobStatus::Queued => "queued",
        JobStatus::InProgress => "in_progress",
        JobStatus::Completed => "completed",
    };
    format!("poll:{}:{status}", ev.job_id)
}

fn timeline(at: Millis, job_id: Option<u64>, instance_id: Option<&str>, what: String) -> Mutation {
    Mutation::Timeline(TimelineEvent {
        at,
        job_id,
        instance_id: instance_id.map(str::to_string),
        what,
    })
}
