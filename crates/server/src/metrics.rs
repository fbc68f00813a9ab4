//! Prometheus metrics. Every family is registered at start with zero-valued
//! series for every pool and label value runfleet knows, so dashboards and
//! alerts see the series before the first event.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use runfleet_core::config::Config;
use runfleet_core::model::ErrorKind;
use runfleet_engine::Engine;

use crate::view::{INSTANCE_STATES, View};

type Labels = Vec<(String, String)>;

/// Job outcomes counted in `runfleet_jobs_total`.
pub const JOB_OUTCOMES: [&str; 4] = ["started", "completed", "ignored", "failed"];
/// Termination reasons counted in `runfleet_terminations_total`.
pub const TERMINATE_REASONS: [&str; 7] = [
    "completed",
    "boot_timeout",
    "max_lifetime",
    "orphan",
    "idle",
    "pool_removed",
    "interrupted",
];
/// AWS operations that exist from start in `runfleet_aws_requests_total`.
pub const AWS_OPERATIONS: [&str; 7] = [
    "RunInstances",
    "CreateFleet",
    "DescribeInstances",
    "TerminateInstances",
    "PutParameter",
    "DeleteParameter",
    "GetParametersByPath",
];
/// `/v1` routes and their outcomes in `runfleet_api_requests_total`.
pub const API_OUTCOMES: [(&str, &[&str]); 2] = [
    (
        "start",
        &[
            "accepted",
            "unauthorized",
            "forbidden",
            "bad_request",
            "limited",
            "not_found",
            "unavailable",
        ],
    ),
    ("runs", &["ok", "unauthorized", "not_found", "unavailable"]),
];
/// Calls through the engine's ports whose failures are counted in
/// `runfleet_adapter_errors_total` (the engine's names for them).
pub const ADAPTER_OPERATIONS: [&str; 16] = [
    "launch",
    "provision",
    "terminate",
    "delete_parameter",
    "delete_runner",
    "list_instances",
    "list_runners",
    "list_jit",
    "list_repos",
    "list_runs",
    "list_run_jobs",
    "get_job",
    "list_running_jobs",
    "rerun_job",
    "poll_events",
    "ack_events",
];
/// Interruption notices in `runfleet_interruptions_total`, and what the
/// runner was doing when one came.
pub const INTERRUPTION_NOTICES: [&str; 2] = ["spot_warning", "rebalance"];
pub const RUNNER_ACTIVITY: [&str; 2] = ["busy", "idle"];
/// Outcomes of re-run requests in `runfleet_reruns_total`.
pub const RERUN_OUTCOMES: [&str; 2] = ["requested", "refused"];
/// Kinds and outcomes of cloud events in `runfleet_cloud_events_total`.
pub const CLOUD_EVENT_KINDS: [&str; 3] = ["spot_warning", "rebalance", "state_change"];
pub const CLOUD_EVENT_OUTCOMES: [&str; 3] = ["applied", "unchanged", "foreign"];
const ERROR_KINDS: [ErrorKind; 7] = [
    ErrorKind::Capacity,
    ErrorKind::Throttled,
    ErrorKind::Quota,
    ErrorKind::Auth,
    ErrorKind::Invalid,
    ErrorKind::NotFound,
    ErrorKind::Transient,
];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Counter>,
    instances: Family<Labels, Gauge>,
    queue_to_start: Histogram,
    launch_errors: Family<Labels, Counter>,
    terminations: Family<Labels, Counter>,
    github_requests: Counter,
    github_endpoint_requests: Family<Labels, Counter>,
    aws_requests: Family<Labels, Counter>,
    webhooks: Family<Labels, Counter>,
    queued_jobs: Family<Labels, Gauge>,
    api_requests: Family<Labels, Counter>,
    launched: Family<Labels, Counter>,
    launch_calls: Family<Labels, Counter>,
    launch_call_instances: Family<Labels, Counter>,
    launches_cancelled: Family<Labels, Counter>,
    warm_target: Family<Labels, Gauge>,
    interruptions: Family<Labels, Counter>,
    reruns: Family<Labels, Counter>,
    cloud_events: Family<Labels, Counter>,
    adapter_errors: Family<Labels, Counter>,
    steps: Counter,
    reconciles: Counter,
    /// Totals already added to counters, by series, for cumulative sources.
    seen: Mutex<HashMap<String, u64>>,
}

impl Metrics {
    pub fn new(cfg: &Config) -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<Labels, Counter>::default();
        let instances = Family::<Labels, Gauge>::default();
        let queue_to_start = Histogram::new([
            1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
            1800.0, 3600.0,
        ]);
        let launch_errors = Family::<Labels, Counter>::default();
        let terminations = Family::<Labels, Counter>::default();
        let github_requests = Counter::default();
        let github_endpoint_requests = Family::<Labels, Counter>::default();
        let aws_requests = Family::<Labels, Counter>::default();
        let webhooks = Family::<Labels, Counter>::default();
        let queued_jobs = Family::<Labels, Gauge>::default();
        let api_requests = Family::<Labels, Counter>::default();
        let launched = Family::<Labels, Counter>::default();
        let launch_calls = Family::<Labels, Counter>::default();
        let launch_call_instances = Family::<Labels, Counter>::default();
        let launches_cancelled = Family::<Labels, Counter>::default();
        let warm_target = Family::<Labels, Gauge>::default();
        let interruptions = Family::<Labels, Counter>::default();
        let reruns = Family::<Labels, Counter>::default();
        let cloud_events = Family::<Labels, Counter>::default();
        let adapter_errors = Family::<Labels, Counter>::default();
        let steps = Counter::default();
        let reconciles = Counter::default();
        registry.register(
            "runfleet_api_requests",
            "Requests to the on-demand API, by route and outcome",
            api_requests.clone(),
        );
        for (route, outcomes) in API_OUTCOMES {
            for o in outcomes.iter() {
                let _ = api_requests.get_or_create(&labels(&[("route", route), ("outcome", o)]));
            }
        }
        registry.register("runfleet_jobs", "Jobs by pool and outcome", jobs.clone());
        registry.register(
            "runfleet_instances",
            "Instances by pool and state",
            instances.clone(),
        );
        registry.register(
            "runfleet_queue_to_start_seconds",
            "Time from a job queued to a runner taking it",
            queue_to_start.clone(),
        );
        registry.register(
            "runfleet_launch_errors",
            "Launch errors by pool and kind",
            launch_errors.clone(),
        );
        registry.register(
            "runfleet_terminations",
            "Instance terminations by reason",
            terminations.clone(),
        );
        registry.register(
            "runfleet_github_requests",
            "Requests sent to the GitHub API",
            github_requests.clone(),
        );
        registry.register(
            "runfleet_github_endpoint_requests",
            "Requests sent to the GitHub API by endpoint",
            github_endpoint_requests.clone(),
        );
        registry.register(
            "runfleet_aws_requests",
            "Requests sent to AWS by operation",
            aws_requests.clone(),
        );
        registry.register(
            "runfleet_webhooks",
            "Webhook deliveries by result",
            webhooks.clone(),
        );
        registry.register(
            "runfleet_queued_jobs",
            "Jobs waiting for a runner, by pool",
            queued_jobs.clone(),
        );
        registry.register(
            "runfleet_instances_launched",
            "Instances launched, by pool",
            launched.clone(),
        );
        registry.register(
            "runfleet_launch_calls",
            "Launch calls sent to the cloud, by pool; one call may ask for several instances",
            launch_calls.clone(),
        );
        registry.register(
            "runfleet_launch_batch_instances",
            "Instances asked for by launch calls, by pool",
            launch_call_instances.clone(),
        );
        registry.register(
            "runfleet_launches_cancelled",
            "Launches dropped before they were sent because no queued job needed them any more: a job taken by another runner or cancelled; by pool",
            launches_cancelled.clone(),
        );
        registry.register(
            "runfleet_warm_target",
            "Warm instances each pool is meant to keep waiting now, from warm and warm_schedule",
            warm_target.clone(),
        );
        registry.register(
            "runfleet_interruptions",
            "Spot interruption warnings and rebalance recommendations received, by pool, notice and whether the runner was busy",
            interruptions.clone(),
        );
        registry.register(
            "runfleet_reruns",
            "Re-runs of jobs lost to a spot interruption, by pool and outcome",
            reruns.clone(),
        );
        registry.register(
            "runfleet_cloud_events",
            "EC2 events received from the event feed, by kind and outcome",
            cloud_events.clone(),
        );
        registry.register(
            "runfleet_adapter_errors",
            "Failed calls to GitHub, AWS or the event feed, by operation and error kind",
            adapter_errors.clone(),
        );
        registry.register(
            "runfleet_engine_steps",
            "Engine steps: plan and execute rounds after intake or a timer",
            steps.clone(),
        );
        registry.register(
            "runfleet_reconciles",
            "Reconciles of the state with GitHub and the cloud",
            reconciles.clone(),
        );
        for p in &cfg.pools {
            for o in JOB_OUTCOMES {
                let _ = jobs.get_or_create(&labels(&[("pool", &p.name), ("outcome", o)]));
            }
            for s in INSTANCE_STATES {
                let _ = instances.get_or_create(&labels(&[("pool", &p.name), ("state", s)]));
            }
            for k in ERROR_KINDS {
                let _ = launch_errors
                    .get_or_create(&labels(&[("pool", &p.name), ("kind", k.as_str())]));
            }
            let _ = queued_jobs.get_or_create(&labels(&[("pool", &p.name)]));
            let pool = labels(&[("pool", &p.name)]);
            let _ = launched.get_or_create(&pool);
            let _ = launch_calls.get_or_create(&pool);
            let _ = launch_call_instances.get_or_create(&pool);
            let _ = launches_cancelled.get_or_create(&pool);
            let _ = warm_target.get_or_create(&pool);
            for n in INTERRUPTION_NOTICES {
                for r in RUNNER_ACTIVITY {
                    let _ = interruptions.get_or_create(&labels(&[
                        ("pool", &p.name),
                        ("notice", n),
                        ("runner", r),
                    ]));
                }
            }
            for o in RERUN_OUTCOMES {
                let _ = reruns.get_or_create(&labels(&[("pool", &p.name), ("outcome", o)]));
            }
        }
        for k in CLOUD_EVENT_KINDS {
            for o in CLOUD_EVENT_OUTCOMES {
                let _ = cloud_events.get_or_create(&labels(&[("kind", k), ("outcome", o)]));
            }
        }
        for op in ADAPTER_OPERATIONS {
            for k in ERROR_KINDS {
                let _ = adapter_errors
                    .get_or_create(&labels(&[("operation", op), ("kind", k.as_str())]));
            }
        }
        for r in TERMINATE_REASONS {
            let _ = terminations.get_or_create(&labels(&[("reason", r)]));
        }
        for op in AWS_OPERATIONS {
            let _ = aws_requests.get_or_create(&labels(&[("operation", op)]));
        }
        for r in ["accepted", "duplicate", "rejected", "ignored"] {
            let _ = webhooks.get_or_create(&labels(&[("result", r)]));
        }
        Metrics {
            registry,
            jobs,
            instances,
            queue_to_start,
            launch_errors,
            terminations,
            github_requests,
            github_endpoint_requests,
            aws_requests,
            webhooks,
            queued_jobs,
            api_requests,
            launched,
            launch_calls,
            launch_call_instances,
            launches_cancelled,
            warm_target,
            interruptions,
            reruns,
            cloud_events,
            adapter_errors,
            steps,
            reconciles,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one webhook delivery: `accepted`, `duplicate`, `rejected`, `ignored`.
    pub fn webhook(&self, result: &str) {
        self.webhooks
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// Counts one `/v1` request: `route` `start` or `runs`, `outcome` one of
    /// [`API_OUTCOMES`].
    pub fn api(&self, route: &str, outcome: &str) {
        self.api_requests
            .get_or_create(&labels(&[("route", route), ("outcome", outcome)]))
            .inc();
    }

    /// Adds to `counter` what `total` grew by since the last call for `key`.
    fn advance(&self, key: String, total: u64, counter: &Counter) {
        let mut seen = self.seen.lock().expect("metrics lock");
        let last = seen.entry(key).or_insert(0);
        if total > *last {
            counter.inc_by(total - *last);
            *last = total;
        }
    }

    /// Folds what the engine counted since the last call into the metrics.
    pub fn update(&self, engine: &mut Engine, view: &View) {
        for s in engine.drain_queue_to_start() {
            self.queue_to_start.observe(s as f64 / 1000.0);
        }
        let stats = engine.stats();
        for (pool, outcomes) in &stats.jobs {
            for (outcome, n) in outcomes {
                let l = labels(&[("pool", pool), ("outcome", outcome)]);
                self.advance(
                    format!("jobs|{pool}|{outcome}"),
                    *n,
                    &self.jobs.get_or_create(&l),
                );
            }
        }
        for (pool, kinds) in &stats.launch_errors {
            for (kind, n) in kinds {
                let l = labels(&[("pool", pool), ("kind", kind)]);
                self.advance(
                    format!("launch_errors|{pool}|{kind}"),
                    *n,
                    &self.launch_errors.get_or_create(&l),
                );
            }
        }
        for (reason, n) in &stats.terminations {
            let l = labels(&[("reason", reason)]);
            self.advance(
                format!("terminations|{reason}"),
                *n,
                &self.terminations.get_or_create(&l),
            );
        }
        for (pool, n) in &stats.launched {
            let c = self.launched.get_or_create(&labels(&[("pool", pool)]));
            self.advance(format!("launched|{pool}"), *n, &c);
        }
        for (pool, n) in &stats.launch_calls {
            let c = self.launch_calls.get_or_create(&labels(&[("pool", pool)]));
            self.advance(format!("launch_calls|{pool}"), *n, &c);
        }
        for (pool, n) in &stats.launch_call_instances {
            let c = self
                .launch_call_instances
                .get_or_create(&labels(&[("pool", pool)]));
            self.advance(format!("launch_call_instances|{pool}"), *n, &c);
        }
        for (pool, n) in &stats.launches_cancelled {
            let c = self
                .launches_cancelled
                .get_or_create(&labels(&[("pool", pool)]));
            self.advance(format!("launches_cancelled|{pool}"), *n, &c);
        }
        for (pool, seen) in &stats.interruptions {
            for (what, n) in seen {
                // `spot_warning_busy`: the notice, then what the runner did.
                let (notice, runner) = what.rsplit_once('_').unwrap_or((what, "unknown"));
                let l = labels(&[("pool", pool), ("notice", notice), ("runner", runner)]);
                self.advance(
                    format!("interruptions|{pool}|{what}"),
                    *n,
                    &self.interruptions.get_or_create(&l),
                );
            }
        }
        for (pool, outcomes) in &stats.reruns {
            for (outcome, n) in outcomes {
                let l = labels(&[("pool", pool), ("outcome", outcome)]);
                self.advance(
                    format!("reruns|{pool}|{outcome}"),
                    *n,
                    &self.reruns.get_or_create(&l),
                );
            }
        }
        for (kind, outcomes) in &stats.cloud_event_kinds {
            for (outcome, n) in outcomes {
                let l = labels(&[("kind", kind), ("outcome", outcome)]);
                self.advance(
                    format!("cloud_events|{kind}|{outcome}"),
                    *n,
                    &self.cloud_events.get_or_create(&l),
                );
            }
        }
        for (key, n) in &stats.adapter_errors {
            // `list_runners:throttled`: the operation, then the error kind.
            let (op, kind) = key.split_once(':').unwrap_or((key, "unknown"));
            let l = labels(&[("operation", op), ("kind", kind)]);
            self.advance(
                format!("adapter_errors|{key}"),
                *n,
                &self.adapter_errors.get_or_create(&l),
            );
        }
        self.advance("steps".into(), stats.steps, &self.steps);
        self.advance("reconciles".into(), stats.reconciles, &self.reconciles);
        let gh = engine.github().request_counts();
        let total: u64 = gh.iter().map(|(_, n)| n).sum();
        self.advance("github".into(), total, &self.github_requests);
        for (endpoint, n) in gh {
            let c = self
                .github_endpoint_requests
                .get_or_create(&labels(&[("endpoint", &endpoint)]));
            self.advance(format!("github|{endpoint}"), n, &c);
        }
        for (op, n) in engine.cloud().request_counts() {
            let c = self
                .aws_requests
                .get_or_create(&labels(&[("operation", &op)]));
            self.advance(format!("aws|{op}"), n, &c);
        }
        for p in &view.pools {
            for (state, n) in &p.instances {
                self.instances
                    .get_or_create(&labels(&[("pool", &p.name), ("state", state)]))
                    .set(*n as i64);
            }
            self.queued_jobs
                .get_or_create(&labels(&[("pool", &p.name)]))
                .set(p.queued as i64);
            self.warm_target
                .get_or_create(&labels(&[("pool", &p.name)]))
                .set(i64::from(p.warm_target));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
