//! `runfleet status`: what the store holds, without calling GitHub or AWS.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use runfleet_core::config::Config;
use runfleet_core::model::{JobState, LaunchState};
use runfleet_engine::driver::now_ms;
use serde_json::json;

pub fn run(cfg: Config, as_json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A status query must not create an empty store where none was: say so.
    if let Ok(runfleet_store::StoreUrl::SqliteFile(path)) =
        runfleet_store::StoreUrl::parse(&cfg.server.store)
        && !path.exists()
    {
        return Err(anyhow!(
            "server.store: no store at {} (has `runfleet serve` run with this config, in this directory?)",
            path.display()
        ));
    }
    let snap = rt.block_on(async {
        let store = runfleet_store::open(&cfg.server.store)
            .await
            .map_err(|e| anyhow!("server.store: {e}"))?;
        store
            .load()
            .await
            .map_err(|e| anyhow!("cannot read the store: {}", e.message))
    })?;
    let now = now_ms();
    let mut pools: BTreeMap<&str, (usize, usize, u32)> = cfg
        .pools
        .iter()
        .map(|p| (p.name.as_str(), (0, 0, p.max_runners)))
        .collect();
    let alive: Vec<_> = snap
        .instances
        .iter()
        .filter(|i| i.fleet == cfg.fleet && i.alive())
        .collect();
    for i in &alive {
        if let Some(p) = pools.get_mut(i.pool.as_str()) {
            p.0 += 1;
        }
    }
    for l in snap
        .launches
        .iter()
        .filter(|l| l.state == LaunchState::Requested)
    {
        if let Some(p) = pools.get_mut(l.pool.as_str()) {
            p.0 += 1;
        }
    }
    // What the status page calls each instance (busy, idle, warm, booting,
    // terminating) needs its launch: the same reading as the page.
    let obs = runfleet_core::plan::Observed {
        launches: snap
            .launches
            .iter()
            .map(|l| (l.id.clone(), l.clone()))
            .collect(),
        ..Default::default()
    };
    let runner_state =
        |i: &runfleet_core::model::Instance| runfleet_server::view::instance_state(&obs, i);
    let queued: Vec<_> = snap
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Queued)
        .collect();
    for j in &queued {
        if let Some(p) = runfleet_core::labels::pool_for(&cfg, &j.labels)
            && let Some(e) = pools.get_mut(p.name.as_str())
        {
            e.1 += 1;
        }
    }
    if as_json {
        let v = json!({
            "fleet": cfg.fleet,
            "pools": pools.iter().map(|(n, (used, q, max))| json!({"name": n, "used": used, "max_runners": max, "queued": q})).collect::<Vec<_>>(),
            "instances": alive.iter().map(|i| json!({"id": i.id, "pool": i.pool, "state": i.state.as_str(), "launched_at": i.launched_at, "runner_online": i.runner_online_at.is_some(), "busy": i.busy, "runner": runner_state(i)})).collect::<Vec<_>>(),
            "queued_jobs": queued.iter().map(|j| json!({"id": j.id, "repo": j.repo, "labels": j.labels, "queued_at": j.queued_at})).collect::<Vec<_>>(),
            "failed_jobs": snap.jobs.iter().filter(|j| matches!(j.state, JobState::Failed | JobState::Ignored)).map(|j| json!({"id": j.id, "repo": j.repo, "state": j.state.as_str(), "reason": j.reason})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("fleet {}", cfg.fleet);
    println!("{:<24} {:>10} {:>8}", "pool", "used/max", "queued");
    for (n, (used, q, max)) in &pools {
        println!("{n:<24} {:>10} {q:>8}", format!("{used}/{max}"));
    }
    println!("\n{} instances alive", alive.len());
    for i in &alive {
        let runner = runner_state(i);
        println!(
            "  {:<21} {:<16} {:<14} {:<11} {}s",
            i.id,
            i.pool,
            i.state.as_str(),
            runner,
            now.saturating_sub(i.launched_at) / 1000
        );
    }
    println!("\n{} jobs queued", queued.len());
    for j in &queued {
        println!(
            "  {:<12} {:<30} waiting {}s  {:?}",
            j.id,
            j.repo,
            now.saturating_sub(j.queued_at) / 1000,
            j.labels
        );
    }
    Ok(ExitCode::SUCCESS)
}
