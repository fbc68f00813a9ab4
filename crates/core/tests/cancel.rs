//! The planner drops launches that were recorded but never sent once no
//! queued job needs them (a job taken by a runner launched for another,
//! a job cancelled, an idle runner free): no instance is launched only to
//! idle and be terminated. A launch that may have been sent, one under
//! way, a warm launch and an on-demand run's launch are never dropped.

use runfleet_core::model::*;
use runfleet_core::plan::{Action, Observed, plan};

mod support;

const REPO: &str = "acme/app";
const LINUX: [&str; 3] = ["self-hosted", "linux", "x64"];

fn config() -> runfleet_core::config::Config {
    support::config(
        "ours",
        &["acme/*"],
        vec![support::pool("linux-x64", &LINUX, 50)],
    )
}

fn job(id: u64, state: JobState) -> Job {
    let mut j = Job::new(&JobEvent {
        job_id: id,
        run_id: 1,
        repo: REPO.into(),
        labels: support::strings(&LINUX),
        status: JobStatus::Queued,
        runner_name: None,
        conclusion: None,
        at: id,
    });
    j.state = state;
    j.launches = 1;
    j
}

/// The job's launch, recorded at `id` ms and waiting to be sent.
fn waiting_launch(job_id: u64) -> Launch {
    Launch {
        id: format!("ours-j{job_id}-1"),
        pool: "linux-x64".into(),
        scope: Scope::Repo(REPO.into()),
        job_id: Some(job_id),
        unique_label: None,
        name: None,
        state: LaunchState::Requested,
        requested_at: job_id,
        instance_id: None,
        error: None,
        not_before: 1_000,
        batch: None,
    }
}

fn world(jobs: Vec<Job>, launches: Vec<Launch>) -> Observed {
    Observed {
        jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
        launches: launches.into_iter().map(|l| (l.id.clone(), l)).collect(),
        ..Observed::default()
    }
}

/// (launch id, reason) of each cancellation in the plan, and whether the
/// plan launches anything new.
fn cancelled(obs: &Observed, now: Millis) -> (Vec<(String, String)>, bool) {
    let mut out = Vec::new();
    let mut new_launch = false;
    for a in plan(&config(), obs, now) {
        match a {
            Action::CancelLaunch { id, reason, .. } => out.push((id, reason)),
            Action::Launch(lp) if !lp.resume => new_launch = true,
            _ => {}
        }
    }
    (out, new_launch)
}

#[test]
fn the_launch_of_a_job_taken_by_another_runner_is_dropped() {
    // Jobs 1 and 2 wait for their launches; job 1 then ran on a runner
    // launched for another job (GitHub gives a job to any idle runner with
    // its labels). Job 2 still needs one runner: only job 1's launch goes.
    let obs = world(
        vec![job(1, JobState::InProgress), job(2, JobState::Queued)],
        vec![waiting_launch(1), waiting_launch(2)],
    );
    let (cancelled, new_launch) = cancelled(&obs, 500);
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0].0, "ours-j1-1");
    assert!(
        cancelled[0].1.contains("no longer waits"),
        "{}",
        cancelled[0].1
    );
    assert!(!new_launch);
}

#[test]
fn the_launch_of_a_cancelled_job_is_dropped() {
    let obs = world(vec![job(7, JobState::Completed)], vec![waiting_launch(7)]);
    let (cancelled, _) = cancelled(&obs, 500);
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].0, "ours-j7-1");
}

#[test]
fn an_idle_runner_takes_the_place_of_the_newest_waiting_launch() {
    // Three queued jobs, three waiting launches, and an idle runner whose
    // job went to another: one launch too many; the newest goes.
    let mut obs = world(
        vec![
            job(1, JobState::Queued),
            job(2, JobState::Queued),
            job(3, JobState::Queued),
        ],
        vec![waiting_launch(1), waiting_launch(2), waiting_launch(3)],
    );
    let mut idle = Instance::new("i-idle", "ours", "linux-x64", InstanceState::Running, 0);
    idle.launch_id = Some("ours-j9-1".into());
    idle.scope = Some(Scope::Repo(REPO.into()));
    idle.jit_written = true;
    idle.runner_online_at = Some(100);
    obs.instances.insert(idle.id.clone(), idle);
    let (cancelled, new_launch) = cancelled(&obs, 500);
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0].0, "ours-j3-1");
    assert!(
        cancelled[0].1.contains("runner coming or idle"),
        "{}",
        cancelled[0].1
    );
    assert!(!new_launch);
}

#[test]
fn nothing_is_dropped_while_every_launch_has_a_queued_job() {
    let obs = world(
        vec![job(1, JobState::Queued), job(2, JobState::Queued)],
        vec![waiting_launch(1), waiting_launch(2)],
    );
    assert_eq!(cancelled(&obs, 500).0, vec![]);
}

#[test]
fn a_launch_that_may_have_been_sent_or_is_under_way_is_kept() {
    let mut sent = waiting_launch(1);
    sent.batch = Some(LaunchBatch {
        id: "ours-j1-1".into(),
        size: 1,
    });
    let under_way = waiting_launch(2);
    let mut obs = world(
        vec![job(1, JobState::Completed), job(2, JobState::Completed)],
        vec![sent, under_way],
    );
    obs.in_flight.insert("ours-j2-1".into());
    assert_eq!(cancelled(&obs, 500).0, vec![]);
}

#[test]
fn warm_and_on_demand_launches_are_never_dropped() {
    let mut warm = waiting_launch(1);
    warm.id = "ours-w1".into();
    warm.job_id = None;
    let mut run = waiting_launch(2);
    run.id = "ours-r2".into();
    run.job_id = None;
    run.unique_label = Some("runfleet-r2".into());
    let obs = world(vec![], vec![warm, run]);
    assert_eq!(cancelled(&obs, 500).0, vec![]);
}
