//! One `plan()` over 10,000 queued jobs and 10,000 instances.

use criterion::{Criterion, criterion_group, criterion_main};
use runfleet_core::config::*;
use runfleet_core::model::*;
use runfleet_core::plan::{Observed, plan};

#[path = "../tests/support/mod.rs"]
mod support;

fn config() -> Config {
    let pool = |name: &str, labels: &[&str]| {
        let mut p = support::pool(name, labels, 20_000);
        p.instance_types = support::strings(&["m7i.large", "m6i.large", "m5.large"]);
        p
    };
    support::config(
        "bench",
        &["acme/*"],
        vec![
            pool("x64", &["self-hosted", "linux", "x64"]),
            pool("arm64", &["self-hosted", "linux", "arm64"]),
        ],
    )
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
