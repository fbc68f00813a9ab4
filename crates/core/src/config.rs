//! Configuration: the TOML schema of INTERFACE.md, resolved and validated.
//!
//! Owns: the typed config, `env:`/`file:` indirection (through a [`SecretSource`]
//! supplied by the caller, so this module does no I/O itself), duration parsing,
//! and validation whose errors name the key and, where known, the line.
//! Never: prints a secret ([`Secret`] hides itself in `Debug`/`Display`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret value. `Debug` and `Display` never show it; use [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself. Call only where it is sent to its one destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
    SpotThenOnDemand,
}

impl Market {
    /// The capacity markets to try, in order.
    pub fn chain(self) -> &'static [CapacityMarket] {
        match self {
            Market::Spot => &[CapacityMarket::Spot],
            Market::OnDemand => &[CapacityMarket::OnDemand],
            Market::SpotThenOnDemand => &[CapacityMarket::Spot, CapacityMarket::OnDemand],
        }
    }
}

/// One EC2 purchasing option for a launch attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityMarket {
    Spot,
    OnDemand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X64,
    Arm64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerScope {
    Repo,
    Org,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub fleet: String,
    pub server: ServerConfig,
    pub github: GithubConfig,
    pub aws: AwsConfig,
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub store: String,
    pub reconcile_interval: Duration,
    pub completed_grace: Duration,
    pub boot_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GithubConfig {
    pub api_url: String,
    pub webhook_secret: Option<Secret>,
    pub token: Option<Secret>,
    pub app_id: Option<u64>,
    pub app_private_key: Option<Secret>,
    pub installation_id: Option<u64>,
    /// `None` only with App auth: every repository of the installations.
    pub repos: Option<Vec<String>>,
    pub poll: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub labels: Vec<String>,
    pub launch_template: String,
    pub launch_template_version: Option<String>,
    pub instance_types: Vec<String>,
    /// Empty: the launch template's subnet.
    pub subnets: Vec<String>,
    pub market: Market,
    pub os: Os,
    pub arch: Arch,
    pub max_runners: u32,
    pub warm: u32,
    pub runner_scope: RunnerScope,
    pub runner_group_id: u64,
    pub max_lifetime: Duration,
    pub runner_version: Option<String>,
    pub setup_script: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<Secret>,
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
