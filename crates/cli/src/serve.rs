//! `runfleet serve`: the adapters, the store, the engine and the HTTP
//! service, until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use runfleet_core::config::Config;
use runfleet_engine::driver::now_ms;
use runfleet_engine::{Engine, EngineOptions};
use tracing::info;

pub fn run(cfg: Config) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = Arc::new(cfg);
        let store = runfleet_store::open(&cfg.server.store)
            .await
            .map_err(|e| anyhow!("server.store: {e}"))?;
        let github = runfleet_github::GitHubClient::new(&cfg.github)
            .map_err(|e| anyhow!("github: {}", e.message))?;
        let cloud = runfleet_aws::AwsCloud::from_config(&cfg).await;
        let engine = Engine::new(
            cfg.clone(),
            Arc::new(github),
            Arc::new(cloud),
            store,
            EngineOptions::default(),
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
