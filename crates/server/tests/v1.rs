//! The on-demand API against the simulator-backed engine: a local OIDC
//! issuer (a test RSA key, its JWKS served on loopback) and the fake GitHub
//! (for the token-and-HMAC scheme's "can this token read the repository").
//! Every refusal must store nothing and launch nothing.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use runfleet_engine::driver::now_ms;
use runfleet_github::fake::FakeGitHub;
use runfleet_server::v1::auth::sign;
use serde_json::{Value, json};

mod common;

const AUDIENCE: &str = "runfleet";

struct Issuer {
    url: String,
    kid: String,
    key: EncodingKey,
    /// Another key, not published: signs forgeries.
    forger: EncodingKey,
}

fn rsa_key() -> (rsa::RsaPrivateKey, EncodingKey) {
    let mut rng = rsa::rand_core::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key");
    let pem = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    (key, enc)
}

async fn issuer() -> Issuer {
    let (key, enc) = rsa_key();
    let (_, forger) = rsa_key();
    let kid = "test-key-1".to_string();
    let jwks = json!({ "keys": [{
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/.well-known/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Issuer {
        url,
        kid,
        key: enc,
        forger,
    }
}

impl Issuer {
    fn claims(&self, repo: &str) -> Value {
        let now = (now_ms() / 1000) as i64;
        json!({
            "iss": self.url, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 300,
            "repository": repo, "repository_owner": repo.split('/').next().unwrap(),
            "ref": "refs/heads/main", "workflow": "ci", "run_id": "42",
        })
    }
    fn token_with(&self, claims: &Value, kid: &str, key: &EncodingKey) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }
    fn token(&self, repo: &str) -> String {
        self.token_with(&self.claims(repo), &self.kid, &self.key)
    }
}

struct Rig {
    svc: common::Service,
    issuer: Issuer,
    fake: FakeGitHub,
}

async fn rig(max_runs: u32) -> Rig {
    let issuer = issuer().await;
    let fake = FakeGitHub::start().await;
    fake.add_org("acme");
    fake.add_repo("acme/app");
    let mut config = runfleet_sim::demo_config();
    config.api.oidc_issuer = issuer.url.clone();
    config.api.max_runs_per_repo = max_runs;
    config.github.api_url = fake.url().to_string();
    config.github.repos = Some(vec!["acme/app".into(), "acme/lib".into()]);
    config.server.reconcile_interval = Duration::from_millis(100);
    Rig {
        svc: common::service_with(config).await,
        issuer,
        fake,
    }
}

fn body(repo: &str, pool: Option<&str>) -> String {
    let mut b = json!({ "repo": repo, "time": now_ms() / 1000 });
    if let Some(p) = pool {
        b["pool"] = json!(p);
    }
    b.to_string()
}

impl Rig {
    async fn start_oidc(&self, token: &str, body: &str) -> (u16, Value) {
        let r = self
            .svc
            .http
            .post(format!("{}/v1/start", self.svc.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn start_hmac(&self, token: &str, body: &str) -> reqwest::Response {
        self.svc
            .http
            .post(format!("{}/v1/start", self.svc.url))
            .header("x-github-token", token)
            .header("x-github-signature", sign(token, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn run(&self, id: &str, token: &str) -> (u16, Value) {
        let r = self
            .svc
            .http
            .get(format!("{}/v1/runs/{id}", self.svc.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (bounded) until the engine has finished `n` more steps.
    async fn steps_pass(&self, n: u64) {
        let steps = || async {
            let v: Value = self
                .svc
                .http
                .get(format!("{}/status.json", self.svc.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["steps"].as_u64().unwrap_or(0)
        };
        let target = steps().await + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while steps().await < target {
            assert!(Instant::now() < deadline, "the engine stopped stepping");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn instances(&self) -> usize {
        let w = self.svc.world.lock().unwrap();
        w.instances
            .values()
            .filter(|i| i.tag("runfleet:fleet") == Some("demo"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_token_gets_a_runner_that_comes_online() {
    let rig = rig(10).await;
    let token = rig.issuer.token("acme/app");
    let (status, v) = rig
        .start_oidc(&token, &body("acme/app", Some("linux-x64")))
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("demo-r") && id.len() <= 64, "{id}");
    let labels: Vec<String> = serde_json::from_value(v["labels"].clone()).unwrap();
    assert_eq!(labels.len(), 2);
    assert_eq!(labels[0], "self-hosted");
    assert!(labels[1].starts_with("rf-"));

    // The simulated EC2 boots it and the simulated GitHub brings its runner
    // online; the run's state follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let last = loop {
        {
            let mut w = rig.svc.world.lock().unwrap();
            let t = w.now + 5_000;
            w.advance_to(t);
        }
        let (status, v) = rig.run(&id, &token).await;
        assert_eq!(status, 200, "{v}");
        let state = v["state"].as_str().unwrap().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "online" || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last["state"], "online", "states seen: {seen:?}");
    assert_eq!(last["labels"], json!(labels));
    let iid = last["instance_id"].as_str().expect("an instance id");
    assert_eq!(
        last["runner_name"].as_str(),
        Some(format!("runfleet-linux-x64-{iid}").as_str())
    );
    let runner_labels = {
        let w = rig.svc.world.lock().unwrap();
        w.runners
            .values()
            .find(|r| Some(r.name.as_str()) == last["runner_name"].as_str())
            .expect("registered")
            .labels
            .clone()
    };
    assert_eq!(runner_labels, labels, "only the run's labels");
    rig.svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_request_gets_a_run_and_a_replay_is_refused() {
    let rig = rig(10).await;
    let pat = rig.fake.pat().unwrap();
    let b = body("acme/app", None);
    let r = rig.start_hmac(&pat, &b).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    // The same request again (same body, same signature): a replay.
    let r = rig.start_hmac(&pat, &b).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("replay"), "{e}");
    assert!(!e.to_string().contains(&pat), "the token is never echoed");
    // Polling with the HMAC scheme signs the empty body.
    let r = rig
        .svc
        .http
        .get(format!("{}/v1/runs/{id}", rig.svc.url))
        .header("x-github-token", &pat)
        .header("x-github-signature", sign(&pat, b""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(rig.svc.store.deliveries(), 1, "one request stored");
    rig.svc.running.stop().await;
}

/// Every bad input is refused with its status, a reason, and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_store_nothing() {
    let rig = rig(10).await;
    let iss = &rig.issuer;
    let good = body("acme/app", Some("linux-x64"));
    let mut expired = iss.claims("acme/app");
    expired["exp"] = json!((now_ms() / 1000) as i64 - 600);
    expired["nbf"] = json!((now_ms() / 1000) as i64 - 900);
    let mut wrong_aud = iss.claims("acme/app");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = iss.claims("acme/app");
    wrong_iss["iss"] = json!("https://token.actions.githubusercontent.com");
    let mut not_yet = iss.claims("acme/app");
    not_yet["nbf"] = json!((now_ms() / 1000) as i64 + 600);
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "expired",
            iss.token_with(&expired, &iss.kid, &iss.key),
            good.clone(),
            401,
            "expired",
        ),
        (
            "wrong audience",
            iss.token_with(&wrong_aud, &iss.kid, &iss.key),
            good.clone(),
            401,
            "audience",
        ),
        (
            "wrong issuer",
            iss.token_with(&wrong_iss, &iss.kid, &iss.key),
            good.clone(),
            401,
            "issuer",
        ),
        (
            "not yet valid",
            iss.token_with(&not_yet, &iss.kid, &iss.key),
            good.clone(),
            401,
            "nbf",
        ),
        (
            "forged",
            iss.token_with(&iss.claims("acme/app"), &iss.kid, &iss.forger),
            good.clone(),
            401,
            "signature",
        ),
        (
            "unknown key",
            iss.token_with(&iss.claims("acme/app"), "other-kid", &iss.key),
            good.clone(),
            401,
            "other-kid",
        ),
        (
            "not a JWT",
            "garbage".to_string(),
            good.clone(),
            401,
            "not a JWT",
        ),
        (
            "repo not allowed",
            iss.token("evil/app"),
            body("evil/app", None),
            403,
            "evil/app",
        ),
        (
            "another repo's token",
            iss.token("acme/lib"),
            good.clone(),
            403,
            "acme/lib",
        ),
        (
            "unknown pool",
            iss.token("acme/app"),
            body("acme/app", Some("gpu")),
            400,
            "\"gpu\"",
        ),
        (
            "no repo",
            iss.token("acme/app"),
            json!({"pool": "linux-x64"}).to_string(),
            400,
            "repo",
        ),
        (
            "bad repo",
            iss.token("acme/app"),
            json!({"repo": "acme"}).to_string(),
            400,
            "owner/name",
        ),
        (
            "not JSON",
            iss.token("acme/app"),
            "{nope".to_string(),
            400,
            "JSON",
        ),
        (
            "unknown field",
            iss.token("acme/app"),
            json!({"repo": "acme/app", "colour": 1}).to_string(),
            400,
            "unknown field",
        ),
    ];
    for (name, token, b, want, says) in cases {
        let (status, v) = rig.start_oidc(&token, &b).await;
        assert_eq!(status, want, "{name}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(says),
            "{name}: {msg:?} should mention {says:?}"
        );
    }

    // The token-and-HMAC scheme.
    let pat = rig.fake.pat().unwrap();
    let stale = json!({"repo": "acme/app", "time": now_ms() / 1000 - 120}).to_string();
    let r = rig.start_hmac(&pat, &stale).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("time"));
    let r = rig
        .svc
        .http
        .post(format!("{}/v1/start", rig.svc.url))
        .header("x-github-token", &pat)
        .header("x-github-signature", sign("another-token", good.as_bytes()))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "signature by another key");
    let r = rig.start_hmac("ghp_not_known_to_github", &good).await;
    assert_eq!(r.status(), 401, "GitHub refuses the token");
    let text = r.text().await.unwrap();
    assert!(!text.contains("ghp_not_known_to_github"), "{text}");
    let r = rig.start_hmac(&pat, &body("acme/nothere", None)).await;
    assert_eq!(r.status(), 403, "the token cannot read that repository");
    let r = rig
        .svc
        .http
        .post(format!("{}/v1/start", rig.svc.url))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no credentials");

    // Nothing stored, nothing launched.
    assert_eq!(rig.svc.store.deliveries(), 0);
    rig.steps_pass(3).await;
    assert_eq!(rig.instances(), 0);
    let metrics = rig
        .svc
        .http
        .get(format!("{}/metrics", rig.svc.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"runfleet_api_requests_total{route="start",outcome="unauthorized"}"#)
    );
    assert!(!metrics.contains(&pat));
    rig.svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_repo_cap_answers_429_and_runs_are_private() {
    let rig = rig(2).await;
    let token = rig.issuer.token("acme/app");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, v) = rig.start_oidc(&token, &body("acme/app", None)).await;
        assert_eq!(status, 202, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let r = rig
        .svc
        .http
        .post(format!("{}/v1/start", rig.svc.url))
        .bearer_auth(&token)
        .body(body("acme/app", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(rig.svc.store.deliveries(), 2);
    // Another repository has its own allowance.
    let other = rig.issuer.token("acme/lib");
    let (status, _) = rig.start_oidc(&other, &body("acme/lib", None)).await;
    assert_eq!(status, 202);
    // acme/lib cannot see acme/app's run, and an unknown id is the same 404.
    let (status, v) = rig.run(&ids[0], &other).await;
    assert_eq!(status, 404, "{v}");
    let (status, _) = rig.run("demo-r0000000000000000", &token).await;
    assert_eq!(status, 404);
    let (status, v) = rig.run(&ids[0], &token).await;
    assert_eq!(status, 200, "{v}");
    rig.svc.running.stop().await;
}

#[test]
fn start_body_edge_cases() {
    use runfleet_server::v1::parse_start_body;
    let ok = parse_start_body(br#"{"repo":"acme/app","pool":"p","name":"n","time":1}"#).unwrap();
    assert_eq!(ok.repo, "acme/app");
    assert_eq!(ok.pool.as_deref(), Some("p"));
    assert_eq!(ok.time, Some(1));
    for bad in [
        &b""[..],
        b"[]",
        b"null",
        br#"{"repo":1}"#,
        br#"{"repo":"a/b/c"}"#,
        br#"{"repo":"a/b","time":"now"}"#,
        br#"{"repo":"a/b","time":1.5}"#,
        br#"{"repo":"a/b","pool":""}"#,
        br#"{"repo":"a/b","name":"x\ny"}"#,
        b"\xff\xfe",
    ] {
        assert!(
            parse_start_body(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
