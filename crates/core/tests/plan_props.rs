//! Properties of the planner over random configs and observations.

use std::collections::HashMap;

use proptest::prelude::*;
use runfleet_core::config::*;
use runfleet_core::model::*;
use runfleet_core::plan::{Action, Observed, plan};
use support::strings;

mod support;

const LABELS: [&[&str]; 4] = [
    &["self-hosted", "linux", "x64"],
    &["self-hosted", "linux", "arm64"],
    &["self-hosted", "windows"],
    &["self-hosted", "gpu"],
];

fn config(max: [u32; 3], scope_org: bool) -> Config {
    let pool = |name: &str, labels: &[&str], max_runners: u32| {
        let mut p = support::pool(name, labels, max_runners);
        if scope_org {
            p.runner_scope = RunnerScope::Org;
        }
        p
    };
    support::config(
        "ours",
        &["acme/*"],
        vec![
            pool("linux-x64", LABELS[0], max[0]),
            pool("linux-arm64", LABELS[1], max[1]),
            pool("windows", &["self-hosted", "windows", "x64"], max[2]),
        ],
    )
}

const POOLS: [&str; 3] = ["linux-x64", "linux-arm64", "windows"];
const REPOS: [&str; 3] = ["acme/app", "acme/lib", "other/x"];

fn job() -> impl Strategy<Value = Job> {
    (
        0u64..10_000,
        0usize..4,
        0usize..3,
        0u8..5,
        0u64..2_000_000,
        0u32..3,
    )
        .prop_map(|(id, l, r, st, at, launches)| Job {
            id,
            run_id: id / 3,
            repo: REPOS[r].into(),
            labels: strings(LABELS[l]),
            state: [
                JobState::Queued,
                JobState::Queued,
                JobState::InProgress,
                JobState::Completed,
                JobState::Failed,
            ][st as usize],
            queued_at: at,
            started_at: None,
            completed_at: None,
            runner_name: None,
            reason: None,
            launches,
            retry_at: 0,
            conclusion: None,
            rerun_requested_at: None,
        })
}

fn instance() -> impl Strategy<Value = Instance> {
    (
        (0u32..500, any::<bool>(), 0usize..3, 0u8..4, 0u64..3_000_000),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0u64..3_000_000),
            prop::option::of(0u64..3_000_000),
        ),
        (prop::option::of(0u64..3_000_000), 0usize..3, any::<bool>()),
    )
        .prop_map(
            |((n, ours, p, st, launched), (known, jit, busy, online, done), (term, r, unique))| {
                Instance {
                    id: format!("i-{n:08x}"),
                    fleet: if ours { "ours".into() } else { "theirs".into() },
                    pool: POOLS[p].into(),
                    state: [
                        InstanceState::Pending,
                        InstanceState::Running,
                        InstanceState::ShuttingDown,
                        InstanceState::Terminated,
                    ][st as usize],
                    launched_at: launched,
                    launch_id: known.then(|| format!("l-{n}")),
                    scope: known.then(|| Scope::Repo(REPOS[r].into())),
                    unique_label: unique.then(|| format!("u-{n}")),
                    market: None,
                    jit_written: jit,
                    param_present: jit,
                    runner_online_at: online,
                    busy,
                    job_done_at: done,
                    terminate_requested_at: term,
                    terminate_reason: None,
                    offering: None,
                    interruption: None,
                    assigned: None,
                }
            },
        )
}

fn launch() -> impl Strategy<Value = Launch> {
    (
        0u32..200,
        0usize..3,
        0usize..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, p, r, requested, sent)| Launch {
            id: format!("ours-j{n}-1"),
            pool: POOLS[p].into(),
            scope: Scope::Repo(REPOS[r].into()),
            job_id: Some(n as u64),
            unique_label: None,
            name: None,
            state: if requested {
                LaunchState::Requested
            } else {
                LaunchState::Launched
            },
            requested_at: 0,
            instance_id: None,
            error: None,
            not_before: 0,
            batch: sent.then(|| LaunchBatch {
                id: format!("ours-j{n}-1"),
                size: 1,
            }),
        })
}

prop_compose! {
    fn world()(
        jobs in prop::collection::vec(job(), 0..120),
        instances in prop::collection::vec(instance(), 0..120),
        launches in prop::collection::vec(launch(), 0..30),
        in_flight in prop::collection::vec(0u32..200, 0..10),
        busy_runners in prop::collection::vec((0u32..500, any::<bool>()), 0..60),
        max in [1u32..20, 1u32..20, 1u32..5],
        org in any::<bool>(),
        now in 0u64..4_000_000,
    ) -> (Config, Observed, u64) {
        let mut obs = Observed {
            jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
            instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
            launches: launches.into_iter().map(|l| (l.id.clone(), l)).collect(),
            in_flight: in_flight.into_iter().map(|n| format!("ours-j{n}-1")).collect(),
            ..Observed::default()
        };
        let names: Vec<(String, String)> = obs.instances.values().map(|i| (i.id.clone(), i.runner_name())).collect();
        for (k, (n, busy)) in busy_runners.into_iter().enumerate() {
            // Runners named after instances (ours or theirs), some busy.
            let (_, name) = names.get(n as usize % names.len().max(1)).cloned().unwrap_or_default();
            if name.is_empty() { continue; }
            obs.runners.push(Runner { id: k as u64 + 1, name, scope: Scope::Repo("acme/app".into()), online: true, busy, labels: vec![] });
        }
        (config(max, org), obs, now)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_exceeds_max_runners((cfg, obs, now) in world()) {
        let actions = plan(&cfg, &obs, now);
        let mut count: HashMap<&str, u32> = HashMap::new();
        for i in obs.instances.values().filter(|i| i.fleet == cfg.fleet && i.alive()) {
            *count.entry(i.pool.as_str()).or_default() += 1;
        }
        for l in obs.launches.values().filter(|l| l.state == LaunchState::Requested) {
            *count.entry(l.pool.as_str()).or_default() += 1;
        }
        let before = count.clone();
        for a in &actions {
            match a {
                Action::Launch(lp) if !lp.resume => *count.entry(lp.pool.as_str()).or_default() += 1,
                // Dropped before it was sent: it will never be an instance.
                Action::CancelLaunch { pool, .. } => *count.get_mut(pool.as_str()).unwrap() -= 1,
                _ => {}
            }
        }
        for p in &cfg.pools {
            let after = count.get(p.name.as_str()).copied().unwrap_or(0);
            let had = before.get(p.name.as_str()).copied().unwrap_or(0);
            prop_assert!(after <= p.max_runners.max(had), "pool {} would have {} > max {}", p.name, after, p.max_runners);
        }
    }

    #[test]
    fn never_terminates_under_a_busy_runner((cfg, obs, now) in world()) {
        let busy_names: Vec<&str> = obs.runners.iter().filter(|r| r.busy).map(|r| r.name.as_str()).collect();
        for a in plan(&cfg, &obs, now) {
            if let Action::Terminate { instance_id, .. } = &a {
                let i = &obs.instances[instance_id];
                prop_assert!(!i.busy, "terminates busy instance {}", instance_id);
                prop_assert!(!busy_names.contains(&i.runner_name().as_str()), "terminates {} whose runner is busy", instance_id);
            }
        }
    }

    #[test]
    fn never_touches_another_fleet((cfg, obs, now) in world()) {
        for a in plan(&cfg, &obs, now) {
            let touched = match &a {
                Action::Terminate { instance_id, .. } | Action::ProvisionRunner { instance_id, .. } => Some(instance_id.clone()),
                Action::DeleteParameter { instance_id } => obs.instances.get(instance_id).map(|i| i.id.clone()),
                Action::DeleteRunner { name, .. } => instance_of_runner(name).map(str::to_string),
                _ => None,
            };
            if let Some(id) = touched && let Some(i) = obs.instances.get(&id) {
                prop_assert_eq!(&i.fleet, &cfg.fleet, "{:?} touches another fleet's instance", a);
            }
        }
    }

    #[test]
    fn drops_only_unsent_launches_that_nothing_needs((cfg, obs, now) in world()) {
        // A cancelled launch was recorded for a job, never sent and is not
        // under way; a plan that cancels one in a (pool, scope) neither
        // launches anew nor resumes it there (no churn).
        let actions = plan(&cfg, &obs, now);
        let mut cancelled_keys = Vec::new();
        for a in &actions {
            if let Action::CancelLaunch { id, pool, .. } = a {
                let l = &obs.launches[id];
                prop_assert_eq!(l.state, LaunchState::Requested);
                prop_assert!(l.batch.is_none(), "cancels {} which may have been sent", id);
                prop_assert!(!obs.in_flight.contains(id), "cancels {} under way", id);
                prop_assert!(l.job_id.is_some() && l.unique_label.is_none());
                prop_assert_eq!(&l.pool, pool);
                cancelled_keys.push((l.pool.clone(), l.scope.clone(), id.clone()));
            }
        }
        for a in &actions {
            if let Action::Launch(lp) = a {
                for (pool, scope, id) in &cancelled_keys {
                    prop_assert!(&lp.id != id, "cancels and resumes {}", id);
                    prop_assert!(
                        lp.resume || !(lp.pool == *pool && lp.scope == *scope),
                        "cancels {} and launches {} in the same pool and scope", id, lp.id
                    );
                }
            }
        }
    }

    #[test]
    fn plan_is_deterministic((cfg, obs, now) in world()) {
        prop_assert_eq!(plan(&cfg, &obs, now), plan(&cfg, &obs, now));
    }

    #[test]
    fn one_launch_per_uncovered_job((cfg, obs, now) in world()) {
        // No job gets two new launches in one plan, and launch ids are unique.
        let mut ids = std::collections::HashSet::new();
        let mut per_job: HashMap<u64, u32> = HashMap::new();
        for a in plan(&cfg, &obs, now) {
            if let Action::Launch(lp) = a {
                prop_assert!(ids.insert(lp.id.clone()), "duplicate launch id {}", lp.id);
                prop_assert!(lp.id.len() <= 64);
                if !lp.resume && let Some(j) = lp.job_id {
                    *per_job.entry(j).or_default() += 1;
                }
            }
        }
        prop_assert!(per_job.values().all(|&n| n == 1));
    }
}

#[test]
fn queued_jobs_get_launches_up_to_the_cap() {
    let cfg = config([3, 1, 1], false);
    let mut obs = Observed::default();
    for id in 1..=5 {
        let ev = JobEvent {
            job_id: id,
            run_id: 1,
            repo: "acme/app".into(),
            labels: strings(&["self-hosted", "linux"]),
            status: JobStatus::Queued,
            runner_name: None,
            conclusion: None,
            at: id,
        };
        obs.jobs.insert(id, Job::new(&ev));
    }
    let actions = plan(&cfg, &obs, 100);
    let launched: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch(lp) => lp.job_id,
            _ => None,
        })
        .collect();
    // the oldest three, in the first pool that has all labels
    assert_eq!(launched, vec![1, 2, 3]);
    let Action::Launch(first) = &actions[0] else {
        panic!("expected a launch, got {:?}", actions[0])
    };
    assert_eq!(first.pool, "linux-x64");
    assert_eq!(first.offerings.len(), 8, "2 markets x 2 types x 2 subnets");
    assert_eq!(first.offerings[0].market, CapacityMarket::Spot);
    assert_eq!(first.offerings[7].market, CapacityMarket::OnDemand);
}

#[test]
fn unmatched_and_foreign_repo_jobs_are_ignored_with_a_reason() {
    let cfg = config([3, 1, 1], false);
    let mut obs = Observed::default();
    for (id, repo, labels) in [(1, "acme/app", LABELS[3]), (2, "other/x", LABELS[0])] {
        let ev = JobEvent {
            job_id: id,
            run_id: 1,
            repo: repo.into(),
            labels: strings(labels),
            status: JobStatus::Queued,
            runner_name: None,
            conclusion: None,
            at: 0,
        };
        obs.jobs.insert(id, Job::new(&ev));
    }
    let actions = plan(&cfg, &obs, 0);
    assert_eq!(actions.len(), 2, "{actions:?}");
    for a in &actions {
        let Action::MarkJob { state, reason, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(*state, JobState::Ignored);
        assert!(
            reason.contains("gpu") || reason.contains("other/x"),
            "{reason}"
        );
    }
}

#[test]
fn a_new_launch_goes_to_the_job_without_one() {
    // Job 2 was stored after job 3 (webhooks race); job 3 already has its launch.
    let cfg = config([10, 1, 1], false);
    let mut obs = Observed::default();
    for id in [2u64, 3] {
        let ev = JobEvent {
            job_id: id,
            run_id: 1,
            repo: "acme/app".into(),
            labels: strings(LABELS[0]),
            status: JobStatus::Queued,
            runner_name: None,
            conclusion: None,
            at: 0,
        };
        obs.jobs.insert(id, Job::new(&ev));
    }
    obs.jobs.get_mut(&3).unwrap().launches = 1;
    let l = Launch {
        id: "ours-j3-1".into(),
        pool: "linux-x64".into(),
        scope: Scope::Repo("acme/app".into()),
        job_id: Some(3),
        unique_label: None,
        name: None,
        state: LaunchState::Requested,
        requested_at: 0,
        instance_id: None,
        error: None,
        not_before: u64::MAX,
        batch: None,
    };
    obs.launches.insert(l.id.clone(), l);
    let launches: Vec<String> = plan(&cfg, &obs, 10)
        .into_iter()
        .filter_map(|a| match a {
            Action::Launch(lp) if !lp.resume => Some(lp.id),
            _ => None,
        })
        .collect();
    assert_eq!(launches, vec!["ours-j2-1".to_string()]);
}
