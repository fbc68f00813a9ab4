//! `runfleet serve` black-box: the real binary on a free port, against the
//! project's fake GitHub and a real moto server, all on 127.0.0.1.

/// The AWS adapter's moto harness (server on a free port, VPC, launch template).
#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runfleet_github::fake::FakeGitHub;

const SECRET: &str = "webhook-secret-for-tests";
const LINUX: &[&str] = &["self-hosted", "linux", "x64"];

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

async fn env(name: &str) -> Option<Env> {
    let moto = aws::Moto::start(name)?;
    let world = aws::World::create(&aws::sdk_config(&moto.url), name).await;
    let fake = FakeGitHub::start().await;
    fake.add_org("acme");
    fake.add_repo("acme/app");
    let dir = std::env::temp_dir().join(format!("runfleet-serve-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Some(Env {
        moto,
        world,
        fake,
        dir,
        fleet: format!("t-{name}"),
    })
}

impl Env {
    fn config(&self, boot_timeout: &str) -> std::path::PathBuf {
        let text = format!(
            r#"
fleet = "{fleet}"
[server]
listen = "127.0.0.1:0"
store = "sqlite://{dir}/runfleet.db"
reconcile_interval = "2s"
completed_grace = "1s"
boot_timeout = "{boot_timeout}"
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

    /// The binary with this test's GitHub token, webhook secret and AWS endpoint.
    fn runfleet(&self, args: &[&str], config: &std::path::Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runfleet"));
        c.args(args)
            .args(["--config", config.to_str().unwrap()])
            .env(
                "TEST_GITHUB_TOKEN",
                self.fake.pat().expect("the fake has a PAT"),
            )
            .env("TEST_WEBHOOK_SECRET", SECRET)
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETTEST")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    fn serve(&self, config: &std::path::Path) -> Serve {
        let mut child = self
            .runfleet(&["serve", "--log-format", "json"], config)
            .env("RUNFLEET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runfleet starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("first stdout line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let url = format!(
            "http://{}",
            v["listening"].as_str().expect("listening address")
        );
        self.fake.set_webhook(&format!("{url}/webhook"), SECRET);
        Serve { child, url }
    }

    /// Runs a one-shot command (`check`, `reap`, `status`) with the same environment.
    fn command(&self, args: &[&str], config: &std::path::Path) -> std::process::Output {
        self.runfleet(args, config).output().expect("runfleet runs")
    }

    /// Starts an instance tagged as runfleet's, without runfleet, in `fleet`.
    async fn run_tagged(&self, fleet: &str) -> String {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("runfleet:fleet").value(fleet).build())
            .tags(
                Tag::builder()
                    .key("runfleet:pool")
                    .value("linux-x64")
                    .build(),
            )
            .build();
        let out = self
            .world
            .ec2
            .run_instances()
            .image_id(&self.world.ami)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags)
            .send()
            .await
            .unwrap();
        out.instances()[0].instance_id().unwrap().to_string()
    }

    async fn ours(&self) -> Vec<(String, String)> {
        self.world
            .instances_tagged("runfleet:fleet", &self.fleet)
            .await
    }

    async fn alive(&self) -> usize {
        self.ours()
            .await
            .iter()
            .filter(|(_, s)| s == "pending" || s == "running")
            .count()
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

impl Serve {
    async fn reconciles(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/status.json", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["reconciles"].as_u64().unwrap()
    }

    /// Waits until the service has compared GitHub and EC2 with its store
    /// `n` more times: whatever it would still launch, it has launched.
    async fn reconciled(&self, n: u64) {
        let start = self.reconciles().await;
        until("reconciles", || async {
            self.reconciles().await >= start + n
        })
        .await;
    }
}

/// Polls until `cond` holds or 30 s pass; the service reacts in milliseconds
/// to webhooks and within a reconcile interval (2 s) otherwise.
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

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_launches_one_tagged_instance_and_a_completed_job_cleans_up() {
    let Some(e) = env("lifecycle").await else {
        return;
    };
    let serve = e.serve(&e.config("10m"));
    let job = e.fake.queue_job("acme/app", LINUX, true).await;
    until("one instance", || async { e.alive().await == 1 }).await;
    let (id, _) = e.ours().await.remove(0);
    until("the JIT config in SSM", || async {
        e.param(&id).await.is_some()
    })
    .await;
    let tags = e
        .world
        .ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let tag = |k: &str| {
        tags.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("runfleet:pool").as_deref(), Some("linux-x64"));
    assert_eq!(tag("Name").as_deref(), Some("runfleet-linux-x64"));

    // The instance boots and its runner takes the job, which completes. It
    // plays an instance whose own delete of its config failed (a role
    // without ssm:DeleteParameter): the controller deletes the leftover.
    let jit = e.param(&id).await.unwrap();
    e.fake
        .connect_jit(&jit)
        .await
        .expect("the JIT config names a runner");
    let runner = format!("runfleet-linux-x64-{id}");
    e.fake.start_job(job.job_id, &runner).await.unwrap();
    e.fake.complete_job(job.job_id, "success").await.unwrap();
    until("the instance terminated after completed_grace", || async {
        e.alive().await == 0
    })
    .await;
    until("its leftover parameter deleted", || async {
        e.param(&id).await.is_none()
    })
    .await;
    assert_eq!(e.ours().await.len(), 1, "never a second instance");
    let page = reqwest::get(format!("{}/", serve.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("runfleet"), "status page serves");
    assert!(!page.contains(&jit) && !page.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_queued_without_webhook_is_found_by_reconcile() {
    let Some(e) = env("poll").await else { return };
    let _serve = e.serve(&e.config("10m"));
    e.fake.queue_job("acme/app", LINUX, false).await;
    until("an instance for the job nobody announced", || async {
        e.alive().await == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_runners_is_never_exceeded_and_the_backlog_drains() {
    let Some(e) = env("cap").await else { return };
    let serve = e.serve(&e.config("10m"));
    e.fake.set_auto_assign(true);
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(e.fake.queue_job("acme/app", LINUX, true).await.job_id);
    }
    until("three instances", || async { e.alive().await == 3 }).await;
    // Two reconciles later there are still three (max_runners = 3).
    serve.reconciled(2).await;
    assert_eq!(e.ours().await.len(), 3);
    // Play GitHub and the machines: each instance that has its config
    // brings its runner online (which takes a queued job), and running jobs
    // complete. The backlog drains through the cap, three at a time.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(e.alive().await <= 3, "max_runners exceeded");
        let done = e
            .fake
            .jobs()
            .iter()
            .filter(|j| jobs.contains(&j.id) && j.status == "completed")
            .count();
        if done == jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog did not drain: {done} of {} done",
            jobs.len()
        );
        for (id, state) in e.ours().await {
            if (state == "running" || state == "pending")
                && let Some(jit) = e.param(&id).await
            {
                let _ = e.fake.connect_jit(&jit).await;
            }
        }
        for j in e
            .fake
            .jobs()
            .into_iter()
            .filter(|j| jobs.contains(&j.id) && j.status == "in_progress")
        {
            e.fake.complete_job(j.id, "success").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until("every instance gone", || async { e.alive().await == 0 }).await;
    assert_eq!(e.ours().await.len(), 6, "one instance per job, no more");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deliveries_and_duplicates_launch_nothing_more() {
    let Some(e) = env("bad").await else { return };
    let serve = e.serve(&e.config("10m"));
    let http = reqwest::Client::new();
    let post = |event: &str, delivery: &str, body: String, sig: Option<String>| {
        let sig = sig
            .unwrap_or_else(|| runfleet_github::webhook::sign(SECRET.as_bytes(), body.as_bytes()));
        http.post(format!("{}/webhook", serve.url))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
    };
    let job = |id: u64, labels: &[&str]| {
        serde_json::json!({
            "action": "queued",
            "workflow_job": {"id": id, "run_id": 1, "status": "queued", "labels": labels, "runner_name": null, "created_at": "2026-11-23T10:00:00Z"},
            "repository": {"full_name": "acme/app"}
        })
        .to_string()
    };
    let bad_sig = Some(format!("sha256={}", "0".repeat(64)));
    assert_eq!(
        post("workflow_job", "b-1", job(1, LINUX), bad_sig)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post("workflow_job", "b-2", "{\"workflow_job\":".into(), None)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("push", "b-3", "{}".into(), None)
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        post("workflow_job", "b-4", job(2, &["self-hosted", "gpu"]), None)
            .await
            .unwrap()
            .status(),
        202
    );
    // One job, delivered twice under one id and once under another.
    assert_eq!(
        post("workflow_job", "b-5", job(3, LINUX), None)
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post("workflow_job", "b-5", job(3, LINUX), None)
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post("workflow_job", "b-6", job(3, LINUX), None)
            .await
            .unwrap()
            .status(),
        202
    );
    until("the one good job launched", || async {
        e.alive().await == 1
    })
    .await;
    serve.reconciled(2).await;
    assert_eq!(
        e.ours().await.len(),
        1,
        "bad deliveries and duplicates launched nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_of_this_fleet_are_terminated_and_other_fleets_are_not() {
    let Some(e) = env("orphans").await else {
        return;
    };
    let mine = e.run_tagged(&e.fleet).await;
    let theirs = e.run_tagged("another-fleet").await;
    let _serve = e.serve(&e.config("3s"));
    until("the orphan terminated", || async { e.alive().await == 0 }).await;
    assert!(e.ours().await.iter().any(|(id, _)| id == &mine));
    let other = e
        .world
        .instances_tagged("runfleet:fleet", "another-fleet")
        .await;
    assert_eq!(
        other,
        vec![(theirs, "running".to_string())],
        "another fleet's instance untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_launches_each_accepted_job_once() {
    let Some(e) = env("kill9").await else { return };
    let config = e.config("10m");
    let serve = e.serve(&config);
    let http = reqwest::Client::new();
    for n in 0..3u64 {
        let body = serde_json::json!({
            "action": "queued",
            "workflow_job": {"id": 9000 + n, "run_id": 90, "status": "queued", "labels": LINUX, "runner_name": null, "created_at": "2026-11-23T10:00:00Z"},
            "repository": {"full_name": "acme/app"}
        })
        .to_string();
        let r = http
            .post(format!("{}/webhook", serve.url))
            .header("content-type", "application/json")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", format!("kill9-{n}"))
            .header(
                "x-hub-signature-256",
                runfleet_github::webhook::sign(SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    drop(serve); // SIGKILL right after the acknowledgements
    let again = e.serve(&config);
    until("three instances", || async { e.alive().await == 3 }).await;
    again.reconciled(2).await;
    assert_eq!(
        e.ours().await.len(),
        3,
        "each accepted job got exactly one instance"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_with_full_rights() {
    let Some(e) = env("check").await else { return };
    let out = e.command(&["check"], &e.config("10m"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failing"), "{stdout}");
    assert!(stdout.contains("github: runners of acme/app"), "{stdout}");
    assert!(
        !stdout.contains(&e.fake.pat().unwrap()),
        "no token in the table"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reap_dry_run_lists_and_reap_terminates_only_this_fleets_orphans() {
    let Some(e) = env("reap").await else { return };
    let mine = e.run_tagged(&e.fleet).await;
    let theirs = e.run_tagged("another-fleet").await;
    // boot_timeout 1s: the unknown instance is an orphan as soon as it is a second old.
    let config = e.config("1s");
    until("the orphan older than boot_timeout", || async {
        let out = e.command(&["reap", "--dry-run"], &config);
        String::from_utf8_lossy(&out.stdout).contains(&format!("would terminate {mine}"))
    })
    .await;
    assert_eq!(e.alive().await, 1, "a dry run changes nothing");
    let out = e.command(&["reap"], &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("terminate {mine}")) && !stdout.contains(&theirs),
        "{stdout}"
    );
    assert_eq!(e.alive().await, 0);
    let other = e
        .world
        .instances_tagged("runfleet:fleet", "another-fleet")
        .await;
    assert_eq!(
        other,
        vec![(theirs, "running".to_string())],
        "another fleet's instance untouched"
    );
}

/// `runfleet start` against the real `serve` (the token-and-HMAC scheme
/// with the fake GitHub's token): one instance for the run, its runner
/// registered with only the run's labels, and `--wait` returns once the
/// runner is online, with the same output `launch` gives.
#[tokio::test(flavor = "multi_thread")]
async fn start_client_gets_a_runner_from_serve() {
    let Some(e) = env("ondemand").await else {
        return;
    };
    let serve = e.serve(&e.config("10m"));
    let out_file = e.dir.join("github_output");
    let mut start = tokio::process::Command::from(e.runfleet(
        &[
            "start",
            "--url",
            &serve.url,
            "--repo",
            "acme/app",
            "--pool",
            "linux-x64",
            "--github-token-env",
            "TEST_GITHUB_TOKEN",
            "--wait",
            "--timeout",
            "60s",
        ],
        &e.dir.join("runfleet.toml"),
    ));
    let child = start
        .env("GITHUB_OUTPUT", &out_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runfleet start runs");
    // The instance comes; its runner connects with the JIT config from SSM.
    until("one instance", || async { e.alive().await == 1 }).await;
    let (id, _) = e.ours().await.remove(0);
    until("the JIT config in SSM", || async {
        e.param(&id).await.is_some()
    })
    .await;
    let jit = e.param(&id).await.unwrap();
    e.fake
        .connect_jit(&jit)
        .await
        .expect("the JIT config names a runner");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("start returns once the runner is online")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["instance_id"], id.as_str());
    assert_eq!(
        v["runner_name"],
        format!("runfleet-linux-x64-{id}").as_str()
    );
    let labels: Vec<String> = serde_json::from_value(v["labels"].clone()).unwrap();
    assert_eq!(labels[0], "self-hosted");
    assert!(labels[1].starts_with("rf-"), "{labels:?}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains(&format!("instance-id={id}")), "{written}");
    let token = e.fake.pat().unwrap();
    assert!(!stderr.contains(&token) && !written.contains(&token));
    assert_eq!(e.ours().await.len(), 1, "exactly one instance for the run");
}
