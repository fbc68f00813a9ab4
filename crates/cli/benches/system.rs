//! The real binary on loopback: cold start (process start to `/readyz` 200),
//! webhook intake (202 latency and throughput at fixed delivery rates, open
//! loop, SQLite store), and the resident memory of `serve` once it tracks
//! every delivered job. Against the project's fake GitHub and a real moto
//! server, like the black-box tests. Prints tables.
//!
//! `cargo bench -p runfleet --bench system [-- SECONDS RATE...]`
//! (defaults: 3 s at 500, 1000 and 2000 deliveries/s). The load generator
//! runs in this process and shares the machine's cores with the server, so
//! compare rows of one run rather than runs on different machines.

#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runfleet_github::fake::FakeGitHub;

const SECRET: &str = "bench-webhook-secret";

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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Rig {
    fn config(&self, db: &str) -> PathBuf {
        let text = format!(
            r#"
fleet = "bench"
[server]
listen = "127.0.0.1:0"
store = "sqlite://{dir}/{db}"
reconcile_interval = "60s"
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
subnets = ["{s0}"]
max_runners = 5
"#,
            dir = self.dir.display(),
            api = self.fake.url(),
            lt = self.world.template_id,
            s0 = self.world.subnets[0],
        );
        let p = self.dir.join(format!("{db}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts `serve`; returns it and the time until it printed its address.
    fn serve(&self, config: &Path) -> (Serve, Instant) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_runfleet"))
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("BENCH_GITHUB_TOKEN", self.fake.pat().expect("a PAT"))
            .env("BENCH_WEBHOOK_SECRET", SECRET)
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUNFLEET_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runfleet starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("first stdout line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("listening line");
        let url = format!("http://{}", v["listening"].as_str().expect("address"));
        (Serve { child, url }, started)
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
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

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(3);
    let rates: Vec<u64> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![500, 1000, 2000]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
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
        let rig = Rig { moto, world, fake, dir };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();

        // Cold start, each on a fresh store (migrations included).
        let mut listen_ms = Vec::new();
        let mut ready_ms = Vec::new();
        for i in 0..7 {
            let cfg = rig.config(&format!("cold-{i}.db"));
            let (serve, started) = rig.serve(&cfg);
            listen_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert!(ready(&http, &serve.url).await, "never ready");
            ready_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        println!("| cold start (7 runs, fresh SQLite store) | p50 | max |");
        println!("|---|---|---|");
        let max = |xs: &[f64]| xs.iter().cloned().fold(0.0, f64::max);
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

        // Intake at each rate against one serve; memory after it all.
        let cfg = rig.config("intake.db");
        let (serve, _) = rig.serve(&cfg);
        assert!(ready(&http, &serve.url).await, "never ready");
        rig.fake.set_webhook(&format!("{}/webhook", serve.url), SECRET);
        let (rss0, _) = serve.rss_kb();
        println!("| intake, real binary, SQLite (open loop, {seconds} s per rate) | achieved /s | 202 p50 | 202 p99 | max | not 202 |");
        println!("|---|---|---|---|---|---|");
        let mut next_job = 1_000_000u64;
        let mut delivered = 0u64;
        for &rate in &rates {
            let (mut lat, achieved, failed) =
                intake(&http, &serve.url, rate, seconds, next_job).await;
            next_job += rate * seconds;
            delivered += rate * seconds;
            let mx = max(&lat);
            println!(
                "| {rate} deliveries/s | {achieved:.0} | {:.2} ms | {:.2} ms | {mx:.2} ms | {failed} |",
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99)
            );
        }
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
        println!();
        println!("| memory of serve | value |");
        println!("|---|---|");
        println!("| RSS when ready | {:.1} MB |", rss0 as f64 / 1024.0);
        println!(
            "| RSS tracking {delivered} queued jobs | {:.1} MB (peak {:.1} MB) |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        drop(serve);
        let _ = std::fs::remove_dir_all(&rig.dir);
    });
}
