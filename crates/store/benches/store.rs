//! Store throughput on a real file (in a temporary directory):
//!
//! - `intake/sequential`: one webhook at a time, each waiting for its commit;
//! - `intake/concurrent_64`: 64 webhooks at once, as concurrent deliveries
//!   arrive (group commit shares the fsyncs);
//! - `intake/concurrent_64_no_group`: the same with group commit off, to
//!   show what it buys;
//! - `intake/sequential_sync_normal`: `synchronous=NORMAL`, to show what
//!   full durability costs (not a production setting);
//! - `apply/batch_100`: one 100-mutation batch.
//!
//! `cargo bench -p runfleet-store --bench store`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runfleet_core::model::{JobState, JobStatus};
use runfleet_engine::ports::{Mutation, Store};
use runfleet_store::SqliteStore;
use runfleet_store::conformance::{event, instance, job, launch, timeline_event};
use runfleet_store::sqlite::Tuning;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &tempfile::TempDir, name: &str, tuning: Tuning) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open_with_tuning(dir.path().join(name), tuning)
            .await
            .unwrap(),
    )
}

async fn intake_one(store: &SqliteStore) {
    let id = next_id();
    let ev = event(id, JobStatus::Queued, id);
    black_box(store.intake(&format!("bench-{id}"), &ev).await.unwrap());
}

async fn intake_many(store: &Arc<SqliteStore>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { intake_one(&store).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn bench_intake(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let full = rt.block_on(open(&dir, "full.db", Tuning::default()));
    let no_group = rt.block_on(open(
        &dir,
        "no-group.db",
        Tuning {
            max_group: 1,
            ..Tuning::default()
        },
    ));
    let normal = rt.block_on(open(
        &dir,
        "normal.db",
        Tuning {
            synchronous_full: false,
            ..Tuning::default()
        },
    ));

    let mut g = c.benchmark_group("intake");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));

    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    intake_one(&full).await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("sequential_sync_normal", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    intake_one(&normal).await;
                }
                start.elapsed()
            })
        })
    });

    g.throughput(Throughput::Elements(64));
    for (name, store) in [
        ("concurrent_64", &full),
        ("concurrent_64_no_group", &no_group),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        intake_many(store, 64).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    println!(
        "commits: full {} / no_group {} / normal {}",
        full.commits(),
        no_group.commits(),
        normal.commits()
    );
}

fn batch_100() -> Vec<Mutation> {
    let base = next_id() * 100;
    let mut b = Vec::with_capacity(100);
    for i in 0..40 {
        b.push(Mutation::PutJob(job(base + i, JobState::Queued)));
    }
    for i in 0..30 {
        b.push(Mutation::PutLaunch(launch(
            &format!("l-{}", base + i),
            Some(base + i),
        )));
    }
    for i in 0..20 {
        b.push(Mutation::PutInstance(instance(
            &format!("i-{}", base + i),
            None,
        )));
    }
    for i in 0..9 {
        b.push(Mutation::Timeline(timeline_event(
            i,
            Some(base + i),
            "launch requested",
        )));
    }
    b.push(Mutation::Cursor(base));
    b
}

fn bench_apply(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(open(&dir, "apply.db", Tuning::default()));
    let mut g = c.benchmark_group("apply");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<_> = (0..iters).map(|_| batch_100()).collect();
            rt.block_on(async {
                let start = Instant::now();
                for batch in &batches {
                    store.apply(batch).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_intake, bench_apply);
criterion_main!(benches);
