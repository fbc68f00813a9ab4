//! AWS requests per launched instance in a burst, counted at the proxy in
//! front of a real moto server, with EC2's RunInstances / TerminateInstances
//! / Describe buckets simulated by the proxy (rejections answered
//! `RequestLimitExceeded`).
//!
//!     cargo bench -p runfleet-aws --bench burst
//!     RUNFLEET_BENCH_INSTANCES=1000 RUNFLEET_BENCH_SCALE=10 cargo bench -p runfleet-aws --bench burst
//!
//! `RUNFLEET_BENCH_SCALE` multiplies every bucket (EC2's in the proxy and the
//! adapter's own alike) so that a 1,000-instance burst takes about a minute
//! instead of the 8 minutes EC2's 2-per-second RunInstances refill would
//! take; the ratios, and so the counts, do not depend on it.
//!
//! Each instance is one `launch` (the engine's 16 launches in flight) and one
//! `put_jit`; the run ends by listing the fleet and terminating everything.
//! Scenarios: `clean`; `ice` (the first offering, spot m7i.large, has no
//! capacity; like the engine, the driver drops an offering from later
//! requests once it failed for capacity); `no-bucket` (the adapter's buckets
//! made huge: what the client-side bucket saves).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Fault, Moto, Proxy, World, sdk_config};
use runfleet_aws::{AwsCloud, AwsOptions, BucketShape, Pacing};
use runfleet_core::config::{CapacityMarket, Secret};
use runfleet_core::model::{ErrorKind, Offering};
use runfleet_engine::ports::{Cloud, LaunchRequest};

const CONCURRENCY: usize = 16;

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    scenario: &'static str,
    instances: usize,
    failed: usize,
    counts: BTreeMap<String, u64>,
    rejected: u64,
    secs: f64,
}

fn offerings(world: &World) -> Vec<Offering> {
    let s = |i: usize| Some(world.subnets[i].clone());
    vec![
        Offering {
            instance_type: "m7i.large".into(),
            subnet: s(0),
            market: CapacityMarket::Spot,
        },
        Offering {
            instance_type: "m6i.large".into(),
            subnet: s(0),
            market: CapacityMarket::Spot,
        },
        Offering {
            instance_type: "m7i.large".into(),
            subnet: s(1),
            market: CapacityMarket::OnDemand,
        },
    ]
}

async fn run(scenario: &'static str, moto: &Moto, world: &World, n: usize, scale: f64) -> Row {
    let proxy = Proxy::start(&moto.url).await;
    let sc = |cap: u32, rate: f64| ((cap as f64 * scale).round() as u32, rate * scale);
    let (rc, rr) = sc(5, 2.0);
    let (tc, tr) = sc(100, 5.0);
    let (dc, dr) = sc(100, 20.0);
    proxy.buckets(&[
        ("ec2:RunInstances", rc, rr),
        ("ec2:TerminateInstances", tc, tr),
        ("ec2:DescribeInstances", dc, dr),
    ]);
    if scenario == "ice" {
        proxy.fail_when(
            "ec2:RunInstances",
            &[
                "InstanceType=m7i.large",
                "InstanceMarketOptions.MarketType=spot",
            ],
            Fault::aws(500, "InsufficientInstanceCapacity"),
        );
    }
    let mut pacing = Pacing {
        run_instances: BucketShape::new(rc, rr),
        terminate_instances: BucketShape::new(tc, tr),
        describe: BucketShape::new(dc, dr),
        ssm_write: BucketShape::new(sc(20, 10.0).0, sc(20, 10.0).1),
        ssm_read: BucketShape::new(sc(20, 10.0).0, sc(20, 10.0).1),
        ..Pacing::default()
    };
    if scenario == "no-bucket" {
        pacing.run_instances = BucketShape::new(100_000, 100_000.0);
        pacing.terminate_instances = BucketShape::new(100_000, 100_000.0);
        pacing.describe = BucketShape::new(100_000, 100_000.0);
    }
    let cloud = Arc::new(AwsCloud::new(
        sdk_config(&proxy.url),
        AwsOptions {
            pacing,
            ..AwsOptions::default()
        },
    ));
    let fleet = format!("bench-{scenario}");
    let unavailable: Arc<Mutex<HashSet<Offering>>> = Arc::default();
    let chain = offerings(world);
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let cloud = cloud.clone();
        let unavailable = unavailable.clone();
        let fleet = fleet.clone();
        let id = format!("{fleet}-j{i}-1");
        let offerings: Vec<Offering> = {
            let u = unavailable.lock().unwrap();
            chain.iter().filter(|o| !u.contains(*o)).cloned().collect()
        };
        let req = LaunchRequest {
            client_token: id.clone(),
            count: 1,
            fleet: fleet.clone(),
            pool: "p".into(),
            launch_template: world.template_id.clone(),
            launch_template_version: None,
            offerings,
            tags: vec![
                ("runfleet:fleet".into(), fleet.clone()),
                ("runfleet:pool".into(), "p".into()),
                ("Name".into(), "runfleet-p".into()),
                ("runfleet:launch".into(), id.clone()),
            ],
            user_data: "#!/bin/bash\npoweroff\n".into(),
            role_arn: None,
            external_id: None,
            resend: false,
        };
        set.spawn(async move {
            let _permit = permit;
            let out = match cloud.launch(&req).await {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("launch {} failed: {e}", req.client_token);
                    return None;
                }
            };
            for (o, e) in &out.errors {
                if e.kind == ErrorKind::Capacity {
                    unavailable.lock().unwrap().insert(o.clone());
                }
            }
            let inst = out.one().expect("an instance");
            cloud
                .put_jit(&fleet, &inst.instance_id, &Secret::new("jit"))
                .await
                .expect("put_jit");
            Some(inst.instance_id)
        });
    }
    let mut ids = Vec::new();
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Some(id) => ids.push(id),
            None => failed += 1,
        }
    }
    let listed = cloud.list_instances(&fleet).await.unwrap();
    assert_eq!(listed.len(), ids.len(), "every instance listed once");
    cloud.terminate(&fleet, &ids).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    Row {
        scenario,
        failed,
        instances: ids.len(),
        counts: proxy.counts(),
        rejected: proxy.rejected().values().sum(),
        secs,
    }
}

fn main() {
    let n = env_num("RUNFLEET_BENCH_INSTANCES", 300.0) as usize;
    let scale = env_num("RUNFLEET_BENCH_SCALE", 10.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rows = Vec::new();
        for scenario in ["clean", "ice", "no-bucket"] {
            // A fresh moto per scenario: moto's DescribeInstances slows down
            // with every instance it holds.
            let Some(moto) = Moto::start("bench burst") else {
                return;
            };
            let world = World::create(&sdk_config(&moto.url), "bench").await;
            eprintln!("running {scenario}: {n} instances, buckets x{scale}");
            let row = run(scenario, &moto, &world, n, scale).await;
            eprintln!("{scenario}: {:?} rejected {} in {:.1}s", row.counts, row.rejected, row.secs);
            rows.push(row);
        }
        let c = |r: &Row, op: &str| r.counts.get(op).copied().unwrap_or(0);
        println!(
            "\nburst of {n} instances, EC2 buckets x{scale}, {CONCURRENCY} launches in flight (counted at the proxy)\n"
        );
        println!(
            "{:<10} {:>6} {:>6} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9} {:>11} {:>11} {:>7}",
            "scenario", "inst", "failed", "RunInst", "Term", "Put", "Describe", "rejected", "run/inst", "ec2mut/inst", "allmut/inst", "secs"
        );
        for r in &rows {
            let inst = r.instances.max(1) as f64;
            let run = c(r, "ec2:RunInstances");
            let term = c(r, "ec2:TerminateInstances");
            let put = c(r, "ssm:PutParameter");
            let desc = c(r, "ec2:DescribeInstances");
            println!(
                "{:<10} {:>6} {:>6} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9.3} {:>11.3} {:>11.3} {:>7.1}",
                r.scenario,
                r.instances,
                r.failed,
                run,
                term,
                put,
                desc,
                r.rejected,
                run as f64 / inst,
                (run + term) as f64 / inst,
                (run + term + put) as f64 / inst,
                r.secs
            );
        }
        println!(
            "\nrun/inst: RunInstances per instance; ec2mut/inst: + TerminateInstances; allmut/inst: + SSM PutParameter.\n\
             rejected: requests the simulated EC2 buckets answered RequestLimitExceeded (the adapter retried them).\n"
        );
    });
}
