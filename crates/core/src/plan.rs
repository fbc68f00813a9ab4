//! The planner: the one place that decides. Given the config, everything
//! observed, and the time, it returns the actions that move the world toward
//! "every servable queued job has exactly one runner coming, and no instance
//! lives that nothing needs".
//!
//! Demand and supply are counted per (pool, scope): a queued job needs a
//! runner of its pool registered where the job's repository can use it, and
//! any idle runner with the right labels may take any such job (GitHub's
//! semantics), so runners are not pinned to jobs; only their number is.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap as HashMap, FxHashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::CapacityMarket;
use crate::config::{Config, PoolConfig, RunnerScope};
use crate::labels::pool_for;
use crate::model::{
    ErrorKind, Instance, InterruptionKind, Job, JobState, Launch, LaunchState, Millis, Offering,
    Runner, Scope, TerminateReason, Unavailable, instance_of_runner,
};

/// How long an offering that failed for capacity is skipped.
pub const UNAVAILABLE_FOR_MS: Millis = 3 * 60 * 1000;
/// A termination not yet seen to take effect is asked for again after this.
pub const TERMINATE_RETRY_MS: Millis = 60 * 1000;

/// Everything the planner looks at. The engine keeps its state in this shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub jobs: BTreeMap<u64, Job>,
    pub launches: BTreeMap<String, Launch>,
    /// Instances tagged with a fleet, by id. The planner ignores any whose
    /// fleet is not the config's.
    pub instances: BTreeMap<String, Instance>,
    /// Runners GitHub lists in the scopes runfleet uses.
    pub runners: Vec<Runner>,
    /// Instance ids with a JIT parameter under the fleet's prefix, as
    /// listed at the last reconcile, with those the controller wrote or
    /// deleted since. May still name one that its instance deleted itself
    /// after the listing (see [`param_leftover`]).
    pub params: BTreeSet<String>,
    pub unavailable: Vec<Unavailable>,
    /// Launch ids and instance ids with an action under way: not repeated.
    pub in_flight: BTreeSet<String>,
}

/// A launch to make (new) or to resume (recorded, call not known to be done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub id: String,
    pub pool: String,
    pub scope: Scope,
    pub job_id: Option<u64>,
    pub unique_label: Option<String>,
    pub name: Option<String>,
    /// The fallback chain to walk, offerings known unavailable left out
    /// (shared: every launch of a pool in one plan walks the same chain).
    pub offerings: Arc<[Offering]>,
    /// Already recorded in the store: call again with the same id.
    pub resume: bool,
}

impl LaunchPlan {
    /// A warm-pool launch (no job, no on-demand run): its instance boots
    /// and waits for a job; see [`Launch::is_warm`].
    pub fn is_warm(&self) -> bool {
        self.job_id.is_none() && self.unique_label.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Record (unless resuming), then call the cloud with the id as token.
    Launch(LaunchPlan),
    /// Mint the runner's JIT config and write it to SSM.
    ProvisionRunner {
        instance_id: String,
        pool: String,
        scope: Scope,
        runner_name: String,
        labels: Vec<String>,
        runner_group_id: u64,
    },
    /// Delete the instance's JIT parameter: a leftover the listing still
    /// shows (the instance's boot script deletes its own after reading it).
    DeleteParameter { instance_id: String },
    /// Deregister its runner (when known; a busy runner aborts the
    /// termination), delete its parameter, terminate the instance.
    Terminate {
        instance_id: String,
        pool: String,
        runner: Option<(Scope, u64)>,
        reason: TerminateReason,
    },
    /// Deregister a runner of this fleet whose instance is gone.
    DeleteRunner {
        scope: Scope,
        runner_id: u64,
        name: String,
    },
    /// Drop a launch that was recorded but never sent and that no queued
    /// job needs any more (see [`unneeded_launches`]): no cloud call.
    CancelLaunch {
        id: String,
        pool: String,
        job_id: Option<u64>,
        reason: String,
    },
    /// Mark a job ignored or failed, with a reason.
    MarkJob {
        job_id: u64,
        state: JobState,
        reason: String,
    },
    /// Ask GitHub to re-run a job that failed because EC2 reclaimed its
    /// spot instance under it (`POST .../actions/jobs/{job_id}/rerun`).
    /// Its in-flight key is [`rerun_key`].
    RerunJob { job_id: u64, repo: String },
    /// Hand a waiting warm instance to a queued job: record (before any
    /// call) that its runner is now registered in `scope`. The
    /// [`Action::ProvisionRunner`] for it follows in the same plan.
    AssignWarm {
        instance_id: String,
        pool: String,
        scope: Scope,
        job_id: u64,
    },
}

/// The [`Observed::in_flight`] key of a job's re-run.
pub fn rerun_key(job_id: u64) -> String {
    format!("rerun:{job_id}")
}

/// Whether a completed job failed because its spot instance was reclaimed
/// under it, and should be re-run: it ran on an instance of this fleet that
/// had a spot interruption warning, it ended with `failure` or `cancelled`
/// (what GitHub reports when a runner is lost) no earlier than the warning,
/// its pool has `rerun_interrupted`, and it was not re-run already.
pub fn wants_rerun(config: &Config, obs: &Observed, job: &Job) -> bool {
    if job.state != JobState::Completed
        || job.rerun_requested_at.is_some()
        || !matches!(job.conclusion.as_deref(), Some("failure" | "cancelled"))
    {
        return false;
    }
    let Some(inst) = job
        .runner_name
        .as_deref()
        .and_then(instance_of_runner)
        .and_then(|iid| obs.instances.get(iid))
    else {
        return false;
    };
    let Some(warning) = inst
        .interruption
        .filter(|w| w.kind == InterruptionKind::SpotWarning)
    else {
        return false;
    };
    inst.fleet == config.fleet
        && job.completed_at.is_none_or(|t| t >= warning.at)
        && config.pool(&inst.pool).is_some_and(|p| p.rerun_interrupted)
}

/// `chain` with its on-demand offerings first (a job re-run after a spot
/// interruption should not be gambled on spot again), spot after them.
pub fn on_demand_first(chain: &[Offering]) -> Vec<Offering> {
    let (mut first, rest): (Vec<Offering>, Vec<Offering>) = chain
        .iter()
        .cloned()
        .partition(|o| o.market == CapacityMarket::OnDemand);
    first.extend(rest);
    first
}

/// Where runners of `pool` for jobs of `repo` are registered.
pub fn scope_for(pool: &PoolConfig, repo: &str) -> Scope {
    match pool.runner_scope {
        RunnerScope::Repo => Scope::Repo(repo.to_string()),
        RunnerScope::Org => Scope::Org(repo.split('/').next().unwrap_or(repo).to_string()),
    }
}

/// The id of the `n`th launch (1-based) made for a job. Stable, so a
/// resumed launch reuses its idempotency token; at most 64 characters.
pub fn launch_id(fleet: &str, job_id: u64, n: u32) -> String {
    format!("{fleet}-j{job_id}-{n}")
}

/// The fallback chain of a pool: each market in order, each instance type
/// in order, each subnet in order; offerings still marked unavailable at
/// `now` are left out.
pub fn offerings(pool: &PoolConfig, unavailable: &[Unavailable], now: Millis) -> Vec<Offering> {
    let subnets: Vec<Option<String>> = if pool.subnets.is_empty() {
        vec![None]
    } else {
        pool.subnets.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    for &market in pool.market.chain() {
        for instance_type in &pool.instance_types {
            for subnet in &subnets {
                let o = Offering {
                    instance_type: instance_type.clone(),
                    subnet: subnet.clone(),
                    market,
                };
                if !unavailable.iter().any(|u| u.until > now && u.offering == o) {
                    out.push(o);
                }
            }
        }
    }
    out
}

/// Delay before the next launch for a job whose `attempts`th launch failed
/// for a reason that may pass (capacity, quota, throttling): 5 s doubling,
/// capped at 2 minutes.
pub fn retry_backoff(attempts: u32) -> Millis {
    let base: Millis = 5_000;
    base.saturating_mul(1 << attempts.saturating_sub(1).min(5))
        .min(120_000)
}

/// Labels a runner of `pool` is registered with: the pool's labels, or for
/// an on-demand run (`launch`, `/v1/start`) only `self-hosted` and its
/// unique label. GitHub gives a job to any runner that has all of the job's
/// labels, so a run's runner that also carried the pool's labels could be
/// taken by any job of the pool; with only the unique label, it cannot.
pub fn runner_labels(pool: &PoolConfig, unique_label: Option<&str>) -> Vec<String> {
    match unique_label {
        Some(u) => crate::runs::run_labels(u),
        None => pool.labels.clone(),
    }
}

/// (pool index, org scope?, repo or owner): where a runner can serve a job.
/// Borrowed from the observations so planning allocates little.
type Key<'a> = (usize, bool, &'a str);

fn key_of_scope(pool: usize, scope: &Scope) -> Key<'_> {
    match scope {
        Scope::Repo(r) => (pool, false, r.as_str()),
        Scope::Org(o) => (pool, true, o.as_str()),
    }
}

fn key_of_job<'a>(pool: usize, cfg: &PoolConfig, repo: &'a str) -> Key<'a> {
    match cfg.runner_scope {
        RunnerScope::Repo => (pool, false, repo),
        RunnerScope::Org => (pool, true, repo.split('/').next().unwrap_or(repo)),
    }
}

fn scope_of_key(key: &Key<'_>) -> Scope {
    if key.1 {
        Scope::Org(key.2.to_string())
    } else {
        Scope::Repo(key.2.to_string())
    }
}

/// Decides. Pure: the same inputs always give the same actions, in the same order.
pub fn plan(config: &Config, obs: &Observed, now: Millis) -> Vec<Action> {
    let mut actions = Vec::new();
    let boot_timeout = config.server.boot_timeout.as_millis() as Millis;
    let grace = config.server.completed_grace.as_millis() as Millis;
    // This fleet's instances; the planner never looks at another's.
    let ours: Vec<&Instance> = obs
        .instances
        .values()
        .filter(|i| i.fleet == config.fleet)
        .collect();
    let alive_ours = || ours.iter().copied().filter(|i| i.alive());
    let pool_index: HashMap<&str, usize> = config
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();

    // Demand: queued jobs by (pool, scope), oldest first; unservable jobs are marked.
    let mut queued: Vec<&Job> = obs
        .jobs
        .values()
        .filter(|j| j.state == JobState::Queued)
        .collect();
    queued.sort_by_key(|j| (j.queued_at, j.id));
    let mut demand: HashMap<Key, Vec<&Job>> = HashMap::default();
    let mut allowed: HashMap<&str, bool> = HashMap::default();
    // A job that asks for an on-demand run's unique label is served by that
    // run's runner: neither ignored nor launched for.
    let unique: FxHashSet<String> = obs
        .launches
        .values()
        .filter_map(|l| l.unique_label.as_deref())
        .map(str::to_ascii_lowercase)
        .collect();
    for job in queued {
        if !unique.is_empty()
            && job
                .labels
                .iter()
                .any(|l| unique.contains(&l.to_ascii_lowercase()))
        {
            continue;
        }
        if !*allowed
            .entry(job.repo.as_str())
            .or_insert_with(|| config.repo_allowed(&job.repo))
        {
            actions.push(Action::MarkJob {
                job_id: job.id,
                state: JobState::Ignored,
                reason: format!("repository {} is not in github.repos", job.repo),
            });
            continue;
        }
        let Some(pool) = pool_for(config, &job.labels) else {
            actions.push(Action::MarkJob {
                job_id: job.id,
                state: JobState::Ignored,
                reason: format!("no pool has all of the labels {:?}", job.labels),
            });
            continue;
        };
        // The latest launch for it failed for good: say so instead of retrying.
        if job.launches > 0
            && let Some(l) = obs
                .launches
                .get(&launch_id(&config.fleet, job.id, job.launches))
            && l.state == LaunchState::Failed
            && let Some((kind, msg)) = &l.error
            && kind.is_permanent()
        {
            actions.push(Action::MarkJob {
                job_id: job.id,
                state: JobState::Failed,
                reason: format!(
                    "launch in pool {} failed ({}): {msg}",
                    pool.name,
                    kind.as_str()
                ),
            });
            continue;
        }
        let idx = pool_index[pool.name.as_str()];
        demand
            .entry(key_of_job(idx, pool, &job.repo))
            .or_default()
            .push(job);
    }

    // Warm instances waiting for a job, by pool (see the warm section below).
    let mut warm = Warm::survey(config, obs, now, &ours);

    // Supply: runners coming or idle, by (pool, scope); instances alive by pool.
    let mut supply: HashMap<Key, u32> = HashMap::default();
    let mut alive: HashMap<&str, u32> = HashMap::default();
    for i in alive_ours() {
        *alive.entry(i.pool.as_str()).or_default() += 1;
        if let Some(scope) = &i.scope
            && let Some(&idx) = pool_index.get(i.pool.as_str())
            && i.terminate_requested_at.is_none()
            && !i.busy
            && i.job_done_at.is_none()
            && i.unique_label.is_none()
            && i.interruption.is_none()
        {
            *supply.entry(key_of_scope(idx, scope)).or_default() += 1;
        }
    }
    let cancelled = unneeded_launches(obs, &pool_index, &demand, &supply);
    for l in obs
        .launches
        .values()
        .filter(|l| l.state == LaunchState::Requested)
    {
        if let Some(reason) = cancelled.get(l.id.as_str()) {
            actions.push(Action::CancelLaunch {
                id: l.id.clone(),
                pool: l.pool.clone(),
                job_id: l.job_id,
                reason: reason.to_string(),
            });
            continue;
        }
        *alive.entry(l.pool.as_str()).or_default() += 1;
        let Some(&idx) = pool_index.get(l.pool.as_str()) else {
            continue;
        };
        if l.is_warm() {
            warm.requested(idx);
        } else {
            *supply.entry(key_of_scope(idx, &l.scope)).or_default() += 1;
        }
        if !obs.in_flight.contains(&l.id) && l.not_before <= now {
            actions.push(Action::Launch(LaunchPlan {
                id: l.id.clone(),
                pool: l.pool.clone(),
                scope: l.scope.clone(),
                job_id: l.job_id,
                unique_label: l.unique_label.clone(),
                name: l.name.clone(),
                offerings: offerings(&config.pools[idx], &obs.unavailable, now).into(),
                resume: true,
            }));
        }
    }

    // Which jobs have a runner of their own coming: supply covers those
    // first, so a new launch is made (and named) for a job that has none.
    let mut own: FxHashSet<u64> = obs
        .launches
        .values()
        .filter(|l| l.state == LaunchState::Requested && !cancelled.contains_key(l.id.as_str()))
        .filter_map(|l| l.job_id)
        .collect();
    for i in alive_ours() {
        if i.terminate_requested_at.is_none()
            && !i.busy
            && i.job_done_at.is_none()
            && i.interruption.is_none()
            && let Some(l) = i.launch_id.as_ref().and_then(|id| obs.launches.get(id))
            && let Some(j) = l.job_id
        {
            own.insert(j);
        }
        if i.terminate_requested_at.is_none()
            && !i.busy
            && i.job_done_at.is_none()
            && let Some(a) = i.assigned
        {
            own.insert(a.job_id);
        }
    }

    // Launches: oldest jobs first within a pool, never past max_runners.
    let mut by_pool: BTreeMap<usize, Vec<(&Job, Key)>> = BTreeMap::new();
    for (key, jobs) in &mut demand {
        let covered = supply.get(key).copied().unwrap_or(0) as usize;
        if covered > 0 {
            jobs.sort_by_key(|j| (!own.contains(&j.id), j.queued_at, j.id));
        }
        for job in jobs.iter().skip(covered) {
            by_pool.entry(key.0).or_default().push((job, *key));
        }
    }
    // Runs with a job re-run after a spot interruption: their queued jobs
    // (the re-run) launch on-demand first.
    let rerun_runs: FxHashSet<u64> = obs
        .jobs
        .values()
        .filter(|j| j.rerun_requested_at.is_some())
        .map(|j| j.run_id)
        .collect();
    for (idx, mut wanting) in by_pool {
        let pool = &config.pools[idx];
        wanting.sort_by_key(|(j, _)| (j.queued_at, j.id));
        // Waiting warm instances take the oldest jobs first: no launch.
        let wanting = warm.assign(config, idx, wanting, &mut supply, &mut actions);
        if wanting.is_empty() {
            continue;
        }
        let chain: Arc<[Offering]> = offerings(pool, &obs.unavailable, now).into();
        if chain.is_empty() {
            continue; // every offering is cooling down after capacity errors
        }
        let mut rerun_chain: Option<Arc<[Offering]>> = None;
        let count = alive.entry(pool.name.as_str()).or_default();
        for (job, key) in wanting {
            if *count >= pool.max_runners {
                break;
            }
            if job.retry_at > now {
                continue;
            }
            *count += 1;
            // The next unused launch number (the count is kept with the job;
            // never reuse a recorded id even if the two disagree).
            let mut n = job.launches + 1;
            let mut id = launch_id(&config.fleet, job.id, n);
            while obs.launches.contains_key(&id) {
                n += 1;
                id = launch_id(&config.fleet, job.id, n);
            }
            let offerings = if !rerun_runs.is_empty() && rerun_runs.contains(&job.run_id) {
                rerun_chain
                    .get_or_insert_with(|| on_demand_first(&chain).into())
                    .clone()
            } else {
                chain.clone()
            };
            actions.push(Action::Launch(LaunchPlan {
                id,
                pool: pool.name.clone(),
                scope: scope_of_key(&key),
                job_id: Some(job.id),
                unique_label: None,
                name: None,
                offerings,
                resume: false,
            }));
        }
    }

    // Warm instances to replace the ones taken, up to the pool's `warm`.
    warm.replenish(config, obs, now, &mut alive, &mut actions);

    // Runners for instances that have none yet.
    for i in alive_ours() {
        if i.jit_written || i.terminate_requested_at.is_some() || obs.in_flight.contains(&i.id) {
            continue;
        }
        let (Some(scope), Some(pool)) = (&i.scope, config.pool(&i.pool)) else {
            continue;
        };
        actions.push(Action::ProvisionRunner {
            instance_id: i.id.clone(),
            pool: pool.name.clone(),
            scope: scope.clone(),
            runner_name: i.runner_name(),
            labels: runner_labels(pool, i.unique_label.as_deref()),
            runner_group_id: pool.runner_group_id,
        });
    }

    // Terminations. Runners are matched to instances by the instance id in
    // their name (and the pool, which the name also carries).
    let mut runner_of: HashMap<&str, &Runner> = HashMap::default();
    let mut busy_instances: BTreeSet<&str> = BTreeSet::new();
    for r in &obs.runners {
        let Some(iid) = instance_of_runner(&r.name) else {
            continue;
        };
        let Some(inst) = obs.instances.get(iid) else {
            continue;
        };
        if r.name.len() != "runfleet-".len() + inst.pool.len() + 1 + iid.len()
            || !r.name["runfleet-".len()..].starts_with(inst.pool.as_str())
        {
            continue; // same instance id, another pool's naming: not this runner
        }
        runner_of.insert(iid, r);
        if r.busy {
            busy_instances.insert(iid);
        }
    }
    let mut surplus: HashMap<Key, u32> = HashMap::default();
    for (key, n) in &supply {
        let want = demand.get(key).map_or(0, |v| v.len()) as u32;
        if *n > want {
            surplus.insert(*key, n - want);
        }
    }
    let mut terminating: BTreeSet<&str> = BTreeSet::new();
    for i in alive_ours() {
        if obs.in_flight.contains(&i.id) {
            continue;
        }
        let runner = runner_of.get(i.id.as_str()).copied();
        if i.busy || busy_instances.contains(i.id.as_str()) {
            continue; // never under a running job
        }
        if let Some(t) = i.terminate_requested_at {
            if now.saturating_sub(t) >= TERMINATE_RETRY_MS {
                terminating.insert(&i.id);
                let reason = i.terminate_reason.unwrap_or(TerminateReason::Completed);
                actions.push(terminate(i, runner, reason));
            }
            continue;
        }
        let age = now.saturating_sub(i.launched_at);
        let pool = pool_index
            .get(i.pool.as_str())
            .map(|&idx| (idx, &config.pools[idx]));
        let reason = match (pool, &i.launch_id) {
            // EC2 will take it (or recommends moving off it) and no job runs
            // on it: replace it now rather than hand it a job it cannot
            // finish. Only when its runner is listed (the termination
            // deregisters it first, which GitHub refuses once it took a
            // job), or it has none, or its job is done: a runner online but
            // not in the last listing may have just taken a job, so wait for
            // the next listing.
            (_, Some(_))
                if i.interruption.is_some()
                    && (runner.is_some() || !i.jit_written || i.job_done_at.is_some()) =>
            {
                Some(TerminateReason::Interrupted)
            }
            (_, Some(_)) if i.interruption.is_some() && i.runner_online_at.is_some() => None,
            (_, None) if age >= boot_timeout => Some(TerminateReason::Orphan),
            (_, None) => None,
            (None, Some(_)) => Some(TerminateReason::PoolRemoved),
            (Some((idx, pool)), Some(_)) => {
                if i.job_done_at
                    .is_some_and(|t| now >= t.saturating_add(grace))
                {
                    Some(TerminateReason::Completed)
                } else if age >= pool.max_lifetime.as_millis() as Millis {
                    Some(TerminateReason::MaxLifetime)
                } else if i.runner_online_at.is_none()
                    && i.job_done_at.is_none()
                    && boot_age(i, now).is_some_and(|a| a >= boot_timeout)
                {
                    Some(TerminateReason::BootTimeout)
                } else if let (Some(online), Some(scope), None, None) =
                    (i.runner_online_at, &i.scope, i.job_done_at, &i.unique_label)
                {
                    match surplus.get_mut(&key_of_scope(idx, scope)) {
                        Some(n) if *n > 0 && now.saturating_sub(online) >= grace => {
                            *n -= 1;
                            Some(TerminateReason::Idle)
                        }
                        _ => None,
                    }
                } else {
                    None
                }
            }
        };
        if let Some(reason) = reason {
            terminating.insert(&i.id);
            actions.push(terminate(i, runner, reason));
        }
    }
    warm.retire(&mut terminating, &mut actions);

    // Parameters. The boot script deletes its own as soon as it has read
    // it, so in the normal path the controller deletes none: it deletes
    // only a leftover that the listing still shows (see `param_leftover`).
    // `Instance::param_present` is not consulted: it stays set when the
    // instance deleted the parameter itself; the listing is the truth.
    let param_grace = param_grace(config);
    for id in &obs.params {
        if terminating.contains(id.as_str()) || obs.in_flight.contains(id) {
            continue; // a termination in this plan deletes it; or under way
        }
        let inst = obs.instances.get(id).filter(|i| i.fleet == config.fleet);
        if param_leftover(inst, param_grace, now) {
            actions.push(Action::DeleteParameter {
                instance_id: id.clone(),
            });
        }
    }

    // Jobs lost to a spot interruption: re-run once.
    for job in obs.jobs.values() {
        if job.state == JobState::Completed
            && job.rerun_requested_at.is_none()
            && job.conclusion.is_some()
            && wants_rerun(config, obs, job)
            && !obs.in_flight.contains(&rerun_key(job.id))
        {
            actions.push(Action::RerunJob {
                job_id: job.id,
                repo: job.repo.clone(),
            });
        }
    }

    // Runners whose instance (of this fleet) is gone.
    for r in &obs.runners {
        let Some(iid) = instance_of_runner(&r.name) else {
            continue;
        };
        let Some(i) = obs.instances.get(iid) else {
            continue;
        };
        if i.fleet != config.fleet || r.busy || terminating.contains(iid) {
            continue;
        }
        if !i.alive() {
            actions.push(Action::DeleteRunner {
                scope: r.scope.clone(),
                runner_id: r.id,
                name: r.name.clone(),
            });
        }
    }

    actions
}

fn terminate(i: &Instance, runner: Option<&Runner>, reason: TerminateReason) -> Action {
    Action::Terminate {
        instance_id: i.id.clone(),
        pool: i.pool.clone(),
        runner: runner.map(|r| (r.scope.clone(), r.id)),
        reason,
    }
}

/// The least time, after its runner came online, that a parameter the
/// listing still shows is left to the instance (whose boot script deletes
/// it right after reading it, before the runner starts) before the
/// controller deletes it; see [`param_grace`].
pub const PARAM_LEFTOVER_MS: Millis = 2 * 60 * 1000;

/// How long after its runner came online a listed parameter counts as a
/// leftover: [`PARAM_LEFTOVER_MS`], or two `server.reconcile_interval`s if
/// longer. The listing is refreshed once per reconcile, so a parameter the
/// instance deleted may still be in the last listing for up to one
/// interval; two make sure the parameter was listed after the runner came
/// online (and give SSM's listing time to catch up with the delete).
pub fn param_grace(config: &Config) -> Millis {
    let interval = config.server.reconcile_interval.as_millis() as Millis;
    PARAM_LEFTOVER_MS.max(interval.saturating_mul(2))
}

/// Whether a parameter that the listing shows (under the fleet's prefix)
/// is a leftover for the controller to delete, given its instance (`None`:
/// not known, or another fleet's). A leftover: its instance is unknown; or
/// gone (its runner never came online, or did at least `grace` ago); or
/// being terminated; or its runner has been online (or its job done) for
/// `grace`: the instance's own delete failed. Not a leftover: an instance
/// still booting reads it; a runner online for less than `grace` has most
/// likely deleted it after the last listing.
pub fn param_leftover(inst: Option<&Instance>, grace: Millis, now: Millis) -> bool {
    let Some(i) = inst else {
        return true;
    };
    if i.terminate_requested_at.is_some() {
        return true;
    }
    match i.runner_online_at.or(i.job_done_at) {
        Some(online) => now.saturating_sub(online) >= grace,
        None => !i.alive(),
    }
}

/// Whether an error kind on a launch counts against the offering (skip it for a while).
pub fn marks_unavailable(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Capacity)
}

#[cfg(test)]
mod interruption_tests {
    use super::*;
    use crate::config::{MapSecrets, parse};
    use crate::model::{InstanceState, Interruption, JobEvent, JobStatus, runner_name};

    const CFG: &str = "fleet = \"f\"\n[github]\ntoken = \"t\"\nwebhook_secret = \"s\"\nrepos = [\"acme/*\"]\n[[pool]]\nname = \"p\"\nlabels = [\"self-hosted\"]\nlaunch_template = \"lt-0123456789abcdef0\"\ninstance_types = [\"m5.large\"]\nmarket = \"spot-then-on-demand\"\n";

    fn world(conclusion: &str, warned_at: Option<Millis>) -> (Config, Observed) {
        let cfg = parse(CFG, &MapSecrets::default()).unwrap();
        let mut obs = Observed::default();
        let name = runner_name("p", "i-0abc");
        let done = JobEvent {
            job_id: 7,
            run_id: 70,
            repo: "acme/app".into(),
            labels: vec!["self-hosted".into()],
            status: JobStatus::Completed,
            runner_name: Some(name),
            conclusion: Some(conclusion.into()),
            at: 1_000,
        };
        obs.jobs.insert(7, Job::new(&done));
        obs.instances.insert(
            "i-0abc".into(),
            Instance {
                id: "i-0abc".into(),
                fleet: "f".into(),
                pool: "p".into(),
                state: InstanceState::Terminated,
                launched_at: 0,
                launch_id: Some("f-j7-1".into()),
                scope: Some(Scope::Repo("acme/app".into())),
                unique_label: None,
                market: Some(CapacityMarket::Spot),
                jit_written: true,
                param_present: false,
                runner_online_at: Some(10),
                busy: false,
                job_done_at: Some(1_000),
                terminate_requested_at: None,
                terminate_reason: None,
                offering: None,
                interruption: warned_at.map(|at| Interruption {
                    kind: InterruptionKind::SpotWarning,
                    at,
                }),
                assigned: None,
            },
        );
        (cfg, obs)
    }

    fn reruns(cfg: &Config, obs: &Observed) -> Vec<u64> {
        plan(cfg, obs, 2_000)
            .into_iter()
            .filter_map(|a| match a {
                Action::RerunJob { job_id, .. } => Some(job_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_job_lost_to_a_spot_reclaim_is_rerun_once() {
        let (cfg, mut obs) = world("failure", Some(500));
        assert_eq!(reruns(&cfg, &obs), vec![7]);
        obs.in_flight.insert(rerun_key(7));
        assert!(reruns(&cfg, &obs).is_empty(), "not twice at once");
        obs.in_flight.clear();
        obs.jobs.get_mut(&7).unwrap().rerun_requested_at = Some(1_500);
        assert!(reruns(&cfg, &obs).is_empty(), "once");
    }

    #[test]
    fn only_a_failure_after_a_spot_warning_is_rerun() {
        let (cfg, obs) = world("success", Some(500));
        assert!(reruns(&cfg, &obs).is_empty(), "it passed");
        let (cfg, obs) = world("cancelled", Some(500));
        assert_eq!(
            reruns(&cfg, &obs),
            vec![7],
            "a lost runner may read as cancelled"
        );
        let (cfg, obs) = world("failure", None);
        assert!(reruns(&cfg, &obs).is_empty(), "no warning: its own failure");
        let (cfg, obs) = world("failure", Some(1_500));
        assert!(reruns(&cfg, &obs).is_empty(), "failed before the warning");
        let (mut cfg, obs) = world("failure", Some(500));
        cfg.pools[0].rerun_interrupted = false;
        assert!(reruns(&cfg, &obs).is_empty(), "the pool says no");
        let (cfg, mut obs) = world("failure", Some(500));
        obs.instances.get_mut("i-0abc").unwrap().interruption = Some(Interruption {
            kind: InterruptionKind::Rebalance,
            at: 500,
        });
        assert!(
            reruns(&cfg, &obs).is_empty(),
            "a rebalance alone does not take it"
        );
    }

    #[test]
    fn on_demand_first_keeps_every_offering() {
        let o = |t: &str, m| Offering {
            instance_type: t.into(),
            subnet: None,
            market: m,
        };
        let chain = [
            o("a", CapacityMarket::Spot),
            o("b", CapacityMarket::Spot),
            o("a", CapacityMarket::OnDemand),
            o("b", CapacityMarket::OnDemand),
        ];
        assert_eq!(
            on_demand_first(&chain),
            vec![
                chain[2].clone(),
                chain[3].clone(),
                chain[0].clone(),
                chain[1].clone()
            ]
        );
    }
}

// ---------------------------------------------------------------------------
// Warm pools.
//
// A pool with `warm = N` keeps N instances booted and waiting, NOT registered
// with GitHub: their boot script (rendered with the JIT poll timeout set to
// `max_lifetime`) polls SSM for a runner config. They are launched with no
// job (a warm launch, [`Launch::is_warm`]): recorded before the call like
// every launch, with an id derived from the plan's input, and counted against
// `max_runners` like every instance. When a job of the pool has no runner
// coming, the planner assigns it the oldest waiting warm instance
// ([`Action::AssignWarm`] then [`Action::ProvisionRunner`] for the job's
// scope): no launch, the runner is online seconds later. From then on the
// instance is an ordinary one (its scope is set; its boot timeout counts
// from the assignment) and a replacement warm launch is made, within the cap.
//
// The target N is the pool's warm target at the plan's `now`
// ([`PoolConfig::warm_at`]): the `warm` of the first `[[pool.warm_schedule]]`
// entry open then, else the pool's `warm`. So a schedule needs nothing but
// the clock: when a window opens, the next plan launches up to the new
// target; when it closes, the next plan retires the surplus.
//
// A waiting warm instance is never terminated for its boot timeout (it is
// not expected to register). It is retired (terminated, `idle`) once half of
// `max_lifetime` has passed, so a job it takes still has at least half of
// `max_lifetime` before the instance's hard stop; its replacement is launched
// in the same plan. Waiting instances beyond the target (it was lowered in
// the config, or a schedule window closed) are terminated too, the oldest
// launch first: those kept have the most waiting time left before their own
// retirement, so fewer replacements follow. Unanswered warm launches count
// toward the target (none is launched while they could cover it) but are
// never what is cut: an instance they bring beyond the target is retired
// by a later plan. An assigned one is never touched here: it is under a
// job, or about to be.
// ---------------------------------------------------------------------------

/// The id of a warm launch: stable for a given plan input (`now` and what is
/// already recorded), unique as time moves on.
pub fn warm_launch_id(fleet: &str, pool_index: usize, now: Millis, n: u32) -> String {
    format!("{fleet}-w{pool_index}-{now}-{n}")
}

/// How long a waiting warm instance may wait before it is retired: half of
/// the pool's `max_lifetime`.
pub fn warm_retire_after(pool: &PoolConfig) -> Millis {
    (pool.max_lifetime.as_millis() as Millis / 2).max(1)
}

/// Whether `i` is a warm instance still waiting for a job (launched with no
/// job, not yet assigned one).
pub fn is_waiting_warm(obs: &Observed, i: &Instance) -> bool {
    i.scope.is_none()
        && i.assigned.is_none()
        && i.launch_id
            .as_ref()
            .and_then(|id| obs.launches.get(id))
            .is_some_and(Launch::is_warm)
}

/// How long an instance has been expected to bring its runner online:
/// since launch for an ordinary instance, since its assignment for a warm
/// one, never for a warm one still waiting.
fn boot_age(i: &Instance, now: Millis) -> Option<Millis> {
    match (i.assigned, &i.scope) {
        (Some(a), _) => Some(now.saturating_sub(a.at)),
        // Only a warm launch leaves a known instance without a scope.
        (None, None) => None,
        (None, Some(_)) => Some(now.saturating_sub(i.launched_at)),
    }
}

#[derive(Default)]
struct WarmPool<'a> {
    /// Waiting and assignable, best first (running before pending, then
    /// oldest launch: the furthest along its boot).
    ready: Vec<&'a Instance>,
    /// Waiting past `warm_retire_after`.
    stale: Vec<&'a Instance>,
    /// Warm launches recorded and not yet answered.
    requested: u32,
    /// The pool's warm target at the plan's `now`.
    target: u32,
}

/// The warm state of every pool for one plan.
struct Warm<'a> {
    pools: Vec<WarmPool<'a>>,
    /// Nothing warm anywhere: every method returns at once.
    idle: bool,
}

impl<'a> Warm<'a> {
    fn survey(config: &Config, obs: &'a Observed, now: Millis, ours: &[&'a Instance]) -> Warm<'a> {
        let mut pools: Vec<WarmPool<'a>> = Vec::new();
        let mut any = config.pools.iter().any(|p| p.warm_at(now) > 0);
        for &i in ours {
            // Cheap test first: only a warm launch leaves a known instance
            // without a scope.
            if !(i.scope.is_none() && i.launch_id.is_some() && i.alive() && is_waiting_warm(obs, i))
            {
                continue;
            }
            if i.terminate_requested_at.is_some() || obs.in_flight.contains(&i.id) {
                continue;
            }
            let Some(idx) = config.pools.iter().position(|p| p.name == i.pool) else {
                continue; // pool removed: the general rule terminates it
            };
            any = true;
            if pools.is_empty() {
                pools.resize_with(config.pools.len(), WarmPool::default);
            }
            let age = now.saturating_sub(i.launched_at);
            if age >= warm_retire_after(&config.pools[idx]) {
                pools[idx].stale.push(i);
            } else {
                pools[idx].ready.push(i);
            }
        }
        if any && pools.is_empty() {
            pools.resize_with(config.pools.len(), WarmPool::default);
        }
        for (p, cfg) in pools.iter_mut().zip(&config.pools) {
            p.target = cfg.warm_at(now);
        }
        for p in &mut pools {
            p.ready.sort_by_key(|i| {
                (
                    i.state != crate::model::InstanceState::Running,
                    i.launched_at,
                    i.id.as_str(),
                )
            });
        }
        Warm { pools, idle: !any }
    }

    /// Counts a recorded, unanswered warm launch of pool `idx`. When the
    /// survey found nothing warm, every target is 0 (the default here).
    fn requested(&mut self, idx: usize) {
        if self.pools.len() <= idx {
            self.pools.resize_with(idx + 1, WarmPool::default);
        }
        self.idle = false;
        self.pools[idx].requested += 1;
    }

    /// Hands waiting instances of pool `idx` to the oldest of `wanting`
    /// (sorted oldest first); returns the jobs still without a runner.
    fn assign<'j>(
        &mut self,
        config: &Config,
        idx: usize,
        wanting: Vec<(&'j Job, Key<'j>)>,
        supply: &mut HashMap<Key<'j>, u32>,
        actions: &mut Vec<Action>,
    ) -> Vec<(&'j Job, Key<'j>)> {
        let Some(wp) = self.pools.get_mut(idx).filter(|p| !p.ready.is_empty()) else {
            return wanting;
        };
        let pool = &config.pools[idx];
        let take = wanting.len().min(wp.ready.len());
        let mut rest = wanting;
        let given: Vec<(&Job, Key)> = rest.drain(..take).collect();
        for ((job, key), inst) in given.into_iter().zip(wp.ready.drain(..take)) {
            let scope = scope_of_key(&key);
            *supply.entry(key).or_default() += 1;
            actions.push(Action::AssignWarm {
                instance_id: inst.id.clone(),
                pool: pool.name.clone(),
                scope: scope.clone(),
                job_id: job.id,
            });
            actions.push(Action::ProvisionRunner {
                instance_id: inst.id.clone(),
                pool: pool.name.clone(),
                scope,
                runner_name: inst.runner_name(),
                labels: runner_labels(pool, None),
                runner_group_id: pool.runner_group_id,
            });
        }
        rest
    }

    /// Launches warm instances up to each pool's target, never past
    /// `max_runners` (jobs were served first).
    fn replenish<'c>(
        &self,
        config: &'c Config,
        obs: &Observed,
        now: Millis,
        alive: &mut HashMap<&'c str, u32>,
        actions: &mut Vec<Action>,
    ) {
        if self.idle {
            return;
        }
        for (idx, pool) in config.pools.iter().enumerate() {
            let (ready, requested, target) = self
                .pools
                .get(idx)
                .map_or((0, 0, 0), |p| (p.ready.len() as u32, p.requested, p.target));
            let have = ready + requested;
            if have >= target {
                continue;
            }
            let count = alive.get(pool.name.as_str()).copied().unwrap_or(0);
            let room = pool.max_runners.saturating_sub(count);
            let n = (target - have).min(room);
            if n == 0 || warm_backing_off(obs, &pool.name, now) {
                continue;
            }
            let chain: Arc<[Offering]> = offerings(pool, &obs.unavailable, now).into();
            if chain.is_empty() {
                continue;
            }
            *alive.entry(pool.name.as_str()).or_default() += n;
            let mut k = 0;
            for _ in 0..n {
                let id = loop {
                    k += 1;
                    let id = warm_launch_id(&config.fleet, idx, now, k);
                    if !obs.launches.contains_key(&id) {
                        break id;
                    }
                };
                actions.push(Action::Launch(LaunchPlan {
                    id,
                    pool: pool.name.clone(),
                    // Unused until a job is assigned (then the job's scope).
                    scope: Scope::Org(String::new()),
                    job_id: None,
                    unique_label: None,
                    name: None,
                    offerings: chain.clone(),
                    resume: false,
                }));
            }
        }
    }

    /// Terminates waiting instances past their retirement age and those
    /// beyond the pool's target (oldest launch first). Called after the
    /// assignments: an instance given a job in this plan is not here.
    fn retire(&self, terminating: &mut BTreeSet<&'a str>, actions: &mut Vec<Action>) {
        if self.idle {
            return;
        }
        for p in &self.pools {
            let extra = p.ready.len().saturating_sub(p.target as usize);
            let mut surplus: Vec<&'a Instance> = Vec::new();
            if extra > 0 {
                surplus.extend(&p.ready);
                surplus.sort_by_key(|i| (i.launched_at, i.id.as_str()));
                surplus.truncate(extra);
            }
            for &i in p.stale.iter().chain(&surplus) {
                if terminating.insert(i.id.as_str()) {
                    actions.push(terminate(i, None, TerminateReason::Idle));
                }
            }
        }
    }
}

/// Launches recorded for jobs but not sent yet (waiting for the batching
/// window or EC2's buckets) that no queued job needs any more: their
/// (pool, scope) already has as many runners coming or idle as it has
/// queued jobs, because a job was taken by a runner launched for another
/// (GitHub gives a job to any idle runner with its labels), or was
/// cancelled, or an idle runner is free. Cancelling one costs nothing; left
/// alone it would launch an instance that boots, idles and is terminated.
/// Launches whose own job no longer waits go first, then the newest.
/// Never a launch that may have been sent, one under way, a warm launch or
/// an on-demand run's. Returns launch id -> reason.
fn unneeded_launches<'a>(
    obs: &'a Observed,
    pool_index: &HashMap<&str, usize>,
    demand: &HashMap<Key, Vec<&Job>>,
    instance_supply: &HashMap<Key, u32>,
) -> HashMap<&'a str, &'static str> {
    let mut by_key: HashMap<Key, (u32, Vec<&Launch>)> = HashMap::default();
    for l in obs
        .launches
        .values()
        .filter(|l| l.state == LaunchState::Requested && !l.is_warm())
    {
        let Some(&idx) = pool_index.get(l.pool.as_str()) else {
            continue;
        };
        let entry = by_key.entry(key_of_scope(idx, &l.scope)).or_default();
        entry.0 += 1;
        if l.batch.is_none()
            && l.job_id.is_some()
            && l.unique_label.is_none()
            && !obs.in_flight.contains(&l.id)
        {
            entry.1.push(l);
        }
    }
    let mut out = HashMap::default();
    for (key, (launches, mut unsent)) in by_key {
        let want = demand.get(&key).map_or(0, Vec::len) as u32;
        let have = launches + instance_supply.get(&key).copied().unwrap_or(0);
        let excess = have.saturating_sub(want) as usize;
        if excess == 0 || unsent.is_empty() {
            continue;
        }
        let waiting = |l: &Launch| {
            l.job_id
                .and_then(|j| obs.jobs.get(&j))
                .is_some_and(|j| j.state == JobState::Queued)
        };
        unsent.sort_by_key(|l| {
            (
                waiting(l),
                std::cmp::Reverse((l.requested_at, l.id.as_str())),
            )
        });
        for l in unsent.into_iter().take(excess) {
            let reason = if waiting(l) {
                "not needed: its pool already has a runner coming or idle for every queued job"
            } else {
                "not needed: its job no longer waits (taken by another runner, or cancelled)"
            };
            out.insert(l.id.as_str(), reason);
        }
    }
    out
}

/// A warm launch of this pool failed less than a backoff ago: wait before
/// the next, so a pool without capacity is not hammered.
fn warm_backing_off(obs: &Observed, pool: &str, now: Millis) -> bool {
    obs.launches.values().any(|l| {
        l.state == LaunchState::Failed
            && l.is_warm()
            && l.pool == pool
            && now.saturating_sub(l.requested_at) < WARM_RETRY_MS
    })
}

/// After a failed warm launch, the next one for its pool waits this long.
pub const WARM_RETRY_MS: Millis = 30_000;

#[cfg(test)]
mod warm_schedule_tests {
    use super::*;
    use crate::config::{MapSecrets, parse};
    use crate::model::{InstanceState, WarmAssignment};

    /// 2024-01-01 was a Monday; 00:00 UTC.
    const MON: Millis = 1_704_067_200_000;
    const H: Millis = 3_600_000;
    const M: Millis = 60_000;

    const CFG: &str = "fleet = \"f\"\n[github]\ntoken = \"t\"\nwebhook_secret = \"s\"\nrepos = [\"acme/*\"]\n[[pool]]\nname = \"p\"\nlabels = [\"self-hosted\"]\nlaunch_template = \"lt-0123456789abcdef0\"\ninstance_types = [\"m5.large\"]\nmax_runners = 5\nwarm = 1\n[[pool.warm_schedule]]\ndays = [\"mon-fri\"]\nhours = \"08:00-18:00\"\nwarm = 3\n";

    fn config() -> Config {
        parse(CFG, &MapSecrets::default()).unwrap()
    }

    /// A waiting warm instance launched at `at`.
    fn waiting(obs: &mut Observed, n: u32, at: Millis) -> String {
        let id = format!("i-{n:017x}");
        let lid = warm_launch_id("f", 0, at, 1);
        obs.launches.insert(
            lid.clone(),
            Launch {
                id: lid.clone(),
                pool: "p".into(),
                scope: Scope::Org(String::new()),
                job_id: None,
                unique_label: None,
                name: None,
                state: LaunchState::Launched,
                requested_at: at,
                instance_id: Some(id.clone()),
                error: None,
                not_before: 0,
                batch: None,
            },
        );
        obs.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                fleet: "f".into(),
                pool: "p".into(),
                state: InstanceState::Running,
                launched_at: at,
                launch_id: Some(lid),
                scope: None,
                unique_label: None,
                market: Some(CapacityMarket::OnDemand),
                jit_written: false,
                param_present: false,
                runner_online_at: None,
                busy: false,
                job_done_at: None,
                terminate_requested_at: None,
                terminate_reason: None,
                offering: None,
                interruption: None,
                assigned: None,
            },
        );
        id
    }

    fn terminated(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Terminate {
                    instance_id,
                    reason: TerminateReason::Idle,
                    ..
                } => Some(instance_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn warm_launches(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Launch(l) if l.is_warm()))
            .count()
    }

    #[test]
    fn an_opening_window_launches_up_to_its_target() {
        let cfg = config();
        let mut obs = Observed::default();
        waiting(&mut obs, 1, MON + 7 * H);
        let before = plan(&cfg, &obs, MON + 8 * H - 1);
        assert_eq!(warm_launches(&before), 0, "07:59: the pool's warm = 1");
        let at_eight = plan(&cfg, &obs, MON + 8 * H);
        assert_eq!(warm_launches(&at_eight), 2, "08:00: up to 3");
        assert!(terminated(&at_eight).is_empty());
        // Saturday 08:00: the weekdays' window is closed.
        let sat = MON + 5 * 24 * H;
        let mut obs = Observed::default();
        waiting(&mut obs, 1, sat + 7 * H);
        assert_eq!(warm_launches(&plan(&cfg, &obs, sat + 8 * H)), 0);
    }

    #[test]
    fn a_closing_window_retires_the_oldest_waiting_and_never_an_assigned_one() {
        let cfg = config();
        let mut obs = Observed::default();
        let old = waiting(&mut obs, 1, MON + 17 * H);
        let mid = waiting(&mut obs, 2, MON + 17 * H + 20 * M);
        let young = waiting(&mut obs, 3, MON + 17 * H + 40 * M);
        // The oldest of all was given a job a minute ago: no longer waiting.
        let given = waiting(&mut obs, 4, MON + 16 * H);
        {
            let i = obs.instances.get_mut(&given).unwrap();
            i.scope = Some(Scope::Repo("acme/app".into()));
            i.assigned = Some(WarmAssignment {
                job_id: 9,
                at: MON + 18 * H - M,
            });
            i.jit_written = true;
        }
        let open = plan(&cfg, &obs, MON + 18 * H - 1);
        assert!(terminated(&open).is_empty(), "17:59: 3 wait, 3 wanted");
        assert_eq!(warm_launches(&open), 0);
        let closed = plan(&cfg, &obs, MON + 18 * H);
        let mut gone = terminated(&closed);
        gone.sort();
        assert_eq!(gone, vec![old, mid], "18:00: the two oldest go");
        assert!(!gone.contains(&young) && !gone.contains(&given));
        assert_eq!(warm_launches(&closed), 0);
    }

    #[test]
    fn unanswered_warm_launches_count_toward_the_target() {
        let cfg = config();
        let mut obs = Observed::default();
        waiting(&mut obs, 1, MON + 7 * H);
        let actions = plan(&cfg, &obs, MON + 8 * H);
        for a in &actions {
            if let Action::Launch(l) = a {
                obs.launches.insert(
                    l.id.clone(),
                    Launch {
                        id: l.id.clone(),
                        pool: l.pool.clone(),
                        scope: l.scope.clone(),
                        job_id: None,
                        unique_label: None,
                        name: None,
                        state: LaunchState::Requested,
                        requested_at: MON + 8 * H,
                        instance_id: None,
                        error: None,
                        not_before: 0,
                        batch: None,
                    },
                );
                obs.in_flight.insert(l.id.clone());
            }
        }
        let next = plan(&cfg, &obs, MON + 8 * H + 500);
        assert_eq!(warm_launches(&next), 0, "two are on their way");
        // The window closes before they are answered: nothing waiting is
        // cut below the target for them.
        let closed = plan(&cfg, &obs, MON + 18 * H);
        assert!(terminated(&closed).is_empty());
    }
}
