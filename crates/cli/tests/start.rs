//! `runfleet start` black-box: the real binary against a tiny loopback
//! server that answers `POST /v1/start` and `GET /v1/runs/{id}` like the
//! real API (and GitHub's OIDC token endpoint), recording what it receives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use tokio::process::Command;

const TOKEN: &str = "ghs_test-token-for-the-hmac-scheme";
const OIDC_REQUEST_TOKEN: &str = "oidc-request-token";
const OIDC_JWT: &str = "eyJ.oidc-jwt-for-tests.sig";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// How `POST /v1/start` answers, and what `GET /v1/runs/{id}` answers on
/// each successive call (the last one repeats).
#[derive(Clone)]
struct Script {
    start: (u16, String),
    runs: Vec<String>,
}

#[derive(Clone)]
struct Api {
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    polls: Arc<Mutex<usize>>,
}

fn record(api: &Api, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
    api.seen.lock().unwrap().push(Seen {
        path: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
}

fn json(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

async fn start(State(api): State<Api>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    record(&api, &uri, &headers, &body);
    let (status, body) = api.script.start.clone();
    json(status, body)
}

async fn runs(
    State(api): State<Api>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&api, &uri, &headers, b"");
    if id != "acme-r0123456789abcdef" {
        return json(404, r#"{"error":"no such run"}"#.into());
    }
    let mut n = api.polls.lock().unwrap();
    let i = (*n).min(api.script.runs.len() - 1);
    *n += 1;
    json(200, api.script.runs[i].clone())
}

async fn oidc(State(api): State<Api>, uri: Uri, headers: HeaderMap) -> Response {
    record(&api, &uri, &headers, b"");
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("bearer {OIDC_REQUEST_TOKEN}"))
    {
        return json(401, r#"{"message":"bad request token"}"#.into());
    }
    json(200, format!(r#"{{"count":1,"value":"{OIDC_JWT}"}}"#))
}

/// The fake API on a free loopback port.
async fn serve(script: Script) -> (String, Api) {
    let api = Api {
        script,
        seen: Arc::default(),
        polls: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/start", post(start))
        .route("/v1/runs/{id}", get(runs))
        .route("/oidc", get(oidc))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), api)
}

const ACCEPTED: &str =
    r#"{"id":"acme-r0123456789abcdef","labels":["self-hosted","rf-0123abcd"],"state":"pending"}"#;

fn run_json(state: &str, instance: Option<&str>, extra: &str) -> String {
    let (iid, runner) = match instance {
        Some(i) => (format!("\"{i}\""), format!("\"runfleet-linux-x64-{i}\"")),
        None => ("null".into(), "null".into()),
    };
    format!(
        r#"{{"id":"acme-r0123456789abcdef","state":"{state}","labels":["self-hosted","rf-0123abcd"],"instance_id":{iid},"runner_name":{runner}{extra}}}"#
    )
}

fn accepted_then(runs: Vec<String>) -> Script {
    Script {
        start: (202, ACCEPTED.into()),
        runs,
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runfleet-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// `runfleet start` with a clean environment: no OIDC variables, no
/// `GITHUB_OUTPUT` unless given.
fn runfleet(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runfleet"));
    c.arg("start")
        .args(args)
        .env("TEST_TOKEN", TOKEN)
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        .env_remove("GITHUB_OUTPUT")
        .env_remove("RUNFLEET_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn output(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("runfleet start returns")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_hmac_request_is_signed_and_waiting_prints_the_online_run() {
    let (url, api) = serve(accepted_then(vec![
        run_json("pending", None, ""),
        run_json("booting", Some("i-0abc"), ""),
        run_json("online", Some("i-0abc"), ""),
    ]))
    .await;
    let out_file = temp("hmac-output");
    let mut c = runfleet(&[
        "--url",
        &url,
        "--repo",
        "acme/app",
        "--pool",
        "linux-x64",
        "--github-token-env",
        "TEST_TOKEN",
        "--wait",
        "--timeout",
        "30s",
    ]);
    c.env("GITHUB_OUTPUT", &out_file);
    let o = output(c).await;
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "labels": ["self-hosted", "rf-0123abcd"],
            "instance_id": "i-0abc",
            "runner_name": "runfleet-linux-x64-i-0abc"
        })
    );
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "labels=[\"self-hosted\",\"rf-0123abcd\"]\ninstance-id=i-0abc\nrunner-name=runfleet-linux-x64-i-0abc\n"
    );

    let seen = api.seen.lock().unwrap().clone();
    let post = seen.iter().find(|s| s.path == "/v1/start").unwrap();
    assert_eq!(post.headers["x-github-token"], TOKEN);
    assert_eq!(
        post.headers["x-github-signature"],
        format!("sha512={}", hmac_hex(TOKEN, &post.body)),
        "HMAC-SHA512 of the exact body bytes, keyed by the token"
    );
    assert_eq!(post.headers["content-type"], "application/json");
    assert!(!post.headers.contains_key("authorization"));
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body["repo"], "acme/app");
    assert_eq!(body["pool"], "linux-x64");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let time = body["time"].as_i64().expect("time in unix seconds");
    assert!((now - time).abs() < 30, "time {time} vs now {now}");
    assert_eq!(
        seen.iter()
            .filter(|s| s.path == "/v1/runs/acme-r0123456789abcdef")
            .count(),
        3,
        "polled until online"
    );
    let stderr = text(&o.stderr);
    assert!(!stderr.contains(TOKEN), "the token is never printed");
    assert!(!stderr.contains(&hmac_hex(TOKEN, &post.body)));
    assert!(stderr.contains("booting"), "progress lines: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_token_is_requested_for_the_audience_and_sent_as_bearer() {
    let (url, api) = serve(accepted_then(vec![run_json("booting", Some("i-0def"), "")])).await;
    let mut c = runfleet(&[
        "--url",
        &format!("{url}/"),
        "--repo",
        "acme/app",
        "--audience",
        "my-runfleet",
    ]);
    c.env(
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        format!("{url}/oidc?api-version=2.0"),
    )
    .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", OIDC_REQUEST_TOKEN);
    let o = output(c).await;
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    // Without --wait: back as soon as the instance exists.
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["instance_id"], "i-0def");
    let seen = api.seen.lock().unwrap().clone();
    let oidc = seen.iter().find(|s| s.path.starts_with("/oidc")).unwrap();
    assert_eq!(oidc.path, "/oidc?api-version=2.0&audience=my-runfleet");
    let post = seen.iter().find(|s| s.path == "/v1/start").unwrap();
    assert_eq!(post.headers["authorization"], format!("Bearer {OIDC_JWT}"));
    assert!(!post.headers.contains_key("x-github-token"));
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert!(body.get("pool").is_none(), "no --pool: the server's choice");
    let stderr = text(&o.stderr);
    assert!(!stderr.contains(OIDC_JWT) && !stderr.contains(OIDC_REQUEST_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_exit_1_with_the_servers_reason_on_one_line() {
    for (status, body, says) in [
        (
            401,
            r#"{"error":"X-GitHub-Signature does not match the body"}"#,
            "HTTP 401: X-GitHub-Signature does not match the body",
        ),
        (
            403,
            r#"{"error":"repository acme/app is not allowed"}"#,
            "HTTP 403: repository acme/app is not allowed",
        ),
        (
            400,
            "{\"error\":\"pool \\\"gpu\\\"\\nis not configured\"}",
            "HTTP 400: pool \"gpu\" is not configured",
        ),
        (
            502,
            "<html>bad gateway</html>",
            "HTTP 502: <html>bad gateway</html>",
        ),
    ] {
        let (url, _api) = serve(Script {
            start: (status, body.into()),
            runs: vec![run_json("pending", None, "")],
        })
        .await;
        let o = output(runfleet(&[
            "--url",
            &url,
            "--repo",
            "acme/app",
            "--pool",
            "gpu",
            "--github-token-env",
            "TEST_TOKEN",
            "--wait",
        ]))
        .await;
        assert_eq!(o.status.code(), Some(1), "{status}: {}", text(&o.stderr));
        let stderr = text(&o.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("runfleet: POST /v1/start refused: ") && stderr.contains(says),
            "{status}: {stderr}"
        );
        assert!(o.stdout.is_empty());
        assert!(!stderr.contains(TOKEN));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_or_a_timeout_exits_1_with_the_reason() {
    let (url, _api) = serve(accepted_then(vec![
        run_json("launching", None, ""),
        run_json(
            "failed",
            None,
            r#","reason":"launch failed (capacity): no offering launched""#,
        ),
    ]))
    .await;
    let args = |url: &str, timeout: &str| {
        runfleet(&[
            "--url",
            url,
            "--repo",
            "acme/app",
            "--github-token-env",
            "TEST_TOKEN",
            "--wait",
            "--timeout",
            timeout,
        ])
    };
    let o = output(args(&url, "30s")).await;
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("failed: launch failed (capacity): no offering launched"),
        "{stderr}"
    );
    assert!(o.stdout.is_empty());

    let (url, _api) = serve(accepted_then(vec![run_json("booting", Some("i-1"), "")])).await;
    let o = output(args(&url, "3s")).await;
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr.lines().last().unwrap().contains("not online within"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_or_with_bad_arguments_nothing_is_sent() {
    let (url, api) = serve(accepted_then(vec![run_json("online", Some("i-1"), "")])).await;
    for (args, says) in [
        (
            vec!["--url", url.as_str(), "--repo", "acme/app"],
            "id-token: write",
        ),
        (
            vec![
                "--url",
                url.as_str(),
                "--repo",
                "acme/app",
                "--github-token-env",
                "NO_SUCH_VARIABLE_FOR_RUNFLEET",
            ],
            "NO_SUCH_VARIABLE_FOR_RUNFLEET",
        ),
        (
            vec!["--url", "ftp://x", "--repo", "acme/app"],
            "http:// or https://",
        ),
        (vec!["--url", url.as_str(), "--repo", "acme"], "OWNER/NAME"),
    ] {
        let o = output(runfleet(&args)).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let stderr = text(&o.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(api.seen.lock().unwrap().is_empty(), "no request was sent");
}
