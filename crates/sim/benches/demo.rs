//! Wall time of a whole simulated run (`runfleet demo --jobs 2000`).

use criterion::{Criterion, criterion_group, criterion_main};
use runfleet_sim::{SimOptions, demo_config, run};

fn demo(c: &mut Criterion) {
    let mut g = c.benchmark_group("demo");
    g.sample_size(10);
    for jobs in [200usize, 2000] {
        g.bench_function(format!("jobs_{jobs}"), |b| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            b.iter(|| {
                let opts = SimOptions {
                    jobs,
                    seed: 1,
                    ..SimOptions::default()
                };
                let s = rt.block_on(run(&opts, demo_config(), &mut |_| {})).unwrap();
                assert!(s.ok());
                s
            })
        });
    }
    g.finish();
}

criterion_group!(benches, demo);
criterion_main!(benches);
