//! `runfleet check` and `runfleet reap`: operator commands over the real
//! adapters.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use runfleet_core::config::Config;
use runfleet_core::model::TerminateReason;
use runfleet_core::plan::Action;
use runfleet_engine::driver::now_ms;
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{GitHub, Mutation, Store};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_github::GitHubClient;

/// Config, GitHub credentials, and every AWS permission the config needs.
pub fn check(cfg: Config) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let mut rows = vec![runfleet_aws::check::CheckRow {
            name: "config".into(),
            ok: true,
            detail: format!("fleet {}, {} pools", cfg.fleet, cfg.pools.len()),
        }];
        rows.extend(github_rows(&cfg).await);
        rows.extend(runfleet_aws::check::check(&cfg).await);
        rows
    });
    print!("{}", runfleet_aws::check::render_table(&rows));
    Ok(if rows.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn github_rows(cfg: &Config) -> Vec<runfleet_aws::check::CheckRow> {
    use runfleet_aws::check::CheckRow;
    let client = match GitHubClient::new(&cfg.github) {
        Ok(c) => c,
        Err(e) => {
            return vec![CheckRow {
                name: "github: credentials".into(),
                ok: false,
                detail: e.message,
            }];
        }
    };
    let mut rows = Vec::new();
    for pattern in cfg.github.repos.clone().unwrap_or_default() {
        let (name, result) = match pattern.strip_suffix("/*") {
            Some(owner) => (
                format!("github: list repositories of {owner}"),
                client
                    .list_repos(owner)
                    .await
                    .map(|r| format!("{} repositories", r.len())),
            ),
            None => (
                format!("github: runners of {pattern}"),
                client
                    .list_runners(&runfleet_core::model::Scope::Repo(pattern.clone()))
                    .await
                    .map(|r| format!("can manage self-hosted runners ({} registered)", r.len())),
            ),
        };
        rows.push(match result {
            Ok(detail) => CheckRow {
                name,
                ok: true,
                detail,
            },
            Err(e) => CheckRow {
                name,
                ok: false,
                detail: e.message,
            },
        });
    }
    rows
}

/// The reap's share of a plan: instances nothing needs, stale parameters,
/// runners without an instance. Launches and runner provisioning are left
/// to `serve`.
fn reapable(a: &Action) -> bool {
    match a {
        Action::Terminate { reason, .. } => {
            matches!(
                reason,
                TerminateReason::Orphan
                    | TerminateReason::MaxLifetime
                    | TerminateReason::PoolRemoved
            )
        }
        Action::DeleteParameter { .. } | Action::DeleteRunner { .. } => true,
        _ => false,
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Terminate {
            instance_id,
            pool,
            reason,
            ..
        } => {
            format!("terminate {instance_id} (pool {pool}): {}", reason.as_str())
        }
        Action::DeleteParameter { instance_id } => {
            format!(
                "delete parameter of {instance_id}: left behind (instance gone or unknown, or its own delete failed)"
            )
        }
        Action::DeleteRunner { name, scope, .. } => {
            format!("deregister runner {name} in {scope}: its instance is gone")
        }
        other => format!("{other:?}"),
    }
}

pub fn reap(cfg: Config, dry_run: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = Arc::new(cfg);
        let durable = runfleet_store::open(&cfg.server.store)
            .await
            .map_err(|e| anyhow!("server.store: {e}"))?;
        // A dry run works on a copy of the state, so not even the store changes.
        let store: Arc<dyn Store> = if dry_run {
            let snap = durable
                .load()
                .await
                .map_err(|e| anyhow!("cannot read the store: {}", e.message))?;
            let copy = Arc::new(MemStore::new());
            let mut muts: Vec<Mutation> = Vec::new();
            muts.extend(snap.jobs.into_iter().map(Mutation::PutJob));
            muts.extend(snap.launches.into_iter().map(Mutation::PutLaunch));
            muts.extend(snap.instances.into_iter().map(Mutation::PutInstance));
            muts.push(Mutation::Cursor(snap.cursor));
            copy.apply(&muts)
                .await
                .map_err(|e| anyhow!("{}", e.message))?;
            copy
        } else {
            durable
        };
        let github =
            GitHubClient::new(&cfg.github).map_err(|e| anyhow!("github: {}", e.message))?;
        let cloud = runfleet_aws::AwsCloud::from_config(&cfg).await;
        let now = now_ms();
        let opts = EngineOptions {
            list_all_scopes: true,
            ..EngineOptions::default()
        };
        let mut engine = Engine::new(
            cfg.clone(),
            Arc::new(github),
            Arc::new(cloud),
            store,
            opts,
            now,
        )
        .await
        .map_err(|e| anyhow!("cannot load state: {}", e.message))?;
        engine
            .reconcile(now)
            .await
            .map_err(|e| anyhow!("reconcile: {}", e.message))?;
        let h = engine.health();
        if let Some(e) = h.cloud_error.as_ref().filter(|_| !h.cloud_reached) {
            return Err(anyhow!("cannot list this fleet's instances: {e}"));
        }
        let actions: Vec<Action> = engine.plan(now).into_iter().filter(reapable).collect();
        for a in &actions {
            println!("{}{}", if dry_run { "would " } else { "" }, describe(a));
        }
        if actions.is_empty() {
            println!("nothing to reap");
        }
        if !dry_run && !actions.is_empty() {
            let n = actions.len();
            let done = engine
                .execute_actions(actions, now)
                .await
                .map_err(|e| anyhow!("{}", e.message))?;
            println!("{done} of {n} done");
            if done < n {
                return Ok(ExitCode::FAILURE);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
