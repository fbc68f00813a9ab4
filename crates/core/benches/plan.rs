//! One `plan()` over 10,000 queued jobs and 10,000 instances.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use runfleet_core::config::*;
use runfleet_core::model::*;
use runfleet_core::plan::{Observed, plan};

fn config() -> Config {
    let pool = |name: &str, labels: &[&str]| PoolConfig {
        name: name.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        launch_template: "lt-0".into(),
        launch_template_version: None,
        instance_types: vec!["m7i.large".into(), "m6i.large".into(), "m5.large".into()],
        subnets: vec!["subnet-a".into(), "subnet-b".into()],
        market: Market::SpotThenOnDemand,
        os: Os::Linux,
        arch: Arch::X64,
        max_runners: 20_000,
        warm: 0,
        runner_scope: RunnerScope::Repo,
        runner_group_id: 1,
        max_lifetime: Duration::from_secs(6 * 3600),
        runner_version: None,
        setup_script: None,
        role_arn: None,
        external_id: None,
        rerun_interrupted: true,
    };
    Config {
        fleet: "bench".into(),
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            store: "sqlite://x.db".into(),
            reconcile_interval: Duration::from_secs(30),
            completed_grace: Duration::from_secs(60),
            boot_timeout: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(15),
        },
        github: GithubConfig {
            api_url: "https://api.github.com".into(),
            webhook_secret: None,
            token: Some(Secret::new("t")),
            app_id: None,
            app_private_key: None,
            installation_id: None,
            repos: Some(vec!["acme/*".into()]),
            poll: false,
        },
        aws: AwsConfig {
            region: None,
            role_arn: None,
            external_id: None,
            events_queue: None,
        },
        api: runfleet_core::config::ApiConfig::default(),
        pools: vec![
            pool("x64", &["self-hosted", "linux", "x64"]),
            pool("arm64", &["self-hosted", "linux", "arm64"]),
        ],
    }
}

fn observed(jobs: u64, instances: u64) -> Observed {
    let mut obs = Observed::default();
    let labels = |n: u64| -> Vec<String> {
        let arch = if n.is_multiple_of(3) { "arm64" } else { "x64" };
        vec!["self-hosted".into(), "linux".into(), arch.into()]
    };
    for id in 0..jobs {
        let ev = JobEvent {
            job_id: id,
            run_id: id / 4,
            repo: format!("acme/repo{}", id % 50),
            labels: labels(id),
            status: JobStatus::Queued,
            runner_name: None,
            conclusion: None,
            at: id,
        };
        obs.jobs.insert(id, Job::new(&ev));
    }
    for n in 0..instances {
        let id = format!("i-{n:017x}");
        obs.instances.insert(
            id.clone(),
            Instance {
                id,
                fleet: "bench".into(),
                pool: if n.is_multiple_of(3) {
                    "arm64".into()
                } else {
                    "x64".into()
                },
                state: InstanceState::Running,
                launched_at: 0,
                launch_id: Some(format!("bench-j{n}-1")),
                scope: Some(Scope::Repo(format!("acme/repo{}", n % 50))),
                unique_label: None,
                market: None,
                jit_written: true,
                param_present: false,
                runner_online_at: Some(1_000),
                busy: n.is_multiple_of(2),
                job_done_at: None,
                terminate_requested_at: None,
                terminate_reason: None,
                offering: None,
                interruption: None,
                assigned: None,
            },
        );
    }
    obs
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let obs = observed(10_000, 10_000);
    c.bench_function("plan_10k_jobs_10k_instances", |b| {
        b.iter(|| plan(&cfg, &obs, 30_000))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
