//! The state runfleet tracks: jobs, launches, instances and runners, and the
//! pure transitions between their states.

use serde::{Deserialize, Serialize};

use crate::config::CapacityMarket;

/// Milliseconds since the Unix epoch (or since the simulator's epoch).
pub type Millis = u64;

/// Where a runner is registered: one repository, or an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Scope {
    /// `owner/name`
    Repo(String),
    /// `owner`
    Org(String),
}

impl Scope {
    /// Whether a runner registered here may take a job of `repo`.
    pub fn admits(&self, repo: &str) -> bool {
        match self {
            Scope::Repo(r) => r.eq_ignore_ascii_case(repo),
            Scope::Org(o) => repo
                .split_once('/')
                .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(o)),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Repo(r) => write!(f, "repo {r}"),
            Scope::Org(o) => write!(f, "org {o}"),
        }
    }
}

/// GitHub's view of a job, as a webhook or the REST API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
}

/// A `workflow_job` observation: from a webhook delivery or from polling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    /// Set once a runner took the job.
    pub runner_name: Option<String>,
    /// `conclusion` of a completed job (`success`, `failure`, `cancelled`, ...).
    pub conclusion: Option<String>,
    /// When GitHub says it happened (or when it was observed).
    pub at: Millis,
}

/// A request for one runner now, not tied to a GitHub job that runfleet
/// saw: `runfleet launch` and `POST /v1/start`. Its id is the launch id (the
/// launch call's idempotency token); its runner carries `unique_label`
/// beside the pool's labels, so only a job that asks for that label can
/// take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub id: String,
    pub repo: String,
    pub pool: String,
    pub unique_label: String,
    /// `Name` tag override (`launch --name`).
    pub name: Option<String>,
    pub at: Millis,
}

/// One entry of the intake log: a job observation or a start request.
/// Untagged, so logs written before start requests existed still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntakeEvent {
    Job(JobEvent),
    Start(StartRequest),
}

impl From<JobEvent> for IntakeEvent {
    fn from(ev: JobEvent) -> Self {
        IntakeEvent::Job(ev)
    }
}

impl From<StartRequest> for IntakeEvent {
    fn from(req: StartRequest) -> Self {
        IntakeEvent::Start(req)
    }
}

/// runfleet's state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a runner.
    Queued,
    /// A runner took it.
    InProgress,
    /// Finished on GitHub (any conclusion).
    Completed,
    /// No pool serves it, or its repository is not allowed: never launched for.
    Ignored,
    /// runfleet gave up on it (a permanent launch error); `reason` says why.
    Failed,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Ignored | JobState::Failed
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::InProgress => "in_progress",
            JobState::Completed => "completed",
            JobState::Ignored => "ignored",
            JobState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    pub state: JobState,
    pub queued_at: Millis,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub runner_name: Option<String>,
    /// Why it is ignored or failed.
    pub reason: Option<String>,
    /// Launches made on its behalf so far (names the next launch id).
    pub launches: u32,
    /// No launch for it before this time (backoff after a failed launch).
    pub retry_at: Millis,
    /// `conclusion` of the completed job (`success`, `failure`, `cancelled`, ...).
    #[serde(default)]
    pub conclusion: Option<String>,
    /// When runfleet asked GitHub to re-run it because its spot instance
    /// was interrupted under it (at most once per job).
    #[serde(default)]
    pub rerun_requested_at: Option<Millis>,
}

impl Job {
    pub fn new(ev: &JobEvent) -> Job {
        let mut job = Job {
            id: ev.job_id,
            run_id: ev.run_id,
            repo: ev.repo.clone(),
            labels: ev.labels.clone(),
            state: JobState::Queued,
            queued_at: ev.at,
            started_at: None,
            completed_at: None,
            runner_name: None,
            reason: None,
            launches: 0,
            retry_at: 0,
            conclusion: None,
            rerun_requested_at: None,
        };
        job.apply(ev);
        job
    }

    /// Folds a newer observation into the job. Events may arrive late,
    /// twice or out of order: the state only moves forward
    /// (queued -> in_progress -> completed), so applying any permutation of
    /// a job's events gives the same result. Returns whether anything changed.
    pub fn apply(&mut self, ev: &JobEvent) -> bool {
        let before = self.clone();
        if self.runner_name.is_none() && ev.runner_name.is_some() {
            self.runner_name.clone_from(&ev.runner_name);
        }
        match ev.status {
            JobStatus::Queued => {
                self.queued_at = self.queued_at.min(ev.at);
            }
            JobStatus::InProgress => {
                if matches!(self.state, JobState::Queued | JobState::Failed) {
                    self.state = JobState::InProgress;
                }
                self.started_at = Some(self.started_at.map_or(ev.at, |t| t.min(ev.at)));
            }
            JobStatus::Completed => {
                if self.state != JobState::Ignored {
                    self.state = JobState::Completed;
                }
                self.completed_at = Some(self.completed_at.map_or(ev.at, |t| t.min(ev.at)));
                if self.conclusion.is_none() && ev.conclusion.is_some() {
                    self.conclusion.clone_from(&ev.conclusion);
                }
                if self.started_at.is_none() && ev.runner_name.is_some() {
                    self.started_at = Some(ev.at);
                }
            }
        }
        *self != before
    }
}

/// The closed set of failure kinds every adapter maps its errors to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No capacity for this offering (InsufficientInstanceCapacity, Unsupported, ...).
    Capacity,
    /// Rate limited (RequestLimitExceeded, GitHub secondary limit).
    Throttled,
    /// Account quota (VcpuLimitExceeded, MaxSpotInstanceCountExceeded).
    Quota,
    /// Credentials or permissions.
    Auth,
    /// The request itself is wrong (bad launch template, bad subnet): permanent.
    Invalid,
    /// Not there.
    NotFound,
    /// Anything that may work when tried again (5xx, timeouts).
    Transient,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Capacity => "capacity",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Quota => "quota",
            ErrorKind::Auth => "auth",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Transient => "transient",
        }
    }
    /// A launch that failed like this will not succeed by waiting.
    pub fn is_permanent(self) -> bool {
        matches!(self, ErrorKind::Invalid | ErrorKind::Auth)
    }
}

/// One point of the fallback chain: an instance type in a subnet in a market.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Offering {
    pub instance_type: String,
    /// `None`: the launch template's subnet.
    pub subnet: Option<String>,
    pub market: CapacityMarket,
}

impl std::fmt::Display for Offering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let market = match self.market {
            CapacityMarket::Spot => "spot",
            CapacityMarket::OnDemand => "on-demand",
        };
        write!(
            f,
            "{} {} in {}",
            market,
            self.instance_type,
            self.subnet.as_deref().unwrap_or("template subnet")
        )
    }
}

/// An offering that failed for capacity, skipped until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub offering: Offering,
    pub until: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchState {
    /// Recorded; the cloud call is to be made (or is being made).
    Requested,
    /// The cloud answered with an instance.
    Launched,
    /// The cloud answered with an error for every offering.
    Failed,
    /// Dropped before it was sent: no queued job needed it any more.
    Cancelled,
}

/// One request for one instance, recorded before the cloud call. Launches
/// of one pool go out together as one call (a [`LaunchBatch`], recorded in
/// every member before the call); the batch id is the call's idempotency
/// token. A batch of one carries the launch's own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub id: String,
    pub pool: String,
    pub scope: Scope,
    /// The job it was made for (none for `launch` / `/v1/start`).
    pub job_id: Option<u64>,
    /// Extra label that makes the runner unique (`launch` and `/v1/start`).
    pub unique_label: Option<String>,
    /// `Name` tag override.
    pub name: Option<String>,
    pub state: LaunchState,
    pub requested_at: Millis,
    pub instance_id: Option<String>,
    pub error: Option<(ErrorKind, String)>,
    /// A call that failed in a way that may pass is made again, with the
    /// same id, no earlier than this; a launch waiting to share a call
    /// (batching window, EC2's buckets) waits until then too.
    pub not_before: Millis,
    /// The call this launch went out in: set (and stored) just before the
    /// call; `None` while the launch has not been sent. A batch that may
    /// not have happened is sent again whole, with the same id and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<LaunchBatch>,
}

/// One launch call for several launches of a pool: `size` instances asked
/// for with the idempotency token `id`. The instances it returns go to its
/// members in order of launch id (an instance already bound keeps its
/// launch), whether learnt from the call's answer or from a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchBatch {
    pub id: String,
    pub size: u32,
}

impl Launch {
    /// A warm-pool launch: made for no job and no on-demand run (it has
    /// neither a job id nor a unique label). Its instance boots and waits,
    /// unregistered, until the planner assigns it a job; until then the
    /// launch's `scope` means nothing and the instance's is `None`.
    pub fn is_warm(&self) -> bool {
        self.job_id.is_none() && self.unique_label.is_none()
    }
}

/// EC2 instance state, as far as runfleet cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting_down",
            InstanceState::Terminated => "terminated",
        }
    }
}

/// Why an instance is terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminateReason {
    /// Its job completed and `completed_grace` passed.
    Completed,
    /// Its runner never came online within `boot_timeout`.
    BootTimeout,
    /// Older than the pool's `max_lifetime`.
    MaxLifetime,
    /// Tagged with this fleet but unknown to the store, older than `boot_timeout`.
    Orphan,
    /// Idle runner that no queued job needs.
    Idle,
    /// Its pool is no longer configured.
    PoolRemoved,
    /// EC2 announced a spot interruption or recommended a rebalance, and
    /// its runner was not running a job: replaced at once.
    Interrupted,
}

impl TerminateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminateReason::Completed => "completed",
            TerminateReason::BootTimeout => "boot_timeout",
            TerminateReason::MaxLifetime => "max_lifetime",
            TerminateReason::Orphan => "orphan",
            TerminateReason::Idle => "idle",
            TerminateReason::PoolRemoved => "pool_removed",
            TerminateReason::Interrupted => "interrupted",
        }
    }
}

/// An instance of this fleet: the cloud's facts merged with the store's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    /// `runfleet:fleet` tag.
    pub fleet: String,
    /// `runfleet:pool` tag.
    pub pool: String,
    pub state: InstanceState,
    pub launched_at: Millis,
    /// The store's launch record for it; `None` for an instance the store does not know.
    pub launch_id: Option<String>,
    /// Where its runner is registered (from the launch record).
    pub scope: Option<Scope>,
    pub unique_label: Option<String>,
    pub market: Option<CapacityMarket>,
    /// The JIT config was minted and written to SSM.
    pub jit_written: bool,
    /// The SSM parameter may still exist: the controller wrote it and has
    /// not deleted it. The instance deletes it itself after reading it,
    /// which this flag does not see; the planner goes by the listing
    /// ([`crate::plan::Observed::params`]).
    pub param_present: bool,
    /// First time its runner was seen online (or took a job).
    pub runner_online_at: Option<Millis>,
    /// Its runner is running a job.
    pub busy: bool,
    /// Its runner's job completed at.
    pub job_done_at: Option<Millis>,
    /// Termination was requested at, and why.
    pub terminate_requested_at: Option<Millis>,
    pub terminate_reason: Option<TerminateReason>,
    /// What it was launched as (type, subnet, market), when runfleet
    /// launched it in this state's lifetime; `None` for one found by listing.
    #[serde(default)]
    pub offering: Option<Offering>,
    /// The strongest interruption notice EC2 sent for it.
    #[serde(default)]
    pub interruption: Option<Interruption>,
    /// A warm instance (launched with no job, see [`Launch::is_warm`]) that
    /// was handed a job: which one and when. `None` for every other
    /// instance, and for a warm instance still waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<WarmAssignment>,
}

/// The moment a waiting warm instance was given a job: its runner is
/// registered for that job's scope from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmAssignment {
    pub job_id: u64,
    pub at: Millis,
}

/// How strongly EC2 warned that an instance will go away; ordered by
/// severity, so a later, weaker notice never replaces a stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptionKind {
    /// "EC2 Instance Rebalance Recommendation": at elevated risk of interruption.
    Rebalance,
    /// "EC2 Spot Instance Interruption Warning": reclaimed in two minutes.
    SpotWarning,
}

impl InterruptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InterruptionKind::Rebalance => "rebalance",
            InterruptionKind::SpotWarning => "spot_warning",
        }
    }
}

/// An interruption notice recorded for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interruption {
    pub kind: InterruptionKind,
    /// When EC2 sent it.
    pub at: Millis,
}

impl Instance {
    /// Records a notice; returns whether it changed anything (a repeated or
    /// weaker notice does not).
    pub fn note_interruption(&mut self, kind: InterruptionKind, at: Millis) -> bool {
        if self.interruption.is_some_and(|i| i.kind >= kind) {
            return false;
        }
        self.interruption = Some(Interruption { kind, at });
        true
    }

    /// Moves to a state EC2 reported, only ever forward toward `terminated`
    /// (a late `shutting-down` never revives a `terminated` instance);
    /// returns whether it changed.
    pub fn note_state(&mut self, state: InstanceState) -> bool {
        if state <= self.state {
            return false;
        }
        self.state = state;
        true
    }
}

impl Instance {
    /// A newly tracked instance: nothing known of it beyond these (no
    /// launch, scope, runner or offering yet).
    pub fn new(
        id: impl Into<String>,
        fleet: impl Into<String>,
        pool: impl Into<String>,
        state: InstanceState,
        launched_at: Millis,
    ) -> Self {
        Instance {
            id: id.into(),
            fleet: fleet.into(),
            pool: pool.into(),
            state,
            launched_at,
            launch_id: None,
            scope: None,
            unique_label: None,
            market: None,
            offering: None,
            interruption: None,
            jit_written: false,
            param_present: false,
            runner_online_at: None,
            busy: false,
            job_done_at: None,
            terminate_requested_at: None,
            terminate_reason: None,
            assigned: None,
        }
    }

    pub fn runner_name(&self) -> String {
        runner_name(&self.pool, &self.id)
    }
    pub fn alive(&self) -> bool {
        !self.state.is_gone()
    }
}

/// `runfleet-<pool>-<instance id>`.
pub fn runner_name(pool: &str, instance_id: &str) -> String {
    format!("runfleet-{pool}-{instance_id}")
}

/// The instance id named by a runner name of the form
/// `runfleet-<pool>-<instance id>` (instance ids start with `i-`).
pub fn instance_of_runner(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("runfleet-")?;
    let idx = rest.rfind("-i-")?;
    let id = &rest[idx + 1..];
    (id.len() > 2 && id[2..].bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

/// A self-hosted runner as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub online: bool,
    pub busy: bool,
    pub labels: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(status: JobStatus, at: Millis, runner: Option<&str>) -> JobEvent {
        JobEvent {
            job_id: 1,
            run_id: 2,
            repo: "o/r".into(),
            labels: vec!["self-hosted".into()],
            status,
            runner_name: runner.map(str::to_string),
            conclusion: None,
            at,
        }
    }

    #[test]
    fn job_events_commute() {
        let events = [
            ev(JobStatus::Queued, 10, None),
            ev(JobStatus::InProgress, 20, Some("runfleet-p-i-0abc")),
            ev(JobStatus::Completed, 30, Some("runfleet-p-i-0abc")),
        ];
        let orders = [
            [0, 1, 2],
            [2, 1, 0],
            [1, 0, 2],
            [2, 0, 1],
            [0, 2, 1],
            [1, 2, 0],
        ];
        let mut results = Vec::new();
        for order in orders {
            let mut job = Job::new(&events[order[0]]);
            for &i in &order[1..] {
                job.apply(&events[i]);
            }
            results.push(job);
        }
        for r in &results {
            assert_eq!(r.state, JobState::Completed);
            assert_eq!(r.started_at, Some(20));
            assert_eq!(r.completed_at, Some(30));
            assert_eq!(r.runner_name.as_deref(), Some("runfleet-p-i-0abc"));
        }
        let first = &results[0];
        assert!(
            results
                .iter()
                .all(|r| r.state == first.state && r.completed_at == first.completed_at)
        );
    }

    #[test]
    fn duplicate_event_changes_nothing() {
        let e = ev(JobStatus::InProgress, 20, Some("runfleet-p-i-1"));
        let mut job = Job::new(&ev(JobStatus::Queued, 10, None));
        assert!(job.apply(&e));
        assert!(!job.apply(&e));
    }

    #[test]
    fn runner_names_round_trip() {
        let name = runner_name("linux-x64", "i-0123456789abcdef0");
        assert_eq!(name, "runfleet-linux-x64-i-0123456789abcdef0");
        assert_eq!(instance_of_runner(&name), Some("i-0123456789abcdef0"));
        assert_eq!(instance_of_runner("other-runner"), None);
        assert_eq!(instance_of_runner("runfleet-pool-"), None);
        assert_eq!(instance_of_runner("runfleet-pool-i-"), None);
    }

    #[test]
    fn interruption_notices_only_grow_and_states_only_move_forward() {
        let mut i = Instance {
            id: "i-1".into(),
            fleet: "f".into(),
            pool: "p".into(),
            state: InstanceState::Running,
            launched_at: 0,
            launch_id: Some("l".into()),
            scope: None,
            unique_label: None,
            market: Some(CapacityMarket::Spot),
            jit_written: true,
            param_present: false,
            runner_online_at: None,
            busy: true,
            job_done_at: None,
            terminate_requested_at: None,
            terminate_reason: None,
            offering: None,
            interruption: None,
            assigned: None,
        };
        assert!(i.note_interruption(InterruptionKind::Rebalance, 10));
        assert!(
            !i.note_interruption(InterruptionKind::Rebalance, 20),
            "a repeat"
        );
        assert!(
            i.note_interruption(InterruptionKind::SpotWarning, 30),
            "stronger"
        );
        assert!(!i.note_interruption(InterruptionKind::SpotWarning, 40));
        assert!(
            !i.note_interruption(InterruptionKind::Rebalance, 50),
            "weaker"
        );
        assert_eq!(
            i.interruption,
            Some(Interruption {
                kind: InterruptionKind::SpotWarning,
                at: 30
            })
        );
        assert!(i.note_state(InstanceState::Terminated));
        assert!(!i.note_state(InstanceState::ShuttingDown), "late event");
        assert!(!i.note_state(InstanceState::Terminated));
        assert_eq!(i.state, InstanceState::Terminated);
    }

    #[test]
    fn stored_records_without_the_new_fields_still_read() {
        let job = Job::new(&ev(JobStatus::Queued, 10, None));
        let mut v = serde_json::to_value(&job).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("conclusion");
        o.remove("rerun_requested_at");
        let back: Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn scope_admits() {
        assert!(Scope::Repo("Acme/App".into()).admits("acme/app"));
        assert!(!Scope::Repo("acme/app".into()).admits("acme/lib"));
        assert!(Scope::Org("acme".into()).admits("ACME/lib"));
        assert!(!Scope::Org("acme".into()).admits("other/lib"));
    }
}
