//! The simulated world: GitHub's jobs and runners, EC2's instances,
//! capacity and request buckets, SSM's parameters, all on one virtual clock
//! and one seeded random generator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runfleet_core::bucket::TokenBucket;
use runfleet_core::config::CapacityMarket;
use runfleet_core::labels::satisfies;
use runfleet_core::model::{InstanceState, JobEvent, JobStatus, Millis, Scope};
use runfleet_engine::ports::CloudEventKind;
use serde::Serialize;

/// How long EC2 gives a spot instance between its interruption warning and
/// taking it back.
pub const SPOT_NOTICE_MS: Millis = 2 * 60 * 1000;
/// How long a received event stays invisible to other receives (SQS's
/// default visibility timeout) before it is delivered again unless deleted.
pub const EVENT_VISIBILITY_MS: Millis = 30 * 1000;

/// How the world behaves. All times in milliseconds of virtual time.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    /// Fault probability knob in [0, 1]: scales every fault class.
    pub faults: f64,
    /// Faults stop at this time (the world heals).
    pub heal_at: Millis,
    /// Launch call to `running`.
    pub launch_latency: (Millis, Millis),
    /// `running` to boot script polling SSM.
    pub boot_time: (Millis, Millis),
    /// Runner start to online with GitHub.
    pub runner_start: (Millis, Millis),
    /// How long a job runs.
    pub job_duration: (Millis, Millis),
    /// Instances per (instance type, subnet, market) at once.
    pub capacity_per_offering: u32,
    /// The boot script gives up waiting for its JIT config after this.
    pub jit_poll_timeout: Millis,
    /// EC2 request buckets: (burst, refill per second).
    pub launch_bucket: (u32, f64),
    /// EC2's instance bucket: instances launched (burst, refill per second).
    pub instance_bucket: (u32, f64),
    pub describe_bucket: (u32, f64),
    pub terminate_bucket: (u32, f64),
    /// SSM PutParameter throughput.
    pub ssm_put_bucket: (u32, f64),
    /// Spot interruptions, a fault class: the probability (scaled by
    /// `faults`, until `heal_at`) that a spot instance, once running, gets
    /// an interruption warning some time later (sometimes after a rebalance
    /// recommendation) and is reclaimed two minutes after the warning; a
    /// job running on it then fails. Turns `ec2_events` on.
    pub spot_interruption_weight: f64,
    /// The world delivers EC2 events (EventBridge into SQS, at least once)
    /// to `SimCloud::poll_events` ([`crate::adapters::SimCloud`]): spot interruption
    /// warnings, rebalance recommendations and state changes of every
    /// instance. Off: the cloud has no event feed.
    pub ec2_events: bool,
    /// GitHub hands a queued job to a runner no sooner than this after the
    /// runner came online (0: at once). Tests use it to hold an idle runner.
    pub assign_delay: Millis,
    /// Probability that an instance's own delete of its JIT parameter
    /// (the boot script's `aws ssm delete-parameter`, right after reading
    /// it) fails, leaving it for the controller: 1.0 plays an instance role
    /// without `ssm:DeleteParameter`. Not scaled by `faults` and never
    /// healed; drawn from its own generator, and only when above 0, so runs
    /// without it replay as before it existed.
    pub self_delete_failure: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: 1,
            faults: 0.0,
            heal_at: 0,
            launch_latency: (1_000, 4_000),
            boot_time: (15_000, 35_000),
            runner_start: (2_000, 5_000),
            job_duration: (30_000, 240_000),
            capacity_per_offering: 1_000,
            jit_poll_timeout: 10 * 60 * 1000,
            launch_bucket: (5, 2.0),
            instance_bucket: (1000, 2.0),
            describe_bucket: (100, 20.0),
            terminate_bucket: (100, 5.0),
            ssm_put_bucket: (40, 40.0),
            spot_interruption_weight: 0.0,
            ec2_events: false,
            assign_delay: 0,
            self_delete_failure: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    JobArrives(u64),
    InstanceRunning(String),
    /// The boot script looks for its JIT config.
    BootPoll(String),
    RunnerOnline(u64),
    JobDone(u64),
    PowerOff(String),
    Terminated(String),
    /// EC2 sends a rebalance recommendation for a spot instance.
    Rebalance(String),
    /// EC2 sends a spot interruption warning; the instance is reclaimed
    /// [`SPOT_NOTICE_MS`] later.
    SpotWarning(String),
    /// EC2 takes a spot instance back.
    Reclaim(String),
    /// GitHub looks for runners for queued jobs (after `assign_delay`).
    Assign,
}

/// One EC2 event as EventBridge would put it on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimEvent {
    /// EventBridge `id`: the same for every delivery of one event.
    pub id: String,
    pub instance_id: String,
    #[serde(skip)]
    pub kind: CloudEventKind,
    pub at: Millis,
}

/// One message on the simulated SQS queue.
#[derive(Debug, Clone)]
pub struct SimMessage {
    /// SQS message id (one per copy put on the queue).
    pub message_id: String,
    pub event: SimEvent,
    /// Invisible to receives until then.
    pub visible_at: Millis,
    pub receives: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimJob {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    pub arrives_at: Millis,
    pub queued_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub duration: Millis,
    pub runner: Option<String>,
    /// Times a runner took it.
    pub runs: u32,
    /// Its runner's machine went away under it.
    pub lost: bool,
    /// `conclusion` once completed: `success`, or `failure` when lost.
    pub conclusion: Option<String>,
    /// It was lost because EC2 reclaimed its spot instance.
    pub interrupted: bool,
    /// The job GitHub queued when this one was re-run (a new id, as a new
    /// run attempt has), and the job this one re-runs.
    pub rerun_as: Option<u64>,
    pub rerun_of: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimRunner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub online: bool,
    pub busy: bool,
    pub job: Option<u64>,
    pub instance: Option<String>,
    pub jit: String,
    /// When it came online.
    pub online_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimInstance {
    pub id: String,
    pub tags: Vec<(String, String)>,
    pub state: InstanceState,
    pub launched_at: Millis,
    pub gone_at: Option<Millis>,
    pub instance_type: String,
    pub subnet: Option<String>,
    pub market: CapacityMarket,
    pub client_token: String,
    /// The runner process never starts (a broken image).
    pub broken: bool,
    pub runner: Option<u64>,
    pub busy_ms: Millis,
    pub max_lifetime: Millis,
}

impl SimInstance {
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Faults injected, by class.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultCounts {
    pub github_5xx: u64,
    pub github_rate_limited: u64,
    pub ec2_throttled: u64,
    pub ec2_5xx: u64,
    pub capacity_errors: u64,
    pub ssm_errors: u64,
    pub webhooks_lost: u64,
    pub webhooks_duplicated: u64,
    pub webhooks_delayed: u64,
    pub spot_interruptions: u64,
    pub rebalance_recommendations: u64,
    pub events_duplicated: u64,
    pub slow_boots: u64,
    pub broken_instances: u64,
    pub controller_restarts: u64,
    /// An instance could not delete its own JIT parameter after reading it.
    pub self_delete_failures: u64,
}

/// API calls the controller made, by service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallCounts {
    pub github: u64,
    pub github_by_op: BTreeMap<String, u64>,
    pub aws: u64,
    pub aws_mutating: u64,
    pub aws_by_op: BTreeMap<String, u64>,
}

/// Violations the world itself can see.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Violations {
    /// Termination asked for an instance without this fleet's tag.
    pub foreign_touched: u64,
    /// An instance was terminated or its runner deleted under a running job.
    pub busy_killed: u64,
    /// An instance launched without the fleet, pool or Name tag.
    pub untagged_launches: u64,
    /// A launch call whose token was not recorded in the store first.
    pub unrecorded_launches: u64,
}

/// Answers whether a launch id is recorded in the controller's store.
pub type RecordedCheck = Box<dyn Fn(&str) -> bool + Send>;

pub struct World {
    pub cfg: WorldConfig,
    pub now: Millis,
    pub rng: ChaCha8Rng,
    pub jobs: BTreeMap<u64, SimJob>,
    pub runners: BTreeMap<u64, SimRunner>,
    pub instances: BTreeMap<String, SimInstance>,
    pub params: BTreeMap<String, String>,
    pub repos: Vec<String>,
    /// Launch call tokens and the instances each call started.
    pub tokens: HashMap<String, Vec<String>>,
    pub in_use: HashMap<(String, Option<String>, CapacityMarket), u32>,
    pub launch_bucket: TokenBucket,
    pub instance_bucket: TokenBucket,
    pub describe_bucket: TokenBucket,
    pub terminate_bucket: TokenBucket,
    pub ssm_put_bucket: TokenBucket,
    pub outbox: Vec<(Millis, String, JobEvent)>,
    pub faults: FaultCounts,
    pub calls: CallCounts,
    pub violations: Violations,
    /// Launch ids the controller's store holds (checked at each launch call).
    pub recorded: Option<RecordedCheck>,
    /// The EC2 event queue (when `ec2_events` or spot interruptions are on).
    pub queue: Vec<SimMessage>,
    /// Every event emitted, in order (tests look events up here).
    pub events_sent: Vec<SimEvent>,
    /// Re-run requests GitHub accepted, by the job re-run.
    pub reruns: BTreeMap<u64, u32>,
    /// JIT parameters their instance deleted after reading them (the boot
    /// script's own call: not one of the controller's [`CallCounts`]).
    pub params_deleted_by_instances: u64,
    /// Spot faults and event duplication draw from their own generator, so
    /// a world without them replays exactly as before they existed.
    event_rng: ChaCha8Rng,
    /// The instances' own parameter deletes draw from this one.
    self_delete_rng: ChaCha8Rng,
    next_event: u64,
    next_rerun_job: u64,
    events: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    event_slots: Vec<Option<Event>>,
    seq: u64,
    next_runner_id: u64,
    next_instance: u64,
    next_delivery: u64,
}

impl World {
    pub fn new(cfg: WorldConfig) -> World {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let event_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5b07_c0de_5b07_c0de);
        let self_delete_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x0551_de1e_7e55_0000);
        World {
            launch_bucket: TokenBucket::new(cfg.launch_bucket.0, cfg.launch_bucket.1, 0),
            instance_bucket: TokenBucket::new(cfg.instance_bucket.0, cfg.instance_bucket.1, 0),
            describe_bucket: TokenBucket::new(cfg.describe_bucket.0, cfg.describe_bucket.1, 0),
            terminate_bucket: TokenBucket::new(cfg.terminate_bucket.0, cfg.terminate_bucket.1, 0),
            ssm_put_bucket: TokenBucket::new(cfg.ssm_put_bucket.0, cfg.ssm_put_bucket.1, 0),
            cfg,
            now: 0,
            rng,
            jobs: BTreeMap::new(),
            runners: BTreeMap::new(),
            instances: BTreeMap::new(),
            params: BTreeMap::new(),
            repos: Vec::new(),
            tokens: HashMap::new(),
            in_use: HashMap::new(),
            outbox: Vec::new(),
            faults: FaultCounts::default(),
            calls: CallCounts::default(),
            violations: Violations::default(),
            recorded: None,
            queue: Vec::new(),
            events_sent: Vec::new(),
            reruns: BTreeMap::new(),
            params_deleted_by_instances: 0,
            event_rng,
            self_delete_rng,
            next_event: 1,
            next_rerun_job: 9_000_000_000,
            events: BinaryHeap::new(),
            event_slots: Vec::new(),
            seq: 0,
            next_runner_id: 1,
            next_instance: 1,
            next_delivery: 1,
        }
    }

    /// Whether a fault of this weight fires now (never after the world healed).
    pub fn fault(&mut self, weight: f64) -> bool {
        self.now < self.cfg.heal_at
            && self.cfg.faults > 0.0
            && self
                .rng
                .random_bool((self.cfg.faults * weight).clamp(0.0, 1.0))
    }

    pub fn between(&mut self, (lo, hi): (Millis, Millis)) -> Millis {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    pub fn schedule(&mut self, at: Millis, ev: Event) {
        self.seq += 1;
        self.event_slots.push(Some(ev));
        self.events
            .push(Reverse((at, self.seq, self.event_slots.len() - 1)));
    }

    pub fn next_event_at(&self) -> Option<Millis> {
        self.events.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Adds a job that will be queued at `at`.
    pub fn add_job(&mut self, id: u64, run_id: u64, repo: &str, labels: Vec<String>, at: Millis) {
        let duration = self.between(self.cfg.job_duration);
        self.jobs.insert(
            id,
            SimJob {
                id,
                run_id,
                repo: repo.to_string(),
                labels,
                status: JobStatus::Queued,
                arrives_at: at,
                queued_at: None,
                started_at: None,
                completed_at: None,
                duration,
                runner: None,
                runs: 0,
                lost: false,
                conclusion: None,
                interrupted: false,
                rerun_as: None,
                rerun_of: None,
            },
        );
        self.schedule(at, Event::JobArrives(id));
    }

    /// Starts an instance of another fleet that runfleet must never touch.
    pub fn add_foreign_instance(&mut self, fleet: &str) -> String {
        let id = self.new_instance_id();
        self.instances.insert(
            id.clone(),
            SimInstance {
                id: id.clone(),
                tags: vec![
                    ("runfleet:fleet".into(), fleet.into()),
                    ("runfleet:pool".into(), "linux-x64".into()),
                ],
                state: InstanceState::Running,
                launched_at: 0,
                gone_at: None,
                instance_type: "m5.large".into(),
                subnet: None,
                market: CapacityMarket::OnDemand,
                client_token: "foreign".into(),
                broken: false,
                runner: None,
                busy_ms: 0,
                max_lifetime: Millis::MAX,
            },
        );
        id
    }

    pub fn new_instance_id(&mut self) -> String {
        let n = self.next_instance;
        self.next_instance += 1;
        format!("i-{n:017x}")
    }

    pub fn new_runner_id(&mut self) -> u64 {
        let n = self.next_runner_id;
        self.next_runner_id += 1;
        n
    }

    fn webhook(&mut self, job_id: u64) {
        let Some(j) = self.jobs.get(&job_id) else {
            return;
        };
        let ev = JobEvent {
            job_id: j.id,
            run_id: j.run_id,
            repo: j.repo.clone(),
            labels: j.labels.clone(),
            status: j.status,
            runner_name: j.runner.clone(),
            conclusion: j.conclusion.clone(),
            at: self.now,
        };
        let delivery = format!("d-{}", self.next_delivery);
        self.next_delivery += 1;
        if self.fault(0.3) {
            self.faults.webhooks_lost += 1;
            return;
        }
        let mut at = self.now + 50;
        if self.fault(0.3) {
            self.faults.webhooks_delayed += 1;
            at += self.rng.random_range(1_000..20_000);
        }
        if self.fault(0.2) {
            self.faults.webhooks_duplicated += 1;
            let later = at + self.rng.random_range(100..5_000);
            self.outbox.push((later, delivery.clone(), ev.clone()));
        }
        self.outbox.push((at, delivery, ev));
    }

    /// Deliveries due at or before now, in time order.
    pub fn take_due_webhooks(&mut self) -> Vec<(String, JobEvent)> {
        let now = self.now;
        let mut due: Vec<(Millis, String, JobEvent)> = Vec::new();
        self.outbox.retain(|d| {
            if d.0 <= now {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        due.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        due.into_iter().map(|(_, id, ev)| (id, ev)).collect()
    }

    /// Processes every event due at or before `t` and moves the clock to `t`.
    pub fn advance_to(&mut self, t: Millis) {
        while let Some(Reverse((at, _, slot))) = self.events.peek().copied() {
            if at > t {
                break;
            }
            self.events.pop();
            self.now = self.now.max(at);
            if let Some(ev) = self.event_slots[slot].take() {
                self.handle(ev);
            }
        }
        self.now = self.now.max(t);
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::JobArrives(id) => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.queued_at = Some(self.now);
                }
                self.webhook(id);
                self.assign();
            }
            Event::InstanceRunning(id) => {
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                if inst.state != InstanceState::Pending {
                    return;
                }
                inst.state = InstanceState::Running;
                let spot = inst.market == CapacityMarket::Spot;
                if spot {
                    self.maybe_interrupt(&id);
                }
                let mut boot = self.between(self.cfg.boot_time);
                if self.fault(0.1) {
                    self.faults.slow_boots += 1;
                    boot *= 4;
                }
                self.schedule(self.now + boot, Event::BootPoll(id));
            }
            Event::BootPoll(id) => self.boot_poll(&id),
            Event::RunnerOnline(rid) => {
                if let Some(r) = self.runners.get_mut(&rid) {
                    r.online = true;
                    r.online_at = Some(self.now);
                }
                if self.cfg.assign_delay > 0 {
                    self.schedule(self.now + self.cfg.assign_delay, Event::Assign);
                } else {
                    self.assign();
                }
            }
            Event::JobDone(job_id) => self.job_done(job_id),
            Event::PowerOff(id) => self.power_off(&id),
            Event::Rebalance(id) => {
                if self.instances.get(&id).is_some_and(|i| !i.state.is_gone()) {
                    self.send_event(&id, CloudEventKind::RebalanceRecommendation);
                }
            }
            Event::SpotWarning(id) => {
                self.interrupt_spot(&id);
            }
            Event::Reclaim(id) => self.reclaim(&id),
            Event::Assign => self.assign(),
            Event::Terminated(id) => {
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|i| i.state != InstanceState::Terminated)
                {
                    self.send_event(&id, CloudEventKind::StateChange(InstanceState::Terminated));
                }
                if let Some(inst) = self.instances.get_mut(&id) {
                    inst.state = InstanceState::Terminated;
                    inst.gone_at.get_or_insert(self.now);
                    let key = (inst.instance_type.clone(), inst.subnet.clone(), inst.market);
                    if let Some(n) = self.in_use.get_mut(&key) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        }
    }

    fn boot_poll(&mut self, id: &str) {
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        if inst.state != InstanceState::Running {
            return;
        }
        if self.now.saturating_sub(inst.launched_at) >= inst.max_lifetime {
            self.power_off(id);
            return;
        }
        let fleet = inst.tag("runfleet:fleet").unwrap_or("").to_string();
        let path = param_path(&fleet, id);
        // A warm instance's boot script waits for its config until its
        // max lifetime (the engine renders it so and tags it `runfleet:warm`).
        let poll_timeout = if inst.tag("runfleet:warm").is_some() {
            inst.max_lifetime
        } else {
            self.cfg.jit_poll_timeout
        };
        let Some(jit) = self.params.get(&path).cloned() else {
            if self.now.saturating_sub(inst.launched_at) > poll_timeout {
                self.power_off(id);
            } else {
                self.schedule(self.now + 2_000, Event::BootPoll(id.to_string()));
            }
            return;
        };
        let broken = inst.broken;
        // Read: the boot script deletes it before it starts the runner.
        self.instance_deletes_param(&path);
        if broken {
            return; // the runner never starts; the controller's boot timeout must act
        }
        let Some(rid) = self.runners.values().find(|r| r.jit == jit).map(|r| r.id) else {
            // A config for a runner that no longer exists: the runner fails to start.
            self.power_off(id);
            return;
        };
        if self.runners[&rid].instance.is_some() {
            self.power_off(id); // a JIT config works once
            return;
        }
        self.runners.get_mut(&rid).expect("found").instance = Some(id.to_string());
        if let Some(inst) = self.instances.get_mut(id) {
            inst.runner = Some(rid);
        }
        let delay = self.between(self.cfg.runner_start);
        self.schedule(self.now + delay, Event::RunnerOnline(rid));
    }

    /// The boot script's `aws ssm delete-parameter` of the parameter it just
    /// read; it may fail ([`WorldConfig::self_delete_failure`]), and the
    /// runner starts either way.
    fn instance_deletes_param(&mut self, path: &str) {
        let p = self.cfg.self_delete_failure;
        if p > 0.0 && self.self_delete_rng.random_bool(p.clamp(0.0, 1.0)) {
            self.faults.self_delete_failures += 1;
            return;
        }
        if self.params.remove(path).is_some() {
            self.params_deleted_by_instances += 1;
        }
    }

    /// GitHub hands queued jobs to idle online runners whose labels and scope fit.
    fn assign(&mut self) {
        let queued: Vec<u64> = {
            let mut q: Vec<&SimJob> = self
                .jobs
                .values()
                .filter(|j| j.status == JobStatus::Queued && j.queued_at.is_some())
                .collect();
            q.sort_by_key(|j| (j.queued_at, j.id));
            q.into_iter().map(|j| j.id).collect()
        };
        for job_id in queued {
            let job = &self.jobs[&job_id];
            let fits: Vec<u64> = self
                .runners
                .values()
                .filter(|r| r.online && !r.busy && r.job.is_none())
                .filter(|r| {
                    self.cfg.assign_delay == 0
                        || r.online_at
                            .is_some_and(|t| t + self.cfg.assign_delay <= self.now)
                })
                .filter(|r| r.scope.admits(&job.repo) && satisfies(&r.labels, &job.labels))
                .map(|r| r.id)
                .collect();
            if fits.is_empty() {
                continue;
            }
            let rid = fits[self.rng.random_range(0..fits.len())];
            let runner = self.runners.get_mut(&rid).expect("fits");
            runner.busy = true;
            runner.job = Some(job_id);
            let name = runner.name.clone();
            let job = self.jobs.get_mut(&job_id).expect("queued");
            job.status = JobStatus::InProgress;
            job.started_at = Some(self.now);
            job.runner = Some(name);
            job.runs += 1;
            let done = self.now + job.duration;
            self.schedule(done, Event::JobDone(job_id));
            self.webhook(job_id);
        }
    }

    fn job_done(&mut self, job_id: u64) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.status != JobStatus::InProgress {
            return;
        }
        job.status = JobStatus::Completed;
        job.completed_at = Some(self.now);
        job.conclusion = Some("success".into());
        let started = job.started_at.unwrap_or(self.now);
        self.webhook(job_id);
        // The ephemeral runner deregisters itself and exits; the boot script powers off.
        let rid = self
            .runners
            .values()
            .find(|r| r.job == Some(job_id))
            .map(|r| r.id);
        if let Some(rid) = rid {
            let r = self.runners.remove(&rid).expect("found");
            if let Some(iid) = r.instance
                && let Some(inst) = self.instances.get_mut(&iid)
            {
                inst.busy_ms += self.now - started;
                self.schedule(self.now + 3_000, Event::PowerOff(iid));
            }
        }
    }

    fn power_off(&mut self, id: &str) {
        self.shut_down(id, false);
    }

    /// The instance shuts down: by its own power-off, the controller's
    /// termination, or (`reclaimed`) EC2 taking a spot instance back.
    fn shut_down(&mut self, id: &str, reclaimed: bool) {
        if self.instances.get(id).is_some_and(|i| !i.state.is_gone()) {
            self.send_event(id, CloudEventKind::StateChange(InstanceState::ShuttingDown));
        }
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.state.is_gone() {
            return;
        }
        inst.state = InstanceState::ShuttingDown;
        inst.gone_at = Some(self.now);
        let runner = inst.runner;
        self.schedule(self.now + 5_000, Event::Terminated(id.to_string()));
        // A runner on a machine that goes away: GitHub shows it offline; a
        // running job is lost.
        if let Some(rid) = runner
            && let Some(r) = self.runners.get_mut(&rid)
        {
            r.online = false;
            if let Some(job_id) = r.job.take() {
                r.busy = false;
                if !reclaimed {
                    self.violations.busy_killed += 1;
                }
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.status = JobStatus::Completed;
                    job.completed_at = Some(self.now);
                    job.lost = true;
                    job.interrupted = reclaimed;
                    job.conclusion = Some("failure".into());
                }
                self.webhook(job_id);
            }
        }
    }

    /// Terminates on request (from the controller).
    pub fn terminate(&mut self, id: &str) {
        self.power_off(id);
    }

    /// Whether the world has an EC2 event feed.
    pub fn events_enabled(&self) -> bool {
        self.cfg.ec2_events || self.cfg.spot_interruption_weight > 0.0
    }

    /// Whether a fault of the event classes fires now (their own generator).
    fn event_fault(&mut self, weight: f64) -> bool {
        self.now < self.cfg.heal_at
            && self.cfg.faults > 0.0
            && weight > 0.0
            && self
                .event_rng
                .random_bool((self.cfg.faults * weight).clamp(0.0, 1.0))
    }

    /// The spot-interruption fault: a spot instance that just started may
    /// get a warning later (sometimes after a rebalance recommendation).
    fn maybe_interrupt(&mut self, id: &str) {
        let weight = self.cfg.spot_interruption_weight;
        if !self.event_fault(weight) {
            return;
        }
        self.faults.spot_interruptions += 1;
        let (lo, hi) = (10_000, 6 * 60 * 1000);
        let warn_at = self.now + self.event_rng.random_range(lo..=hi);
        if self.event_rng.random_bool(0.3) {
            self.faults.rebalance_recommendations += 1;
            self.schedule(
                warn_at.saturating_sub(30_000),
                Event::Rebalance(id.to_string()),
            );
        }
        self.schedule(warn_at, Event::SpotWarning(id.to_string()));
    }

    /// EC2 warns that it takes a spot instance back in two minutes, and does.
    /// Returns the event id (`None`: the instance is gone or not spot).
    pub fn interrupt_spot(&mut self, id: &str) -> Option<String> {
        let inst = self.instances.get(id)?;
        if inst.state.is_gone() || inst.market != CapacityMarket::Spot {
            return None;
        }
        let ev = self.send_event(
            id,
            CloudEventKind::SpotInterruption {
                action: "terminate".into(),
            },
        );
        self.schedule(self.now + SPOT_NOTICE_MS, Event::Reclaim(id.to_string()));
        ev
    }

    /// EC2 takes a spot instance back: it shuts down under whatever runs on it.
    pub fn reclaim(&mut self, id: &str) {
        self.shut_down(id, true);
    }

    /// Puts an EC2 event about `instance_id` on the queue (when the world
    /// has a feed); returns its id. Under faults a copy may be delivered twice.
    pub fn send_event(&mut self, instance_id: &str, kind: CloudEventKind) -> Option<String> {
        if !self.events_enabled() {
            return None;
        }
        let id = format!("ev-{:08}", self.next_event);
        self.next_event += 1;
        let ev = SimEvent {
            id: id.clone(),
            instance_id: instance_id.to_string(),
            kind,
            at: self.now,
        };
        self.events_sent.push(ev.clone());
        let delay = 200 + self.event_rng.random_range(0..800);
        self.enqueue(ev.clone(), self.now + delay);
        if self.event_fault(0.2) {
            self.faults.events_duplicated += 1;
            let later = self.now + delay + self.event_rng.random_range(100..20_000);
            self.enqueue(ev, later);
        }
        Some(id)
    }

    /// Delivers an already sent event once more (EventBridge and SQS
    /// deliver at least once): a new message with the same event.
    pub fn redeliver(&mut self, event_id: &str) -> bool {
        let Some(ev) = self.events_sent.iter().find(|e| e.id == event_id).cloned() else {
            return false;
        };
        self.enqueue(ev, self.now);
        true
    }

    fn enqueue(&mut self, event: SimEvent, visible_at: Millis) {
        let message_id = format!("m-{:08}", self.next_event);
        self.next_event += 1;
        self.queue.push(SimMessage {
            message_id,
            event,
            visible_at,
            receives: 0,
        });
    }

    /// GitHub re-runs a completed job: a new job (new id, same run, labels
    /// and repository) is queued now. A job not completed, or already
    /// re-run, cannot be (GitHub answers 403).
    pub fn rerun(&mut self, repo: &str, job_id: u64) -> Result<u64, String> {
        let Some(j) = self.jobs.get(&job_id).filter(|j| j.repo == repo) else {
            return Err(format!("job {job_id} not found in {repo}"));
        };
        if j.status != JobStatus::Completed || j.rerun_as.is_some() {
            return Err(format!("job {job_id} cannot be re-run now (403)"));
        }
        let (run_id, labels) = (j.run_id, j.labels.clone());
        let new_id = self.next_rerun_job;
        self.next_rerun_job += 1;
        *self.reruns.entry(job_id).or_default() += 1;
        let now = self.now;
        self.add_job(new_id, run_id, repo, labels, now);
        if let Some(new) = self.jobs.get_mut(&new_id) {
            new.rerun_of = Some(job_id);
        }
        if let Some(old) = self.jobs.get_mut(&job_id) {
            old.rerun_as = Some(new_id);
        }
        Ok(new_id)
    }

    /// The last job of `job_id`'s re-run chain (itself when never re-run).
    pub fn final_attempt(&self, job_id: u64) -> Option<&SimJob> {
        let mut j = self.jobs.get(&job_id)?;
        while let Some(next) = j.rerun_as.and_then(|n| self.jobs.get(&n)) {
            j = next;
        }
        Some(j)
    }

    /// Deletes a runner registration (from the controller). A JIT runner
    /// that is removed while its machine runs exits, and the machine powers off.
    pub fn delete_runner(&mut self, rid: u64) {
        if let Some(r) = self.runners.remove(&rid)
            && let Some(iid) = r.instance
        {
            self.schedule(self.now + 1_000, Event::PowerOff(iid));
        }
    }

    pub fn alive_instances(&self, fleet: &str) -> usize {
        self.instances
            .values()
            .filter(|i| i.tag("runfleet:fleet") == Some(fleet) && !i.state.is_gone())
            .count()
    }

    pub fn runners_named(&self, prefix: &str) -> usize {
        self.runners
            .values()
            .filter(|r| r.name.starts_with(prefix))
            .count()
    }

    pub fn params_under(&self, fleet: &str) -> usize {
        let prefix = format!("/runfleet/{fleet}/");
        self.params
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .count()
    }

    pub fn jobs_by_status(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for j in self.jobs.values() {
            let k = match (j.queued_at, j.status) {
                (None, _) => "pending",
                (_, JobStatus::Queued) => "queued",
                (_, JobStatus::InProgress) => "running",
                (_, JobStatus::Completed) => "done",
            };
            *m.entry(k).or_default() += 1;
        }
        m
    }

    pub fn scopes(&self) -> BTreeSet<Scope> {
        self.runners.values().map(|r| r.scope.clone()).collect()
    }
}

pub fn param_path(fleet: &str, instance_id: &str) -> String {
    format!("/runfleet/{fleet}/instances/{instance_id}/jitconfig")
}
