//! The real binary on loopback: cold start (process start to `/readyz` 200),
//! webhook intake (202 latency and throughput at fixed delivery rates, open
//! loop, SQLite store), the resident memory of `serve` once it tracks every
//! delivered job, and the resident memory of `serve` tracking 10,000
//! instances, each with its registered runner (online, nine in ten busy).
//! Against the project's fake GitHub and a real moto server, like the
//! black-box tests. Prints tables.
//!
//! `cargo bench -p runfleet --bench system [-- [PART...] [SECONDS RATE...]]`
//!
//! - PART selects what runs (all three without one): `cold`, `intake`,
//!   `runners` (10,000 runners) or `runners=N`. The runners part takes
//!   minutes (mostly moto launching the instances); the others seconds.
//! - SECONDS RATE...: the intake's length per rate and its delivery rates
//!   (defaults: 3 s at 500, 1000 and 2000 deliveries/s).
//!
//! The load generator runs in this process and shares the machine's cores
//! with the server, so compare rows of one run rather than runs on
//! different machines.
//!
//! How the runners part builds its 10,000 runners: `serve`'s own pacing
//! (EC2's instance bucket, 1,000 then 2 per second; SSM's 40 writes per
//! second) would take over an hour to launch them, so an engine in this
//! process, the same code as `serve` with its client-side buckets opened,
//! takes the 10,000 `queued` webhooks (10 jobs per workflow run), launches
//! the instances in moto, mints their runners with the fake GitHub's
//! generate-jitconfig and writes their SSM parameters, all into a SQLite
//! store. The bench then does what booting instances do (deletes each
//! parameter, brings each runner online), starts the real `serve` on that
//! store, sends the `in_progress` webhooks of nine jobs in ten, waits for
//! two reconciles, and reads `serve`'s RSS. moto runs with its EC2 tag
//! look-up indexed (see [`MOTO_TAG_INDEX`]): unpatched, listing 10,000
//! instances takes minutes and `serve`'s DescribeInstances times out.

#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runfleet_aws::{AwsCloud, AwsOptions, BucketShape, Pacing};
use runfleet_core::config::{Config, MapSecrets};
use runfleet_engine::driver::now_ms;
use runfleet_engine::{Engine, EngineOptions};
use runfleet_github::fake::FakeGitHub;

const SECRET: &str = "bench-webhook-secret";
const LABELS: [&str; 3] = ["self-hosted", "linux", "x64"];
/// Jobs per workflow run in the runners part (a matrix build).
const JOBS_PER_RUN: usize = 10;
/// In the runners part, one runner in this many stays idle (online, its
/// job still queued); the others take their job.
const IDLE_EVERY: usize = 10;

struct Rig {
    moto: aws::Moto,
    world: aws::World,
    fake: FakeGitHub,
    dir: PathBuf,
}

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Under BENCH_SERVE_WRAP (a profiler), serve is the wrapper's child:
        // ask it to stop so the profiler writes its data, then kill.
        if std::env::var_os("BENCH_SERVE_WRAP").is_some() {
            let _ = Command::new("pkill")
                .args(["-TERM", "-P", &self.child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(15));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// `serve` with `config`, against `aws_url`; returns it and when it was
    /// started (it has printed its address when this returns).
    ///
    /// For looking into `serve` (not for the figures): `BENCH_SERVE_LOG`
    /// (e.g. `info`) shows its log on stderr; `BENCH_SERVE_WRAP` runs it
    /// under a command, e.g. `heaptrack -o /tmp/serve` (RSS is then the
    /// wrapper's).
    fn start(config: &Path, fake: &FakeGitHub, aws_url: &str) -> (Serve, Instant) {
        let started = Instant::now();
        let wrap = std::env::var("BENCH_SERVE_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(wrap).arg(env!("CARGO_BIN_EXE_runfleet"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_runfleet")),
        };
        let log = std::env::var("BENCH_SERVE_LOG").ok();
        let mut child = cmd
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("BENCH_GITHUB_TOKEN", fake.pat().expect("a PAT"))
            .env("BENCH_WEBHOOK_SECRET", SECRET)
            .env("AWS_ENDPOINT_URL", aws_url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUNFLEET_LOG", log.as_deref().unwrap_or("warn"))
            .stdout(Stdio::piped())
            .stderr(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("runfleet starts");
        // Its address is on the first JSON line of stdout (a wrapper may
        // print before it); the rest is drained.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let url = loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("serve's stdout");
            assert!(n > 0, "serve exited before listening");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v["listening"].as_str()
            {
                break format!("http://{addr}");
            }
        };
        std::thread::spawn(move || out.lines().for_each(drop));
        (Serve { child, url }, started)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss_kb(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_kb(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// Fields of `/proc/PID/status` in KiB (0 when absent).
    fn status_kb<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        names.map(|name| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }
}

/// With `BENCH_SERVE_TRIM` set, rows that say where `serve`'s memory is:
/// resident anonymous and file-backed pages (`/proc/PID/status`), the
/// allocator's heap in use and free but held (gdb calls `mallinfo2()`),
/// and the RSS after gdb made it call `malloc_trim(0)`, which hands the
/// allocator's free pages back to the system.
fn heap_rows(serve: &Serve, what: &str) -> Vec<(String, String)> {
    if std::env::var_os("BENCH_SERVE_TRIM").is_none() {
        return Vec::new();
    }
    let [anon, file] = serve.status_kb(["RssAnon:", "RssFile:"]);
    let mut rows = vec![(
        format!("{what}: resident anonymous / file-backed"),
        format!("{:.1} MB / {:.1} MB", mb(anon), mb(file)),
    )];
    let pid = serve.child.id().to_string();
    let out = Command::new("gdb")
        .args(["-p", &pid, "-batch", "-ex", "print mallinfo2()"])
        .args(["-ex", "call (int) malloc_trim(0)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            eprintln!("BENCH_SERVE_TRIM: gdb failed: {other:?}");
            return rows;
        }
    };
    // `$1 = {arena = 524288, ..., uordblks = 379024, fordblks = 145264, ...}`
    let field = |name: &str| -> u64 {
        text.split([',', '{', '}'])
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    rows.push((
        format!("{what}: heap in use / free but held (mallinfo2)"),
        format!(
            "{:.1} MB / {:.1} MB",
            mb((field("uordblks") + field("hblkhd")) / 1024),
            mb(field("fordblks") / 1024)
        ),
    ));
    rows.push((
        format!("{what}: RSS after malloc_trim(0)"),
        format!("{:.1} MB", mb(serve.rss_kb().0)),
    ));
    rows
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A config for the bench's one pool.
struct ConfigText<'a> {
    dir: &'a Path,
    db: &'a str,
    api_url: &'a str,
    template: &'a str,
    subnets: &'a [String],
    max_runners: usize,
    reconcile_interval: &'a str,
    boot_timeout: &'a str,
    launch_batch_max: u32,
}

impl ConfigText<'_> {
    fn render(&self) -> String {
        let subnets: Vec<String> = self.subnets.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"
fleet = "bench"
[server]
listen = "127.0.0.1:0"
store = "sqlite://{dir}/{db}"
reconcile_interval = "{ri}"
boot_timeout = "{bt}"
launch_batch_max = {lbm}
[github]
api_url = "{api}"
token = "env:BENCH_GITHUB_TOKEN"
webhook_secret = "env:BENCH_WEBHOOK_SECRET"
repos = ["acme/app"]
[aws]
region = "us-east-1"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "{lt}"
instance_types = ["t3.micro"]
subnets = [{subnets}]
max_runners = {max}
"#,
            dir = self.dir.display(),
            db = self.db,
            ri = self.reconcile_interval,
            bt = self.boot_timeout,
            lbm = self.launch_batch_max,
            api = self.api_url,
            lt = self.template,
            subnets = subnets.join(", "),
            max = self.max_runners,
        )
    }

    fn write(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, self.render()).unwrap();
        p
    }
}

impl Rig {
    fn config(&self, db: &str) -> PathBuf {
        ConfigText {
            dir: &self.dir,
            db,
            api_url: self.fake.url(),
            template: &self.world.template_id,
            subnets: &self.world.subnets[..1],
            max_runners: 5,
            reconcile_interval: "60s",
            boot_timeout: "10m",
            launch_batch_max: 20,
        }
        .write(&format!("{db}.toml"))
    }

    fn serve(&self, config: &Path) -> (Serve, Instant) {
        Serve::start(config, &self.fake, &self.moto.url)
    }
}

fn pct(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if xs.is_empty() {
        return 0.0;
    }
    xs[(((xs.len() - 1) as f64) * q).round() as usize]
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    ready_within(http, url, Duration::from_secs(30), Duration::from_millis(1)).await
}

/// Polls `/readyz` every `poll` until it answers 200 (true) or `within`
/// has passed (false).
async fn ready_within(http: &reqwest::Client, url: &str, within: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(poll).await;
    }
    false
}

/// Open loop: one delivery every 1/rate s whatever the answers do.
async fn intake(
    http: &reqwest::Client,
    url: &str,
    rate: u64,
    seconds: u64,
    first_job: u64,
) -> (Vec<f64>, f64, usize) {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let url: Arc<str> = format!("{url}/webhook").into();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until((start + interval * n as u32).into()).await;
        let job = first_job + n;
        let body = serde_json::json!({
            "action": "queued",
            "workflow_job": {"id": job, "run_id": 7, "status": "queued",
                "labels": ["self-hosted", "linux", "x64"], "runner_name": null,
                "created_at": "2026-11-23T10:00:00Z"},
            "repository": {"full_name": "acme/app"}
        })
        .to_string();
        let sig = runfleet_github::webhook::sign(SECRET.as_bytes(), body.as_bytes());
        let req = http
            .post(&*url)
            .header("content-type", "application/json")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", format!("bench-{job}"))
            .header("x-hub-signature-256", sig)
            .body(body);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = req.send().await.is_ok_and(|r| r.status() == 202);
            (ok, sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        let (ok, ms) = t.await.unwrap();
        if ok {
            lat.push(ms);
        } else {
            failed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    (lat, total as f64 / elapsed, failed)
}

// ---------------------------------------------------------------- runners

/// moto's EC2 finds an instance's tags by scanning every tag in the region
/// (`TaggedEC2Resource.get_tags` is `describe_tags` with a resource-id
/// filter), so describing n instances costs O(n²): with 10,000 of them one
/// DescribeInstances takes about four minutes here, and `serve` (30 s per
/// attempt) never lists them. This looks the tags up in the same dict by
/// resource id; the answers are unchanged.
const MOTO_TAG_INDEX: &str = r#"
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix


def get_tags(self):
    rid = self.id
    if not rid:
        return []
    tags = self.ec2_backend.tags.get(rid) or {}
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
    return [
        {"resource_id": rid, "key": k, "value": v, "resource_type": kind}
        for k, v in tags.items()
    ]


TaggedEC2Resource.get_tags = get_tags
from moto.server import main

main()
"#;

/// A moto server run with [`MOTO_TAG_INDEX`] applied; killed on drop.
struct IndexedMoto {
    url: String,
    child: Child,
}

impl Drop for IndexedMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IndexedMoto {
    /// Runs the `moto_server` the tests use (`RUNFLEET_MOTO_SERVER`, the
    /// default virtualenv, or `PATH`) under its own interpreter (its `#!`
    /// line), on a free loopback port.
    async fn start(http: &reqwest::Client) -> Result<IndexedMoto, String> {
        let bin = aws::moto_binary()
            .ok_or("moto_server not found: run crates/aws/tests/install-moto.sh and set RUNFLEET_MOTO_SERVER to the path it prints")?;
        let script =
            std::fs::read_to_string(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut interpreter = script
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#!"))
            .ok_or_else(|| format!("{}: no #! line naming its Python", bin.display()))?
            .split_whitespace();
        let python = interpreter
            .next()
            .ok_or_else(|| format!("{}: empty #! line", bin.display()))?;
        let port = aws::free_port();
        let child = Command::new(python)
            .args(interpreter)
            .arg("-c")
            .arg(MOTO_TAG_INDEX)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {python} for moto: {e}"))?;
        let moto = IndexedMoto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http
                .get(format!("{}/moto-api/", moto.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!("moto ({python}) did not answer within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Two /17 subnets: room for 10,000 instances (the world's are /20s).
async fn roomy_subnets(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.100.0.0/16")
        .send()
        .await
        .expect("CreateVpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
    let mut out = Vec::new();
    for (cidr, az) in [
        ("10.100.0.0/17", "us-east-1a"),
        ("10.100.128.0/17", "us-east-1b"),
    ] {
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .availability_zone(az)
            .send()
            .await
            .expect("CreateSubnet");
        out.push(s.subnet().and_then(|s| s.subnet_id()).unwrap().to_string());
    }
    out
}

async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    match http.get(format!("{url}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of the samples of metric `name` whose labels contain each of
/// `labels` (Prometheus text format).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the runners part measured.
struct RunnersReport {
    rows: Vec<(String, String)>,
    rss_kb: u64,
    settled_kb: u64,
    hwm_kb: u64,
}

/// `serve` tracking `n` instances with their runners; see the crate doc.
async fn runners_part(http: &reqwest::Client, n: usize) -> RunnersReport {
    let mut rows = Vec::new();
    let moto = IndexedMoto::start(http).await.unwrap_or_else(|e| {
        eprintln!("runners: {e}");
        std::process::exit(1)
    });
    let sdk = aws::sdk_config(&moto.url);
    let world = aws::World::create(&sdk, "bench-runners").await;
    let subnets = roomy_subnets(&world.ec2).await;
    let fake = FakeGitHub::start().await;
    fake.add_org("acme");
    fake.add_repo("acme/app");
    // Minting 10,000 runners, and reconciles that list 1,000 runs and 100
    // pages of runners each, take far more than the 5,000 requests an hour
    // the fake reports by default (GitHub's limit for a PAT).
    fake.set_rate_limit(100_000_000);
    let dir = std::env::temp_dir().join(format!("runfleet-bench-runners-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The filler neither reconciles while it launches (each listing of
    // thousands of instances costs moto seconds) nor times boots out (its
    // runners come online only once every instance is up). One instance
    // per launch call: moto starts MinCount instances (runfleet asks for 1
    // to MaxCount), so a batch would get one instance per offering.
    let serve_text = ConfigText {
        dir: &dir,
        db: "runners.db",
        api_url: fake.url(),
        template: &world.template_id,
        subnets: &subnets,
        max_runners: n.max(1),
        reconcile_interval: "30s",
        boot_timeout: "10m",
        launch_batch_max: 1,
    };
    let filler_text = ConfigText {
        reconcile_interval: "1h",
        boot_timeout: "1h",
        ..serve_text
    };
    let secrets = MapSecrets::new()
        .with_env("BENCH_GITHUB_TOKEN", fake.pat().expect("a PAT"))
        .with_env("BENCH_WEBHOOK_SECRET", SECRET);
    let filler_cfg = Config::parse(&filler_text.render(), &secrets).expect("bench config");
    let serve_cfg = serve_text.write("runners.toml");

    // 1. Fill: n queued webhooks into an unpaced engine with serve's code.
    let fill_started = Instant::now();
    let cfg = Arc::new(filler_cfg);
    let store = runfleet_store::open(&cfg.server.store)
        .await
        .expect("SQLite store");
    let github = runfleet_github::GitHubClient::new(&cfg.github).expect("GitHub client");
    let open = BucketShape::new(1_000_000, 1_000_000.0);
    let pacing = Pacing {
        run_instances: open,
        terminate_instances: open,
        describe: open,
        ssm_write: open,
        ssm_read: open,
        sts: open,
        ..Pacing::default()
    };
    let cloud = AwsCloud::for_config(
        &cfg,
        sdk.clone(),
        AwsOptions {
            pacing,
            ..AwsOptions::default()
        },
    );
    let unpaced = (1_000_000, 1_000_000.0);
    let engine = Engine::new(
        cfg.clone(),
        Arc::new(github),
        Arc::new(cloud),
        store,
        EngineOptions {
            launch_bucket: unpaced,
            instance_bucket: unpaced,
            provision_bucket: unpaced,
            ..EngineOptions::default()
        },
        now_ms(),
    )
    .await
    .expect("filler engine");
    let filler = runfleet_server::start(engine, "127.0.0.1:0")
        .await
        .expect("filler listens");
    fake.set_webhook(&format!("http://{}/webhook", filler.addr), SECRET);
    let mut run_id = 0;
    for i in 0..n {
        if i % JOBS_PER_RUN == 0 {
            run_id = fake.queue_job("acme/app", &LABELS, true).await.run_id;
        } else {
            fake.queue_job_in_run(run_id, &LABELS, true)
                .await
                .expect("a job in the run");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3 * 3600);
    let mut noted = Instant::now();
    loop {
        let (launching, booting, failures) = {
            // Empty until the engine's first step is published.
            let v = filler.state.view.read().expect("view");
            let count = |s: &str| v.pools.first().map_or(0, |p| p.instances[s]);
            let failures: Vec<String> = v
                .failures
                .iter()
                .take(3)
                .map(|f| format!("job {} {}: {}", f.job_id, f.state, f.reason))
                .collect();
            (count("launching"), count("booting"), failures)
        };
        if booting >= n && launching == 0 {
            break;
        }
        assert!(
            failures.is_empty(),
            "runners: the filler failed jobs: {}",
            failures.join("; ")
        );
        assert!(
            Instant::now() < deadline,
            "runners: {booting} of {n} instances up after 3 h"
        );
        if noted.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "runners: {booting} of {n} instances launched after {:.0} s",
                fill_started.elapsed().as_secs_f64()
            );
            noted = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut engine = filler.stop().await;
    // The last launches' runners may still be minting.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let written = engine
            .observed()
            .instances
            .values()
            .filter(|i| i.jit_written)
            .count();
        if written >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runners: only {written} of {n} runner configs written"
        );
        engine.step(now_ms()).await.expect("filler step");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (job, instance, runner) of each launch.
    let mut launched: Vec<(u64, String, String)> = engine
        .observed()
        .launches
        .values()
        .filter_map(|l| {
            let iid = l.instance_id.clone()?;
            let runner = runfleet_core::model::runner_name(&l.pool, &iid);
            Some((l.job_id?, iid, runner))
        })
        .collect();
    launched.sort();
    assert_eq!(launched.len(), n, "runners: one launched instance per job");
    drop(engine);
    let fill_s = fill_started.elapsed().as_secs_f64();
    eprintln!("runners: {n} instances with runner configs after {fill_s:.0} s");
    rows.push((
        format!(
            "fill: {n} queued webhooks -> instances in moto, runners minted, SSM parameters written (engine in the bench, unpaced)"
        ),
        format!("{fill_s:.0} s"),
    ));

    // 2. What booting instances do: read and delete their parameter, and
    // their runner comes online.
    for chunk in launched.chunks(10) {
        let names = chunk
            .iter()
            .map(|(_, iid, _)| runfleet_aws::jit_parameter("bench", iid).expect("parameter name"))
            .collect();
        world
            .ssm
            .delete_parameters()
            .set_names(Some(names))
            .send()
            .await
            .expect("DeleteParameters");
    }
    for (_, _, runner) in &launched {
        fake.runner_online(runner).await.expect("runner online");
    }
    eprintln!("runners: parameters deleted, runners online; starting serve");

    // 3. serve on that store.
    let (serve, started) = Serve::start(&serve_cfg, &fake, &moto.url);
    assert!(
        ready_within(
            http,
            &serve.url,
            Duration::from_secs(600),
            Duration::from_millis(100)
        )
        .await,
        "runners: serve not ready within 10 min"
    );
    let ready_s = started.elapsed().as_secs_f64();
    let (rss_ready, _) = serve.rss_kb();
    rows.push((
        format!(
            "serve start -> /readyz 200 (store loaded, first reconcile: {n} instances, {n} runners)"
        ),
        format!("{ready_s:.1} s"),
    ));
    rows.push(("RSS when ready".into(), format!("{:.1} MB", mb(rss_ready))));
    fake.set_webhook(&format!("{}/webhook", serve.url), SECRET);
    let busy: Vec<&(u64, String, String)> = launched
        .iter()
        .enumerate()
        .filter(|(i, _)| i % IDLE_EVERY != 0)
        .map(|(_, l)| l)
        .collect();
    for (job, _, runner) in &busy {
        fake.start_job(*job, runner).await.expect("job starts");
    }
    eprintln!(
        "runners: serve ready after {ready_s:.1} s; {} in_progress webhooks sent",
        busy.len()
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m = metrics_text(http, &serve.url).await;
        if metric(&m, "runfleet_instances", &["state=\"busy\""]) as usize >= busy.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runners: serve did not see {} runners busy within 5 min",
            busy.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "runners: serve has {} runners busy; waiting for two reconciles",
        busy.len()
    );
    // Two reconciles after the webhooks: each lists the runners once, 100
    // a page, and its requests show in the metrics once it is done.
    let pages = n.div_ceil(100) as f64;
    let listings = |m: &str| {
        metric(
            m,
            "runfleet_github_endpoint_requests_total",
            &["/actions/runners\""],
        ) / pages
    };
    let m0 = metrics_text(http, &serve.url).await;
    let before = listings(&m0);
    let github_calls = |m: &str| metric(m, "runfleet_github_requests_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(900);
    let m = loop {
        let m = metrics_text(http, &serve.url).await;
        if listings(&m) >= before + 2.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "runners: serve did not reconcile twice within 15 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (rss, hwm) = serve.rss_kb();
    // Over one reconcile interval (serve's is 30 s here): its lowest is
    // between reconciles, once serve handed the free pages back (every
    // 5 s); its highest is during a reconcile, answers in hand.
    let (mut settled, mut highest) = (u64::MAX, 0);
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(30) {
        let (now_kb, _) = serve.rss_kb();
        settled = settled.min(now_kb);
        highest = highest.max(now_kb);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rows.push((
        "GitHub requests a reconcile (listings of runs, their jobs, runners)".into(),
        format!("{:.0}", (github_calls(&m) - github_calls(&m0)) / 2.0),
    ));
    let state = |s: &str| metric(&m, "runfleet_instances", &[&format!("state=\"{s}\"")]) as usize;
    let (busy_n, idle_n) = (state("busy"), state("idle"));
    let others = state("launching") + state("booting") + state("terminating");
    let terminations = metric(&m, "runfleet_terminations_total", &[]) as usize;
    rows.push((
        "instances by state after two reconciles".into(),
        format!("busy {busy_n}, idle {idle_n}, other {others}; terminations {terminations}"),
    ));
    assert!(
        busy_n + idle_n == n && others == 0 && terminations == 0,
        "runners: serve does not track the {n} runners as expected: busy {busy_n}, idle {idle_n}, other {others}, terminations {terminations}"
    );
    rows.push((
        format!(
            "RSS after {} in_progress webhooks and two reconciles",
            busy.len()
        ),
        format!("{:.1} MB (peak {:.1} MB)", mb(rss), mb(hwm)),
    ));
    rows.push((
        "RSS over the next 30 s (a reconcile interval), lowest / highest".into(),
        format!("{:.1} MB / {:.1} MB", mb(settled), mb(highest)),
    ));
    rows.extend(heap_rows(&serve, &format!("{n} runners")));
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
    RunnersReport {
        rows,
        rss_kb: rss,
        settled_kb: settled,
        hwm_kb: hwm,
    }
}

// ---------------------------------------------------------------- main

/// What to run, from the arguments.
struct Selection {
    seconds: u64,
    rates: Vec<u64>,
    cold: bool,
    intake: bool,
    runners: Option<usize>,
}

fn selection() -> Selection {
    let mut numbers = Vec::new();
    let (mut cold, mut intake, mut runners) = (false, false, None);
    for a in std::env::args().skip(1) {
        if let Ok(n) = a.parse::<u64>() {
            numbers.push(n);
        } else if a.starts_with('-') {
            // `cargo bench` passes `--bench`.
        } else if a == "cold" {
            cold = true;
        } else if a == "intake" {
            intake = true;
        } else if a == "runners" {
            runners = Some(10_000);
        } else if let Some(n) = a.strip_prefix("runners=") {
            match n.parse::<usize>() {
                Ok(n) if n > 0 => runners = Some(n),
                _ => {
                    eprintln!("runners={n}: expected a positive number of runners");
                    std::process::exit(2);
                }
            }
        } else {
            eprintln!(
                "unknown argument {a:?}: parts are cold, intake, runners, runners=N; numbers are SECONDS RATE..."
            );
            std::process::exit(2);
        }
    }
    if !cold && !intake && runners.is_none() {
        (cold, intake, runners) = (true, true, Some(10_000));
    }
    Selection {
        seconds: numbers.first().copied().unwrap_or(3),
        rates: if numbers.len() > 1 {
            numbers[1..].to_vec()
        } else {
            vec![500, 1000, 2000]
        },
        cold,
        intake,
        runners,
    }
}

fn main() {
    let sel = selection();
    // The in-process engine of the runners part logs with RUST_LOG (e.g. `warn`).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        let mut memory: Vec<(String, String)> = Vec::new();
        if sel.cold || sel.intake {
            let Some(moto) = aws::Moto::start("bench-system") else {
                eprintln!("moto is needed: run crates/aws/tests/install-moto.sh");
                std::process::exit(1);
            };
            let world = aws::World::create(&aws::sdk_config(&moto.url), "bench").await;
            let fake = FakeGitHub::start().await;
            fake.add_org("acme");
            fake.add_repo("acme/app");
            let dir = std::env::temp_dir().join(format!("runfleet-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let rig = Rig {
                moto,
                world,
                fake,
                dir,
            };
            if sel.cold {
                cold(&rig, &http).await;
            }
            if sel.intake {
                memory.extend(intake_part(&rig, &http, sel.seconds, &sel.rates).await);
            }
            let _ = std::fs::remove_dir_all(&rig.dir);
        }
        if let Some(n) = sel.runners {
            let report = runners_part(&http, n).await;
            println!(
                "| serve tracking {n} runners ({} busy, {} idle) | value |",
                n - n.div_ceil(IDLE_EVERY),
                n.div_ceil(IDLE_EVERY)
            );
            println!("|---|---|");
            for (k, v) in &report.rows {
                println!("| {k} | {v} |");
            }
            println!();
            memory.push((
                format!("RSS tracking {n} runners"),
                format!(
                    "{:.1} MB right after a reconcile, {:.1} MB at the lowest between reconciles (peak {:.1} MB)",
                    mb(report.rss_kb),
                    mb(report.settled_kb),
                    mb(report.hwm_kb)
                ),
            ));
        }
        if !memory.is_empty() {
            println!("| memory of serve | value |");
            println!("|---|---|");
            for (k, v) in &memory {
                println!("| {k} | {v} |");
            }
        }
    });
}

/// Cold start, each on a fresh store (migrations included).
async fn cold(rig: &Rig, http: &reqwest::Client) {
    let mut listen_ms = Vec::new();
    let mut ready_ms = Vec::new();
    for i in 0..7 {
        let cfg = rig.config(&format!("cold-{i}.db"));
        let (serve, started) = rig.serve(&cfg);
        listen_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(ready(http, &serve.url).await, "never ready");
        ready_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!("| cold start (7 runs, fresh SQLite store) | p50 | max |");
    println!("|---|---|---|");
    println!(
        "| process start -> listening | {:.1} ms | {:.1} ms |",
        pct(&mut listen_ms.clone(), 0.5),
        max(&listen_ms)
    );
    println!(
        "| process start -> /readyz 200 | {:.1} ms | {:.1} ms |",
        pct(&mut ready_ms.clone(), 0.5),
        max(&ready_ms)
    );
    println!();
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().cloned().fold(0.0, f64::max)
}

/// Intake at each rate against one serve; its memory after it all (rows
/// of the memory table).
async fn intake_part(
    rig: &Rig,
    http: &reqwest::Client,
    seconds: u64,
    rates: &[u64],
) -> Vec<(String, String)> {
    let cfg = rig.config("intake.db");
    let (serve, _) = rig.serve(&cfg);
    assert!(ready(http, &serve.url).await, "never ready");
    rig.fake
        .set_webhook(&format!("{}/webhook", serve.url), SECRET);
    let (rss0, _) = serve.rss_kb();
    println!(
        "| intake, real binary, SQLite (open loop, {seconds} s per rate) | achieved /s | 202 p50 | 202 p99 | max | not 202 |"
    );
    println!("|---|---|---|---|---|---|");
    let mut next_job = 1_000_000u64;
    let mut delivered = 0u64;
    for &rate in rates {
        let (mut lat, achieved, failed) = intake(http, &serve.url, rate, seconds, next_job).await;
        next_job += rate * seconds;
        delivered += rate * seconds;
        let mx = max(&lat);
        println!(
            "| {rate} deliveries/s | {achieved:.0} | {:.2} ms | {:.2} ms | {mx:.2} ms | {failed} |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    println!();
    // Let the engine fold everything it accepted before measuring memory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = http
            .get(format!("{}/status.json", serve.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let queued: u64 = v["pools"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["queued"].as_u64()).sum())
            .unwrap_or(0);
        if queued + 5 >= delivered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss, hwm) = serve.rss_kb();
    let mut rows = vec![
        ("RSS when ready".into(), format!("{:.1} MB", mb(rss0))),
        (
            format!("RSS tracking {delivered} queued jobs"),
            format!("{:.1} MB (peak {:.1} MB)", mb(rss), mb(hwm)),
        ),
    ];
    rows.extend(heap_rows(&serve, &format!("{delivered} queued jobs")));
    rows
}
