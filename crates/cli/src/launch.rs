//! `runfleet launch`: one ephemeral runner now, without a server (the
//! "broker" step of a workflow).
//!
//! The run is a start request like `POST /v1/start` makes: stored in the
//! configured store's intake log, folded into a recorded launch (its id is
//! the EC2 client token), launched, and its runner registered with only
//! `self-hosted` and a unique label. The command then executes only the
//! planned actions that concern this one run (its launch, its runner's
//! config, its parameter, its instance): it never launches for, terminates
//! or reconciles anything else the store holds, so a broker can share a
//! store with `serve` or with other brokers.
//!
//! Without `--wait` it returns once the instance exists and its runner's
//! just-in-time config is in SSM; the instance registers by itself and
//! powers off (terminating, `InstanceInitiatedShutdownBehavior=terminate`)
//! after its one job, or at the pool's `max_lifetime`, or when no config
//! came within `boot_timeout`; its boot script deletes the parameter as soon
//! as it has read it. With `--wait` it also polls GitHub until the runner is
//! online, and on timeout (or Ctrl-C) terminates the instance, deletes its
//! parameter and deregisters its runner before exiting 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use runfleet_core::config::{Config, format_duration, parse_duration};
use runfleet_core::model::{ErrorKind, IntakeEvent, LaunchState, StartRequest, TerminateReason};
use runfleet_core::plan::Action;
use runfleet_core::runs::{RunState, RunStatus, run_status};
use runfleet_engine::driver::now_ms;
use runfleet_engine::{Engine, EngineOptions};

use crate::progress::{Progress, RunOutput, random_hex};

/// The command line of `runfleet launch`.
pub struct LaunchArgs {
    pub pool: String,
    pub repo: String,
    pub name: Option<String>,
    pub wait: bool,
    pub timeout: Option<String>,
}

/// How often GitHub is asked whether the runner is online.
const POLL: Duration = Duration::from_secs(2);
/// The instance's own state is looked up every this many polls.
const CLOUD_EVERY: u32 = 5;

/// Checks the arguments against the config before anything is stored.
fn validate(cfg: &Config, args: &LaunchArgs) -> Result<Duration> {
    if cfg.pool(&args.pool).is_none() {
        let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "--pool {:?} is not configured (pools: {})",
            args.pool,
            names.join(", ")
        );
    }
    let shape_ok = args.repo.split_once('/').is_some_and(|(o, n)| {
        !o.is_empty() && !n.is_empty() && !n.contains('/') && !o.contains(char::is_whitespace)
    });
    if !shape_ok {
        bail!("--repo {:?} is not OWNER/NAME", args.repo);
    }
    if !cfg.repo_allowed(&args.repo) {
        bail!(
            "--repo {}: the repository is not in github.repos",
            args.repo
        );
    }
    if let Some(name) = &args.name
        && (name.is_empty() || name.chars().count() > 256)
    {
        bail!("--name must be 1-256 characters (it becomes the Name tag)");
    }
    let timeout = match &args.timeout {
        Some(t) => parse_duration(t).map_err(|why| anyhow!("--timeout {t:?}: {why}"))?,
        None => cfg.server.boot_timeout,
    };
    if timeout.is_zero() {
        bail!("--timeout must be more than zero");
    }
    Ok(timeout)
}

/// The actions of a plan that concern this run only.
fn concerns(a: &Action, launch_id: &str, instance_id: Option<&str>) -> bool {
    match a {
        Action::Launch(lp) => lp.id == launch_id,
        Action::CancelLaunch { id, .. } => id == launch_id,
        Action::ProvisionRunner { instance_id: i, .. }
        | Action::DeleteParameter { instance_id: i }
        | Action::Terminate { instance_id: i, .. } => Some(i.as_str()) == instance_id,
        Action::DeleteRunner { .. }
        | Action::MarkJob { .. }
        | Action::RerunJob { .. }
        | Action::AssignWarm { .. } => false,
    }
}

fn detail(st: &RunStatus) -> String {
    match (&st.instance_id, &st.runner_name) {
        (Some(_), Some(r)) => format!("runner {r}"),
        (Some(i), None) => format!("instance {i}"),
        _ => format!("pool {}", st.pool),
    }
}

struct Broker {
    engine: Engine,
    id: String,
    progress: Progress,
    /// `--timeout` as the user wrote it (or `boot_timeout`), for messages.
    timeout: String,
}

enum Step {
    Done,
    Failed(String),
}

impl Broker {
    fn status(&self) -> Option<RunStatus> {
        run_status(self.engine.observed(), &self.id)
    }

    fn instance_id(&self) -> Option<String> {
        self.engine
            .observed()
            .launches
            .get(&self.id)
            .and_then(|l| l.instance_id.clone())
    }

    /// Plans, keeps this run's actions, executes them once; returns how
    /// many succeeded, the last adapter error (if any) and whether it was a
    /// permanent failure to register the runner.
    async fn act(&mut self) -> Result<(usize, Option<String>, bool)> {
        let now = now_ms();
        let iid = self.instance_id();
        let actions: Vec<Action> = self
            .engine
            .plan(now)
            .into_iter()
            .filter(|a| concerns(a, &self.id, iid.as_deref()))
            .collect();
        if actions.is_empty() {
            return Ok((0, None, false));
        }
        let done = self
            .engine
            .execute_actions(actions, now)
            .await
            .map_err(|e| anyhow!("store: {}", e.message))?;
        let err = self.engine.take_last_error();
        let permanent = err
            .as_ref()
            .is_some_and(|(op, e)| op == "provision" && e.kind.is_permanent());
        Ok((
            done,
            err.map(|(op, e)| format!("{op} failed ({}): {}", e.kind.as_str(), e.message)),
            permanent,
        ))
    }

    fn show(&mut self, st: &RunStatus, phase: Option<&str>) {
        let state = phase.unwrap_or(st.state.as_str());
        self.progress.set(state, &detail(st));
    }

    /// Launches and provisions: returns once the instance exists and its
    /// runner's config is in SSM, or why that will not happen.
    async fn bring_up(&mut self, deadline: tokio::time::Instant) -> Result<Step> {
        let mut last_error: Option<String> = None;
        loop {
            let (done, err, permanent) = self.act().await?;
            if let Some(e) = err {
                last_error = Some(e);
            }
            let st = self
                .status()
                .ok_or_else(|| anyhow!("the run {} is not in the store", self.id))?;
            if st.state == RunState::Failed {
                return Ok(Step::Failed(
                    st.reason.unwrap_or_else(|| "the launch failed".into()),
                ));
            }
            if permanent {
                return Ok(Step::Failed(last_error.unwrap_or_default()));
            }
            let written = self
                .instance_id()
                .and_then(|i| self.engine.observed().instances.get(&i).cloned())
                .is_some_and(|i| i.jit_written);
            if written {
                self.show(&st, None);
                return Ok(Step::Done);
            }
            let phase = if st.instance_id.is_some() {
                "booting"
            } else {
                "launching"
            };
            self.show(&st, Some(phase));
            if tokio::time::Instant::now() >= deadline {
                let why = match &last_error {
                    Some(e) => format!("; last error: {e}"),
                    None => String::new(),
                };
                return Ok(Step::Failed(format!(
                    "the runner was not set up within {} (still {phase}){why}",
                    self.timeout
                )));
            }
            if done == 0 {
                // A launch being retried waits for its `not_before`.
                let wait = self
                    .engine
                    .observed()
                    .launches
                    .get(&self.id)
                    .filter(|l| l.state == LaunchState::Requested)
                    .map(|l| Duration::from_millis(l.not_before.saturating_sub(now_ms())))
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(200), Duration::from_secs(2));
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
            }
        }
    }

    /// Polls GitHub until the runner is online.
    async fn wait_online(&mut self, deadline: tokio::time::Instant) -> Result<Step> {
        let mut polls = 0u32;
        loop {
            let now = now_ms();
            self.engine
                .observe_run(&self.id, now, polls % CLOUD_EVERY == CLOUD_EVERY - 1)
                .await
                .map_err(|e| anyhow!("store: {}", e.message))?;
            polls += 1;
            let _ = self.engine.take_last_error();
            // Whatever the planner wants for this run now (a parameter
            // left behind, for one).
            self.act().await?;
            let st = self
                .status()
                .ok_or_else(|| anyhow!("the run {} is not in the store", self.id))?;
            self.show(&st, None);
            match st.state {
                RunState::Online | RunState::Busy | RunState::Done => return Ok(Step::Done),
                RunState::Failed => {
                    return Ok(Step::Failed(
                        st.reason.unwrap_or_else(|| "the run failed".into()),
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Step::Failed(format!(
                    "the runner did not come online within {}",
                    self.timeout
                )));
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
        }
    }

    /// Terminates the run's instance (deregistering its runner and deleting
    /// its parameter first). Returns what could not be cleaned up.
    async fn clean_up(&mut self, reason: &str) -> Option<String> {
        // Not launched (yet): record that no one should resume it.
        if let Err(e) = self
            .engine
            .give_up_launch(&self.id, ErrorKind::Transient, reason)
            .await
        {
            return Some(format!("store: {}", e.message));
        }
        let iid = self.instance_id()?;
        let now = now_ms();
        // Learn the runner's id (it is registered from the moment its
        // config was minted) so that it is deregistered too.
        let _ = self.engine.observe_run(&self.id, now, false).await;
        let _ = self.engine.take_last_error();
        let obs = self.engine.observed();
        let inst = obs.instances.get(&iid)?;
        if !inst.alive() && !inst.param_present {
            return None;
        }
        let name = inst.runner_name();
        let runner = obs
            .runners
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.scope.clone(), r.id));
        let action = Action::Terminate {
            instance_id: iid.clone(),
            pool: inst.pool.clone(),
            runner,
            reason: TerminateReason::BootTimeout,
        };
        match self.engine.execute_actions(vec![action], now).await {
            Ok(1) => None,
            Ok(_) => Some(match self.engine.take_last_error() {
                Some((_, e)) => format!("instance {iid} not terminated: {}", e.message),
                None => format!("instance {iid} not terminated"),
            }),
            Err(e) => Some(format!("store: {}", e.message)),
        }
    }
}

/// `runfleet launch`.
pub fn run(cfg: Config, args: LaunchArgs) -> Result<ExitCode> {
    let timeout = validate(&cfg, &args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(launch(cfg, args, timeout))
}

async fn launch(cfg: Config, args: LaunchArgs, timeout: Duration) -> Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let cfg = Arc::new(cfg);
    let store = runfleet_store::open(&cfg.server.store)
        .await
        .map_err(|e| anyhow!("server.store: {e}"))?;
    let github = runfleet_github::GitHubClient::new(&cfg.github)
        .map_err(|e| anyhow!("github: {}", e.message))?;
    // The broker never reads the EC2 event queue: its messages are `serve`'s.
    let cloud = {
        let mut own = (*cfg).clone();
        own.aws.events_queue = None;
        runfleet_aws::AwsCloud::from_config(&own).await
    };
    let now = now_ms();
    let mut engine = Engine::new(
        cfg.clone(),
        Arc::new(github),
        Arc::new(cloud),
        store.clone(),
        EngineOptions::default(),
        now,
    )
    .await
    .map_err(|e| anyhow!("cannot load state from the store: {}", e.message))?;

    // At most 32 + 2 + 16 = 50 characters: a valid EC2 client token.
    let id = format!("{}-r{}", cfg.fleet, random_hex(16));
    let unique_label = format!("rf-{}", random_hex(16));
    let req = StartRequest {
        id: id.clone(),
        repo: args.repo.clone(),
        pool: args.pool.clone(),
        unique_label,
        name: args.name.clone(),
        at: now,
    };
    Engine::intake(&*store, &id, &IntakeEvent::Start(req))
        .await
        .map_err(|e| anyhow!("cannot record the launch in the store: {}", e.message))?;
    engine
        .pull_intake(now)
        .await
        .map_err(|e| anyhow!("store: {}", e.message))?;
    tracing::info!(launch_id = %id, pool = %args.pool, repo = %args.repo, "launch recorded");

    let mut broker = Broker {
        engine,
        id,
        progress: Progress::new(),
        timeout: format_duration(timeout),
    };
    broker
        .progress
        .set("launching", &format!("pool {}", args.pool));

    let outcome = tokio::select! {
        r = async {
            match broker.bring_up(deadline).await? {
                Step::Done if args.wait => broker.wait_online(deadline).await,
                other => Ok(other),
            }
        } => r?,
        _ = interrupted() => Step::Failed("interrupted".into()),
    };
    match outcome {
        Step::Done => {
            broker.progress.finish();
            let st = broker
                .status()
                .ok_or_else(|| anyhow!("the run is not in the store"))?;
            RunOutput {
                labels: st.labels,
                instance_id: st.instance_id,
                runner_name: st.runner_name,
            }
            .emit()?;
            Ok(ExitCode::SUCCESS)
        }
        Step::Failed(reason) => {
            broker.progress.set("cleaning up", "");
            let left = broker.clean_up(&reason).await;
            broker.progress.finish();
            match left {
                None => bail!("launch in pool {} failed: {reason}", args.pool),
                Some(left) => bail!(
                    "launch in pool {} failed: {reason}; clean-up incomplete: {left} (run `runfleet reap`)",
                    args.pool
                ),
            }
        }
    }
}

/// Ctrl-C or SIGTERM (a cancelled workflow): the broker cleans up before it exits.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runfleet_core::model::Scope;

    #[test]
    fn only_this_runs_actions_are_kept() {
        let del = |i: &str| Action::DeleteParameter {
            instance_id: i.into(),
        };
        assert!(concerns(&del("i-1"), "f-r1", Some("i-1")));
        assert!(!concerns(&del("i-2"), "f-r1", Some("i-1")));
        assert!(!concerns(&del("i-2"), "f-r1", None));
        let dr = Action::DeleteRunner {
            scope: Scope::Repo("a/b".into()),
            runner_id: 1,
            name: "runfleet-p-i-1".into(),
        };
        assert!(!concerns(&dr, "f-r1", Some("i-1")));
    }
}
