//! Webhook intake cost: `X-Hub-Signature-256` verification plus typed
//! parsing of a real `workflow_job` payload (GitHub's published example),
//! one delivery per iteration on one core.
//!
//! `cargo bench -p runfleet-github --bench webhook`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runfleet_github::webhook::{Delivery, Verifier, parse_delivery_at, sign};
use std::hint::black_box;

fn payload() -> Vec<u8> {
    let raw = include_str!("../tests/fixtures/workflow_job-examples.json");
    let v: serde_json::Value = serde_json::from_str(raw).expect("fixture");
    let ex = v["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .find(|e| e["action"] == "queued")
        .expect("a queued example")
        .clone();
    serde_json::to_vec(&ex).expect("serialize")
}

fn bench(c: &mut Criterion) {
    let body = payload();
    let secret = b"bench-webhook-secret";
    let signature = sign(secret, &body);
    let verifier = Verifier::from_bytes(secret);

    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        format!("verify+parse workflow_job ({} bytes)", body.len()),
        |b| {
            b.iter(|| {
                verifier
                    .verify(Some(black_box(&signature)), black_box(&body))
                    .expect("valid");
                match parse_delivery_at("workflow_job", black_box(&body), 0).expect("parses") {
                    Delivery::WorkflowJob(e) => black_box(e),
                    other => panic!("{other:?}"),
                }
            })
        },
    );
    g.bench_function("verify only", |b| {
        b.iter(|| {
            verifier
                .verify(Some(black_box(&signature)), black_box(&body))
                .expect("valid")
        })
    });
    g.bench_function("parse only", |b| {
        b.iter(|| parse_delivery_at("workflow_job", black_box(&body), 0).expect("parses"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
