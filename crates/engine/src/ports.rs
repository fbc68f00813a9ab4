//! The traits the engine drives. Real adapters (GitHub REST, AWS SDK, SQLite)
//! and the simulator implement them; the engine never knows which.

use async_trait::async_trait;
use runfleet_core::config::{CapacityMarket, Secret};
use runfleet_core::model::{
    ErrorKind, Instance, InstanceState, IntakeEvent, Job, JobEvent, Launch, Millis, Offering,
    Runner, Scope,
};
use serde::{Deserialize, Serialize};

/// An adapter failure: a kind from the closed set and a message that names
/// what failed. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct PortError {
    pub kind: ErrorKind,
    pub message: String,
    /// Wait at least this long before trying again (`Retry-After`).
    pub retry_after_ms: Option<u64>,
}

impl PortError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PortError {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// What `generate-jitconfig` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitRequest {
    pub scope: Scope,
    pub name: String,
    pub labels: Vec<String>,
    /// Runner group; 1 is the default group (the only one at repository level).
    pub runner_group_id: u64,
}

/// `generate-jitconfig`'s answer.
#[derive(Debug, Clone)]
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: Secret,
}

/// GitHub, as the engine uses it.
#[async_trait]
pub trait GitHub: Send + Sync {
    /// `POST .../actions/runners/generate-jitconfig` at repo or org level.
    async fn generate_jitconfig(&self, req: &JitRequest) -> PortResult<JitConfig>;
    /// Every self-hosted runner registered in `scope` (all pages).
    async fn list_runners(&self, scope: &Scope) -> PortResult<Vec<Runner>>;
    /// Deregisters a runner. A busy runner cannot be deleted: `Invalid`.
    /// An unknown one: `NotFound`.
    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<()>;
    /// Jobs whose status is `queued` in the queued and in-progress workflow
    /// runs of `repo` (`owner/name`).
    async fn list_queued_jobs(&self, repo: &str) -> PortResult<Vec<JobEvent>>;
    /// One job's current state.
    async fn get_job(&self, repo: &str, job_id: u64) -> PortResult<JobEvent>;
    /// Jobs whose status is `in_progress` in the in-progress workflow runs
    /// of `repo` (with their `runner_name`): finds the job a runner is
    /// running when no webhook told. The default: none known.
    async fn list_running_jobs(&self, repo: &str) -> PortResult<Vec<JobEvent>> {
        let _ = repo;
        Ok(Vec::new())
    }
    /// The repositories of an owner that runfleet may serve (expands `owner/*`).
    async fn list_repos(&self, owner: &str) -> PortResult<Vec<String>>;
    /// `POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun`: re-runs a
    /// completed job (GitHub queues it again in a new run attempt). A job
    /// that cannot be re-run (not completed, already re-running, too old):
    /// `Invalid`. The default: this adapter cannot (`Invalid`).
    async fn rerun_job(&self, repo: &str, job_id: u64) -> PortResult<()> {
        Err(PortError::new(
            ErrorKind::Invalid,
            format!("re-run of job {job_id} in {repo}: not supported by this GitHub adapter"),
        ))
    }
    /// Requests sent so far, per endpoint, for metrics.
    fn request_counts(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// One launch call: one instance, from a pool's launch template, trying the
/// offerings in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// The launch id: the call's idempotency token (`ClientToken`).
    pub client_token: String,
    pub fleet: String,
    pub pool: String,
    pub launch_template: String,
    pub launch_template_version: Option<String>,
    /// The fallback chain, already filtered of offerings known unavailable.
    pub offerings: Vec<Offering>,
    /// Tags to set in the launch call itself.
    pub tags: Vec<(String, String)>,
    /// Rendered boot script (plain text; the adapter encodes it).
    pub user_data: String,
    /// Assume this role (with external id) to launch in another account.
    pub role_arn: Option<String>,
    pub external_id: Option<Secret>,
}

/// One instance the cloud started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub instance_id: String,
    pub offering: Offering,
    pub launched_at: Millis,
}

/// What a launch call did: at most one instance, and the offerings that
/// failed on the way (walked in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOutcome {
    pub instance: Option<Launched>,
    pub errors: Vec<(Offering, PortError)>,
}

/// An instance as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInstance {
    pub id: String,
    pub state: InstanceState,
    pub launched_at: Millis,
    pub tags: Vec<(String, String)>,
    pub market: Option<CapacityMarket>,
}

impl CloudInstance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What EC2 said about one instance, as an EventBridge event tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudEventKind {
    /// "EC2 Spot Instance Interruption Warning": the instance is reclaimed
    /// in two minutes; `action` is `terminate`, `stop` or `hibernate`.
    SpotInterruption { action: String },
    /// "EC2 Instance Rebalance Recommendation": at elevated risk of interruption.
    RebalanceRecommendation,
    /// "EC2 Instance State-change Notification".
    StateChange(InstanceState),
}

/// One event about an instance, received from the cloud's event feed
/// (SQS fed by an EventBridge rule). The feed delivers at least once: the
/// same event may come again until it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// The event's own id (EventBridge `id`); a redelivery carries the same.
    pub id: String,
    pub instance_id: String,
    pub kind: CloudEventKind,
    /// When EC2 emitted it (EventBridge `time`).
    pub at: Millis,
    /// Opaque handle that acknowledges this delivery ([`Cloud::ack_events`];
    /// the SQS receipt handle).
    pub ack: String,
}

/// EC2 + SSM, as the engine uses them.
#[async_trait]
pub trait Cloud: Send + Sync {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome>;
    /// Instances tagged `runfleet:fleet = fleet` (all pages), including ones
    /// shutting down or recently terminated.
    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>>;
    /// Terminates instances. The adapter refuses any id not tagged with `fleet`.
    async fn terminate(&self, fleet: &str, instance_ids: &[String]) -> PortResult<()>;
    /// Writes the runner's JIT config as a SecureString at
    /// `/runfleet/<fleet>/instances/<instance id>/jitconfig`.
    async fn put_jit(&self, fleet: &str, instance_id: &str, value: &Secret) -> PortResult<()>;
    /// Deletes that parameter; deleting a missing one is success.
    async fn delete_jit(&self, fleet: &str, instance_id: &str) -> PortResult<()>;
    /// Instance ids that have a parameter under the fleet's prefix.
    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>>;
    /// Events received since the last call (spot interruption warnings,
    /// rebalance recommendations, state changes), for any instance: the
    /// engine keeps those of instances it knows. An event stays in the feed
    /// until [`Cloud::ack_events`] acknowledges it, so one whose effect was
    /// not stored comes again. Unreadable messages are reported by the
    /// adapter (log) and left in the feed (for its dead-letter queue), never
    /// returned. The default: no feed, no events.
    async fn poll_events(&self) -> PortResult<Vec<CloudEvent>> {
        Ok(Vec::new())
    }
    /// Removes delivered events from the feed, by their [`CloudEvent::ack`]
    /// handles; the engine calls it only once the events' effects are
    /// stored. Acknowledging a handle twice is success.
    async fn ack_events(&self, acks: &[String]) -> PortResult<()> {
        let _ = acks;
        Ok(())
    }
    /// Requests sent so far, per API operation (`RunInstances`, ...), for metrics.
    fn request_counts(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// A timeline entry for one job or instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub at: Millis,
    pub job_id: Option<u64>,
    pub instance_id: Option<String>,
    pub what: String,
}

/// The durable state the engine resumes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub jobs: Vec<Job>,
    pub launches: Vec<Launch>,
    pub instances: Vec<Instance>,
    /// Last intake sequence number folded into `jobs`.
    pub cursor: u64,
}

/// One change to durable state; a batch is applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    PutJob(Job),
    PutLaunch(Launch),
    PutInstance(Instance),
    /// Forget an instance long gone.
    DropInstance(String),
    /// Forget a finished job (and its launches) long gone.
    DropJob(u64),
    Cursor(u64),
    Timeline(TimelineEvent),
}

/// Whether an intake was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Stored(u64),
    Duplicate,
}

/// Durable state. Implementations: in-memory (tests, simulator), SQLite,
/// PostgreSQL.
#[async_trait]
pub trait Store: Send + Sync {
    /// Durably records an intake event under a delivery id (webhook
    /// `X-GitHub-Delivery`, a synthetic id for polled observations, the
    /// request id of a start request). The same delivery id twice stores
    /// nothing the second time.
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake>;
    /// [`Store::intake_event`] for a job observation.
    async fn intake(&self, delivery_id: &str, event: &JobEvent) -> PortResult<Intake> {
        self.intake_event(delivery_id, &IntakeEvent::Job(event.clone()))
            .await
    }
    /// Events stored after sequence number `cursor`, in order of their
    /// sequence numbers. A sequence number is never reused, and an event
    /// becomes visible only once every smaller number that will ever be
    /// visible is (so a reader that advances its cursor misses nothing).
    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>>;
    async fn load(&self) -> PortResult<Snapshot>;
    async fn apply(&self, batch: &[Mutation]) -> PortResult<()>;
    /// Recent timeline entries, newest last.
    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>>;
}
