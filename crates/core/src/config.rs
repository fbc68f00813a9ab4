//! Configuration: the TOML schema of INTERFACE.md, resolved and validated.
//!
//! Owns: the typed, resolved config ([`Config`] and its parts), the private
//! serde "raw" schema it is read from (unknown keys are errors), defaults,
//! `env:NAME` / `file:PATH` indirection for every string value, duration
//! parsing, and validation whose errors name the key path (`pool[1].labels`)
//! and, where the TOML spans tell it, the line.
//!
//! Never: reads the environment or the file system itself (the caller passes a
//! [`SecretSource`]; the CLI's reads the real ones, [`MapSecrets`] serves
//! tests and the simulator), and never puts a secret value into an error
//! message or `Debug` output ([`Secret`] hides itself; the password of a
//! `postgres://` store URL is masked in `Debug`).
//!
//! Public boundary: [`parse`] (also [`Config::parse`]) turns TOML text into a
//! [`Config`] or one single-line [`ConfigError`]; [`parse_duration`] and
//! [`format_duration`]; [`Config::repo_allowed`], [`Config::pool`] and
//! [`PoolConfig::warm_at`] (the warm target at a time, from the pool's
//! `[[pool.warm_schedule]]` entries, see [`crate::schedule`]).
//!
//! Indirection is one level deep: a value read from `env:`/`file:` is used as
//! it is, never looked up again. From a file exactly one trailing newline
//! (`"\n"` or `"\r\n"`) is dropped. `file:` paths are passed to the
//! [`SecretSource`] unchanged, so relative paths mean whatever the caller
//! makes them mean. Integer and boolean keys (`app_id`, `max_runners`,
//! `poll`, ...) also accept an `env:`/`file:` string whose content is the
//! number or `true`/`false`; any other string there is a type error.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::model::Millis;
pub use crate::schedule::WarmWindow;
use crate::schedule::{self, DAY_MINUTES, EVERY_DAY};

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
    /// `[api]`: the on-demand API (`POST /v1/start`) of `serve`.
    pub api: ApiConfig,
    pub pools: Vec<PoolConfig>,
}

/// GitHub Actions' OIDC issuer, the default `api.oidc_issuer`.
pub const GITHUB_OIDC_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// `[api]`: who may ask `serve` for a runner (`POST /v1/start`) and how
/// many at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// `enabled` (default true): false answers 404 on every `/v1` route.
    pub enabled: bool,
    /// `oidc_issuer`: tokens must carry this `iss`; its JWKS is fetched
    /// from `<issuer>/.well-known/jwks`.
    pub oidc_issuer: String,
    /// `oidc_audience` (default `runfleet`): tokens must carry this `aud`.
    pub oidc_audience: String,
    /// `hmac` (default true): also accept the token-and-HMAC scheme.
    pub hmac: bool,
    /// `max_runs_per_repo` (default 10): live runs (not done or failed) of
    /// one repository at once; more answers 429.
    pub max_runs_per_repo: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            oidc_issuer: GITHUB_OIDC_ISSUER.to_string(),
            oidc_audience: "runfleet".to_string(),
            hmac: true,
            max_runs_per_repo: 10,
        }
    }
}

/// `Debug` masks the password of the store URL (`postgres://user:***@host/db`).
#[derive(Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub store: String,
    pub reconcile_interval: Duration,
    pub completed_grace: Duration,
    pub boot_timeout: Duration,
    /// Several `serve` replicas on one PostgreSQL store: the leadership
    /// lease's period. The leader renews it every third of it; a replica
    /// takes over at most this long (plus a third) after the leader died.
    pub lease_ttl: Duration,
    /// Launch batching: a pool's launches that come due within this long of
    /// its last launch call wait and go out together as one call (the first
    /// launch after a quiet spell goes at once: a lone job is never held).
    /// Zero: no waiting (launches still go together when several are due
    /// at once, or while EC2's request bucket is empty).
    pub launch_batch_window: Duration,
    /// At most this many instances per launch call.
    pub launch_batch_max: u32,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("store", &mask_url_password(&self.store))
            .field("reconcile_interval", &self.reconcile_interval)
            .field("completed_grace", &self.completed_grace)
            .field("boot_timeout", &self.boot_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("launch_batch_window", &self.launch_batch_window)
            .field("launch_batch_max", &self.launch_batch_max)
            .finish()
    }
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
    /// `events_queue`: URL of the SQS queue an EventBridge rule feeds with
    /// EC2 spot interruption warnings, rebalance recommendations and
    /// instance state changes; `None`: no events, reconciliation only.
    pub events_queue: Option<String>,
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
    /// Warm instances kept waiting when no `warm_schedule` entry applies.
    pub warm: u32,
    /// `[[pool.warm_schedule]]`: the warm target in given hours and days;
    /// the first entry open at a time wins, else `warm`. See
    /// [`PoolConfig::warm_at`].
    pub warm_schedule: Vec<WarmWindow>,
    pub runner_scope: RunnerScope,
    pub runner_group_id: u64,
    pub max_lifetime: Duration,
    pub runner_version: Option<String>,
    pub setup_script: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<Secret>,
    /// `rerun_interrupted` (default true): a job that failed because EC2
    /// reclaimed its spot instance under it is re-run once.
    pub rerun_interrupted: bool,
}

impl PoolConfig {
    /// The pool's warm target at `now` (Unix epoch milliseconds): the
    /// `warm` of the first `warm_schedule` entry open at `now`, else the
    /// pool's `warm`. Never more than `max_runners` (validated).
    pub fn warm_at(&self, now: Millis) -> u32 {
        schedule::warm_target(&self.warm_schedule, self.warm, now)
    }
}

impl Config {
    /// Same as the free function [`parse`].
    pub fn parse(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
        parse(text, secrets)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Whether jobs of `repo` ("owner/name") may be served: `github.repos`
    /// lists it, or lists "owner/*" for its owner, compared
    /// case-insensitively as GitHub does. Without `repos` (App auth) every
    /// repository is allowed. A string that is not "owner/name" never is.
    pub fn repo_allowed(&self, repo: &str) -> bool {
        let Some((owner, name)) = repo.split_once('/') else {
            return false;
        };
        if owner.is_empty() || name.is_empty() || name.contains('/') || name == "*" {
            return false;
        }
        let Some(allowed) = &self.github.repos else {
            return true;
        };
        allowed.iter().any(|entry| {
            let Some((a_owner, a_name)) = entry.split_once('/') else {
                return false;
            };
            a_owner.eq_ignore_ascii_case(owner)
                && (a_name == "*" || a_name.eq_ignore_ascii_case(name))
        })
    }
}

// ---------------------------------------------------------------------------
// Secret sources
// ---------------------------------------------------------------------------

/// Where `env:NAME` and `file:PATH` values come from. The core crate does no
/// I/O: the CLI implements this over the process environment and the file
/// system, tests and the simulator use [`MapSecrets`].
pub trait SecretSource {
    /// The value of environment variable `name`, `None` when it is not set.
    fn env(&self, name: &str) -> Option<String>;
    /// The whole content of the file at `path`, or why it cannot be read.
    /// The reason goes into a [`ConfigError`], so it must not contain the
    /// file's content.
    fn read_file(&self, path: &str) -> Result<String, String>;
}

/// A [`SecretSource`] backed by two maps: environment variables and
/// "files" (path to content). `Debug` lists the names, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MapSecrets {
    env: HashMap<String, String>,
    files: HashMap<String, String>,
}

impl MapSecrets {
    pub fn new() -> Self {
        Self::default()
    }
    /// Builder form of [`MapSecrets::set_env`].
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_env(name, value);
        self
    }
    /// Builder form of [`MapSecrets::set_file`].
    pub fn with_file(mut self, path: impl Into<String>, content: impl Into<String>) -> Self {
        self.set_file(path, content);
        self
    }
    pub fn set_env(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.env.insert(name.into(), value.into());
    }
    pub fn set_file(&mut self, path: impl Into<String>, content: impl Into<String>) {
        self.files.insert(path.into(), content.into());
    }
}

impl SecretSource for MapSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "no such file".to_owned())
    }
}

impl fmt::Debug for MapSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut env: Vec<&String> = self.env.keys().collect();
        let mut files: Vec<&String> = self.files.keys().collect();
        env.sort();
        files.sort();
        f.debug_struct("MapSecrets")
            .field("env", &env)
            .field("files", &files)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The text is not valid TOML.
    Syntax,
    /// A key the schema does not have.
    UnknownKey,
    /// A value of the wrong TOML type (a string where an integer belongs, ...).
    WrongType,
    /// A required key is absent.
    Missing,
    /// An `env:` variable that is not set, or a `file:` that cannot be read.
    Indirection,
    /// A value of the right type that breaks a rule.
    Invalid,
}

/// Why a config was rejected. `Display` is one line,
/// `<key>: <what is wrong> (line N)`, or for unknown keys
/// ``unknown key `x` in pool[0] (line N)``. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    key: Option<String>,
    message: String,
    line: Option<usize>,
}

impl ConfigError {
    /// Control characters (a `\n` in a quoted key or path, ...) are escaped
    /// so that the error stays one line.
    fn new(
        kind: ConfigErrorKind,
        key: Option<String>,
        message: String,
        line: Option<usize>,
    ) -> Self {
        ConfigError {
            kind,
            key: key.map(|k| printable(&k)),
            message: printable(&message),
            line,
        }
    }

    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
    /// The key path the error is about, e.g. `pool[1].instance_types`,
    /// `server.boot_timeout`, `pool[0].labels[2]`. `None` for syntax errors.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// 1-based line in the TOML text, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
    /// What is wrong, without the key and the line.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.key) {
            (ConfigErrorKind::Syntax | ConfigErrorKind::UnknownKey, _) | (_, None) => {
                f.write_str(&self.message)?
            }
            (_, Some(key)) => write!(f, "{key}: {}", self.message)?,
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses `"90s"`, `"10m"`, `"6h"`, `"1h30m"`, `"500ms"`, `"2d"`: one or more
/// whole numbers each followed by a unit (`d`, `h`, `m`, `s`, `ms`), units
/// from largest to smallest, each at most once. `"0s"` is a valid (zero)
/// duration; whether zero is allowed is the caller's decision. The error
/// does not repeat the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str =
        "a duration is whole numbers with units, like \"90s\", \"10m\", \"1h30m\" or \"500ms\"";
    if s.is_empty() {
        return Err(format!("empty; {HINT}"));
    }
    let mut rest = s;
    let mut total: u64 = 0;
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(HINT.to_owned());
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => format!("missing unit after {number} (use d, h, m, s or ms)"),
                Some(_) => HINT.to_owned(),
            });
        }
        let Some(index) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
            let shown: String = unit.chars().take(10).collect();
            return Err(format!("unknown unit \"{shown}\" (use d, h, m, s or ms)"));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(
                "units must go from largest to smallest, each at most once (like \"1h30m\")"
                    .to_owned(),
            );
        }
        last_unit = Some(index);
        let value: u64 = number.parse().map_err(|_| "too large".to_owned())?;
        total = value
            .checked_mul(DURATION_UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| "too large".to_owned())?;
        rest = after;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way [`parse_duration`] reads it, e.g. `"1h30m"`,
/// `"500ms"`, `"0s"`. Precision is milliseconds (anything finer is dropped),
/// so `parse_duration(&format_duration(d))` gives back `d` for every `d`
/// that is a whole number of milliseconds below `u64::MAX` of them.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in DURATION_UNITS {
        let size = u128::from(size);
        let n = ms / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            ms %= size;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Raw (serde) schema: what the TOML text says, before resolution
// ---------------------------------------------------------------------------

type RawStr = Spanned<String>;
type RawList = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    fleet: Option<RawStr>,
    server: Option<Spanned<RawServer>>,
    github: Option<Spanned<RawGithub>>,
    aws: Option<Spanned<RawAws>>,
    api: Option<Spanned<RawApi>>,
    pool: Option<Spanned<Vec<Spanned<RawPool>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawApi {
    enabled: Option<Spanned<RawBool>>,
    oidc_issuer: Option<RawStr>,
    oidc_audience: Option<RawStr>,
    hmac: Option<Spanned<RawBool>>,
    max_runs_per_repo: Option<Spanned<RawInt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawServer {
    listen: Option<RawStr>,
    store: Option<RawStr>,
    reconcile_interval: Option<RawStr>,
    completed_grace: Option<RawStr>,
    boot_timeout: Option<RawStr>,
    lease_ttl: Option<RawStr>,
    launch_batch_window: Option<RawStr>,
    launch_batch_max: Option<Spanned<RawInt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGithub {
    api_url: Option<RawStr>,
    webhook_secret: Option<RawStr>,
    token: Option<RawStr>,
    app_id: Option<Spanned<RawInt>>,
    app_private_key: Option<RawStr>,
    installation_id: Option<Spanned<RawInt>>,
    repos: Option<RawList>,
    poll: Option<Spanned<RawBool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawAws {
    region: Option<RawStr>,
    role_arn: Option<RawStr>,
    external_id: Option<RawStr>,
    events_queue: Option<RawStr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPool {
    name: Option<RawStr>,
    labels: Option<RawList>,
    launch_template: Option<RawStr>,
    launch_template_version: Option<RawStr>,
    instance_types: Option<RawList>,
    subnets: Option<RawList>,
    market: Option<RawStr>,
    os: Option<RawStr>,
    arch: Option<RawStr>,
    max_runners: Option<Spanned<RawInt>>,
    warm: Option<Spanned<RawInt>>,
    warm_schedule: Option<Spanned<Vec<Spanned<RawWarmWindow>>>>,
    runner_scope: Option<RawStr>,
    runner_group_id: Option<Spanned<RawInt>>,
    max_lifetime: Option<RawStr>,
    runner_version: Option<RawStr>,
    setup_script: Option<RawStr>,
    role_arn: Option<RawStr>,
    external_id: Option<RawStr>,
    rerun_interrupted: Option<Spanned<RawBool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawWarmWindow {
    days: Option<RawList>,
    hours: Option<RawStr>,
    warm: Option<Spanned<RawInt>>,
    timezone: Option<RawStr>,
}

/// An integer, or a string (which must be `env:`/`file:` to be accepted).
enum RawInt {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                i64::try_from(v)
                    .map(RawInt::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawInt, E> {
                Err(E::custom("integer out of range"))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawInt, E> {
                Err(E::custom("integer out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawInt, E> {
                Ok(RawInt::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A boolean, or a string (which must be `env:`/`file:` to be accepted).
enum RawBool {
    Bool(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for RawBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawBool, E> {
                Ok(RawBool::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBool, E> {
                Ok(RawBool::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// `server.launch_batch_window` unless set: short enough that a job that
/// waits for others to share its launch call still reaches EC2 well inside
/// 50 ms, long enough to gather a burst of webhooks.
pub const DEFAULT_LAUNCH_BATCH_WINDOW: Duration = Duration::from_millis(25);
/// `server.launch_batch_max` unless set.
pub const DEFAULT_LAUNCH_BATCH_MAX: u32 = 20;
/// The largest `server.launch_batch_max` accepted (EC2's instance bucket
/// holds 1,000 launches; a call for more is throttled whole).
pub const MAX_LAUNCH_BATCH: u32 = 1000;

/// Reads, resolves and validates a config. `secrets` answers `env:NAME` and
/// `file:PATH` values. The first problem found is returned; see
/// [`ConfigError`].
///
/// Defaults: `server.listen` "127.0.0.1:8080", `server.store`
/// "sqlite://runfleet.db", `reconcile_interval` 30s, `completed_grace` 60s,
/// `boot_timeout` 10m, `lease_ttl` 15s, `launch_batch_window` 25ms,
/// `launch_batch_max` 20; `github.api_url` `"https://api.github.com"`, `poll`
/// false; per pool `subnets` [] (the launch template's), `market`
/// "on-demand" (never a spot interruption unless asked for), `os` "linux",
/// `arch` "x64", `max_runners` 10, `warm` 0, no `warm_schedule` (and in
/// an entry: every day, the whole day, `timezone` "UTC"), `runner_scope` "repo",
/// `runner_group_id` 1, `max_lifetime` 6h, `rerun_interrupted` true;
/// `aws.events_queue` none; `api.enabled` true, `api.oidc_issuer` GitHub
/// Actions' (`https://token.actions.githubusercontent.com`),
/// `api.oidc_audience` "runfleet", `api.hmac` true, `api.max_runs_per_repo` 10.
pub fn parse(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
    let raw = RawConfig::deserialize(de).map_err(|e| serde_error(text, &e))?;
    Cx { text, secrets }.config(&raw)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// Messages from the toml crate, flattened to one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError::new(
        ConfigErrorKind::Syntax,
        None,
        format!("invalid TOML: {}", one_line(e.message())),
        e.span().map(|s| line_of(text, s.start)),
    )
}

fn is_secret_key(path: &str) -> bool {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    matches!(
        leaf,
        "webhook_secret" | "token" | "app_private_key" | "external_id"
    )
}

/// Turns an error of the serde pass into a [`ConfigError`] naming the key,
/// found by looking the error's span up in the spanned TOML tree.
fn serde_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let line = span.as_ref().map(|s| line_of(text, s.start));
    let message = one_line(e.message());
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let located = span.as_ref().and_then(|s| {
        let root = DeTable::parse(text).ok()?;
        locate(root.get_ref(), s, unknown.is_some())
    });

    if let Some(name) = unknown {
        let (key, parent, name) = match located {
            Some(l) => (l.path, l.parent, l.name),
            None => (name.clone(), String::new(), name),
        };
        let message = if parent.is_empty() {
            format!("unknown key `{name}`")
        } else {
            format!("unknown key `{name}` in {parent}")
        };
        return ConfigError::new(ConfigErrorKind::UnknownKey, Some(key), message, line);
    }

    let key = located.as_ref().map(|l| l.path.clone());
    let secret = key.as_deref().is_some_and(is_secret_key);
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let expected = rest
            .rsplit_once(", expected ")
            .map(|(_, expected)| expected)
            .unwrap_or("another type");
        let expected = match (expected, key.as_deref()) {
            ("a sequence", Some("pool")) => "an array of [[pool]] tables",
            ("a sequence", Some(k)) if k.ends_with(".warm_schedule") => {
                "an array of [[pool.warm_schedule]] tables"
            }
            ("a sequence", _) => "an array",
            (other, _) => other,
        };
        let message = match located.map(|l| l.type_str) {
            Some(found) => {
                let article = if matches!(found, "integer" | "array") {
                    "an"
                } else {
                    "a"
                };
                format!("expected {expected}, found {article} {found}")
            }
            None => format!("expected {expected}"),
        };
        return ConfigError::new(ConfigErrorKind::WrongType, key, message, line);
    }
    let message = if secret {
        "invalid value".to_owned()
    } else {
        message
    };
    ConfigError::new(ConfigErrorKind::Invalid, key, message, line)
}

struct Located {
    path: String,
    /// The last key of `path` (for array items, that of the array).
    name: String,
    parent: String,
    type_str: &'static str,
}

/// Finds the key (or value) of the spanned TOML tree that `span` points at:
/// an exact span match beats containment, deeper beats shallower, and a key
/// beats a value only when `want_key`.
fn locate(root: &DeTable<'_>, span: &Range<usize>, want_key: bool) -> Option<Located> {
    struct Search<'s> {
        span: &'s Range<usize>,
        want_key: bool,
        best: Option<((bool, usize, bool), Located)>,
    }
    impl Search<'_> {
        fn consider(
            &mut self,
            at: Range<usize>,
            depth: usize,
            on_key: bool,
            found: impl FnOnce() -> Located,
        ) {
            let contains = at.start <= self.span.start && self.span.end <= at.end;
            if !contains {
                return;
            }
            let rank = (at == *self.span, depth, on_key == self.want_key);
            if self.best.as_ref().is_none_or(|(best, _)| rank > *best) {
                self.best = Some((rank, found()));
            }
        }
        fn table(&mut self, table: &DeTable<'_>, path: &str, depth: usize) {
            for (key, value) in table.iter() {
                let name: &str = key.get_ref();
                let child = if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                let type_str = value.get_ref().type_str();
                for (at, on_key) in [(key.span(), true), (value.span(), false)] {
                    self.consider(at, depth + 1, on_key, || Located {
                        path: child.clone(),
                        name: name.to_owned(),
                        parent: path.to_owned(),
                        type_str,
                    });
                }
                self.value(value.get_ref(), &child, name, depth + 1);
            }
        }
        fn value(&mut self, value: &DeValue<'_>, path: &str, name: &str, depth: usize) {
            match value {
                DeValue::Table(table) => self.table(table, path, depth),
                DeValue::Array(array) => {
                    for (i, item) in array.iter().enumerate() {
                        let child = format!("{path}[{i}]");
                        self.consider(item.span(), depth + 1, false, || Located {
                            path: child.clone(),
                            name: name.to_owned(),
                            parent: path.to_owned(),
                            type_str: item.get_ref().type_str(),
                        });
                        self.value(item.get_ref(), &child, name, depth + 1);
                    }
                }
                _ => {}
            }
        }
    }
    let mut search = Search {
        span,
        want_key,
        best: None,
    };
    search.table(root, "", 0);
    search.best.map(|(_, found)| found)
}

/// A resolved value and where it was written (`None`: a default).
struct At<T> {
    v: T,
    span: Option<Range<usize>>,
}

/// Resolution and validation context.
struct Cx<'a> {
    text: &'a str,
    secrets: &'a dyn SecretSource,
}

impl Cx<'_> {
    fn error(
        &self,
        kind: ConfigErrorKind,
        key: &str,
        span: Option<&Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(
            kind,
            Some(key.to_owned()),
            message.into(),
            span.map(|s| line_of(self.text, s.start)),
        )
    }

    fn invalid(
        &self,
        key: &str,
        span: Option<&Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(ConfigErrorKind::Invalid, key, span, message)
    }

    /// A required key is absent; `table` is the span of the table it belongs in.
    fn missing(&self, key: &str, table: Option<&Range<usize>>) -> ConfigError {
        self.error(
            ConfigErrorKind::Missing,
            key,
            table,
            "required key is missing",
        )
    }

    /// Applies `env:`/`file:` indirection to one string.
    fn resolve(&self, key: &str, raw: &str, span: &Range<usize>) -> Result<String, ConfigError> {
        let fail =
            |message: String| self.error(ConfigErrorKind::Indirection, key, Some(span), message);
        if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err(fail("\"env:\" needs a variable name".to_owned()));
            }
            self.secrets
                .env(name)
                .ok_or_else(|| fail(format!("environment variable {name} is not set")))
        } else if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err(fail("\"file:\" needs a path".to_owned()));
            }
            match self.secrets.read_file(path) {
                Ok(mut content) => {
                    if content.ends_with('\n') {
                        content.pop();
                        if content.ends_with('\r') {
                            content.pop();
                        }
                    }
                    Ok(content)
                }
                Err(reason) => Err(fail(format!(
                    "cannot read file {path}: {}",
                    one_line(&reason)
                ))),
            }
        } else {
            Ok(raw.to_owned())
        }
    }

    fn string(&self, key: &str, raw: &RawStr) -> Result<At<String>, ConfigError> {
        let span = raw.span();
        Ok(At {
            v: self.resolve(key, raw.get_ref(), &span)?,
            span: Some(span),
        })
    }

    fn opt_string(
        &self,
        key: &str,
        raw: Option<&RawStr>,
    ) -> Result<Option<At<String>>, ConfigError> {
        raw.map(|raw| self.string(key, raw)).transpose()
    }

    fn required(
        &self,
        key: &str,
        raw: Option<&RawStr>,
        table: Option<&Range<usize>>,
    ) -> Result<At<String>, ConfigError> {
        match raw {
            Some(raw) => self.string(key, raw),
            None => Err(self.missing(key, table)),
        }
    }

    fn secret(&self, key: &str, raw: Option<&RawStr>) -> Result<Option<At<Secret>>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let value = self.string(key, raw)?;
        if value.v.is_empty() {
            return Err(self.invalid(key, value.span.as_ref(), "must not be empty"));
        }
        Ok(Some(At {
            v: Secret(value.v),
            span: value.span,
        }))
    }

    fn list(&self, key: &str, raw: &RawList) -> Result<At<Vec<At<String>>>, ConfigError> {
        let items = raw
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, item)| self.string(&format!("{key}[{i}]"), item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(At {
            v: items,
            span: Some(raw.span()),
        })
    }

    /// A list that must not be empty, whose items must pass `check` and be
    /// unique (case-insensitively when `fold_case`).
    fn unique_list(
        &self,
        key: &str,
        raw: &RawList,
        fold_case: bool,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Vec<String>, ConfigError> {
        let list = self.list(key, raw)?;
        for (i, item) in list.v.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            check(&item.v).map_err(|m| self.invalid(&item_key, item.span.as_ref(), m))?;
            let same = |other: &At<String>| {
                if fold_case {
                    other.v.to_lowercase() == item.v.to_lowercase()
                } else {
                    other.v == item.v
                }
            };
            if let Some(first) = list.v[..i].iter().position(same) {
                let leaf = key.rsplit('.').next().unwrap_or(key);
                let how = if fold_case {
                    " (compared case-insensitively)"
                } else {
                    ""
                };
                return Err(self.invalid(
                    &item_key,
                    item.span.as_ref(),
                    format!("duplicate of {leaf}[{first}]{how}"),
                ));
            }
        }
        Ok(list.v.into_iter().map(|item| item.v).collect())
    }

    fn int(
        &self,
        key: &str,
        raw: Option<&Spanned<RawInt>>,
    ) -> Result<Option<At<i64>>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let span = raw.span();
        let v = match raw.get_ref() {
            RawInt::Int(v) => *v,
            RawInt::Text(text) => {
                if !is_indirect(text) {
                    return Err(self.error(
                        ConfigErrorKind::WrongType,
                        key,
                        Some(&span),
                        "expected an integer, found a string (write the number without quotes)",
                    ));
                }
                let resolved = self.resolve(key, text, &span)?;
                resolved.trim().parse().map_err(|_| {
                    self.invalid(key, Some(&span), "the value read is not an integer")
                })?
            }
        };
        Ok(Some(At {
            v,
            span: Some(span),
        }))
    }

    fn bool(
        &self,
        key: &str,
        raw: Option<&Spanned<RawBool>>,
    ) -> Result<Option<At<bool>>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let span = raw.span();
        let v = match raw.get_ref() {
            RawBool::Bool(v) => *v,
            RawBool::Text(text) => {
                if !is_indirect(text) {
                    return Err(self.error(
                        ConfigErrorKind::WrongType,
                        key,
                        Some(&span),
                        "expected true or false, found a string (write it without quotes)",
                    ));
                }
                match self.resolve(key, text, &span)?.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(self.invalid(
                            key,
                            Some(&span),
                            "the value read is not true or false",
                        ));
                    }
                }
            }
        };
        Ok(Some(At {
            v,
            span: Some(span),
        }))
    }

    /// An integer in `min..=max`, or `default` when absent.
    fn int_in(
        &self,
        key: &str,
        raw: Option<&Spanned<RawInt>>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<At<i64>, ConfigError> {
        Ok(self.opt_int_in(key, raw, min, max)?.unwrap_or(At {
            v: default,
            span: None,
        }))
    }

    /// An integer in `min..=max`, if present.
    fn opt_int_in(
        &self,
        key: &str,
        raw: Option<&Spanned<RawInt>>,
        min: i64,
        max: i64,
    ) -> Result<Option<At<i64>>, ConfigError> {
        let Some(value) = self.int(key, raw)? else {
            return Ok(None);
        };
        if value.v < min || value.v > max {
            let message = if max == i64::MAX {
                format!("must be at least {min}")
            } else {
                format!("must be between {min} and {max}")
            };
            return Err(self.invalid(key, value.span.as_ref(), message));
        }
        Ok(Some(value))
    }

    fn duration(
        &self,
        key: &str,
        raw: Option<&RawStr>,
        default: Duration,
        allow_zero: bool,
    ) -> Result<At<Duration>, ConfigError> {
        let Some(value) = self.opt_string(key, raw)? else {
            return Ok(At {
                v: default,
                span: None,
            });
        };
        let span = value.span.as_ref();
        let d = parse_duration(&value.v).map_err(|why| {
            self.invalid(
                key,
                span,
                format!("invalid duration {}: {why}", show(&value.v)),
            )
        })?;
        if d.is_zero() && !allow_zero {
            return Err(self.invalid(key, span, "must be longer than zero"));
        }
        Ok(At {
            v: d,
            span: value.span,
        })
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        raw: Option<&RawStr>,
        default: T,
        options: &[(&str, T)],
    ) -> Result<At<T>, ConfigError> {
        let Some(value) = self.opt_string(key, raw)? else {
            return Ok(At {
                v: default,
                span: None,
            });
        };
        match options.iter().find(|(name, _)| *name == value.v) {
            Some((_, v)) => Ok(At {
                v: *v,
                span: value.span,
            }),
            None => {
                let names: Vec<String> = options
                    .iter()
                    .map(|(name, _)| format!("\"{name}\""))
                    .collect();
                Err(self.invalid(
                    key,
                    value.span.as_ref(),
                    format!("{} is not one of {}", show(&value.v), names.join(", ")),
                ))
            }
        }
    }

    fn checked(
        &self,
        key: &str,
        value: &At<String>,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        check(&value.v).map_err(|m| self.invalid(key, value.span.as_ref(), m))
    }

    // -- sections ------------------------------------------------------------

    fn config(&self, raw: &RawConfig) -> Result<Config, ConfigError> {
        let fleet = self.required("fleet", raw.fleet.as_ref(), None)?;
        self.checked("fleet", &fleet, check_fleet)?;
        let server = self.server(raw.server.as_ref())?;
        let github = self.github(raw.github.as_ref())?;
        let aws = self.aws(raw.aws.as_ref())?;
        let api = self.api(raw.api.as_ref())?;
        let Some(raw_pools) = &raw.pool else {
            return Err(self.error(
                ConfigErrorKind::Missing,
                "pool",
                None,
                "at least one [[pool]] is required",
            ));
        };
        if raw_pools.get_ref().is_empty() {
            return Err(self.invalid(
                "pool",
                Some(&raw_pools.span()),
                "at least one [[pool]] is required",
            ));
        }
        let mut pools: Vec<PoolConfig> = Vec::with_capacity(raw_pools.get_ref().len());
        for (i, raw_pool) in raw_pools.get_ref().iter().enumerate() {
            let pool = self.pool(i, raw_pool, server.boot_timeout)?;
            if let Some(first) = pools.iter().position(|p| p.name == pool.name) {
                let span = raw_pool.get_ref().name.as_ref().map(Spanned::span);
                return Err(self.invalid(
                    &format!("pool[{i}].name"),
                    span.as_ref(),
                    format!("duplicate pool name (also pool[{first}])"),
                ));
            }
            pools.push(pool);
        }
        Ok(Config {
            fleet: fleet.v,
            server,
            github,
            aws,
            api,
            pools,
        })
    }

    fn api(&self, raw: Option<&Spanned<RawApi>>) -> Result<ApiConfig, ConfigError> {
        let mut api = ApiConfig::default();
        let Some(raw) = raw else { return Ok(api) };
        let r = raw.get_ref();
        if let Some(v) = self.bool("api.enabled", r.enabled.as_ref())? {
            api.enabled = v.v;
        }
        if let Some(v) = self.bool("api.hmac", r.hmac.as_ref())? {
            api.hmac = v.v;
        }
        if let Some(issuer) = self.opt_string("api.oidc_issuer", r.oidc_issuer.as_ref())? {
            self.checked("api.oidc_issuer", &issuer, check_http_url)?;
            api.oidc_issuer = issuer.v.trim_end_matches('/').to_string();
        }
        if let Some(aud) = self.opt_string("api.oidc_audience", r.oidc_audience.as_ref())? {
            self.checked("api.oidc_audience", &aud, |v| {
                if v.trim().is_empty() {
                    Err("must not be empty".to_string())
                } else {
                    Ok(())
                }
            })?;
            api.oidc_audience = aud.v;
        }
        let max = self.int_in(
            "api.max_runs_per_repo",
            r.max_runs_per_repo.as_ref(),
            10,
            1,
            i64::from(u32::MAX),
        )?;
        api.max_runs_per_repo = u32::try_from(max.v).unwrap_or(u32::MAX);
        Ok(api)
    }

    fn server(&self, raw: Option<&Spanned<RawServer>>) -> Result<ServerConfig, ConfigError> {
        let empty = RawServer {
            listen: None,
            store: None,
            reconcile_interval: None,
            completed_grace: None,
            boot_timeout: None,
            lease_ttl: None,
            launch_batch_window: None,
            launch_batch_max: None,
        };
        let r = raw.map(Spanned::get_ref).unwrap_or(&empty);
        let listen = match self.opt_string("server.listen", r.listen.as_ref())? {
            Some(listen) => {
                self.checked("server.listen", &listen, |v| {
                    v.parse::<SocketAddr>()
                        .map(drop)
                        .map_err(|_| "must be an IP address and port, like \"127.0.0.1:8080\" or \"[::]:8080\"".to_owned())
                })?;
                listen.v
            }
            None => "127.0.0.1:8080".to_owned(),
        };
        let store = match self.opt_string("server.store", r.store.as_ref())? {
            Some(store) => {
                self.checked("server.store", &store, check_store)?;
                store.v
            }
            None => "sqlite://runfleet.db".to_owned(),
        };
        Ok(ServerConfig {
            listen,
            store,
            reconcile_interval: self
                .duration(
                    "server.reconcile_interval",
                    r.reconcile_interval.as_ref(),
                    Duration::from_secs(30),
                    false,
                )?
                .v,
            completed_grace: self
                .duration(
                    "server.completed_grace",
                    r.completed_grace.as_ref(),
                    Duration::from_secs(60),
                    true,
                )?
                .v,
            boot_timeout: self
                .duration(
                    "server.boot_timeout",
                    r.boot_timeout.as_ref(),
                    Duration::from_secs(600),
                    false,
                )?
                .v,
            lease_ttl: self
                .duration(
                    "server.lease_ttl",
                    r.lease_ttl.as_ref(),
                    Duration::from_secs(15),
                    false,
                )?
                .v,
            launch_batch_window: self
                .duration(
                    "server.launch_batch_window",
                    r.launch_batch_window.as_ref(),
                    DEFAULT_LAUNCH_BATCH_WINDOW,
                    true,
                )?
                .v,
            launch_batch_max: u32::try_from(
                self.int_in(
                    "server.launch_batch_max",
                    r.launch_batch_max.as_ref(),
                    i64::from(DEFAULT_LAUNCH_BATCH_MAX),
                    1,
                    i64::from(MAX_LAUNCH_BATCH),
                )?
                .v,
            )
            .unwrap_or(DEFAULT_LAUNCH_BATCH_MAX),
        })
    }

    fn github(&self, raw: Option<&Spanned<RawGithub>>) -> Result<GithubConfig, ConfigError> {
        let Some(raw) = raw else {
            return Err(self.error(
                ConfigErrorKind::Missing,
                "github",
                None,
                "required table is missing (it holds the GitHub credentials)",
            ));
        };
        let table = raw.span();
        let table = Some(&table);
        let r = raw.get_ref();

        let api_url = match self.opt_string("github.api_url", r.api_url.as_ref())? {
            Some(url) => {
                self.checked("github.api_url", &url, check_http_url)?;
                url.v.trim_end_matches('/').to_owned()
            }
            None => "https://api.github.com".to_owned(),
        };
        let poll = self
            .bool("github.poll", r.poll.as_ref())?
            .is_some_and(|p| p.v);
        let webhook_secret = self.secret("github.webhook_secret", r.webhook_secret.as_ref())?;
        if webhook_secret.is_none() && !poll {
            return Err(self.error(
                ConfigErrorKind::Missing,
                "github.webhook_secret",
                table,
                "required unless poll = true",
            ));
        }
        let token = self.secret("github.token", r.token.as_ref())?;
        let app_id = self.opt_int_in("github.app_id", r.app_id.as_ref(), 1, i64::MAX)?;
        let app_private_key = self.secret("github.app_private_key", r.app_private_key.as_ref())?;
        let installation_id = self.opt_int_in(
            "github.installation_id",
            r.installation_id.as_ref(),
            1,
            i64::MAX,
        )?;

        let app = app_id.is_some() || app_private_key.is_some();
        match (&token, app) {
            (Some(token), true) => {
                return Err(self.invalid(
                    "github.token",
                    token.span.as_ref(),
                    "set either token or the app_* keys, not both",
                ));
            }
            (None, false) => {
                let key = if installation_id.is_some() {
                    "github.app_id"
                } else {
                    "github.token"
                };
                return Err(self.error(
                    ConfigErrorKind::Missing,
                    key,
                    table,
                    "GitHub auth is required: set token, or app_id and app_private_key",
                ));
            }
            _ => {}
        }
        if app {
            if app_id.is_none() {
                return Err(self.error(
                    ConfigErrorKind::Missing,
                    "github.app_id",
                    table,
                    "required with app_private_key",
                ));
            }
            if app_private_key.is_none() {
                return Err(self.error(
                    ConfigErrorKind::Missing,
                    "github.app_private_key",
                    table,
                    "required with app_id",
                ));
            }
        } else if let Some(id) = &installation_id {
            return Err(self.invalid(
                "github.installation_id",
                id.span.as_ref(),
                "only with GitHub App auth (app_id and app_private_key)",
            ));
        }

        let repos = match &r.repos {
            Some(raw_repos) => {
                let repos = self.unique_list("github.repos", raw_repos, true, check_repo)?;
                if repos.is_empty() {
                    let hint = if app {
                        "must not be empty (leave repos out to allow every repository of the App's installations)"
                    } else {
                        "must not be empty"
                    };
                    return Err(self.invalid("github.repos", Some(&raw_repos.span()), hint));
                }
                Some(repos)
            }
            None if app => None,
            None => {
                return Err(self.error(
                    ConfigErrorKind::Missing,
                    "github.repos",
                    table,
                    "required with token auth (only GitHub App auth may leave it out)",
                ));
            }
        };

        Ok(GithubConfig {
            api_url,
            webhook_secret: webhook_secret.map(|s| s.v),
            token: token.map(|s| s.v),
            app_id: app_id.map(|a| a.v.unsigned_abs()),
            app_private_key: app_private_key.map(|s| s.v),
            installation_id: installation_id.map(|i| i.v.unsigned_abs()),
            repos,
            poll,
        })
    }

    fn aws(&self, raw: Option<&Spanned<RawAws>>) -> Result<AwsConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(AwsConfig {
                region: None,
                role_arn: None,
                external_id: None,
                events_queue: None,
            });
        };
        let r = raw.get_ref();
        let region = self.opt_string("aws.region", r.region.as_ref())?;
        if let Some(region) = &region {
            self.checked("aws.region", region, check_region)?;
        }
        let (role_arn, external_id) =
            self.role("aws", r.role_arn.as_ref(), r.external_id.as_ref())?;
        let events_queue = self.opt_string("aws.events_queue", r.events_queue.as_ref())?;
        if let Some(url) = &events_queue {
            self.checked("aws.events_queue", url, check_queue_url)?;
        }
        Ok(AwsConfig {
            region: region.map(|r| r.v),
            role_arn,
            external_id,
            events_queue: events_queue.map(|u| u.v),
        })
    }

    /// `role_arn` and `external_id` of `prefix` (`aws` or `pool[i]`).
    fn role(
        &self,
        prefix: &str,
        role_arn: Option<&RawStr>,
        external_id: Option<&RawStr>,
    ) -> Result<(Option<String>, Option<Secret>), ConfigError> {
        let role_key = format!("{prefix}.role_arn");
        let role_arn = self.opt_string(&role_key, role_arn)?;
        if let Some(arn) = &role_arn {
            self.checked(&role_key, arn, check_role_arn)?;
        }
        let external_key = format!("{prefix}.external_id");
        let external_id = self.secret(&external_key, external_id)?;
        if let (Some(external), None) = (&external_id, &role_arn) {
            return Err(self.invalid(
                &external_key,
                external.span.as_ref(),
                format!("only with {role_key}"),
            ));
        }
        Ok((role_arn.map(|a| a.v), external_id.map(|e| e.v)))
    }

    fn pool(
        &self,
        i: usize,
        raw: &Spanned<RawPool>,
        boot_timeout: Duration,
    ) -> Result<PoolConfig, ConfigError> {
        let table = raw.span();
        let table = Some(&table);
        let r = raw.get_ref();
        let key = |field: &str| format!("pool[{i}].{field}");

        let name = self.required(&key("name"), r.name.as_ref(), table)?;
        self.checked(&key("name"), &name, check_pool_name)?;

        let Some(raw_labels) = &r.labels else {
            return Err(self.missing(&key("labels"), table));
        };
        let labels = self.unique_list(&key("labels"), raw_labels, true, check_label)?;
        if labels.is_empty() {
            return Err(self.invalid(
                &key("labels"),
                Some(&raw_labels.span()),
                "must not be empty",
            ));
        }

        let launch_template =
            self.required(&key("launch_template"), r.launch_template.as_ref(), table)?;
        self.checked(
            &key("launch_template"),
            &launch_template,
            check_launch_template,
        )?;
        let launch_template_version = self.opt_string(
            &key("launch_template_version"),
            r.launch_template_version.as_ref(),
        )?;
        if let Some(version) = &launch_template_version {
            self.checked(
                &key("launch_template_version"),
                version,
                check_template_version,
            )?;
        }

        let Some(raw_types) = &r.instance_types else {
            return Err(self.missing(&key("instance_types"), table));
        };
        let instance_types = self.unique_list(
            &key("instance_types"),
            raw_types,
            false,
            check_instance_type,
        )?;
        if instance_types.is_empty() {
            return Err(self.invalid(
                &key("instance_types"),
                Some(&raw_types.span()),
                "must not be empty",
            ));
        }

        let subnets = match &r.subnets {
            Some(raw_subnets) => {
                self.unique_list(&key("subnets"), raw_subnets, false, check_plain_id)?
            }
            None => Vec::new(),
        };

        let market = self.choice(
            &key("market"),
            r.market.as_ref(),
            Market::OnDemand,
            &[
                ("spot", Market::Spot),
                ("on-demand", Market::OnDemand),
                ("spot-then-on-demand", Market::SpotThenOnDemand),
            ],
        )?;
        let os = self.choice(
            &key("os"),
            r.os.as_ref(),
            Os::Linux,
            &[("linux", Os::Linux), ("windows", Os::Windows)],
        )?;
        let arch = self.choice(
            &key("arch"),
            r.arch.as_ref(),
            Arch::X64,
            &[("x64", Arch::X64), ("arm64", Arch::Arm64)],
        )?;
        if os.v == Os::Windows && arch.v == Arch::Arm64 {
            let span = arch.span.as_ref().or(os.span.as_ref());
            return Err(self.invalid(
                &key("arch"),
                span,
                "arm64 is not supported with os = \"windows\"",
            ));
        }

        let max_runners = self.int_in(
            &key("max_runners"),
            r.max_runners.as_ref(),
            10,
            1,
            i64::from(u32::MAX),
        )?;
        let warm = self.int_in(&key("warm"), r.warm.as_ref(), 0, 0, i64::from(u32::MAX))?;
        if warm.v > max_runners.v {
            return Err(self.invalid(
                &key("warm"),
                warm.span.as_ref(),
                format!("must not be more than max_runners ({})", max_runners.v),
            ));
        }
        let warm_schedule = match &r.warm_schedule {
            Some(raw) => self.warm_schedule(&key("warm_schedule"), raw, max_runners.v)?,
            None => Vec::new(),
        };

        let runner_scope = self.choice(
            &key("runner_scope"),
            r.runner_scope.as_ref(),
            RunnerScope::Repo,
            &[("repo", RunnerScope::Repo), ("org", RunnerScope::Org)],
        )?;
        let runner_group_id = self.int_in(
            &key("runner_group_id"),
            r.runner_group_id.as_ref(),
            1,
            1,
            i64::MAX,
        )?;
        if runner_scope.v == RunnerScope::Repo && runner_group_id.v != 1 {
            return Err(self.invalid(
                &key("runner_group_id"),
                runner_group_id.span.as_ref(),
                "runner groups other than 1 need runner_scope = \"org\"",
            ));
        }

        let max_lifetime = self.duration(
            &key("max_lifetime"),
            r.max_lifetime.as_ref(),
            Duration::from_secs(6 * 3600),
            false,
        )?;
        if max_lifetime.v <= boot_timeout {
            return Err(self.invalid(
                &key("max_lifetime"),
                max_lifetime.span.as_ref(),
                format!(
                    "must be longer than server.boot_timeout ({})",
                    format_duration(boot_timeout)
                ),
            ));
        }

        let runner_version = self.opt_string(&key("runner_version"), r.runner_version.as_ref())?;
        if let Some(version) = &runner_version {
            self.checked(&key("runner_version"), version, check_runner_version)?;
        }
        let setup_script = self.opt_string(&key("setup_script"), r.setup_script.as_ref())?;
        let (role_arn, external_id) = self.role(
            &format!("pool[{i}]"),
            r.role_arn.as_ref(),
            r.external_id.as_ref(),
        )?;
        let rerun_interrupted = self
            .bool(&key("rerun_interrupted"), r.rerun_interrupted.as_ref())?
            .is_none_or(|b| b.v);

        Ok(PoolConfig {
            name: name.v,
            labels,
            launch_template: launch_template.v,
            launch_template_version: launch_template_version.map(|v| v.v),
            instance_types,
            subnets,
            market: market.v,
            os: os.v,
            arch: arch.v,
            max_runners: u32::try_from(max_runners.v).unwrap_or(u32::MAX),
            warm: u32::try_from(warm.v).unwrap_or(u32::MAX),
            warm_schedule,
            runner_scope: runner_scope.v,
            runner_group_id: runner_group_id.v.unsigned_abs(),
            max_lifetime: max_lifetime.v,
            runner_version: runner_version.map(|v| v.v),
            setup_script: setup_script.map(|v| v.v),
            role_arn,
            external_id,
            rerun_interrupted,
        })
    }
}

impl Cx<'_> {
    /// `pool[i].warm_schedule`: each entry's `days`, `hours`, `timezone`
    /// and `warm` (required, at most `max_runners`).
    fn warm_schedule(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<RawWarmWindow>>>,
        max_runners: i64,
    ) -> Result<Vec<WarmWindow>, ConfigError> {
        let mut out = Vec::with_capacity(raw.get_ref().len());
        for (j, entry) in raw.get_ref().iter().enumerate() {
            let table = entry.span();
            let r = entry.get_ref();
            let key = |field: &str| format!("{key}[{j}].{field}");

            let days = match &r.days {
                None => EVERY_DAY,
                Some(raw_days) => {
                    let list = self.list(&key("days"), raw_days)?;
                    if list.v.is_empty() {
                        return Err(self.invalid(
                            &key("days"),
                            list.span.as_ref(),
                            "must not be empty (leave days out for every day)",
                        ));
                    }
                    let mut mask = 0u8;
                    for (k, item) in list.v.iter().enumerate() {
                        let item_key = format!("{}[{k}]", key("days"));
                        let m = schedule::parse_day(&item.v)
                            .map_err(|e| self.invalid(&item_key, item.span.as_ref(), e))?;
                        if mask & m != 0 {
                            return Err(self.invalid(
                                &item_key,
                                item.span.as_ref(),
                                format!(
                                    "names {} again (days of one entry must not overlap)",
                                    schedule::day_names(mask & m)
                                ),
                            ));
                        }
                        mask |= m;
                    }
                    mask
                }
            };

            let (start, end) = match self.opt_string(&key("hours"), r.hours.as_ref())? {
                None => (0, DAY_MINUTES),
                Some(hours) => schedule::parse_hours(&hours.v)
                    .map_err(|e| self.invalid(&key("hours"), hours.span.as_ref(), e))?,
            };

            let utc_offset = match self.opt_string(&key("timezone"), r.timezone.as_ref())? {
                None => 0,
                Some(tz) => schedule::parse_utc_offset(&tz.v)
                    .map_err(|e| self.invalid(&key("timezone"), tz.span.as_ref(), e))?,
            };

            let Some(warm) =
                self.opt_int_in(&key("warm"), r.warm.as_ref(), 0, i64::from(u32::MAX))?
            else {
                return Err(self.missing(&key("warm"), Some(&table)));
            };
            if warm.v > max_runners {
                return Err(self.invalid(
                    &key("warm"),
                    warm.span.as_ref(),
                    format!("must not be more than max_runners ({max_runners})"),
                ));
            }

            out.push(WarmWindow {
                days,
                start,
                end,
                utc_offset,
                warm: u32::try_from(warm.v).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Value rules (pure, on resolved strings; messages never repeat the value
// unless it is short and harmless)
// ---------------------------------------------------------------------------

fn is_indirect(s: &str) -> bool {
    s.starts_with("env:") || s.starts_with("file:")
}

/// `s` with control characters escaped (`\n` -> `\\n`), everything else as is.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A short, quoted, escaped rendering of a non-secret value for a message.
fn show(value: &str) -> String {
    let mut shown: String = value.chars().take(40).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

fn is_slug(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_fleet(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 32 || !is_slug(v) || v.starts_with('-') || v.ends_with('-') {
        return Err("must be 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-' (it goes into tags and SSM paths)".to_owned());
    }
    Ok(())
}

fn check_pool_name(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 40 || !is_slug(v) {
        return Err("must be 1-40 characters of a-z, 0-9 and '-'".to_owned());
    }
    Ok(())
}

fn check_label(v: &str) -> Result<(), String> {
    match v.chars().count() {
        0 => Err("must not be an empty string".to_owned()),
        1..=100 => Ok(()),
        _ => Err("must be at most 100 characters".to_owned()),
    }
}

fn check_instance_type(v: &str) -> Result<(), String> {
    let ok = v.split_once('.').is_some_and(|(family, size)| {
        !family.is_empty()
            && !size.is_empty()
            && family
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && size
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not an EC2 instance type like \"m7i.large\"",
            show(v)
        ))
    }
}

/// An AWS id or name used as is (subnets): non-empty, no whitespace.
fn check_plain_id(v: &str) -> Result<(), String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a non-empty id without spaces".to_owned());
    }
    Ok(())
}

fn check_launch_template(v: &str) -> Result<(), String> {
    let ok = (3..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"().-/_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("must be a launch template id (lt-...) or name: 3-128 characters of letters, digits and ( ) . - / _".to_owned())
    }
}

fn check_template_version(v: &str) -> Result<(), String> {
    let number = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    if number || v == "$Default" || v == "$Latest" {
        Ok(())
    } else {
        Err("must be \"$Default\", \"$Latest\" or a version number".to_owned())
    }
}

fn check_runner_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!(
            "{} is not a runner version like \"2.330.0\"",
            show(v)
        ))
    }
}

fn check_repo(v: &str) -> Result<(), String> {
    const WHAT: &str = "must be \"owner/name\" or \"owner/*\" with GitHub's characters";
    let Some((owner, name)) = v.split_once('/') else {
        return Err(WHAT.to_owned());
    };
    let owner_ok = (1..=100).contains(&owner.len())
        && !owner.starts_with('-')
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let name_ok = name == "*"
        || ((1..=100).contains(&name.len())
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    if owner_ok && name_ok {
        Ok(())
    } else {
        Err(WHAT.to_owned())
    }
}

fn check_http_url(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    let ok = rest.is_some_and(|rest| {
        let host = rest.split('/').next().unwrap_or("");
        !host.is_empty() && !v.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if ok {
        Ok(())
    } else {
        Err("must be an http:// or https:// URL, like \"https://api.github.com\"".to_owned())
    }
}

/// The value may hold a database password: never shown.
fn check_store(v: &str) -> Result<(), String> {
    let rest = ["sqlite://", "postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| v.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(()),
        Some(_) => Err("names no database after the scheme".to_owned()),
        None => Err("must start with sqlite://, postgres:// or postgresql://".to_owned()),
    }
}

/// An SQS queue URL: `https://sqs.<region>.amazonaws.com/<account>/<name>`
/// (or any `http(s)://host/<account>/<name>`, for endpoints like moto).
fn check_queue_url(v: &str) -> Result<(), String> {
    const WHAT: &str = "must be an SQS queue URL like \"https://sqs.eu-west-2.amazonaws.com/123456789012/runfleet-events\"";
    let ok = (|| {
        let rest = v
            .strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"))?;
        let (host, path) = rest.split_once('/')?;
        let (account, name) = path.split_once('/')?;
        let fine = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        };
        (fine(host) && fine(account) && fine(name)).then_some(())
    })();
    match ok {
        Some(()) => Ok(()),
        None => Err(format!("{} {WHAT}", show(v))),
    }
}

fn check_region(v: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && is_slug(v);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not an AWS region like \"eu-west-2\"",
            show(v)
        ))
    }
}

fn check_role_arn(v: &str) -> Result<(), String> {
    const WHAT: &str = "must be an IAM role ARN like \"arn:aws:iam::123456789012:role/runfleet\"";
    let ok = (|| {
        let rest = v.strip_prefix("arn:")?;
        let (partition, rest) = rest.split_once(':')?;
        if !partition.starts_with("aws") || !is_slug(partition) {
            return None;
        }
        let rest = rest.strip_prefix("iam::")?;
        let (account, rest) = rest.split_once(':')?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let role = rest.strip_prefix("role/")?;
        (!role.is_empty() && !role.chars().any(char::is_whitespace)).then_some(())
    })();
    ok.ok_or_else(|| WHAT.to_owned())
}

/// `scheme://user:password@host/db` -> `scheme://user:***@host/db`. Everything
/// up to the last `@` counts as user info, so an unencoded `/` or `@` in the
/// password is masked too (masking too much is harmless).
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPOT_MINIMAL: &str =
        "fleet = \"ci\"\n[github]\ntoken = \"t\"\nwebhook_secret = \"s\"\nrepos = [\"acme/*\"]\n";
    const POOL: &str = "[[pool]]\nname = \"p\"\nlabels = [\"self-hosted\"]\nlaunch_template = \"lt-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\n";

    fn spot_cfg(aws: &str, pool_extra: &str) -> Result<Config, ConfigError> {
        let text = format!("{SPOT_MINIMAL}{aws}{POOL}{pool_extra}");
        parse(&text, &MapSecrets::default())
    }

    #[test]
    fn interruption_keys_default_and_parse() {
        let c = spot_cfg("", "").unwrap();
        assert!(c.pools[0].rerun_interrupted, "re-runs are on by default");
        assert_eq!(c.aws.events_queue, None);
        let c = spot_cfg(
            "[aws]\nevents_queue = \"https://sqs.eu-west-2.amazonaws.com/123456789012/runfleet-events\"\n",
            "rerun_interrupted = false\n",
        )
        .unwrap();
        assert!(!c.pools[0].rerun_interrupted);
        assert_eq!(
            c.aws.events_queue.as_deref(),
            Some("https://sqs.eu-west-2.amazonaws.com/123456789012/runfleet-events")
        );
        let local = "[aws]\nevents_queue = \"http://127.0.0.1:5000/123456789012/q\"\n";
        assert!(
            spot_cfg(local, "").is_ok(),
            "a local endpoint (moto) is a queue URL too"
        );
    }

    #[test]
    fn interruption_keys_reject_bad_values() {
        for bad in [
            "sqs-queue",
            "https://sqs.amazonaws.com/",
            "ftp://h/1/q",
            "https://h/1/",
        ] {
            let e = spot_cfg(&format!("[aws]\nevents_queue = \"{bad}\"\n"), "")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("aws.events_queue") && e.contains("SQS queue URL"),
                "{bad}: {e}"
            );
            assert!(e.contains("line 7"), "{e}");
        }
        let e = spot_cfg("", "rerun_interrupted = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool[0].rerun_interrupted"), "{e}");
    }

    #[test]
    fn durations_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(ms(((24 + 2) * 60 + 3) * 60_000 + 4_000 + 5))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn durations_reject() {
        for bad in [
            "",
            "10",
            "-5s",
            "10x",
            "s",
            "1.5h",
            " 10s",
            "10s ",
            "10 s",
            "30m1h",
            "1m1m",
            "10S",
            "1h-30m",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30s500ms");
        assert_eq!(format_duration(Duration::from_secs(2 * 86_400 + 1)), "2d1s");
        assert_eq!(format_duration(Duration::from_nanos(1_999_999)), "1ms");
    }

    #[test]
    fn line_numbers() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\n", 99), 2);
    }

    #[test]
    fn url_password_masked() {
        assert_eq!(
            mask_url_password("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(mask_url_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            mask_url_password("sqlite://runfleet.db"),
            "sqlite://runfleet.db"
        );
        assert_eq!(
            mask_url_password("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            mask_url_password("postgres://u:p/s?s@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn value_rules() {
        assert!(check_fleet("acme-ci").is_ok());
        assert!(check_fleet("a").is_ok());
        for bad in ["", "-a", "a-", "Acme", "a_b", "a.b", &"a".repeat(33)] {
            assert!(check_fleet(bad).is_err(), "{bad:?}");
        }
        assert!(check_fleet(&"a".repeat(32)).is_ok());

        for ok in ["acme/app", "acme/*", "Acme-Corp/my.repo_1", "a/b-c"] {
            assert!(check_repo(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "acme",
            "acme/",
            "/app",
            "acme/app/x",
            "-acme/app",
            "ac me/app",
            "acme/..",
            "*/*",
            "acme/a*",
        ] {
            assert!(check_repo(bad).is_err(), "{bad:?}");
        }

        for ok in [
            "arn:aws:iam::123456789012:role/runfleet",
            "arn:aws-us-gov:iam::123456789012:role/path/r",
            "arn:aws-cn:iam::123456789012:role/x",
        ] {
            assert!(check_role_arn(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:gcp:iam::123456789012:role/x",
            "arn:aws:sts::123456789012:role/x",
            "runfleet",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad:?}");
        }

        for ok in [
            "m7i.large",
            "u-6tb1.56xlarge",
            "m7i-flex.large",
            "p4d.24xlarge",
        ] {
            assert!(check_instance_type(ok).is_ok(), "{ok:?}");
        }
        for bad in ["m7i", "m7i large", ".large", "m7i.", "M7i.large"] {
            assert!(check_instance_type(bad).is_err(), "{bad:?}");
        }

        for ok in ["$Default", "$Latest", "3"] {
            assert!(check_template_version(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "0", "01", "latest", "$default"] {
            assert!(check_template_version(bad).is_err(), "{bad:?}");
        }

        assert!(check_http_url("https://ghe.example.com/api/v3").is_ok());
        assert!(check_http_url("http://127.0.0.1:9000").is_ok());
        for bad in ["ftp://x", "https://", "api.github.com", "https://a b"] {
            assert!(check_http_url(bad).is_err(), "{bad:?}");
        }

        assert!(check_store("sqlite://runfleet.db").is_ok());
        assert!(check_store("postgresql://u:p@h/db").is_ok());
        assert!(check_store("postgres://").is_err());
        assert!(check_store("mysql://h/db").is_err());
        assert!(check_store("runfleet.db").is_err());
    }

    #[test]
    fn serde_errors_are_located() {
        let text =
            "fleet = \"a\"\n[[pool]]\nname = \"p\"\n[[pool]]\nname = \"q\"\nlabels = [\"x\", 3]\n";
        let err = parse(text, &MapSecrets::new()).unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::WrongType);
        assert_eq!(err.key(), Some("pool[1].labels[1]"));
        assert_eq!(err.line(), Some(6));
        assert_eq!(
            err.to_string(),
            "pool[1].labels[1]: expected a string, found an integer (line 6)"
        );
    }

    #[test]
    fn map_secrets_debug_shows_names_only() {
        let s = MapSecrets::new()
            .with_env("TOKEN", "hunter2")
            .with_file("/k.pem", "PRIVATE");
        let shown = format!("{s:?}");
        assert!(
            shown.contains("TOKEN") && shown.contains("/k.pem"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        assert_eq!(s.read_file("/k.pem").as_deref(), Ok("PRIVATE"));
        assert!(s.read_file("/nope").is_err());
        assert_eq!(s.env("TOKEN").as_deref(), Some("hunter2"));
        assert_eq!(s.env("NOPE"), None);
    }
}
