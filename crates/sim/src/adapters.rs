//! The simulator's GitHub and cloud: the engine's traits over the [`World`].

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::Rng;
use runfleet_core::config::{CapacityMarket, Secret};
use runfleet_core::model::{ErrorKind, InstanceState, JobEvent, JobStatus, Millis, Runner, Scope};
use runfleet_engine::ports::{
    Cloud, CloudEvent, CloudInstance, GitHub, JitConfig, JitRequest, LaunchOutcome, LaunchRequest,
    Launched, PortError, PortResult,
};

use crate::world::{SimInstance, World, param_path};

pub type Shared = Arc<Mutex<World>>;

fn count(w: &mut World, github: bool, op: &str, mutating: bool) {
    if github {
        w.calls.github += 1;
        *w.calls.github_by_op.entry(op.to_string()).or_default() += 1;
    } else {
        w.calls.aws += 1;
        if mutating {
            w.calls.aws_mutating += 1;
        }
        *w.calls.aws_by_op.entry(op.to_string()).or_default() += 1;
    }
}

/// A GitHub listing of `items` costs a request per page of 100, at least
/// one, as the real client pays.
fn count_pages(w: &mut World, op: &str, items: usize) {
    for _ in 0..items.div_ceil(100).max(1) {
        count(w, true, op, false);
    }
}

fn github_fault(w: &mut World, op: &str) -> PortResult<()> {
    if w.fault(0.15) {
        w.faults.github_5xx += 1;
        return Err(PortError::new(
            ErrorKind::Transient,
            format!("{op}: 502 Bad Gateway (simulated)"),
        ));
    }
    if w.fault(0.05) {
        w.faults.github_rate_limited += 1;
        let mut e = PortError::new(
            ErrorKind::Throttled,
            format!("{op}: 403 secondary rate limit (simulated)"),
        );
        e.retry_after_ms = Some(w.rng.random_range(1_000..10_000));
        return Err(e);
    }
    Ok(())
}

fn aws_fault(w: &mut World, op: &str) -> PortResult<()> {
    if w.fault(0.1) {
        w.faults.ec2_5xx += 1;
        return Err(PortError::new(
            ErrorKind::Transient,
            format!("{op}: 503 ServiceUnavailable (simulated)"),
        ));
    }
    if w.fault(0.1) {
        w.faults.ec2_throttled += 1;
        return Err(PortError::new(
            ErrorKind::Throttled,
            format!("{op}: RequestLimitExceeded (simulated)"),
        ));
    }
    Ok(())
}

fn throttled(op: &str) -> PortError {
    PortError::new(ErrorKind::Throttled, format!("{op}: RequestLimitExceeded"))
}

/// GitHub over the simulated world.
pub struct SimGitHub(pub Shared);

#[async_trait]
impl GitHub for SimGitHub {
    async fn generate_jitconfig(&self, req: &JitRequest) -> PortResult<JitConfig> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "generate_jitconfig", true);
        github_fault(&mut w, "generate-jitconfig")?;
        if w.runners
            .values()
            .any(|r| r.name == req.name && r.scope == req.scope)
        {
            return Err(PortError::new(
                ErrorKind::Invalid,
                format!("runner {} already exists (409)", req.name),
            ));
        }
        let id = w.new_runner_id();
        let jit = format!("jit-{id}-{:016x}", w.rng.random::<u64>());
        w.runners.insert(
            id,
            crate::world::SimRunner {
                id,
                name: req.name.clone(),
                scope: req.scope.clone(),
                labels: req.labels.clone(),
                online: false,
                busy: false,
                job: None,
                instance: None,
                jit: jit.clone(),
                online_at: None,
            },
        );
        Ok(JitConfig {
            runner_id: id,
            encoded: Secret::new(jit),
        })
    }

    async fn list_runners(&self, scope: &Scope) -> PortResult<Vec<Runner>> {
        let mut w = self.0.lock().unwrap();
        github_fault(&mut w, "list runners")?;
        let runners: Vec<Runner> = w
            .runners
            .values()
            .filter(|r| &r.scope == scope)
            .map(|r| Runner {
                id: r.id,
                name: r.name.clone(),
                scope: r.scope.clone(),
                online: r.online,
                busy: r.busy,
                labels: r.labels.clone(),
            })
            .collect();
        count_pages(&mut w, "list_runners", runners.len());
        Ok(runners)
    }

    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "delete_runner", true);
        github_fault(&mut w, "delete runner")?;
        match w.runners.get(&runner_id) {
            None => Err(PortError::new(
                ErrorKind::NotFound,
                format!("runner {runner_id} not found"),
            )),
            Some(r) if &r.scope != scope => Err(PortError::new(
                ErrorKind::NotFound,
                format!("runner {runner_id} not in {scope}"),
            )),
            Some(r) if r.busy => Err(PortError::new(
                ErrorKind::Invalid,
                format!("runner {runner_id} is running a job (422)"),
            )),
            Some(_) => {
                w.delete_runner(runner_id);
                Ok(())
            }
        }
    }

    /// Runs with a job not completed; GitHub lists the `queued` ones and
    /// the `in_progress` ones (a job of it started) separately, each at
    /// least one page.
    async fn list_active_runs(&self, repo: &str) -> PortResult<Vec<u64>> {
        let mut w = self.0.lock().unwrap();
        github_fault(&mut w, "list workflow runs")?;
        // run -> (a job not completed, a job started)
        let mut runs: std::collections::BTreeMap<u64, (bool, bool)> = Default::default();
        for j in w
            .jobs
            .values()
            .filter(|j| j.repo == repo && j.queued_at.is_some())
        {
            let r = runs.entry(j.run_id).or_default();
            r.0 |= j.status != JobStatus::Completed;
            r.1 |= j.status != JobStatus::Queued;
        }
        runs.retain(|_, (active, _)| *active);
        let started = runs.values().filter(|(_, s)| *s).count();
        count_pages(&mut w, "list_runs", runs.len() - started);
        count_pages(&mut w, "list_runs", started);
        Ok(runs.into_keys().collect())
    }

    async fn list_run_jobs(&self, repo: &str, run_id: u64) -> PortResult<Vec<JobEvent>> {
        let mut w = self.0.lock().unwrap();
        github_fault(&mut w, "list jobs for a workflow run")?;
        let now = w.now;
        let jobs: Vec<JobEvent> = w
            .jobs
            .values()
            .filter(|j| j.repo == repo && j.run_id == run_id && j.queued_at.is_some())
            .map(|j| sim_job_event(j, now))
            .collect();
        count_pages(&mut w, "list_run_jobs", jobs.len());
        if jobs.is_empty() {
            return Err(PortError::new(
                ErrorKind::NotFound,
                format!("run {run_id} not found in {repo}"),
            ));
        }
        Ok(jobs)
    }

    async fn list_running_jobs(&self, repo: &str) -> PortResult<Vec<JobEvent>> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "list_running_jobs", false);
        github_fault(&mut w, "list running jobs")?;
        let now = w.now;
        Ok(w.jobs
            .values()
            .filter(|j| j.repo == repo && j.status == JobStatus::InProgress)
            .map(|j| JobEvent {
                job_id: j.id,
                run_id: j.run_id,
                repo: j.repo.clone(),
                labels: j.labels.clone(),
                status: j.status,
                runner_name: j.runner.clone(),
                conclusion: None,
                at: j.started_at.unwrap_or(now),
            })
            .collect())
    }

    async fn get_job(&self, repo: &str, job_id: u64) -> PortResult<JobEvent> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "get_job", false);
        github_fault(&mut w, "get job")?;
        let now = w.now;
        let j = w
            .jobs
            .get(&job_id)
            .filter(|j| j.repo == repo && j.queued_at.is_some())
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::NotFound,
                    format!("job {job_id} not found in {repo}"),
                )
            })?;
        Ok(sim_job_event(j, now))
    }

    async fn rerun_job(&self, repo: &str, job_id: u64) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "rerun_job", true);
        github_fault(&mut w, "re-run job")?;
        w.rerun(repo, job_id)
            .map(|_| ())
            .map_err(|e| PortError::new(ErrorKind::Invalid, e))
    }

    async fn list_repos(&self, owner: &str) -> PortResult<Vec<String>> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, true, "list_repos", false);
        github_fault(&mut w, "list repos")?;
        let prefix = format!("{owner}/");
        Ok(w.repos
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .cloned()
            .collect())
    }
}

/// EC2 and SSM over the simulated world.
pub struct SimCloud(pub Shared);

#[async_trait]
impl Cloud for SimCloud {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "CreateFleet", true);
        let now = w.now;
        if !w.launch_bucket.try_take(1, now) {
            return Err(throttled("CreateFleet"));
        }
        let count = req.count.max(1);
        aws_fault(&mut w, "CreateFleet")?;
        if let Some(check) = &w.recorded
            && !check(&req.client_token)
        {
            w.violations.unrecorded_launches += 1;
        }
        // Idempotency: the same token answers with the same instances.
        if let Some(ids) = w.tokens.get(&req.client_token).cloned() {
            let instances = ids
                .into_iter()
                .map(|id| {
                    let inst = &w.instances[&id];
                    Launched {
                        offering: runfleet_core::model::Offering {
                            instance_type: inst.instance_type.clone(),
                            subnet: inst.subnet.clone(),
                            market: inst.market,
                        },
                        launched_at: inst.launched_at,
                        instance_id: id,
                    }
                })
                .collect();
            return Ok(LaunchOutcome {
                instances,
                errors: vec![],
            });
        }
        // EC2's instance bucket: a call for more than it holds is refused whole.
        if !w.instance_bucket.try_take(count, now) {
            return Err(throttled("CreateFleet"));
        }
        let has = |k: &str| req.tags.iter().any(|(key, _)| key == k);
        if !(has("runfleet:fleet") && has("runfleet:pool") && has("Name")) {
            w.violations.untagged_launches += 1;
        }
        let mut errors = Vec::new();
        let mut instances = Vec::new();
        for o in &req.offerings {
            let remaining = count as usize - instances.len();
            if remaining == 0 {
                break;
            }
            let key = (o.instance_type.clone(), o.subnet.clone(), o.market);
            let used = w.in_use.get(&key).copied().unwrap_or(0);
            let spot_penalty = if o.market == CapacityMarket::Spot {
                0.5
            } else {
                0.25
            };
            if used >= w.cfg.capacity_per_offering || w.fault(spot_penalty) {
                w.faults.capacity_errors += 1;
                errors.push((
                    o.clone(),
                    PortError::new(
                        ErrorKind::Capacity,
                        "InsufficientInstanceCapacity (simulated)",
                    ),
                ));
                continue;
            }
            let take = remaining.min((w.cfg.capacity_per_offering - used) as usize);
            *w.in_use.entry(key).or_default() += take as u32;
            for _ in 0..take {
                let id = w.new_instance_id();
                let broken = w.fault(0.05);
                if broken {
                    w.faults.broken_instances += 1;
                }
                let max_lifetime = 6 * 60 * 60 * 1000;
                w.instances.insert(
                    id.clone(),
                    SimInstance {
                        id: id.clone(),
                        tags: req.tags.clone(),
                        state: InstanceState::Pending,
                        launched_at: now,
                        gone_at: None,
                        instance_type: o.instance_type.clone(),
                        subnet: o.subnet.clone(),
                        market: o.market,
                        client_token: req.client_token.clone(),
                        broken,
                        runner: None,
                        busy_ms: 0,
                        max_lifetime,
                    },
                );
                let range = w.cfg.launch_latency;
                let latency = w.between(range);
                w.schedule(
                    now + latency,
                    crate::world::Event::InstanceRunning(id.clone()),
                );
                instances.push(Launched {
                    instance_id: id,
                    offering: o.clone(),
                    launched_at: now,
                });
            }
        }
        let ids = instances.iter().map(|l| l.instance_id.clone()).collect();
        w.tokens.insert(req.client_token.clone(), ids);
        Ok(LaunchOutcome { instances, errors })
    }

    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "DescribeInstances", false);
        let now = w.now;
        if !w.describe_bucket.try_take(1, now) {
            return Err(throttled("DescribeInstances"));
        }
        aws_fault(&mut w, "DescribeInstances")?;
        Ok(w.instances
            .values()
            .filter(|i| i.tag("runfleet:fleet") == Some(fleet))
            .filter(|i| {
                i.gone_at
                    .is_none_or(|g| now.saturating_sub(g) < 60 * 60 * 1000)
            })
            .map(|i| CloudInstance {
                id: i.id.clone(),
                state: i.state,
                launched_at: i.launched_at,
                tags: i.tags.clone(),
                market: Some(i.market),
            })
            .collect())
    }

    async fn terminate(&self, fleet: &str, instance_ids: &[String]) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "TerminateInstances", true);
        let now = w.now;
        if !w.terminate_bucket.try_take(1, now) {
            return Err(throttled("TerminateInstances"));
        }
        aws_fault(&mut w, "TerminateInstances")?;
        for id in instance_ids {
            let Some(inst) = w.instances.get(id) else {
                return Err(PortError::new(
                    ErrorKind::NotFound,
                    format!("InvalidInstanceID.NotFound: {id}"),
                ));
            };
            if inst.tag("runfleet:fleet") != Some(fleet) {
                w.violations.foreign_touched += 1;
                return Err(PortError::new(
                    ErrorKind::Invalid,
                    format!("{id} is not tagged runfleet:fleet={fleet}"),
                ));
            }
        }
        for id in instance_ids {
            w.terminate(id);
        }
        Ok(())
    }

    async fn put_jit(&self, fleet: &str, instance_id: &str, value: &Secret) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "PutParameter", true);
        let now = w.now;
        if !w.ssm_put_bucket.try_take(1, now) {
            return Err(PortError::new(
                ErrorKind::Throttled,
                "PutParameter: ThrottlingException",
            ));
        }
        if w.fault(0.05) {
            w.faults.ssm_errors += 1;
            return Err(PortError::new(
                ErrorKind::Transient,
                "PutParameter: InternalServerError (simulated)",
            ));
        }
        w.params
            .insert(param_path(fleet, instance_id), value.expose().to_string());
        Ok(())
    }

    async fn delete_jit(&self, fleet: &str, instance_id: &str) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "DeleteParameter", true);
        if w.fault(0.05) {
            w.faults.ssm_errors += 1;
            return Err(PortError::new(
                ErrorKind::Transient,
                "DeleteParameter: InternalServerError (simulated)",
            ));
        }
        w.params.remove(&param_path(fleet, instance_id));
        Ok(())
    }

    /// SQS `ReceiveMessage` (up to 10 visible messages; each becomes
    /// invisible for [`crate::world::EVENT_VISIBILITY_MS`] and comes again
    /// unless deleted). No feed: no call, no events.
    async fn poll_events(&self) -> PortResult<Vec<CloudEvent>> {
        let mut w = self.0.lock().unwrap();
        if !w.events_enabled() {
            return Ok(Vec::new());
        }
        count(&mut w, false, "ReceiveMessage", false);
        let now = w.now;
        let mut out = Vec::new();
        for m in w.queue.iter_mut() {
            if out.len() == 10 {
                break;
            }
            if m.visible_at > now {
                continue;
            }
            m.visible_at = now + crate::world::EVENT_VISIBILITY_MS;
            m.receives += 1;
            out.push(CloudEvent {
                id: m.event.id.clone(),
                instance_id: m.event.instance_id.clone(),
                kind: m.event.kind.clone(),
                at: m.event.at,
                ack: m.message_id.clone(),
            });
        }
        Ok(out)
    }

    /// SQS `DeleteMessageBatch`; an unknown handle is success.
    async fn ack_events(&self, acks: &[String]) -> PortResult<()> {
        let mut w = self.0.lock().unwrap();
        if acks.is_empty() {
            return Ok(());
        }
        count(&mut w, false, "DeleteMessageBatch", true);
        w.queue.retain(|m| !acks.contains(&m.message_id));
        Ok(())
    }

    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>> {
        let mut w = self.0.lock().unwrap();
        count(&mut w, false, "GetParametersByPath", false);
        let prefix = format!("/runfleet/{fleet}/instances/");
        Ok(w.params
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix("/jitconfig"))
                    .map(str::to_string)
            })
            .collect())
    }
}

/// What a [`LaunchHook`] does with a launch call; it may call `inner`.
#[async_trait]
pub trait OnLaunch: Send + Sync {
    async fn launch(&self, inner: &dyn Cloud, req: &LaunchRequest) -> PortResult<LaunchOutcome>;
}

/// A cloud that passes every call to `inner` except `launch`, which goes
/// through `hook`: for tests and benchmarks that time, fail or kill the
/// launch path while the rest behaves as the simulator does.
pub struct LaunchHook<H> {
    pub inner: Arc<dyn Cloud>,
    pub hook: H,
}

#[async_trait]
impl<H: OnLaunch> Cloud for LaunchHook<H> {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        self.hook.launch(&*self.inner, req).await
    }
    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        self.inner.list_instances(fleet).await
    }
    async fn terminate(&self, fleet: &str, ids: &[String]) -> PortResult<()> {
        self.inner.terminate(fleet, ids).await
    }
    async fn put_jit(&self, fleet: &str, id: &str, value: &Secret) -> PortResult<()> {
        self.inner.put_jit(fleet, id, value).await
    }
    async fn delete_jit(&self, fleet: &str, id: &str) -> PortResult<()> {
        self.inner.delete_jit(fleet, id).await
    }
    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>> {
        self.inner.list_jit(fleet).await
    }
    async fn poll_events(&self) -> PortResult<Vec<CloudEvent>> {
        self.inner.poll_events().await
    }
    async fn ack_events(&self, acks: &[String]) -> PortResult<()> {
        self.inner.ack_events(acks).await
    }
    fn request_counts(&self) -> Vec<(String, u64)> {
        self.inner.request_counts()
    }
}

/// A job as GitHub's REST API shows it now.
fn sim_job_event(j: &crate::world::SimJob, now: Millis) -> JobEvent {
    JobEvent {
        job_id: j.id,
        run_id: j.run_id,
        repo: j.repo.clone(),
        labels: j.labels.clone(),
        status: j.status,
        runner_name: (j.status != JobStatus::Queued)
            .then(|| j.runner.clone())
            .flatten(),
        conclusion: j.conclusion.clone(),
        at: match j.status {
            JobStatus::Queued => j.queued_at.unwrap_or(now),
            JobStatus::InProgress => j.started_at.unwrap_or(now),
            JobStatus::Completed => j.completed_at.unwrap_or(now),
        },
    }
}
