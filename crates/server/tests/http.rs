//! The HTTP routes against the real engine over the simulator.

mod common;

use common::{Service, job_payload, service};

const LINUX: &[&str] = &["self-hosted", "linux", "x64"];

/// The engine has processed every stored delivery: a step ran after intake.
async fn settled(s: &Service) {
    let before = s.running.state.view.read().unwrap().at;
    s.running.state.waker.wake();
    s.until("a step after intake", |s| {
        s.running.state.view.read().unwrap().at > before
    })
    .await;
    s.running.state.waker.wake();
    let mid = s.running.state.view.read().unwrap().at;
    s.until("a second step", |s| {
        s.running.state.view.read().unwrap().at > mid
    })
    .await;
}

#[tokio::test]
async fn a_signed_queued_webhook_launches_one_tagged_instance_with_its_jit_config() {
    let s = service().await;
    let r = s
        .deliver(
            "workflow_job",
            "d-1",
            &job_payload("queued", 101, "acme/app", LINUX),
            None,
        )
        .await;
    assert_eq!(r.status(), 202);
    s.until("one instance", |s| s.instances().len() == 1).await;
    let inst = &s.instances()[0];
    assert_eq!(inst.tag("runfleet:pool"), Some("linux-x64"));
    assert_eq!(inst.tag("Name"), Some("runfleet-linux-x64"));
    let path = format!("/runfleet/demo/instances/{}/jitconfig", inst.id);
    s.until("the JIT config in SSM", |s| {
        s.world.lock().unwrap().params.contains_key(&path)
    })
    .await;
    settled(&s).await;
    assert_eq!(s.instances().len(), 1, "exactly one instance");
    s.running.stop().await;
}

#[tokio::test]
async fn bad_signature_malformed_foreign_event_and_unmatched_labels_launch_nothing() {
    let s = service().await;
    let body = job_payload("queued", 201, "acme/app", LINUX);
    let r = s
        .deliver(
            "workflow_job",
            "d-1",
            &body,
            Some("sha256=".to_string() + &"0".repeat(64)),
        )
        .await;
    assert_eq!(r.status(), 401);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("does not match"),
        "{err}"
    );
    let r = s
        .deliver("workflow_job", "d-2", &body, Some("garbage".into()))
        .await;
    assert_eq!(r.status(), 401);
    let r = s.deliver("workflow_job", "d-3", "{not json", None).await;
    assert_eq!(r.status(), 400);
    let no_labels = body.replace("\"labels\"", "\"labelz\"");
    let r = s.deliver("workflow_job", "d-4", &no_labels, None).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("labels"));
    let r = s.deliver("push", "d-5", "{}", None).await;
    assert_eq!(r.status(), 204);
    let r = s.deliver("ping", "d-6", "{\"zen\":\"hi\"}", None).await;
    assert_eq!(r.status(), 200);
    // Stored but never launched for: no pool has a gpu label, other repo not allowed.
    let r = s
        .deliver(
            "workflow_job",
            "d-7",
            &job_payload("queued", 202, "acme/app", &["self-hosted", "gpu"]),
            None,
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = s
        .deliver(
            "workflow_job",
            "d-8",
            &job_payload("queued", 203, "other/app", LINUX),
            None,
        )
        .await;
    assert_eq!(r.status(), 202);
    settled(&s).await;
    assert_eq!(
        s.store.deliveries(),
        2,
        "only the two well-formed job deliveries are stored"
    );
    assert!(s.instances().is_empty(), "nothing launched");
    let page = s.get("/").await.text().await.unwrap();
    assert!(
        page.contains("no pool has all of the labels"),
        "the reason is on the status page"
    );
    assert!(page.contains("not in github.repos"));
    s.running.stop().await;
}

#[tokio::test]
async fn duplicate_delivery_and_duplicate_job_launch_once() {
    let s = service().await;
    let body = job_payload("queued", 301, "acme/lib", LINUX);
    assert_eq!(
        s.deliver("workflow_job", "d-1", &body, None).await.status(),
        202
    );
    let again = s.deliver("workflow_job", "d-1", &body, None).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["duplicate"],
        true
    );
    // The same job under a new delivery id (GitHub sends waiting, then queued).
    assert_eq!(
        s.deliver("workflow_job", "d-2", &body, None).await.status(),
        202
    );
    s.until("one instance", |s| s.instances().len() == 1).await;
    settled(&s).await;
    assert_eq!(s.instances().len(), 1);
    s.running.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413_and_wrong_content_type_is_415() {
    let s = service().await;
    let big = "x".repeat(runfleet_server::BODY_LIMIT + 1);
    let r = s.deliver("workflow_job", "d-1", &big, None).await;
    assert_eq!(r.status(), 413);
    let body = job_payload("queued", 401, "acme/app", LINUX);
    let r = s
        .http
        .post(format!("{}/webhook", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "d-2")
        .header(
            "x-hub-signature-256",
            runfleet_github::webhook::sign(common::SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(s.store.deliveries(), 0);
    s.running.stop().await;
}

#[tokio::test]
async fn metrics_export_every_family_from_start() {
    let s = service().await;
    settled(&s).await;
    let text = s.get("/metrics").await.text().await.unwrap();
    for family in [
        "runfleet_jobs_total{",
        "runfleet_instances{",
        "runfleet_queue_to_start_seconds_bucket{",
        "runfleet_launch_errors_total{",
        "runfleet_github_requests_total ",
        "runfleet_aws_requests_total{",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    assert!(
        text.contains(r#"runfleet_jobs_total{pool="linux-x64",outcome="started"} 0"#),
        "{text}"
    );
    let body = job_payload("queued", 501, "acme/app", LINUX);
    s.deliver("workflow_job", "d-1", &body, None).await;
    s.until("one instance", |s| s.instances().len() == 1).await;
    settled(&s).await;
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"runfleet_webhooks_total{result="accepted"} 1"#),
        "{text}"
    );
    assert!(!text.contains("simulated-secret") && !text.contains("simulated-token"));
    s.running.stop().await;
}

#[tokio::test]
async fn ready_once_github_and_aws_answered_and_healthz_always() {
    let s = service().await;
    assert_eq!(s.get("/healthz").await.status(), 200);
    s.until("ready", |s| {
        s.running.state.view.read().unwrap().health.ready()
    })
    .await;
    let r = s.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["github"], "ok");
    assert_eq!(body["aws"], "ok");
    assert_eq!(s.get("/nope").await.status(), 404);
    s.running.stop().await;
}
