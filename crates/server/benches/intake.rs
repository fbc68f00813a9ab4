//! Webhook intake under load, in process on loopback, with the SQLite store:
//! 202 latency at a fixed delivery rate, and the time from a queued webhook
//! to the launch call reaching the (simulated) cloud.
//!
//! `cargo bench -p runfleet-server --bench intake [-- RATE SECONDS [WINDOW_MS]]`
//! (defaults: 500 deliveries/s for 4 s, the default launch batching window
//! `server.launch_batch_window`, 25 ms). Prints a table. Run it with
//! `WINDOW_MS` 0 in the same conditions to see what batching costs a job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runfleet_engine::driver::now_ms;
use runfleet_engine::ports::{Cloud, LaunchOutcome, LaunchRequest, PortResult};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{LaunchHook, OnLaunch, SimCloud, SimGitHub};
use runfleet_sim::world::{World, WorldConfig};

/// Notes when each launch call first arrives at the simulated cloud, by
/// its token (a batch id: one call for several launches), and for how many
/// instances.
#[derive(Default)]
struct Timed {
    calls: Mutex<HashMap<String, (Instant, u32)>>,
}

#[async_trait]
impl OnLaunch for Timed {
    async fn launch(&self, inner: &dyn Cloud, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        self.calls
            .lock()
            .unwrap()
            .entry(req.client_token.clone())
            .or_insert_with(|| (Instant::now(), req.count));
        inner.launch(req).await
    }
}

impl Timed {
    /// Instances asked for so far.
    fn asked(&self) -> u64 {
        self.calls
            .lock()
            .unwrap()
            .values()
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

fn pct(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if xs.is_empty() {
        0.0
    } else {
        xs[(((xs.len() - 1) as f64) * q).round() as usize]
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let window = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(runfleet_core::config::DEFAULT_LAUNCH_BATCH_WINDOW);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut cfg = runfleet_sim::demo_config();
        cfg.server.launch_batch_window = window;
        // Room for every job: this measures runfleet, not the pool cap or EC2's bucket.
        for p in &mut cfg.pools {
            p.max_runners = 100_000;
        }
        let dir = std::env::temp_dir().join(format!("runfleet-intake-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store_url = format!("sqlite://{}/bench.db", dir.display());
        let store = runfleet_store::open(&store_url).await.unwrap();
        let mut world = World::new(WorldConfig { launch_bucket: (1_000_000, 1_000_000.0), instance_bucket: (1_000_000, 1_000_000.0), ssm_put_bucket: (1_000_000, 1_000_000.0), ..WorldConfig::default() });
        world.now = now_ms();
        world.repos = vec!["acme/app".into()];
        let world = Arc::new(Mutex::new(world));
        let cloud = Arc::new(LaunchHook {
            inner: Arc::new(SimCloud(world.clone())),
            hook: Timed::default(),
        });
        let opts = EngineOptions { launch_bucket: (1_000_000, 1_000_000.0), instance_bucket: (1_000_000, 1_000_000.0), provision_bucket: (1_000_000, 1_000_000.0), ..EngineOptions::default() };
        let engine = Engine::new(Arc::new(cfg), Arc::new(SimGitHub(world.clone())), cloud.clone(), store, opts, now_ms()).await.unwrap();
        let running = runfleet_server::start(engine, "127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", running.addr);
        let http = reqwest::Client::new();
        let total = rate * seconds;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for n in 0..total {
            let due = start + interval * n as u32;
            tokio::time::sleep_until(due.into()).await;
            let body = serde_json::json!({
                "action": "queued",
                "workflow_job": {"id": 1_000_000 + n, "run_id": 7, "status": "queued", "labels": ["self-hosted", "linux", "x64"], "runner_name": null, "created_at": "2026-11-23T10:00:00Z"},
                "repository": {"full_name": "acme/app"}
            })
            .to_string();
            let sig = runfleet_github::webhook::sign(b"simulated-secret", body.as_bytes());
            let req = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", format!("bench-{n}"))
                .header("x-hub-signature-256", sig)
                .body(body);
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let r = req.send().await.expect("sent");
                assert_eq!(r.status(), 202);
                (1_000_000 + n, sent, sent.elapsed())
            }));
        }
        let mut acks = Vec::new();
        let mut sent_at = HashMap::new();
        for t in tasks {
            let (job, sent, took) = t.await.unwrap();
            acks.push(took.as_secs_f64() * 1000.0);
            sent_at.insert(job, sent);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(60);
        while cloud.hook.asked() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let calls = cloud.hook.calls.lock().unwrap().clone();
        running.stop().await;
        // Which call each job's launch went out in: its batch, from the store.
        let snap = runfleet_store::open(&store_url).await.unwrap().load().await.unwrap();
        let mut to_launch: Vec<f64> = snap
            .launches
            .iter()
            .filter_map(|l| {
                let sent = sent_at.get(&l.job_id?)?;
                let (at, _) = calls.get(&l.batch.as_ref()?.id)?;
                Some(at.duration_since(*sent).as_secs_f64() * 1000.0)
            })
            .collect();
        let launched = to_launch.len();
        let _ = std::fs::remove_dir_all(&dir);
        println!("| measure (rate {rate}/s, {total} deliveries, SQLite, launch_batch_window {window:?}) | p50 | p99 | max |");
        println!("|---|---|---|---|");
        let row = |name: &str, xs: &mut Vec<f64>| {
            let (p50, p99) = (pct(xs, 0.5), pct(xs, 0.99));
            let max = xs.iter().cloned().fold(0.0, f64::max);
            println!("| {name} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |");
        };
        row("webhook -> 202", &mut acks);
        row("webhook -> launch call", &mut to_launch);
        println!(
            "achieved rate: {:.0} deliveries/s; launches seen: {launched} of {total}, in {} calls",
            total as f64 / elapsed,
            calls.len()
        );
    });
}
