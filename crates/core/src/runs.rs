//! On-demand runs (`runfleet launch`, `POST /v1/start`): what state a run is
//! in, derived from its launch record and its instance. Pure: the server's
//! `GET /v1/runs/{id}`, the broker's `--wait` and the status page all read
//! the same answer.

use serde::{Deserialize, Serialize};

use crate::model::{LaunchState, Millis, TerminateReason};
use crate::plan::Observed;

/// The states of `GET /v1/runs/{id}`, in the order a run goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not yet taken up by the controller.
    Pending,
    /// Recorded; the launch call is being made (or paced, or retried).
    Launching,
    /// The instance exists; its runner is not online yet.
    Booting,
    /// The runner is online and idle, waiting for its job.
    Online,
    /// The runner is running its job.
    Busy,
    /// The job finished (or the instance is gone after running one).
    Done,
    /// No runner will come; `reason` says why.
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Launching => "launching",
            RunState::Booting => "booting",
            RunState::Online => "online",
            RunState::Busy => "busy",
            RunState::Done => "done",
            RunState::Failed => "failed",
        }
    }
    /// Nothing will change any more.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed)
    }
}

/// A run as `GET /v1/runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub id: String,
    pub state: RunState,
    /// The labels a job's `runs-on` uses to land on this run's runner.
    pub labels: Vec<String>,
    pub instance_id: Option<String>,
    pub runner_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub pool: String,
    pub repo: Option<String>,
    pub requested_at: Millis,
}

/// The labels a workflow puts in `runs-on` for an on-demand runner: only
/// `self-hosted` and the unique label (the runner carries the pool's labels
/// too, but the unique label alone makes sure no other job takes it).
pub fn run_labels(unique_label: &str) -> Vec<String> {
    vec!["self-hosted".to_string(), unique_label.to_string()]
}

/// The status of the run `id`, or `None` when the controller has no launch
/// by that id (not taken up yet, or not an on-demand run).
pub fn run_status(obs: &Observed, id: &str) -> Option<RunStatus> {
    let launch = obs.launches.get(id)?;
    let unique = launch.unique_label.as_deref()?;
    let instance = launch
        .instance_id
        .as_deref()
        .and_then(|iid| obs.instances.get(iid));
    let runner_name = instance.map(|i| i.runner_name());
    let runner = runner_name
        .as_deref()
        .and_then(|n| obs.runners.iter().find(|r| r.name == n));
    let (state, reason) = match launch.state {
        LaunchState::Requested => (RunState::Launching, None),
        LaunchState::Failed => (
            RunState::Failed,
            Some(launch.error.as_ref().map_or_else(
                || "the launch failed".to_string(),
                |(kind, msg)| format!("launch failed ({}): {msg}", kind.as_str()),
            )),
        ),
        // The planner never cancels an on-demand run's launch.
        LaunchState::Cancelled => (
            RunState::Failed,
            Some("the launch was cancelled".to_string()),
        ),
        LaunchState::Launched => match instance {
            // Launched, then forgotten: long gone.
            None => (RunState::Done, None),
            Some(i) => {
                let ran = i.job_done_at.is_some();
                if ran {
                    (RunState::Done, None)
                } else if i.busy || runner.is_some_and(|r| r.busy) {
                    (RunState::Busy, None)
                } else if !i.alive() || i.terminate_requested_at.is_some() {
                    let why = match i.terminate_reason {
                        Some(TerminateReason::BootTimeout) => {
                            "its runner did not come online within boot_timeout".to_string()
                        }
                        Some(r) => format!("its instance was terminated ({})", r.as_str()),
                        None => "its instance is gone".to_string(),
                    };
                    if i.runner_online_at.is_some() && i.terminate_reason.is_none() {
                        (RunState::Done, None)
                    } else {
                        (RunState::Failed, Some(why))
                    }
                } else if i.runner_online_at.is_some() || runner.is_some_and(|r| r.online) {
                    (RunState::Online, None)
                } else {
                    (RunState::Booting, None)
                }
            }
        },
    };
    let repo = match &launch.scope {
        crate::model::Scope::Repo(r) => Some(r.clone()),
        crate::model::Scope::Org(_) => None,
    };
    Some(RunStatus {
        id: launch.id.clone(),
        state,
        labels: run_labels(unique),
        instance_id: launch.instance_id.clone(),
        runner_name,
        reason,
        pool: launch.pool.clone(),
        repo,
        requested_at: launch.requested_at,
    })
}
