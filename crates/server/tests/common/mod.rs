//! A service on 127.0.0.1:0 over the simulator's GitHub and EC2, for HTTP tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runfleet_engine::driver::now_ms;
use runfleet_engine::memstore::MemStore;
use runfleet_engine::{Engine, EngineOptions};
use runfleet_server::{Running, start};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::world::{World, WorldConfig};

pub const SECRET: &str = "simulated-secret";

pub struct Service {
    pub running: Running,
    pub world: Arc<Mutex<World>>,
    pub store: Arc<MemStore>,
    pub url: String,
    pub http: reqwest::Client,
}

pub async fn service() -> Service {
    let config = runfleet_sim::demo_config();
    assert_eq!(
        config.github.webhook_secret.as_ref().map(|s| s.expose()),
        Some(SECRET)
    );
    service_with(config).await
}

/// A service with `config` (the demo's, adjusted) over a fresh simulated
/// world whose repositories are acme/app, acme/lib and acme/infra.
pub async fn service_with(config: runfleet_core::config::Config) -> Service {
    let mut world = World::new(WorldConfig::default());
    world.now = now_ms();
    world.repos = vec!["acme/app".into(), "acme/lib".into(), "acme/infra".into()];
    let world = Arc::new(Mutex::new(world));
    let store = Arc::new(MemStore::new());
    let engine = Engine::new(
        Arc::new(config),
        Arc::new(SimGitHub(world.clone())),
        Arc::new(SimCloud(world.clone())),
        store.clone(),
        EngineOptions::default(),
        now_ms(),
    )
    .await
    .expect("engine starts");
    let running = start(engine, "127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", running.addr);
    Service {
        running,
        world,
        store,
        url,
        http: reqwest::Client::new(),
    }
}

/// A `workflow_job` payload as GitHub sends it (trimmed to what matters).
pub fn job_payload(action: &str, job_id: u64, repo: &str, labels: &[&str]) -> String {
    serde_json::json!({
        "action": action,
        "workflow_job": {
            "id": job_id,
            "run_id": job_id / 10,
            "status": action,
            "labels": labels,
            "runner_name": null,
            "created_at": "2026-11-23T10:00:00Z",
            "started_at": "2026-11-23T10:00:00Z",
            "completed_at": null,
            "conclusion": null,
            "head_branch": "main",
            "name": "build"
        },
        "repository": { "full_name": repo, "name": repo.split('/').nth(1).unwrap_or(repo) },
        "sender": { "login": "octocat" }
    })
    .to_string()
}

impl Service {
    pub async fn deliver(
        &self,
        event: &str,
        delivery: &str,
        body: &str,
        signature: Option<String>,
    ) -> reqwest::Response {
        let sig = signature
            .unwrap_or_else(|| runfleet_github::webhook::sign(SECRET.as_bytes(), body.as_bytes()));
        self.http
            .post(format!("{}/webhook", self.url))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
    }

    /// Instances of this fleet the simulated EC2 has, alive or not.
    pub fn instances(&self) -> Vec<runfleet_sim::world::SimInstance> {
        let w = self.world.lock().unwrap();
        w.instances
            .values()
            .filter(|i| i.tag("runfleet:fleet") == Some("demo"))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until `cond` holds; the engine acts within a step,
    /// woken by intake, so this is milliseconds in practice.
    pub async fn until(&self, what: &str, mut cond: impl FnMut(&Service) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request sent")
    }
}
