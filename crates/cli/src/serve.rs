//! `runfleet serve`: the adapters, the store, the engine and the HTTP
//! service, until SIGTERM or SIGINT.
//!
//! On a PostgreSQL store any number of replicas may run: each accepts
//! webhooks and `/v1` calls into the shared store, and only the holder of
//! the leadership lease (`server.lease_ttl`) reconciles and launches; see
//! `runfleet_engine::lease`. A SQLite store is one process's: no lease.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use runfleet_core::config::Config;
use runfleet_engine::driver::now_ms;
use runfleet_engine::lease::{Lease, LeasedStore};
use runfleet_engine::ports::Store;
use runfleet_engine::{Engine, EngineOptions};
use tracing::info;

pub fn run(cfg: Config) -> Result<ExitCode> {
    crate::memory::limit_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        crate::memory::spawn_trim(crate::memory::TRIM_EVERY);
        let cfg = Arc::new(cfg);
        let store = runfleet_store::open(&cfg.server.store)
            .await
            .map_err(|e| anyhow!("server.store: {e}"))?;
        let replicated = matches!(
            runfleet_store::StoreUrl::parse(&cfg.server.store),
            Ok(runfleet_store::StoreUrl::Postgres { .. })
        );
        let (store, lease) = if replicated {
            let lease = Lease::new(store.clone(), replica_id(), cfg.server.lease_ttl);
            info!(replica = %lease.replica(), lease_ttl = ?cfg.server.lease_ttl, "replica on a shared store: acting only while holding the lease");
            let leased: Arc<dyn Store> = Arc::new(LeasedStore::new(store, lease.clone()));
            (leased, Some(lease))
        } else {
            (store, None)
        };
        let github = runfleet_github::GitHubClient::new(&cfg.github)
            .map_err(|e| anyhow!("github: {}", e.message))?;
        let cloud = runfleet_aws::AwsCloud::from_config(&cfg).await;
        let engine = Engine::new(
            cfg.clone(),
            Arc::new(github),
            Arc::new(cloud),
            store,
            EngineOptions {
                lease,
                ..EngineOptions::default()
            },
            now_ms(),
        )
        .await
        .map_err(|e| anyhow!("cannot load state from the store: {}", e.message))?;
        let running = runfleet_server::start(engine, &cfg.server.listen)
            .await
            .with_context(|| format!("cannot listen on server.listen = {}", cfg.server.listen))?;
        // Machines (tests, supervisors) learn the bound port from stdout.
        println!(
            "{}",
            serde_json::json!({ "listening": running.addr.to_string() })
        );
        info!(addr = %running.addr, fleet = %cfg.fleet, "runfleet serving");
        shutdown_signal().await;
        info!("shutting down: intake stopped, finishing the step under way");
        running.stop().await;
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// `hostname-pid-random`: unique per process, readable in logs and on the
/// status page.
fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        h.finish() & 0xff_ffff
    )
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
