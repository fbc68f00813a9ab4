//! The planner and the JIT parameters: the boot script deletes its own as
//! soon as it has read it, so the controller deletes only leftovers that
//! the listing (`Observed::params`) still shows: never a parameter the
//! listing does not show (whatever `Instance::param_present` says), always
//! a leftover (no secret stays in SSM), and not one that its instance is
//! about to delete or has just deleted.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use runfleet_core::model::*;
use runfleet_core::plan::{Action, Observed, PARAM_LEFTOVER_MS, param_grace, param_leftover, plan};

mod support;

const GRACE: Millis = PARAM_LEFTOVER_MS;

fn config() -> runfleet_core::config::Config {
    support::config(
        "ours",
        &["acme/*"],
        vec![support::pool(
            "linux-x64",
            &["self-hosted", "linux", "x64"],
            50,
        )],
    )
}

/// An instance of ours whose runner config was written at 1 s.
fn instance(id: &str) -> Instance {
    Instance {
        id: id.into(),
        fleet: "ours".into(),
        pool: "linux-x64".into(),
        state: InstanceState::Running,
        launched_at: 0,
        launch_id: Some(format!("l-{id}")),
        scope: Some(Scope::Repo("acme/app".into())),
        unique_label: None,
        market: None,
        jit_written: true,
        param_present: true,
        runner_online_at: None,
        busy: false,
        job_done_at: None,
        terminate_requested_at: None,
        terminate_reason: None,
        offering: None,
        interruption: None,
        assigned: None,
    }
}

fn deleted(cfg: &runfleet_core::config::Config, obs: &Observed, now: Millis) -> Vec<String> {
    plan(cfg, obs, now)
        .into_iter()
        .filter_map(|a| match a {
            Action::DeleteParameter { instance_id } => Some(instance_id),
            _ => None,
        })
        .collect()
}

fn with(instances: Vec<Instance>, params: &[&str]) -> Observed {
    Observed {
        instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
        params: params.iter().map(|s| s.to_string()).collect(),
        ..Observed::default()
    }
}

#[test]
fn the_grace_is_two_minutes_or_two_reconcile_intervals() {
    let mut cfg = config();
    assert_eq!(param_grace(&cfg), 2 * 60 * 1000);
    cfg.server.reconcile_interval = Duration::from_secs(300);
    assert_eq!(param_grace(&cfg), 10 * 60 * 1000);
}

/// The normal path: the controller wrote the parameter (`param_present`),
/// the instance read and deleted it, the runner ran its job and the
/// instance powered off. Once a listing no longer shows the parameter, no
/// delete is planned, even though `param_present` is still set.
#[test]
fn a_parameter_the_instance_deleted_is_not_deleted_again() {
    let cfg = config();
    let mut online = instance("i-1");
    online.runner_online_at = Some(30_000);
    let mut done = instance("i-2");
    done.runner_online_at = Some(30_000);
    done.job_done_at = Some(90_000);
    let mut gone = instance("i-3");
    gone.runner_online_at = Some(30_000);
    gone.job_done_at = Some(90_000);
    gone.state = InstanceState::Terminated;
    let mut gone_early = instance("i-4");
    gone_early.state = InstanceState::Terminated;
    let obs = with(vec![online, done, gone, gone_early], &[]);
    for now in [40_000, 30_000 + GRACE, 3_600_000] {
        assert!(deleted(&cfg, &obs, now).is_empty(), "at {now}");
    }
}

#[test]
fn a_booting_instance_keeps_its_parameter() {
    let cfg = config();
    let obs = with(vec![instance("i-1")], &["i-1"]);
    assert!(deleted(&cfg, &obs, 5 * 60 * 1000).is_empty());
}

/// Listed after the runner came online: the instance's delete most likely
/// happened after the listing; only once the grace has passed (several
/// listings later) is it a leftover.
#[test]
fn a_listed_parameter_of_an_online_runner_is_deleted_after_the_grace() {
    let cfg = config();
    let mut i = instance("i-1");
    i.runner_online_at = Some(30_000);
    i.busy = true; // running its job (an idle one would be terminated)
    let obs = with(vec![i.clone()], &["i-1"]);
    assert!(deleted(&cfg, &obs, 30_000).is_empty());
    assert!(deleted(&cfg, &obs, 30_000 + GRACE - 1).is_empty());
    assert_eq!(deleted(&cfg, &obs, 30_000 + GRACE), ["i-1"]);

    // Its job done, or its instance gone: the same grace from online.
    i.busy = false;
    i.job_done_at = Some(60_000);
    i.state = InstanceState::Terminated;
    let obs = with(vec![i], &["i-1"]);
    assert!(deleted(&cfg, &obs, 60_000).is_empty());
    assert_eq!(deleted(&cfg, &obs, 30_000 + GRACE), ["i-1"]);

    // Not twice at once.
    let mut obs = obs;
    obs.in_flight.insert("i-1".into());
    assert!(deleted(&cfg, &obs, 30_000 + GRACE).is_empty());
}

#[test]
fn a_listed_parameter_of_a_gone_instance_that_never_ran_is_deleted_at_once() {
    let cfg = config();
    let mut i = instance("i-1");
    i.state = InstanceState::ShuttingDown;
    let obs = with(vec![i], &["i-1"]);
    assert_eq!(deleted(&cfg, &obs, 10_000), ["i-1"]);
}

#[test]
fn a_listed_parameter_of_an_unknown_instance_is_deleted() {
    let cfg = config();
    let obs = with(vec![], &["i-9"]);
    assert_eq!(deleted(&cfg, &obs, 0), ["i-9"]);
}

/// A termination deletes the parameter itself; one listed after the
/// termination (its delete failed) is deleted on its own.
#[test]
fn terminations_and_their_leftovers() {
    let cfg = config();
    // Boot timeout: terminated in this plan, parameter included.
    let obs = with(vec![instance("i-1")], &["i-1"]);
    let actions = plan(&cfg, &obs, 11 * 60 * 1000);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Terminate { instance_id, .. } if instance_id == "i-1")),
        "{actions:?}"
    );
    assert!(deleted(&cfg, &obs, 11 * 60 * 1000).is_empty());
    // Terminated a moment ago, and still listed.
    let mut i = instance("i-1");
    i.terminate_requested_at = Some(11 * 60 * 1000);
    i.param_present = false;
    let obs = with(vec![i], &["i-1"]);
    assert_eq!(deleted(&cfg, &obs, 11 * 60 * 1000 + 30_000), ["i-1"]);
}

#[test]
fn the_leftover_rule() {
    let now = 10 * 60 * 1000;
    assert!(param_leftover(None, GRACE, now), "unknown instance");
    let booting = instance("i-1");
    assert!(!param_leftover(Some(&booting), GRACE, now));
    let mut online = instance("i-1");
    online.runner_online_at = Some(now - GRACE + 1);
    assert!(!param_leftover(Some(&online), GRACE, now));
    online.runner_online_at = Some(now - GRACE);
    assert!(param_leftover(Some(&online), GRACE, now));
    let mut terminating = instance("i-1");
    terminating.terminate_requested_at = Some(now);
    assert!(param_leftover(Some(&terminating), GRACE, now));
}

fn arb_instance() -> impl Strategy<Value = Instance> {
    (
        0u32..40,
        0u8..4,
        prop::option::of(0u64..1_000_000),
        prop::option::of(0u64..1_000_000),
        prop::option::of(0u64..1_000_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, st, online, done, term, present, ours)| {
            let mut i = instance(&format!("i-{n:04}"));
            i.state = [
                InstanceState::Pending,
                InstanceState::Running,
                InstanceState::ShuttingDown,
                InstanceState::Terminated,
            ][st as usize];
            i.runner_online_at = online;
            i.job_done_at = done.filter(|_| online.is_some());
            i.terminate_requested_at = term;
            i.param_present = present;
            if !ours {
                i.fleet = "theirs".into();
            }
            i
        })
}

prop_compose! {
    fn world()(
        instances in prop::collection::vec(arb_instance(), 0..30),
        listed in prop::collection::btree_set(0u32..50, 0..30),
        in_flight in prop::collection::btree_set(0u32..50, 0..5),
        now in 0u64..1_500_000,
    ) -> (Observed, Millis) {
        let id = |n: &u32| format!("i-{n:04}");
        let obs = Observed {
            instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
            params: listed.iter().map(id).collect(),
            in_flight: in_flight.iter().map(id).collect(),
            ..Observed::default()
        };
        (obs, now)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Deletes only what the listing shows, at most once per plan, and
    /// never one under way.
    #[test]
    fn deletes_only_listed_parameters((obs, now) in world()) {
        let cfg = config();
        let ids = deleted(&cfg, &obs, now);
        let unique: BTreeSet<&String> = ids.iter().collect();
        prop_assert_eq!(unique.len(), ids.len(), "twice in one plan: {:?}", ids);
        for id in &ids {
            prop_assert!(obs.params.contains(id), "{} is not listed", id);
            prop_assert!(!obs.in_flight.contains(id), "{} is under way", id);
        }
    }

    /// No secret stays: every listed leftover is deleted, by a
    /// DeleteParameter or by its instance's termination in the same plan,
    /// unless an action for it is under way.
    #[test]
    fn every_listed_leftover_is_deleted((obs, now) in world()) {
        let cfg = config();
        let grace = param_grace(&cfg);
        let actions = plan(&cfg, &obs, now);
        for id in &obs.params {
            let inst = obs.instances.get(id).filter(|i| i.fleet == cfg.fleet);
            if obs.in_flight.contains(id) || !param_leftover(inst, grace, now) {
                continue;
            }
            let handled = actions.iter().any(|a| match a {
                Action::DeleteParameter { instance_id } | Action::Terminate { instance_id, .. } => {
                    instance_id == id
                }
                _ => false,
            });
            prop_assert!(handled, "leftover {} not deleted: {:?}", id, obs.instances.get(id));
        }
    }

    /// An instance of ours that is alive, not being terminated, and whose
    /// runner is not online yet or came online within the grace keeps its
    /// parameter: it reads it, or has deleted it itself.
    #[test]
    fn never_deletes_what_the_instance_is_about_to_read_or_delete((obs, now) in world()) {
        let cfg = config();
        let grace = param_grace(&cfg);
        for id in deleted(&cfg, &obs, now) {
            if let Some(i) = obs.instances.get(&id).filter(|i| i.fleet == cfg.fleet) {
                let online = i.runner_online_at.or(i.job_done_at);
                let fresh = online.is_none_or(|t| now.saturating_sub(t) < grace);
                prop_assert!(
                    !(i.alive() && i.terminate_requested_at.is_none() && fresh),
                    "deletes the parameter of {:?} at {}", i, now
                );
            }
        }
    }
}
