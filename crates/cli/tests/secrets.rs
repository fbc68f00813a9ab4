//! No secret reaches any output of the real binary (DESIGN invariant 5),
//! black-box: `runfleet serve` at `RUNFLEET_LOG=trace` (JSON and text logs)
//! against the fake GitHub and a real moto on 127.0.0.1 runs jobs through
//! webhooks (with a rejected forged delivery and GitHub errors on the way),
//! while its whole stdout and stderr, `/metrics`, `/`, `/status.json` and
//! the error answers are kept; then `runfleet check` with a bad token,
//! `status --json` and `reap --dry-run` run. None of it may contain the
//! GitHub token (good or bad), the webhook secret, the AWS secret key, a
//! JIT config the runners got, or an HMAC signature GitHub sent, nor their
//! base64. The simulator's counterpart under chaos is
//! `crates/sim/tests/secrets.rs`; `crates/cli/tests/serve.rs` checks the
//! status page of its lifecycle test for the JIT config and secret too.

/// The AWS adapter's moto harness (server on a free port, VPC, launch template).
#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use runfleet_github::fake::{FakeGitHub, FakeOptions};

const PAT: &str = "ghp_CliLeakCanaryPat0123456789abcdefXYZ";
const BAD_TOKEN: &str = "ghp_CliLeakCanaryBadToken987654321zyx";
const WEBHOOK_SECRET: &str = "CliLeakCanaryWebhookSecret-9d2f";
const AWS_SECRET: &str = "CliLeakCanaryAwsSecretKey/4b7Q+e";
const LINUX: &[&str] = &["self-hosted", "linux", "x64"];

/// Base64 (standard and URL-safe, no padding) of `s` at each of the three
/// byte alignments it can have inside a longer encoded text, without the
/// characters at the ends that depend on the neighbours.
fn base64_forms(s: &str) -> Vec<String> {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let encode = |bytes: &[u8]| -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(STD[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let mut forms = Vec::new();
    for pad in 0..3 {
        let mut bytes = vec![0u8; pad];
        bytes.extend_from_slice(s.as_bytes());
        let enc = encode(&bytes);
        let skip = if pad == 0 { 0 } else { pad + 1 };
        let core: String = enc.chars().skip(skip).collect();
        let core: String = core.chars().take(core.len().saturating_sub(2)).collect();
        if core.len() >= 12 {
            forms.push(core.clone());
            forms.push(core.replace('+', "-").replace('/', "_"));
        }
    }
    forms
}

/// Which of `secrets` (by name) appear in `text`, plain or as base64.
fn leaks(text: &str, secrets: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, value) in secrets {
        if text.contains(value.as_str()) {
            found.push(format!("{name} in plain text"));
        }
        for form in base64_forms(value) {
            if text.contains(&form) {
                found.push(format!("{name} as base64"));
            }
        }
    }
    found
}

struct Env {
    moto: aws::Moto,
    world: aws::World,
    fake: FakeGitHub,
    dir: std::path::PathBuf,
    fleet: String,
}

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Env {
    async fn new(name: &str) -> Option<Env> {
        let moto = aws::Moto::start(name)?;
        let world = aws::World::create(&aws::sdk_config(&moto.url), name).await;
        let fake = FakeGitHub::start_with(FakeOptions {
            pat: Some(PAT.to_string()),
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        fake.add_org("acme");
        fake.add_repo("acme/app");
        let dir =
            std::env::temp_dir().join(format!("runfleet-secrets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Env {
            moto,
            world,
            fake,
            dir,
            fleet: format!("t-{name}"),
        })
    }

    fn config(&self) -> std::path::PathBuf {
        let text = format!(
            r#"
fleet = "{fleet}"
[server]
listen = "127.0.0.1:0"
store = "sqlite://{dir}/runfleet.db"
reconcile_interval = "2s"
completed_grace = "1s"
boot_timeout = "10m"
[github]
api_url = "{api}"
token = "env:TEST_GITHUB_TOKEN"
webhook_secret = "env:TEST_WEBHOOK_SECRET"
repos = ["acme/app"]
[aws]
region = "us-east-1"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "{lt}"
instance_types = ["t3.micro", "t3.small"]
subnets = ["{s0}", "{s1}"]
max_runners = 3
"#,
            fleet = self.fleet,
            dir = self.dir.display(),
            api = self.fake.url(),
            lt = self.world.template_id,
            s0 = self.world.subnets[0],
            s1 = self.world.subnets[1],
        );
        let p = self.dir.join("runfleet.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn runfleet(&self, args: &[&str], token: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runfleet"));
        c.args(args)
            .args(["--config", self.config().to_str().unwrap()])
            .env("TEST_GITHUB_TOKEN", token)
            .env("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETTEST")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUNFLEET_LOG", "trace");
        c
    }

    /// `serve` with its stdout and stderr going to files in the test's dir.
    fn serve(&self, log_format: &str) -> Serve {
        let out = self.dir.join(format!("serve-{log_format}.stdout"));
        let err = self.dir.join(format!("serve-{log_format}.stderr"));
        let child = self
            .runfleet(&["serve", "--log-format", log_format], PAT)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("runfleet starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(l) = text.lines().next().filter(|_| text.contains('\n')) {
                break l.to_string();
            }
            assert!(Instant::now() < deadline, "serve printed no address");
            std::thread::sleep(Duration::from_millis(50));
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let url = format!("http://{}", v["listening"].as_str().expect("address"));
        self.fake
            .set_webhook(&format!("{url}/webhook"), WEBHOOK_SECRET);
        Serve { child, url }
    }

    async fn alive(&self) -> Vec<String> {
        self.world
            .instances_tagged("runfleet:fleet", &self.fleet)
            .await
            .into_iter()
            .filter(|(_, s)| s == "pending" || s == "running")
            .map(|(id, _)| id)
            .collect()
    }

    async fn param(&self, instance_id: &str) -> Option<String> {
        let name = format!("/runfleet/{}/instances/{instance_id}/jitconfig", self.fleet);
        let out = self
            .world
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .ok()?;
        out.parameter()?.value().map(str::to_string)
    }
}

async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(url: &str) -> String {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    format!("{status}\n{body}")
}

/// One serve run: jobs through their whole life, with failures on the way.
/// Returns everything it showed, and the JIT configs its runners got.
async fn serve_run(e: &Env, log_format: &str) -> (String, Vec<String>) {
    let serve = e.serve(log_format);
    let mut shown = String::new();
    let mut jits = Vec::new();
    let http = reqwest::Client::new();
    // A forged delivery and a malformed one: 401 and 400, nothing stored.
    for (sig, body) in [
        ("sha256=".to_string() + &"0".repeat(64), "{}".to_string()),
        (
            runfleet_github::webhook::sign(WEBHOOK_SECRET.as_bytes(), b"{not json"),
            "{not json".to_string(),
        ),
    ] {
        let r = http
            .post(format!("{}/webhook", serve.url))
            .header("content-type", "application/json")
            .header("x-github-event", "workflow_job")
            .header(
                "x-github-delivery",
                format!("bad-{log_format}-{}", body.len()),
            )
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
        shown.push_str(&r.text().await.unwrap());
    }
    for _ in 0..2 {
        let job = e.fake.queue_job("acme/app", LINUX, true).await;
        // The new instance's JIT config, read from SSM as its boot script would.
        let deadline = Instant::now() + Duration::from_secs(30);
        'found: loop {
            for id in e.alive().await {
                if let Some(j) = e.param(&id).await
                    && !jits.contains(&j)
                    && e.fake.runner_of_jit(&j).is_some_and(|r| !r.online)
                {
                    jits.push(j);
                    break 'found;
                }
            }
            assert!(Instant::now() < deadline, "no instance got a JIT config");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let jit = jits.last().unwrap().clone();
        e.fake.connect_jit(&jit).await.unwrap();
        let runner = e.fake.runner_of_jit(&jit).unwrap().name;
        e.fake.start_job(job.job_id, &runner).await.unwrap();
        shown.push_str(&get(&format!("{}/metrics", serve.url)).await);
        shown.push_str(&get(&format!("{}/", serve.url)).await);
        shown.push_str(&get(&format!("{}/status.json", serve.url)).await);
        e.fake.complete_job(job.job_id, "success").await.unwrap();
    }
    until("every instance gone", || async {
        e.alive().await.is_empty()
    })
    .await;
    for path in [
        "/metrics",
        "/",
        "/status.json",
        "/healthz",
        "/readyz",
        "/nope",
    ] {
        shown.push_str(&get(&format!("{}{path}", serve.url)).await);
    }
    drop(serve);
    for ext in ["stdout", "stderr"] {
        let p = e.dir.join(format!("serve-{log_format}.{ext}"));
        shown.push_str(&std::fs::read_to_string(p).unwrap());
    }
    (shown, jits)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_serve_or_a_failing_command_prints_contains_a_secret() {
    let Some(e) = Env::new("secrets").await else {
        return;
    };
    let (mut shown, mut jits) = serve_run(&e, "json").await;
    let (text, more) = serve_run(&e, "text").await;
    shown.push_str(&text);
    jits.extend(more);
    assert!(shown.contains("TRACE") || shown.contains("\"level\":\"TRACE\""));
    assert!(shown.contains("runfleet_jobs_total"), "metrics were kept");

    // A failing command: `check` with a token GitHub refuses.
    let check = e.runfleet(&["check"], BAD_TOKEN).output().unwrap();
    assert!(!check.status.success(), "check passes with a bad token");
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check_out.contains("fail") || check_out.contains("FAIL"),
        "{check_out}"
    );
    shown.push_str(&check_out);
    for args in [&["status", "--json"][..], &["reap", "--dry-run"][..]] {
        let out = e.runfleet(args, PAT).output().unwrap();
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
    }

    let mut secrets = vec![
        ("the GitHub token".to_string(), PAT.to_string()),
        ("the refused token".to_string(), BAD_TOKEN.to_string()),
        ("the webhook secret".to_string(), WEBHOOK_SECRET.to_string()),
        ("the AWS secret key".to_string(), AWS_SECRET.to_string()),
    ];
    assert_eq!(jits.len(), 4, "each job's JIT config was collected");
    for (i, j) in jits.iter().enumerate() {
        secrets.push((format!("JIT config {i}"), j.clone()));
    }
    for d in e.fake.deliveries() {
        let sig = runfleet_github::webhook::sign(WEBHOOK_SECRET.as_bytes(), &d.body);
        let hex = sig.trim_start_matches("sha256=").to_string();
        secrets.push(("a delivery's HMAC signature".to_string(), hex));
    }
    let found = leaks(&shown, &secrets);
    assert!(
        found.is_empty(),
        "secrets leaked ({} bytes checked): {found:?}",
        shown.len()
    );
    println!(
        "secrets: {} values checked against {} bytes of serve/check/status/reap output",
        secrets.len(),
        shown.len()
    );
}
