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
pub const TERMINATE_REASONS: [&str; 6] = [
    "completed",
    "boot_timeout",
    "max_lifetime",
    "orphan",
    "idle",
    "pool_removed",
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
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
