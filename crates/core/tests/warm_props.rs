//! Properties of warm pools, over random job arrivals and completions: the
//! planner's actions are applied to a small pure model of GitHub and EC2
//! (launches become instances at once, a written runner config is online at
//! once and takes a queued job of its pool and scope, a finished job's
//! instance powers off), and after every plan:
//!
//! - never more than `max_runners` instances alive per pool, warm ones
//!   included;
//! - a warm instance is assigned to at most one job, a job gets at most
//!   one warm instance, and a job that got one is not launched for;
//! - no instance is terminated while it is assigned and busy (or busy at all);
//! - a waiting warm instance cut as surplus (not for its age) is never
//!   younger than one kept waiting: the oldest go first;
//! - once the jobs are done, the warm count is restored (`warm`, within the cap);
//! - with a `warm_schedule`, the waiting count never exceeds the target at
//!   the time of the plan, and equals it (within the cap) whenever no job is
//!   live, across random times, offsets, days and windows past midnight.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use runfleet_core::config::*;
use runfleet_core::model::*;
use runfleet_core::plan::{Action, Observed, is_waiting_warm, plan, warm_retire_after};
use support::strings;

mod support;

const POOL_LABELS: [&[&str]; 2] = [&["self-hosted", "linux", "x64"], &["self-hosted", "gpu"]];
const REPOS: [&str; 3] = ["acme/app", "acme/lib", "other/x"];

fn config(max: [u32; 2], warm: [u32; 2], org: bool) -> Config {
    let pool = |i: usize| {
        let mut p = support::pool(&format!("p{i}"), POOL_LABELS[i], max[i]);
        p.instance_types = strings(&["m7i.large"]);
        p.subnets = vec![];
        p.market = Market::OnDemand;
        p.warm = warm[i].min(max[i]);
        if org {
            p.runner_scope = RunnerScope::Org;
        }
        p.max_lifetime = Duration::from_secs(2 * 3600);
        p
    };
    let mut c = support::config("ours", &["acme/*", "other/*"], vec![pool(0), pool(1)]);
    c.server.boot_timeout = Duration::from_secs(300);
    c
}

/// One step of the scenario.
#[derive(Debug, Clone)]
enum Op {
    /// Jobs queued now: (pool, repo) each.
    Queue(Vec<(usize, usize)>),
    /// Time passes.
    Wait(u64),
    /// The n-th busy instance's job completes.
    Complete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec((0usize..2, 0usize..3), 1..6).prop_map(Op::Queue),
        (1u64..900_000).prop_map(Op::Wait),
        (0usize..8).prop_map(Op::Complete),
    ]
}

struct Model {
    cfg: Config,
    obs: Observed,
    now: Millis,
    next_job: u64,
    next_instance: u64,
    /// instance -> job it was assigned (warm), over the whole run.
    assigned: BTreeMap<String, u64>,
    jobs_assigned: BTreeSet<u64>,
}

impl Model {
    fn new(cfg: Config) -> Model {
        Model {
            cfg,
            obs: Observed::default(),
            now: 0,
            next_job: 1,
            next_instance: 1,
            assigned: BTreeMap::new(),
            jobs_assigned: BTreeSet::new(),
        }
    }

    fn queue(&mut self, pool: usize, repo: usize) {
        let id = self.next_job;
        self.next_job += 1;
        let ev = JobEvent {
            job_id: id,
            run_id: id,
            repo: REPOS[repo].into(),
            labels: strings(POOL_LABELS[pool]),
            status: JobStatus::Queued,
            runner_name: None,
            conclusion: None,
            at: self.now,
        };
        self.obs.jobs.insert(id, Job::new(&ev));
    }

    fn alive(&self, pool: &str) -> u32 {
        self.obs
            .instances
            .values()
            .filter(|i| i.pool == pool && i.alive())
            .count() as u32
    }

    fn waiting(&self, pool: &str) -> u32 {
        self.obs
            .instances
            .values()
            .filter(|i| i.pool == pool && i.alive() && is_waiting_warm(&self.obs, i))
            .count() as u32
    }

    /// Plans once and applies the actions; checks the per-plan properties.
    fn round(&mut self) -> Result<usize, TestCaseError> {
        let actions = plan(&self.cfg, &self.obs, self.now);
        let n = actions.len();
        // Waiting warm instances cut as surplus in this plan (not for age).
        let mut cut: Vec<(String, Millis, String)> = Vec::new();
        for a in actions {
            match a {
                Action::Launch(lp) => {
                    prop_assert!(!lp.resume);
                    // A job that took a warm instance is not launched for.
                    if let Some(j) = lp.job_id {
                        prop_assert!(
                            !self.jobs_assigned.contains(&j),
                            "job {j} got a warm instance and a launch"
                        );
                    }
                    let iid = format!("i-{:017x}", self.next_instance);
                    self.next_instance += 1;
                    let warm = lp.is_warm();
                    if let Some(j) = lp.job_id.and_then(|j| self.obs.jobs.get_mut(&j)) {
                        j.launches += 1;
                    }
                    self.obs.launches.insert(
                        lp.id.clone(),
                        Launch {
                            id: lp.id.clone(),
                            pool: lp.pool.clone(),
                            scope: lp.scope.clone(),
                            job_id: lp.job_id,
                            unique_label: None,
                            name: None,
                            state: LaunchState::Launched,
                            requested_at: self.now,
                            instance_id: Some(iid.clone()),
                            error: None,
                            not_before: 0,
                            batch: None,
                        },
                    );
                    self.obs.instances.insert(
                        iid.clone(),
                        Instance {
                            id: iid,
                            fleet: "ours".into(),
                            pool: lp.pool.clone(),
                            state: InstanceState::Running,
                            launched_at: self.now,
                            launch_id: Some(lp.id.clone()),
                            scope: (!warm).then(|| lp.scope.clone()),
                            unique_label: None,
                            market: None,
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
                    let pool = lp.pool.as_str();
                    let max = self.cfg.pool(pool).unwrap().max_runners;
                    prop_assert!(self.alive(pool) <= max, "pool {pool} over {max}");
                }
                Action::AssignWarm {
                    instance_id,
                    scope,
                    job_id,
                    ..
                } => {
                    let i = self.obs.instances.get_mut(&instance_id).unwrap();
                    prop_assert!(i.alive() && i.assigned.is_none() && i.scope.is_none());
                    prop_assert!(
                        self.assigned.insert(instance_id.clone(), job_id).is_none(),
                        "warm instance {instance_id} assigned twice"
                    );
                    prop_assert!(
                        self.jobs_assigned.insert(job_id),
                        "job {job_id} given two warm instances"
                    );
                    prop_assert_eq!(self.obs.jobs[&job_id].state, JobState::Queued);
                    i.scope = Some(scope);
                    i.assigned = Some(WarmAssignment {
                        job_id,
                        at: self.now,
                    });
                }
                Action::ProvisionRunner { instance_id, .. } => {
                    let i = self.obs.instances.get_mut(&instance_id).unwrap();
                    prop_assert!(i.scope.is_some(), "runner for a waiting warm instance");
                    i.jit_written = true;
                    i.param_present = true;
                    i.runner_online_at = Some(self.now);
                }
                Action::Terminate { instance_id, .. } => {
                    let i = &self.obs.instances[&instance_id];
                    let retire_after = warm_retire_after(self.cfg.pool(&i.pool).unwrap());
                    if i.alive()
                        && is_waiting_warm(&self.obs, i)
                        && self.now.saturating_sub(i.launched_at) < retire_after
                    {
                        cut.push((i.pool.clone(), i.launched_at, i.id.clone()));
                    }
                    let i = self.obs.instances.get_mut(&instance_id).unwrap();
                    prop_assert!(!i.busy, "terminates busy {instance_id}");
                    i.state = InstanceState::Terminated;
                    i.terminate_requested_at = Some(self.now);
                    i.param_present = false;
                }
                Action::DeleteParameter { instance_id } => {
                    if let Some(i) = self.obs.instances.get_mut(&instance_id) {
                        i.param_present = false;
                    }
                }
                Action::MarkJob { job_id, state, .. } => {
                    self.obs.jobs.get_mut(&job_id).unwrap().state = state;
                }
                Action::DeleteRunner { .. } | Action::RerunJob { .. } => {}
                Action::CancelLaunch { id, .. } => {
                    // This model launches at once: nothing waits to be sent.
                    prop_assert!(false, "cancelled {id}, which was never waiting");
                }
            }
        }
        for (pool, at, id) in &cut {
            for i in self.obs.instances.values() {
                if i.pool == *pool && i.alive() && is_waiting_warm(&self.obs, i) {
                    prop_assert!(
                        (i.launched_at, &i.id) > (*at, id),
                        "kept {} (launched {}) but cut {id} (launched {at})",
                        i.id,
                        i.launched_at
                    );
                }
            }
        }
        self.github_assigns();
        for p in &self.cfg.pools {
            prop_assert!(self.alive(&p.name) <= p.max_runners);
        }
        Ok(n)
    }

    /// GitHub gives queued jobs to online idle runners of their pool and scope.
    fn github_assigns(&mut self) {
        let queued: Vec<u64> = self
            .obs
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.id)
            .collect();
        for jid in queued {
            let job = &self.obs.jobs[&jid];
            let pool = runfleet_core::labels::pool_for(&self.cfg, &job.labels)
                .unwrap()
                .name
                .clone();
            let repo = job.repo.clone();
            let Some(i) = self.obs.instances.values_mut().find(|i| {
                i.alive()
                    && i.pool == pool
                    && i.runner_online_at.is_some()
                    && !i.busy
                    && i.job_done_at.is_none()
                    && i.terminate_requested_at.is_none()
                    && i.scope.as_ref().is_some_and(|s| s.admits(&repo))
            }) else {
                continue;
            };
            i.busy = true;
            let name = i.runner_name();
            let job = self.obs.jobs.get_mut(&jid).unwrap();
            job.state = JobState::InProgress;
            job.started_at = Some(self.now);
            job.runner_name = Some(name);
        }
    }

    fn complete(&mut self, n: usize) {
        let busy: Vec<String> = self
            .obs
            .instances
            .values()
            .filter(|i| i.busy && i.alive())
            .map(|i| i.id.clone())
            .collect();
        if busy.is_empty() {
            return;
        }
        let iid = &busy[n % busy.len()];
        let i = self.obs.instances.get_mut(iid).unwrap();
        i.busy = false;
        i.job_done_at = Some(self.now);
        // The ephemeral runner exits and the boot script powers off.
        i.state = InstanceState::Terminated;
        let name = i.runner_name();
        for j in self.obs.jobs.values_mut() {
            if j.runner_name.as_deref() == Some(name.as_str()) {
                j.state = JobState::Completed;
                j.completed_at = Some(self.now);
            }
        }
    }

    fn settle_rounds(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..6 {
            if self.round()? == 0 {
                break;
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn warm_pools_hold_their_properties(
        max in [1u32..6, 1u32..4],
        warm in [0u32..4, 0u32..3],
        org in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let cfg = config(max, warm, org);
        let mut m = Model::new(cfg.clone());
        m.settle_rounds()?;
        for op in ops {
            match op {
                Op::Queue(jobs) => {
                    for (p, r) in jobs {
                        m.queue(p, r);
                    }
                }
                Op::Wait(ms) => m.now += ms,
                Op::Complete(n) => m.complete(n),
            }
            m.settle_rounds()?;
        }
        // Drain: every job runs and completes; then the warm count is back.
        for _ in 0..200 {
            let pending = m.obs.jobs.values().any(|j| !j.state.is_terminal());
            if !pending {
                break;
            }
            m.complete(0);
            m.now += 1_000;
            m.settle_rounds()?;
        }
        prop_assert!(
            m.obs.jobs.values().all(|j| j.state == JobState::Completed),
            "jobs left: {:?}",
            m.obs.jobs.values().filter(|j| j.state != JobState::Completed).collect::<Vec<_>>()
        );
        m.now += 1_000;
        m.settle_rounds()?;
        for p in &cfg.pools {
            prop_assert_eq!(
                m.waiting(&p.name),
                p.warm.min(p.max_runners),
                "pool {} warm count not restored", p.name
            );
        }
        // Nothing but the waiting warm instances is left.
        for p in &cfg.pools {
            prop_assert_eq!(m.alive(&p.name), m.waiting(&p.name));
        }
    }

    #[test]
    fn lowering_warm_terminates_the_extras_only(
        max in [2u32..6, 1u32..4],
        warm in [1u32..4, 1u32..3],
        lower in [0u32..2, 0u32..2],
    ) {
        let cfg = config(max, warm, false);
        let mut m = Model::new(cfg.clone());
        m.settle_rounds()?;
        for p in &cfg.pools {
            prop_assert_eq!(m.waiting(&p.name), p.warm);
        }
        let lowered = config(max, lower, false);
        m.cfg = lowered.clone();
        m.now += 1_000;
        m.settle_rounds()?;
        for (p, before) in lowered.pools.iter().zip(&cfg.pools) {
            prop_assert_eq!(m.waiting(&p.name), p.warm.min(before.warm));
            prop_assert_eq!(m.alive(&p.name), p.warm.min(before.warm));
        }
    }

    #[test]
    fn a_waiting_warm_instance_never_times_out_and_retires_at_half_life(
        warm in 1u32..4,
    ) {
        let cfg = config([6, 1], [warm, 0], false);
        let mut m = Model::new(cfg.clone());
        m.settle_rounds()?;
        let first: BTreeSet<String> = m.obs.instances.keys().cloned().collect();
        // Far past the boot timeout (5 m), short of half of max_lifetime (1 h).
        m.now += 50 * 60 * 1000;
        m.settle_rounds()?;
        let alive: BTreeSet<String> = m.obs.instances.values().filter(|i| i.alive()).map(|i| i.id.clone()).collect();
        prop_assert_eq!(&alive, &first);
        m.now += 11 * 60 * 1000;
        m.settle_rounds()?;
        let alive: BTreeSet<String> = m.obs.instances.values().filter(|i| i.alive()).map(|i| i.id.clone()).collect();
        prop_assert!(alive.is_disjoint(&first), "not retired: {alive:?}");
        prop_assert_eq!(m.waiting("p0"), warm);
    }
}

/// 2024-01-01 00:00 UTC, a Monday.
const MONDAY: Millis = 1_704_067_200_000;
const DAY: Millis = 24 * 3_600_000;

/// One schedule entry: (days mask, start minute, length in minutes, warm,
/// offset in quarter hours).
fn window() -> impl Strategy<Value = (u8, u16, u16, u32, i16)> {
    (1u8..128, 0u16..1440, 1u16..1440, 0u32..6, -48i16..=56)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn warm_follows_its_schedule(
        max in 1u32..6,
        default in 0u32..4,
        windows in prop::collection::vec(window(), 0..4),
        start in 0u64..(14 * DAY),
        ops in prop::collection::vec(
            prop_oneof![
                3 => (1u64..(12 * 3_600_000)).prop_map(Op::Wait),
                1 => prop::collection::vec((0usize..1, 0usize..3), 1..4).prop_map(Op::Queue),
                1 => (0usize..8).prop_map(Op::Complete),
            ],
            1..40,
        ),
    ) {
        let mut cfg = config([max, 1], [default, 0], false);
        cfg.pools[0].warm_schedule = windows
            .iter()
            .map(|&(days, start, len, warm, quarters)| WarmWindow {
                days,
                start,
                end: (start + len) % 1440,
                utc_offset: quarters * 15,
                warm: warm.min(max),
            })
            .collect();
        let mut m = Model::new(cfg.clone());
        m.now = MONDAY + start;
        let check = |m: &Model| -> Result<(), TestCaseError> {
            let p = &m.cfg.pools[0];
            let target = p.warm_at(m.now);
            let waiting = m.waiting(&p.name);
            prop_assert!(waiting <= target, "{waiting} waiting, target {target} at {}", m.now);
            let live = m.obs.jobs.values().any(|j| !j.state.is_terminal());
            if !live {
                let others = m.alive(&p.name) - waiting;
                prop_assert_eq!(
                    waiting,
                    target.min(p.max_runners - others),
                    "at {} ({} others alive)", m.now, others
                );
            }
            Ok(())
        };
        m.settle_rounds()?;
        check(&m)?;
        for op in ops {
            match op {
                Op::Queue(jobs) => {
                    for (p, r) in jobs {
                        m.queue(p, r);
                    }
                }
                Op::Wait(ms) => m.now += ms,
                Op::Complete(n) => m.complete(n),
            }
            m.settle_rounds()?;
            check(&m)?;
        }
    }
}
