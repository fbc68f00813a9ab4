//! Contract tests: the fake answers every endpoint runfleet uses in shapes
//! that validate against GitHub's own OpenAPI description, and every
//! `workflow_job` example GitHub publishes parses.
//!
//! The schemas and examples are a checked-in subset
//! (`tests/fixtures/openapi-subset.json`, `tests/fixtures/workflow_job-examples.json`)
//! extracted from npm `@octokit/openapi` and `@octokit/webhooks-examples`
//! by `tests/fixtures/extract.mjs` (see its header to refresh them).

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::app_keypair;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use runfleet_core::model::{JobStatus, Scope};
use runfleet_github::fake::{FakeGitHub, FakeOptions};
use runfleet_github::webhook::{Delivery, parse_delivery};
use serde_json::{Value, json};

const APP_ID: u64 = 77;

fn subset() -> &'static Value {
    static SUBSET: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SUBSET
        .get_or_init(|| serde_json::from_str(include_str!("fixtures/openapi-subset.json")).unwrap())
}

/// Validates `body` against the response schema of `endpoint` for `status`.
fn check(seen: &Mutex<BTreeSet<String>>, endpoint: &str, status: u16, body: &Value) {
    let doc = subset();
    let schema = doc["endpoints"][endpoint][status.to_string()].clone();
    assert!(
        !doc["endpoints"][endpoint].is_null(),
        "no schema for {endpoint}"
    );
    seen.lock().unwrap().insert(format!("{endpoint} {status}"));
    if schema.is_null() {
        // No body documented (204).
        assert!(
            body.is_null(),
            "{endpoint} {status}: expected no body, got {body}"
        );
        return;
    }
    check_schema(&format!("{endpoint} {status}"), schema, body);
}

fn check_schema(what: &str, schema: Value, body: &Value) {
    let errors = schema_errors(what, schema, body);
    assert!(
        errors.is_empty(),
        "{what} does not match GitHub's schema:\n{}",
        errors.join("\n")
    );
}

fn schema_errors(what: &str, schema: Value, body: &Value) -> Vec<String> {
    // OpenAPI keeps shared schemas under `components/schemas`; the validator
    // resolves references reliably only into `$defs` (a `$ref` into an
    // unknown keyword silently validated anything), so move them there.
    let mut root = match schema {
        Value::Object(m) => m,
        other => panic!("{what}: schema is not an object: {other}"),
    };
    root.insert("$defs".into(), subset()["components"]["schemas"].clone());
    let text = Value::Object(root)
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    let root: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"));
    validator
        .iter_errors(body)
        .take(10)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

/// The check itself can fail: shapes GitHub would not send are caught.
#[test]
fn schema_check_catches_wrong_shapes() {
    let runner = json!({ "id": 1, "name": "r", "status": "online", "busy": false, "labels": [] });
    let errs = schema_errors(
        "runner",
        json!({ "$ref": "#/components/schemas/runner" }),
        &runner,
    );
    assert!(errs.iter().any(|e| e.contains("os")), "{errs:?}");
    let page = json!({ "total_count": 1, "runners": [runner] });
    assert!(
        !schema_errors(
            "page",
            subset()["endpoints"]["GET /repos/{owner}/{repo}/actions/runners"]["200"].clone(),
            &page
        )
        .is_empty()
    );
    let token = json!({ "token": "ghs_x" });
    let errs = schema_errors(
        "token",
        json!({ "$ref": "#/components/schemas/installation-token" }),
        &token,
    );
    assert!(errs.iter().any(|e| e.contains("expires_at")), "{errs:?}");
    // Formats are checked: a job timestamp GitHub would not write.
    let mut job: Value =
        serde_json::from_str::<Value>(include_str!("fixtures/workflow_job-examples.json")).unwrap()
            ["examples"][0]["workflow_job"]
            .clone();
    job["created_at"] = json!("2021-09-13T02:21:13Z");
    job["workflow_name"] = json!("CI");
    job["head_branch"] = json!("main");
    let baseline = schema_errors("job", json!({ "$ref": "#/components/schemas/job" }), &job);
    job["created_at"] = json!("yesterday");
    let errs = schema_errors("job", json!({ "$ref": "#/components/schemas/job" }), &job);
    assert!(
        errs.len() > baseline.len() && errs.iter().any(|e| e.contains("date-time")),
        "{errs:?}"
    );
    let label = json!({ "name": "x", "type": "weird" });
    assert!(
        !schema_errors(
            "label",
            json!({ "$ref": "#/components/schemas/runner-label" }),
            &label
        )
        .is_empty()
    );
}

struct Caller {
    http: reqwest::Client,
    base: String,
}

impl Caller {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, v)
    }
}

fn jwt(private_pem: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "iat": now - 60, "exp": now + 540, "iss": APP_ID.to_string() });
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn fake_answers_validate_against_githubs_openapi() {
    let (private, public) = tokio::task::spawn_blocking(app_keypair).await.unwrap();
    let fake = FakeGitHub::start_with(FakeOptions {
        pat: Some("ghp_contract".into()),
        app: Some((APP_ID, public)),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    fake.add_org("acme");
    fake.add_repo("acme/app");
    fake.add_user("alice");
    fake.add_repo("alice/dotfiles");
    fake.add_installation("acme");
    fake.add_installation("alice");
    let c = Caller {
        http: reqwest::Client::new(),
        base: fake.url().to_string(),
    };
    let seen = Mutex::new(BTreeSet::new());
    let pat = "ghp_contract";
    let labels = json!({ "name": "r1", "runner_group_id": 1, "labels": ["self-hosted", "linux"], "work_folder": "_work" });

    // Runners, repo level.
    let (s, b) = c
        .call(
            Method::POST,
            "/repos/acme/app/actions/runners/generate-jitconfig",
            pat,
            Some(labels.clone()),
        )
        .await;
    assert_eq!(s, 201);
    check(
        &seen,
        "POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig",
        s,
        &b,
    );
    let runner_id = b["runner"]["id"].as_u64().unwrap();
    let (s, b) = c
        .call(
            Method::POST,
            "/repos/acme/app/actions/runners/generate-jitconfig",
            pat,
            Some(labels.clone()),
        )
        .await;
    assert_eq!(s, 409);
    check(
        &seen,
        "POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig",
        s,
        &b,
    );
    let (s, b) = c
        .call(
            Method::POST,
            "/repos/acme/app/actions/runners/generate-jitconfig",
            pat,
            Some(json!({ "name": "r2", "runner_group_id": 1, "labels": [] })),
        )
        .await;
    assert_eq!(s, 422);
    check(
        &seen,
        "POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig",
        s,
        &b,
    );
    let (s, b) = c
        .call(
            Method::GET,
            "/repos/acme/app/actions/runners?per_page=100",
            pat,
            None,
        )
        .await;
    assert_eq!(s, 200);
    check(&seen, "GET /repos/{owner}/{repo}/actions/runners", s, &b);
    let (s, b) = c
        .call(
            Method::GET,
            &format!("/repos/acme/app/actions/runners/{runner_id}"),
            pat,
            None,
        )
        .await;
    check(
        &seen,
        "GET /repos/{owner}/{repo}/actions/runners/{runner_id}",
        s,
        &b,
    );

    // Jobs and runs: one queued, one in progress.
    let queued = fake
        .queue_job("acme/app", &["self-hosted", "linux"], false)
        .await;
    let running = fake
        .queue_job("acme/app", &["self-hosted", "linux"], false)
        .await;
    fake.runner_online("r1").await.unwrap();
    fake.start_job(running.job_id, "r1").await.unwrap();
    // Busy runner cannot be deleted: 422.
    let (s, b) = c
        .call(
            Method::DELETE,
            &format!("/repos/acme/app/actions/runners/{runner_id}"),
            pat,
            None,
        )
        .await;
    assert_eq!(s, 422);
    check(
        &seen,
        "DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}",
        s,
        &b,
    );
    for status in ["queued", "in_progress"] {
        let (s, b) = c
            .call(
                Method::GET,
                &format!("/repos/acme/app/actions/runs?status={status}&per_page=100"),
                pat,
                None,
            )
            .await;
        assert_eq!(b["workflow_runs"].as_array().unwrap().len(), 1, "{status}");
        check(&seen, "GET /repos/{owner}/{repo}/actions/runs", s, &b);
    }
    for run in [queued.run_id, running.run_id] {
        let (s, b) = c
            .call(
                Method::GET,
                &format!("/repos/acme/app/actions/runs/{run}/jobs"),
                pat,
                None,
            )
            .await;
        check(
            &seen,
            "GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            s,
            &b,
        );
    }
    let (s, b) = c
        .call(
            Method::GET,
            &format!("/repos/acme/app/actions/jobs/{}", running.job_id),
            pat,
            None,
        )
        .await;
    check(
        &seen,
        "GET /repos/{owner}/{repo}/actions/jobs/{job_id}",
        s,
        &b,
    );
    fake.complete_job(running.job_id, "success").await.unwrap();
    let (s, b) = c
        .call(
            Method::GET,
            &format!("/repos/acme/app/actions/jobs/{}", running.job_id),
            pat,
            None,
        )
        .await;
    assert_eq!(b["status"], "completed");
    check(
        &seen,
        "GET /repos/{owner}/{repo}/actions/jobs/{job_id}",
        s,
        &b,
    );
    let (s, b) = c
        .call(
            Method::POST,
            &format!("/repos/acme/app/actions/jobs/{}/rerun", running.job_id),
            pat,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201);
    check(
        &seen,
        "POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun",
        s,
        &b,
    );
    // The ephemeral runner left with its job; a fresh one can be deleted.
    let (_, b) = c
        .call(
            Method::POST,
            "/repos/acme/app/actions/runners/generate-jitconfig",
            pat,
            Some(json!({"name": "r3", "runner_group_id": 1, "labels": ["x"]})),
        )
        .await;
    let r3 = b["runner"]["id"].as_u64().unwrap();
    let (s, b) = c
        .call(
            Method::DELETE,
            &format!("/repos/acme/app/actions/runners/{r3}"),
            pat,
            None,
        )
        .await;
    assert_eq!(s, 204);
    check(
        &seen,
        "DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}",
        s,
        &b,
    );

    // Org-level runners.
    let (s, b) = c
        .call(
            Method::POST,
            "/orgs/acme/actions/runners/generate-jitconfig",
            pat,
            Some(json!({"name": "o1", "runner_group_id": 3, "labels": ["big"]})),
        )
        .await;
    assert_eq!(s, 201);
    check(
        &seen,
        "POST /orgs/{org}/actions/runners/generate-jitconfig",
        s,
        &b,
    );
    let org_runner = b["runner"]["id"].as_u64().unwrap();
    let (s, b) = c
        .call(Method::GET, "/orgs/acme/actions/runners", pat, None)
        .await;
    check(&seen, "GET /orgs/{org}/actions/runners", s, &b);
    let (s, b) = c
        .call(
            Method::GET,
            &format!("/orgs/acme/actions/runners/{org_runner}"),
            pat,
            None,
        )
        .await;
    check(&seen, "GET /orgs/{org}/actions/runners/{runner_id}", s, &b);
    let (s, b) = c
        .call(
            Method::DELETE,
            &format!("/orgs/acme/actions/runners/{org_runner}"),
            pat,
            None,
        )
        .await;
    assert_eq!(s, 204);
    check(
        &seen,
        "DELETE /orgs/{org}/actions/runners/{runner_id}",
        s,
        &b,
    );

    // Repositories.
    let (s, b) = c.call(Method::GET, "/repos/acme/app", pat, None).await;
    check(&seen, "GET /repos/{owner}/{repo}", s, &b);
    let (s, b) = c.call(Method::GET, "/repos/acme/missing", pat, None).await;
    assert_eq!(s, 404);
    check(&seen, "GET /repos/{owner}/{repo}", s, &b);
    let (s, b) = c
        .call(Method::GET, "/orgs/acme/repos?per_page=100", pat, None)
        .await;
    check(&seen, "GET /orgs/{org}/repos", s, &b);
    let (s, b) = c
        .call(Method::GET, "/users/alice/repos?per_page=100", pat, None)
        .await;
    check(&seen, "GET /users/{username}/repos", s, &b);

    // App: installations and tokens.
    let jwt = jwt(&private);
    let (s, b) = c
        .call(Method::GET, "/repos/acme/app/installation", &jwt, None)
        .await;
    assert_eq!(s, 200, "{b}");
    check(&seen, "GET /repos/{owner}/{repo}/installation", s, &b);
    let installation = b["id"].as_u64().unwrap();
    let (s, b) = c
        .call(Method::GET, "/orgs/acme/installation", &jwt, None)
        .await;
    check(&seen, "GET /orgs/{org}/installation", s, &b);
    let (s, b) = c
        .call(Method::GET, "/users/alice/installation", &jwt, None)
        .await;
    assert_eq!(s, 200);
    check(&seen, "GET /users/{username}/installation", s, &b);
    let (s, b) = c
        .call(
            Method::POST,
            &format!("/app/installations/{installation}/access_tokens"),
            &jwt,
            None,
        )
        .await;
    assert_eq!(s, 201);
    check(
        &seen,
        "POST /app/installations/{installation_id}/access_tokens",
        s,
        &b,
    );
    let token = b["token"].as_str().unwrap().to_string();
    let (s, b) = c
        .call(
            Method::GET,
            "/installation/repositories?per_page=100",
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200);
    check(&seen, "GET /installation/repositories", s, &b);

    // Every endpoint/status in the extracted subset was exercised.
    let doc = subset();
    let mut expected = BTreeSet::new();
    for (endpoint, statuses) in doc["endpoints"].as_object().unwrap() {
        for status in statuses.as_object().unwrap().keys() {
            expected.insert(format!("{endpoint} {status}"));
        }
    }
    let seen = seen.into_inner().unwrap();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "endpoints not exercised: {missing:?}");
}

#[tokio::test]
async fn fake_webhook_payloads_match_githubs_job_and_repository_shapes() {
    let fake = FakeGitHub::start().await;
    // No receiver: the delivery is recorded with its body.
    fake.set_webhook("http://127.0.0.1:9/unreachable", "s");
    let job = fake.queue_job("acme/app", &["self-hosted"], true).await;
    fake.register_runner(Scope::Repo("acme/app".into()), "r", &["self-hosted"], true);
    fake.start_job(job.job_id, "r").await.unwrap();
    fake.complete_job(job.job_id, "cancelled").await.unwrap();
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 3);
    for d in deliveries {
        let payload: Value = serde_json::from_slice(&d.body).unwrap();
        check_schema(
            "webhook workflow_job",
            json!({ "$ref": "#/components/schemas/job" }),
            &payload["workflow_job"],
        );
        check_schema(
            "webhook repository",
            json!({ "$ref": "#/components/schemas/repository" }),
            &payload["repository"],
        );
        check_schema(
            "webhook sender",
            json!({ "$ref": "#/components/schemas/simple-user" }),
            &payload["sender"],
        );
        assert_eq!(payload["action"], d.action);
        let Delivery::WorkflowJob(e) = parse_delivery("workflow_job", &d.body).unwrap() else {
            panic!()
        };
        assert_eq!(e.job_id, job.job_id);
    }
}

#[test]
fn every_published_workflow_job_example_parses() {
    let raw: Value =
        serde_json::from_str(include_str!("fixtures/workflow_job-examples.json")).unwrap();
    let examples = raw["examples"].as_array().unwrap();
    assert!(
        examples.len() >= 4,
        "the subset holds the published examples"
    );
    let mut actions = BTreeSet::new();
    for ex in examples {
        let body = serde_json::to_vec(ex).unwrap();
        let action = ex["action"].as_str().unwrap();
        actions.insert(action.to_string());
        // An example lacking a field runfleet needs must be rejected naming
        // it; every current example is complete.
        let wj = &ex["workflow_job"];
        let needs = [
            ("workflow_job.id", &wj["id"]),
            ("workflow_job.run_id", &wj["run_id"]),
            ("workflow_job.labels", &wj["labels"]),
            ("workflow_job.status", &wj["status"]),
            ("repository.full_name", &ex["repository"]["full_name"]),
        ];
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(_, v)| v.is_null())
            .map(|(n, _)| *n)
            .collect();
        match parse_delivery("workflow_job", &body) {
            Ok(Delivery::WorkflowJob(e)) => {
                assert!(
                    missing.is_empty(),
                    "{action}: parsed although {missing:?} missing"
                );
                assert_eq!(e.job_id, wj["id"].as_u64().unwrap());
                assert_eq!(e.run_id, wj["run_id"].as_u64().unwrap());
                assert_eq!(e.repo, ex["repository"]["full_name"].as_str().unwrap());
                let labels: Vec<String> = serde_json::from_value(wj["labels"].clone()).unwrap();
                assert_eq!(e.labels, labels);
                let expected = match action {
                    "queued" | "waiting" => JobStatus::Queued,
                    "in_progress" => JobStatus::InProgress,
                    "completed" => JobStatus::Completed,
                    other => panic!("unknown action {other}"),
                };
                // Examples are snapshots: `status` can trail the action
                // (an in_progress delivery whose job object still says
                // queued). runfleet trusts the job object's status.
                let status_of_object =
                    runfleet_github::webhook::job_status(wj["status"].as_str().unwrap()).unwrap();
                assert_eq!(e.status, status_of_object, "{action}");
                if expected != status_of_object {
                    eprintln!("note: {action} example carries status {}", wj["status"]);
                }
                assert!(e.at > 1_500_000_000_000, "{action}: timestamp read");
            }
            Ok(other) => panic!("{action}: {other:?}"),
            Err(err) => {
                assert!(
                    !missing.is_empty(),
                    "{action}: rejected although complete: {err}"
                );
                assert!(
                    missing.iter().any(|m| err.to_string().contains(m)),
                    "{action}: {err}"
                );
            }
        }
    }
    for a in ["queued", "waiting", "in_progress", "completed"] {
        assert!(actions.contains(a), "no {a} example");
    }
}
