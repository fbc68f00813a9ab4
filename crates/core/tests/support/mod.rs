//! The config fixture the planner's property tests and its benchmark share:
//! a valid [`Config`] built directly (no TOML), which each caller adjusts.

#![allow(dead_code)]

use std::time::Duration;

use runfleet_core::config::*;

pub fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// A linux x64 pool over two instance types in two subnets, spot then
/// on-demand, repository-scoped, six hours of `max_lifetime`, no warm pool.
pub fn pool(name: &str, labels: &[&str], max_runners: u32) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        labels: strings(labels),
        launch_template: "lt-0".into(),
        launch_template_version: None,
        instance_types: strings(&["m7i.large", "m6i.large"]),
        subnets: strings(&["subnet-a", "subnet-b"]),
        market: Market::SpotThenOnDemand,
        os: Os::Linux,
        arch: Arch::X64,
        max_runners,
        warm: 0,
        warm_schedule: Vec::new(),
        runner_scope: RunnerScope::Repo,
        runner_group_id: 1,
        max_lifetime: Duration::from_secs(6 * 3600),
        runner_version: None,
        setup_script: None,
        role_arn: None,
        external_id: None,
        rerun_interrupted: true,
    }
}

/// A config of `fleet` with token auth, `repos` allowed and `pools`;
/// reconcile every 30 s, 60 s of grace, 10 minutes of boot timeout.
pub fn config(fleet: &str, repos: &[&str], pools: Vec<PoolConfig>) -> Config {
    Config {
        fleet: fleet.into(),
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            store: "sqlite://x.db".into(),
            reconcile_interval: Duration::from_secs(30),
            completed_grace: Duration::from_secs(60),
            boot_timeout: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(15),
            launch_batch_window: runfleet_core::config::DEFAULT_LAUNCH_BATCH_WINDOW,
            launch_batch_max: runfleet_core::config::DEFAULT_LAUNCH_BATCH_MAX,
        },
        github: GithubConfig {
            api_url: "https://api.github.com".into(),
            webhook_secret: None,
            token: Some(Secret::new("t")),
            app_id: None,
            app_private_key: None,
            installation_id: None,
            repos: Some(strings(repos)),
            poll: false,
        },
        aws: AwsConfig {
            region: None,
            role_arn: None,
            external_id: None,
            events_queue: None,
        },
        api: ApiConfig::default(),
        pools,
    }
}
