//! Webhook verification and parsing: GitHub's test vector, bad input of
//! every kind, arbitrary bytes, and signed deliveries from the fake.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use runfleet_core::config::Secret;
use runfleet_core::model::JobStatus;
use runfleet_github::fake::FakeGitHub;
use runfleet_github::webhook::{
    Delivery, Verifier, WebhookError, check_content_type, parse_delivery, parse_delivery_at,
    receive, sign, verify_signature,
};
use serde_json::Value;

const VECTOR: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn examples() -> Vec<Value> {
    let raw = include_str!("fixtures/workflow_job-examples.json");
    let v: Value = serde_json::from_str(raw).unwrap();
    v["examples"].as_array().unwrap().clone()
}

fn example(action: &str) -> Vec<u8> {
    let ex = examples()
        .into_iter()
        .find(|e| e["action"] == action)
        .unwrap();
    serde_json::to_vec(&ex).unwrap()
}

#[test]
fn githubs_documented_test_vector() {
    assert_eq!(
        sign(b"It's a Secret to Everybody", b"Hello, World!"),
        VECTOR
    );
    verify_signature(
        b"It's a Secret to Everybody",
        Some(VECTOR),
        b"Hello, World!",
    )
    .unwrap();
    let v = Verifier::new(&Secret::new("It's a Secret to Everybody"));
    v.verify(Some(VECTOR), b"Hello, World!").unwrap();
}

#[test]
fn wrong_or_missing_signatures() {
    let v = Verifier::new(&Secret::new("It's a Secret to Everybody"));
    let body = b"Hello, World!";
    assert_eq!(v.verify(None, body), Err(WebhookError::MissingSignature));
    assert_eq!(
        v.verify(Some(""), body),
        Err(WebhookError::MalformedSignature(
            "expected a sha256= prefix"
        ))
    );
    let sha1 = "sha1=0123456789abcdef0123456789abcdef01234567";
    assert!(matches!(
        v.verify(Some(sha1), body),
        Err(WebhookError::MalformedSignature(_))
    ));
    assert!(matches!(
        v.verify(Some("sha256=abc"), body),
        Err(WebhookError::MalformedSignature(_))
    ));
    let not_hex = format!("sha256={}", "zz".repeat(32));
    assert!(matches!(
        v.verify(Some(&not_hex), body),
        Err(WebhookError::MalformedSignature(_))
    ));
    // One digit off.
    let off = VECTOR.replace("757107", "757108");
    assert_eq!(v.verify(Some(&off), body), Err(WebhookError::BadSignature));
    // Another secret.
    let other = Verifier::from_bytes(b"another secret");
    assert_eq!(
        other.verify(Some(VECTOR), body),
        Err(WebhookError::BadSignature)
    );
    for e in [WebhookError::MissingSignature, WebhookError::BadSignature] {
        assert!(e.is_unauthenticated());
        assert_eq!(e.http_status(), 401);
        assert!(!e.to_string().contains("Secret to Everybody"));
    }
    // Uppercase hex is accepted (hex is case-insensitive).
    v.verify(
        Some(&VECTOR.to_uppercase().replace("SHA256=", "sha256=")),
        body,
    )
    .unwrap();
}

#[test]
fn truncated_body_fails_the_signature_or_the_parse() {
    let secret = b"s3cret";
    let body = example("queued");
    let cut = &body[..body.len() / 2];
    // Signed over the whole body, delivered cut: the signature does not match.
    let sig = sign(secret, &body);
    assert_eq!(
        verify_signature(secret, Some(&sig), cut),
        Err(WebhookError::BadSignature)
    );
    // Signed as cut (a sender bug): verifies, then fails to parse with a reason.
    let sig = sign(secret, cut);
    verify_signature(secret, Some(&sig), cut).unwrap();
    let e = parse_delivery("workflow_job", cut).unwrap_err();
    assert!(matches!(e, WebhookError::Json(_)), "{e:?}");
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("EOF"), "{e}");
    assert_eq!(
        parse_delivery("workflow_job", b"")
            .unwrap_err()
            .http_status(),
        400
    );
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn receive_checks_signature_then_content_type_then_payload() {
    let v = Verifier::from_bytes(b"k");
    let body = example("queued");
    let sig = sign(b"k", &body);
    let ok = headers(&[
        ("x-hub-signature-256", &sig),
        ("content-type", "application/json"),
        ("x-github-event", "workflow_job"),
        ("x-github-delivery", "d-1"),
    ]);
    let (id, d) = receive(&v, &ok, &body).unwrap();
    assert_eq!(id, "d-1");
    assert!(matches!(d, Delivery::WorkflowJob(ref e) if e.status == JobStatus::Queued));

    // Form-encoded hook: refused with a reason, 415.
    let mut form = ok.clone();
    form.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let e = receive(&v, &form, &body).unwrap_err();
    assert_eq!(e.http_status(), 415);
    assert!(e.to_string().contains("application/json"));
    // Unsigned garbage is 401 before its content type is looked at.
    let mut unsigned = form.clone();
    unsigned.remove("x-hub-signature-256");
    assert_eq!(
        receive(&v, &unsigned, &body).unwrap_err(),
        WebhookError::MissingSignature
    );
    // Missing delivery id / event.
    let mut no_id = ok.clone();
    no_id.remove("x-github-delivery");
    assert_eq!(
        receive(&v, &no_id, &body).unwrap_err(),
        WebhookError::MissingHeader("X-GitHub-Delivery")
    );
    let mut no_event = ok.clone();
    no_event.remove("x-github-event");
    assert_eq!(
        receive(&v, &no_event, &body).unwrap_err(),
        WebhookError::MissingHeader("X-GitHub-Event")
    );
    assert!(check_content_type(None).is_err());
}

#[test]
fn ping_and_other_events() {
    assert_eq!(
        parse_delivery("ping", br#"{"zen":"Keep it logically awesome."}"#),
        Ok(Delivery::Ping)
    );
    assert_eq!(
        parse_delivery("push", b"{}"),
        Ok(Delivery::Other("push".into()))
    );
    assert_eq!(
        parse_delivery("", b"{}"),
        Err(WebhookError::MissingHeader("X-GitHub-Event"))
    );
}

fn without(path: &[&str]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    let mut cur = &mut v;
    for key in &path[..path.len() - 1] {
        cur = cur.get_mut(*key).unwrap();
    }
    cur.as_object_mut().unwrap().remove(path[path.len() - 1]);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn payload_missing_what_runfleet_needs_is_rejected_naming_it() {
    let cases: &[(&[&str], &str)] = &[
        (&["workflow_job", "labels"], "workflow_job.labels"),
        (&["workflow_job", "id"], "workflow_job.id"),
        (&["workflow_job", "run_id"], "workflow_job.run_id"),
        (&["workflow_job", "status"], "workflow_job.status"),
        (&["repository", "full_name"], "repository.full_name"),
        (&["repository"], "repository"),
        (&["workflow_job"], "workflow_job"),
    ];
    for (path, field) in cases {
        let e = parse_delivery("workflow_job", &without(path)).unwrap_err();
        assert_eq!(e, WebhookError::MissingField(field), "{path:?}");
        assert!(e.to_string().contains(field));
        assert_eq!(e.http_status(), 400);
    }
    // Null counts as missing.
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    v["workflow_job"]["labels"] = Value::Null;
    let e = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e, WebhookError::MissingField("workflow_job.labels"));
    // Wrong types are rejected with serde's reason (position, not content).
    v["workflow_job"]["labels"] = Value::String("self-hosted".into());
    let e = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, WebhookError::Json(_)), "{e:?}");
    // An unknown status is named.
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    v["workflow_job"]["status"] = Value::String("teleported".into());
    let e = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            WebhookError::InvalidField {
                field: "workflow_job.status",
                ..
            }
        ),
        "{e:?}"
    );
    // A repository name that could not be a path.
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    v["repository"]["full_name"] = Value::String("../../etc".into());
    let e = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            WebhookError::InvalidField {
                field: "repository.full_name",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn actions_map_to_job_events() {
    let q = parse_delivery_at("workflow_job", &example("queued"), 7).unwrap();
    let Delivery::WorkflowJob(q) = q else {
        panic!("{q:?}")
    };
    assert_eq!(q.status, JobStatus::Queued);
    assert!(q.runner_name.is_none(), "no runner while queued");
    assert!(
        q.at > 1_600_000_000_000,
        "timed by created_at, not the fallback"
    );

    let Delivery::WorkflowJob(w) = parse_delivery("workflow_job", &example("waiting")).unwrap()
    else {
        panic!()
    };
    assert_eq!(w.status, JobStatus::Queued, "waiting maps to queued");

    let Delivery::WorkflowJob(p) = parse_delivery("workflow_job", &example("in_progress")).unwrap()
    else {
        panic!()
    };
    assert_eq!(p.status, JobStatus::InProgress);
    assert!(p.runner_name.is_some());

    let Delivery::WorkflowJob(c) = parse_delivery("workflow_job", &example("completed")).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.status, JobStatus::Completed);
    assert!(c.conclusion.is_some());

    // Without any timestamp the observation time is used.
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    for k in ["created_at", "started_at", "completed_at"] {
        v["workflow_job"].as_object_mut().unwrap().remove(k);
    }
    let Delivery::WorkflowJob(e) =
        parse_delivery_at("workflow_job", &serde_json::to_vec(&v).unwrap(), 42).unwrap()
    else {
        panic!()
    };
    assert_eq!(e.at, 42);
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v: Value = serde_json::from_slice(&example("queued")).unwrap();
    v["brand_new_top_level"] = serde_json::json!({"x": [1, 2, 3]});
    v["workflow_job"]["brand_new_field"] = Value::Bool(true);
    let d = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(d, Delivery::WorkflowJob(_)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let r = parse_delivery("workflow_job", &body);
        if let Err(e) = r {
            prop_assert_eq!(e.http_status(), 400);
        }
        let v = Verifier::from_bytes(b"k");
        let sig = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        prop_assert!(v.verify(Some(&sig), &body).is_err());
    }

    #[test]
    fn mutated_real_payloads_never_panic(
        which in 0usize..8,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let ex = examples();
        let mut body = serde_json::to_vec(&ex[which % ex.len()]).unwrap();
        for (pos, byte) in flips {
            let i = pos % body.len();
            body[i] = byte;
        }
        let keep = if cut % 3 == 0 { cut % (body.len() + 1) } else { body.len() };
        body.truncate(keep);
        match parse_delivery("workflow_job", &body) {
            Ok(Delivery::WorkflowJob(e)) => prop_assert!(e.repo.contains('/')),
            Ok(other) => prop_assert!(false, "unexpected {:?}", other),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn json_values_in_place_of_fields_never_panic(
        field in prop::sample::select(vec!["id", "run_id", "labels", "status", "runner_name", "conclusion", "created_at", "started_at", "completed_at"]),
        value in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            Just(serde_json::json!([1, "a", null])),
            Just(serde_json::json!({"nested": true})),
        ],
    ) {
        let mut v: Value = serde_json::from_slice(&example("in_progress")).unwrap();
        v["workflow_job"][field] = value;
        let _ = parse_delivery("workflow_job", &serde_json::to_vec(&v).unwrap());
    }
}

// ------------------------------------------------------------ from the fake

type Received = Arc<Mutex<Vec<(StatusCode, Option<Delivery>, String)>>>;

/// A receiver on 127.0.0.1 that answers like runfleet's `/webhook` route.
async fn receiver(secret: &str) -> (String, Received) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let verifier = Verifier::from_bytes(secret.as_bytes());
    let g = got.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |h: HeaderMap, body: Bytes| {
            let g = g.clone();
            let verifier = verifier.clone();
            async move {
                match receive(&verifier, &h, &body) {
                    Ok((id, d)) => {
                        g.lock().unwrap().push((StatusCode::ACCEPTED, Some(d), id));
                        StatusCode::ACCEPTED
                    }
                    Err(e) => {
                        let code = StatusCode::from_u16(e.http_status()).unwrap();
                        g.lock().unwrap().push((code, None, e.to_string()));
                        code
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn fake_sends_signed_deliveries_that_parse() {
    let fake = FakeGitHub::start().await;
    let (url, got) = receiver("hook-secret").await;
    fake.set_webhook(&url, "hook-secret");
    let job = fake
        .queue_job("acme/app", &["self-hosted", "linux"], true)
        .await;
    fake.register_runner(
        runfleet_core::model::Scope::Repo("acme/app".into()),
        "r1",
        &["self-hosted", "linux"],
        true,
    );
    fake.start_job(job.job_id, "r1").await.unwrap();
    fake.complete_job(job.job_id, "success").await.unwrap();
    // Queued without a webhook: nothing sent.
    fake.queue_job("acme/app", &["self-hosted"], false).await;

    let got = got.lock().unwrap().clone();
    let events: Vec<_> = got
        .iter()
        .map(|(code, d, _)| match d {
            Some(Delivery::WorkflowJob(e)) => (*code, e.job_id, e.status, e.runner_name.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (StatusCode::ACCEPTED, job.job_id, JobStatus::Queued, None),
            (
                StatusCode::ACCEPTED,
                job.job_id,
                JobStatus::InProgress,
                Some("r1".to_string())
            ),
            (
                StatusCode::ACCEPTED,
                job.job_id,
                JobStatus::Completed,
                Some("r1".to_string())
            ),
        ]
    );
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries.iter().all(|d| d.status == Some(202)));
    let ids: std::collections::BTreeSet<_> = deliveries.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids.len(), 3, "delivery ids are unique");
}

#[tokio::test]
async fn fake_drops_and_redelivers_webhooks() {
    let fake = FakeGitHub::start().await;
    let (url, got) = receiver("s").await;
    fake.set_webhook(&url, "s");
    fake.drop_webhooks(1);
    let job = fake.queue_job("acme/app", &["self-hosted"], true).await;
    assert!(got.lock().unwrap().is_empty(), "dropped");
    let dropped = fake.deliveries()[0].clone();
    assert!(dropped.dropped && dropped.status.is_none());
    // The job is still there to be found by polling.
    assert_eq!(fake.job(job.job_id).unwrap().status, "queued");
    // Redelivery uses the same delivery id.
    let again = fake.redeliver(&dropped.id).await.unwrap();
    assert_eq!(again.status, Some(202));
    assert_eq!(got.lock().unwrap()[0].2, dropped.id);
}

#[tokio::test]
async fn fake_signed_with_another_secret_is_refused() {
    let fake = FakeGitHub::start().await;
    let (url, got) = receiver("right").await;
    fake.set_webhook(&url, "wrong");
    fake.queue_job("acme/app", &["self-hosted"], true).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, StatusCode::UNAUTHORIZED);
    assert!(got[0].2.contains("does not match"));
    assert_eq!(fake.deliveries()[0].status, Some(401));
}
