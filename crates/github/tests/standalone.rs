//! The standalone `runfleet-fake-github` binary, driven over its HTTP
//! control surface and used by the real client, as a black-box run would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use runfleet_core::model::{ErrorKind, JobStatus, Scope};
use runfleet_engine::ports::{GitHub, JitRequest};
use runfleet_github::client::GitHubClient;
use serde_json::{Value, json};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn standalone_fake_is_controlled_over_http() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_runfleet-fake-github"))
            .args(["--listen", "127.0.0.1:0", "--pat", "ghp_standalone"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).unwrap();
    let url = started["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let http = reqwest::Client::new();
    let control = |path: &str, body: Value| {
        let req = http.post(format!("{url}/_fake/{path}")).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };

    let (s, _) = control("repos", json!({ "full_name": "acme/app" })).await;
    assert_eq!(s, 200);
    let (_, job) = control(
        "jobs",
        json!({ "repo": "acme/app", "labels": ["self-hosted", "linux"], "webhook": false }),
    )
    .await;
    let job_id = job["job_id"].as_u64().unwrap();
    control(
        "faults",
        json!({ "endpoint": "GET /repos/{owner}/{repo}/actions/runs", "fault": { "kind": "status", "status": 502 }, "times": 1 }),
    )
    .await;

    let mut cfg = runfleet_core::config::GithubConfig {
        api_url: url.clone(),
        webhook_secret: None,
        token: Some(runfleet_core::config::Secret::new("ghp_standalone")),
        app_id: None,
        app_private_key: None,
        installation_id: None,
        repos: None,
        poll: false,
    };
    let client = GitHubClient::new(&cfg).unwrap();
    let queued = client.list_queued_jobs("acme/app").await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].job_id, job_id);

    let jit = client
        .generate_jitconfig(&JitRequest {
            scope: Scope::Repo("acme/app".into()),
            name: "runfleet-linux-i-0123".into(),
            labels: vec!["self-hosted".into(), "linux".into()],
            runner_group_id: 1,
        })
        .await
        .unwrap();
    let (s, _) = control(
        "jit/online",
        json!({ "encoded_jit_config": jit.encoded.expose() }),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = control(
        &format!("jobs/{job_id}/start"),
        json!({ "runner_name": "runfleet-linux-i-0123" }),
    )
    .await;
    assert_eq!(s, 200);
    let runners = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert!(runners[0].online && runners[0].busy);
    let (s, _) = control(
        &format!("jobs/{job_id}/complete"),
        json!({ "conclusion": "success" }),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        client.get_job("acme/app", job_id).await.unwrap().status,
        JobStatus::Completed
    );
    // The ephemeral runner left with its job.
    assert!(
        client
            .list_runners(&Scope::Repo("acme/app".into()))
            .await
            .unwrap()
            .is_empty()
    );
    // Unknown job: 404 from the control surface.
    let (s, _) = control("jobs/1/start", json!({ "runner_name": "x" })).await;
    assert_eq!(s, 404);
    // The reported primary rate limit.
    let (s, _) = control("rate_limit", json!({ "limit": 0 })).await;
    assert_eq!(s, 422);
    let (s, _) = control("rate_limit", json!({ "limit": 1_000_000 })).await;
    assert_eq!(s, 200);
    let r = http
        .get(format!("{url}/repos/acme/app/actions/runners"))
        .bearer_auth("ghp_standalone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit"], "1000000");

    let requests: Vec<Value> = http
        .get(format!("{url}/_fake/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runs: Vec<u64> = requests
        .iter()
        .filter(|r| r["endpoint"] == "GET /repos/{owner}/{repo}/actions/runs")
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(runs, vec![502, 200, 200], "the 502 was retried");

    // A wrong PAT is refused.
    cfg.token = Some(runfleet_core::config::Secret::new("ghp_other"));
    let bad = GitHubClient::new(&cfg).unwrap();
    assert_eq!(
        bad.list_repos("acme").await.unwrap_err().kind,
        ErrorKind::Auth
    );
}
