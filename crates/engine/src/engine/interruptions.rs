//! EC2 events (spot interruption warnings, rebalance recommendations,
//! state changes) folded into the state, and re-runs of jobs lost to an
//! interruption.
//!
//! An event's effect is stored before the event is acknowledged to the
//! feed, so a crash in between only brings the event again; handling it a
//! second time changes nothing (an instance keeps its strongest notice, a
//! state only moves toward `terminated`). Events for instances the state
//! does not hold (another fleet's, or long forgotten) are acknowledged and
//! counted, never acted on. What happens next is the planner's decision:
//! an idle runner on an interrupted instance is replaced at once, a busy one
//! runs its last two minutes, and a job that then fails is re-run once
//! ([`runfleet_core::plan::wants_rerun`]).

use runfleet_core::model::{ErrorKind, InterruptionKind, Millis, Scope, Unavailable, runner_name};
use runfleet_core::plan::UNAVAILABLE_FOR_MS;
use tracing::{info, warn};

use super::{Engine, bump, poll_delivery, timeline};

/// The event feed is polled at most this often while it is empty (steps
/// come many times a second in a webhook burst; a spot warning gives two
/// minutes), and again at the next step while it has events.
pub const EVENTS_POLL_MS: Millis = 2_000;
use crate::ports::{CloudEvent, CloudEventKind, Mutation, PortResult};

impl Engine {
    /// Receives the cloud's events, stores their effects, then acknowledges
    /// them. A feed that cannot be read is counted and tried again next
    /// step; a store that cannot be written fails the step and nothing is
    /// acknowledged (the events come again).
    pub async fn pull_cloud_events(&mut self, now: Millis) -> PortResult<usize> {
        if now < self.events_next_poll {
            return Ok(0);
        }
        self.events_next_poll = now + EVENTS_POLL_MS;
        let events = match self.cloud.poll_events().await {
            Ok(evs) => evs,
            Err(e) => {
                self.adapter_error("poll_events", &e);
                warn!(error = %e, "cannot receive cloud events");
                return Ok(0);
            }
        };
        if events.is_empty() {
            return Ok(0);
        }
        self.events_next_poll = now;
        let mut muts = Vec::new();
        let mut applied = 0;
        let mut unknown_jobs = Vec::new();
        for ev in &events {
            if self.fold_cloud_event(ev, now, &mut muts, &mut unknown_jobs) {
                applied += 1;
            }
        }
        if !muts.is_empty() {
            self.store.apply(&muts).await?;
        }
        let acks: Vec<String> = events.into_iter().map(|e| e.ack).collect();
        if let Err(e) = self.cloud.ack_events(&acks).await {
            // They come again and change nothing the second time.
            self.adapter_error("ack_events", &e);
            warn!(error = %e, events = acks.len(), "cannot acknowledge cloud events");
        }
        for (scope, runner) in unknown_jobs {
            self.find_running_job(&scope, &runner, now).await?;
        }
        Ok(applied)
    }

    /// A warned instance's runner may be running a job that no webhook
    /// told of (all lost, and taken before a poll saw it queued): ask GitHub
    /// which job it runs and record it, so that its failure can be re-run.
    async fn find_running_job(
        &mut self,
        scope: &Scope,
        runner: &str,
        now: Millis,
    ) -> PortResult<()> {
        let repos: Vec<String> = match scope {
            Scope::Repo(r) => vec![r.clone()],
            Scope::Org(o) => self
                .allowed_repos(now)
                .await
                .into_iter()
                .filter(|r| {
                    r.split_once('/')
                        .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(o))
                })
                .collect(),
        };
        for repo in repos {
            match self.github.list_running_jobs(&repo).await {
                Ok(jobs) => {
                    if let Some(ev) = jobs
                        .into_iter()
                        .find(|j| j.runner_name.as_deref() == Some(runner))
                    {
                        info!(job_id = ev.job_id, repo = %repo, runner_name = %runner, "job on an interrupted runner found by lookup");
                        self.store.intake(&poll_delivery(&ev), &ev).await?;
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.adapter_error("list_running_jobs", &e);
                    warn!(repo = %repo, error = %e, "cannot list running jobs");
                }
            }
        }
        Ok(())
    }

    /// Applies one event to the state; returns whether it changed anything.
    pub(super) fn fold_cloud_event(
        &mut self,
        ev: &CloudEvent,
        now: Millis,
        muts: &mut Vec<Mutation>,
        unknown_jobs: &mut Vec<(Scope, String)>,
    ) -> bool {
        let fleet = self.cfg.fleet.clone();
        let Some(inst) = self
            .obs
            .instances
            .get_mut(&ev.instance_id)
            .filter(|i| i.fleet == fleet)
        else {
            self.stats.cloud_event(&ev.kind, "foreign");
            return false;
        };
        let kind = match &ev.kind {
            CloudEventKind::SpotInterruption { .. } => InterruptionKind::SpotWarning,
            CloudEventKind::RebalanceRecommendation => InterruptionKind::Rebalance,
            CloudEventKind::StateChange(state) => {
                let changed = state.is_gone() && inst.note_state(*state);
                if changed {
                    info!(instance_id = %inst.id, pool = %inst.pool, state = state.as_str(), "instance state change event");
                    muts.push(Mutation::PutInstance(inst.clone()));
                    muts.push(timeline(
                        now,
                        None,
                        Some(&inst.id),
                        format!("instance gone ({} per EC2 event)", state.as_str()),
                    ));
                }
                let outcome = if changed { "applied" } else { "unchanged" };
                self.stats.cloud_event(&ev.kind, outcome);
                return changed;
            }
        };
        if !inst.alive() || !inst.note_interruption(kind, ev.at) {
            self.stats.cloud_event(&ev.kind, "unchanged");
            return false;
        }
        self.stats.cloud_event(&ev.kind, "applied");
        let inst = inst.clone();
        let name = runner_name(&inst.pool, &inst.id);
        let busy = inst.busy || self.obs.runners.iter().any(|r| r.name == name && r.busy);
        let job = self
            .obs
            .jobs
            .values()
            .find(|j| j.runner_name.as_deref() == Some(name.as_str()) && !j.state.is_terminal())
            .map(|j| j.id);
        bump(
            &mut self.stats.interruptions,
            &inst.pool,
            &format!("{}_{}", kind.as_str(), if busy { "busy" } else { "idle" }),
        );
        let what = match (kind, busy) {
            (InterruptionKind::SpotWarning, true) => {
                "spot interruption warning: the job runs its last two minutes".to_string()
            }
            (InterruptionKind::SpotWarning, false) => {
                "spot interruption warning: idle runner replaced".to_string()
            }
            (InterruptionKind::Rebalance, true) => {
                "rebalance recommendation: the job keeps running".to_string()
            }
            (InterruptionKind::Rebalance, false) => {
                "rebalance recommendation: idle runner replaced".to_string()
            }
        };
        warn!(instance_id = %inst.id, pool = %inst.pool, job_id = job, busy, kind = kind.as_str(), "{what}");
        if kind == InterruptionKind::SpotWarning
            && job.is_none()
            && inst.jit_written
            && let Some(scope) = &inst.scope
        {
            unknown_jobs.push((scope.clone(), name.clone()));
        }
        // The capacity that was taken back is skipped for a while, so the
        // replacement (and a re-run) goes elsewhere in the fallback chain.
        if kind == InterruptionKind::SpotWarning
            && let Some(offering) = &inst.offering
        {
            self.obs.unavailable.retain(|u| &u.offering != offering);
            self.obs.unavailable.push(Unavailable {
                offering: offering.clone(),
                until: now + UNAVAILABLE_FOR_MS,
            });
        }
        muts.push(timeline(now, job, Some(&inst.id), what));
        muts.push(Mutation::PutInstance(inst));
        true
    }

    /// Applies GitHub's answer to a re-run request.
    pub(super) fn absorb_rerun(
        &mut self,
        job_id: u64,
        result: PortResult<()>,
        now: Millis,
        muts: &mut Vec<Mutation>,
    ) -> bool {
        let Some(job) = self.obs.jobs.get_mut(&job_id) else {
            return false;
        };
        let pool = job
            .runner_name
            .as_deref()
            .and_then(runfleet_core::model::instance_of_runner)
            .and_then(|iid| self.obs.instances.get(iid))
            .map_or_else(|| "none".to_string(), |i| i.pool.clone());
        let what = match result {
            Ok(()) => {
                info!(job_id, run_id = job.run_id, repo = %job.repo, pool = %pool, "job lost to a spot interruption: re-run requested");
                bump(&mut self.stats.reruns, &pool, "requested");
                "job lost to a spot interruption: re-run requested".to_string()
            }
            // GitHub will not re-run it (already re-running, too old, not
            // allowed): asking again would not help; say why once.
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Auth
                ) =>
            {
                warn!(job_id, repo = %job.repo, error = %e, "re-run refused");
                bump(&mut self.stats.reruns, &pool, "refused");
                format!(
                    "job lost to a spot interruption: re-run refused: {}",
                    e.message
                )
            }
            Err(e) => {
                self.adapter_error("rerun_job", &e);
                warn!(job_id, error = %e, "re-run not requested yet");
                return false;
            }
        };
        let job = self.obs.jobs.get_mut(&job_id).expect("checked above");
        job.rerun_requested_at = Some(now);
        muts.push(Mutation::PutJob(job.clone()));
        muts.push(timeline(now, Some(job_id), None, what));
        true
    }
}
