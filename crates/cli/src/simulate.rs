//! `runfleet simulate`: replays a job trace against the configured pools in
//! the simulator (no credentials, no network) and prints what each setting
//! would cost in queue time and money: the config as given, and variations
//! of `warm` (each without the config's warm schedules) and `market`, so an
//! operator can choose before paying.
//!
//! Trace: CSV, one job per line, columns `queued, labels, duration[, repo]`.
//! `queued` is seconds from the start of the trace or an RFC 3339 time
//! (then counted from the earliest one, and the simulated clock starts at
//! that time, so `[[pool.warm_schedule]]` windows open when they would have;
//! `--start` places a trace of seconds, or moves one of times, on the
//! calendar; without either the clock starts at 1970-01-01T00:00:00Z, a
//! Thursday); `labels` are separated by spaces or
//! `;`; `duration` is seconds of run time; `repo` (`owner/name`) defaults to
//! the first of `github.repos`. A header line, blank lines and `#` comments
//! are skipped; a field may be double-quoted.
//!
//! Prices: a built-in table of common instance types (USD per hour, Linux,
//! us-east-1, on-demand list prices and a typical spot price), overridden or
//! extended by `--prices` (CSV `instance_type, on_demand, spot`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use runfleet_core::config::{Config, Market, SecretSource, parse};
use runfleet_core::labels::pool_for;
use runfleet_core::model::Millis;
use runfleet_sim::{SimOptions, Summary, TraceJob};
use serde::Serialize;

/// Built-in prices, USD per hour: (instance type, on-demand, spot). Linux,
/// us-east-1; spot prices move, these are typical values. Override with
/// `--prices`.
const PRICES: &[(&str, f64, f64)] = &[
    ("t3.medium", 0.0416, 0.0125),
    ("t3.large", 0.0832, 0.025),
    ("t3.xlarge", 0.1664, 0.05),
    ("m5.large", 0.096, 0.035),
    ("m5.xlarge", 0.192, 0.07),
    ("m5.2xlarge", 0.384, 0.14),
    ("m6i.large", 0.096, 0.035),
    ("m6i.xlarge", 0.192, 0.07),
    ("m6i.2xlarge", 0.384, 0.14),
    ("m7i.large", 0.1008, 0.038),
    ("m7i.xlarge", 0.2016, 0.076),
    ("m7i.2xlarge", 0.4032, 0.152),
    ("m6g.large", 0.077, 0.029),
    ("m6g.xlarge", 0.154, 0.058),
    ("m7g.large", 0.0816, 0.031),
    ("m7g.xlarge", 0.1632, 0.062),
    ("c5.large", 0.085, 0.032),
    ("c5.xlarge", 0.17, 0.064),
    ("c6i.large", 0.085, 0.032),
    ("c6i.xlarge", 0.17, 0.064),
    ("c7i.large", 0.08925, 0.034),
    ("c7i.xlarge", 0.1785, 0.068),
    ("c6g.large", 0.068, 0.026),
    ("c7g.large", 0.0725, 0.027),
    ("r6i.large", 0.126, 0.047),
];

/// Secrets are never needed to simulate: every `env:` / `file:` value reads
/// as a placeholder, so a production config can be simulated as it is.
struct NoSecrets;

impl SecretSource for NoSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        Some("simulated".to_string())
    }
    fn read_file(&self, _path: &str) -> Result<String, String> {
        Ok("simulated".to_string())
    }
}

/// Per-hour prices of one instance type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    pub on_demand: f64,
    pub spot: f64,
}

/// The built-in table, then `--prices` over it.
fn prices(path: Option<&Path>) -> Result<BTreeMap<String, Price>> {
    let mut table: BTreeMap<String, Price> = PRICES
        .iter()
        .map(|&(t, on_demand, spot)| (t.to_string(), Price { on_demand, spot }))
        .collect();
    let Some(path) = path else {
        return Ok(table);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prices {}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), n + 1);
        let fields = split_csv(line).map_err(|e| anyhow!("{}: {e}", at()))?;
        if fields.is_empty() {
            continue;
        }
        if n == 0 && fields[0].eq_ignore_ascii_case("instance_type") {
            continue;
        }
        if fields.len() != 3 {
            bail!(
                "{}: expected 3 fields (instance_type, on_demand, spot), found {}",
                at(),
                fields.len()
            );
        }
        let num = |what: &str, s: &str| -> Result<f64> {
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => bail!(
                    "{}: {what} price {s:?} is not a non-negative number (USD per hour)",
                    at()
                ),
            }
        };
        let price = Price {
            on_demand: num("on_demand", &fields[1])?,
            spot: num("spot", &fields[2])?,
        };
        table.insert(fields[0].clone(), price);
    }
    Ok(table)
}

/// Splits one CSV line: commas, optional double quotes (`""` inside quotes
/// is a quote), `#` at the start of a line is a comment. Blank: no fields.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".to_string());
    }
    out.push(cur.trim().to_string());
    Ok(out)
}

/// One parsed trace line, before times are made relative.
struct Line {
    line: usize,
    queued: Queued,
    labels: Vec<String>,
    duration: Millis,
    repo: Option<String>,
}

enum Queued {
    Offset(Millis),
    At(Millis),
}

/// A parsed trace.
#[derive(Debug)]
pub struct Trace {
    pub jobs: Vec<TraceJob>,
    /// The earliest queued time, when the trace gives RFC 3339 times.
    pub start: Option<Millis>,
}

/// Parses a trace. Errors name the line and what is wrong with it.
pub fn parse_trace(text: &str, name: &str, default_repo: &str) -> Result<Trace> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let at = || format!("{name} line {}", n + 1);
        let fields = split_csv(raw).map_err(|e| anyhow!("{}: {e}", at()))?;
        if fields.is_empty() {
            continue;
        }
        if lines.is_empty() && fields[0].eq_ignore_ascii_case("queued") {
            continue; // header
        }
        if !(3..=4).contains(&fields.len()) {
            bail!(
                "{}: expected 3 or 4 fields (queued, labels, duration[, repo]), found {}",
                at(),
                fields.len()
            );
        }
        let queued = match fields[0].parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Queued::Offset((s * 1000.0) as Millis),
            Ok(_) => bail!("{}: queued time {:?} must not be negative", at(), fields[0]),
            Err(_) => match runfleet_github::timestamp::parse_millis(&fields[0]) {
                Some(ms) => Queued::At(ms),
                None => bail!(
                    "{}: queued time {:?} is neither seconds from the start nor an RFC 3339 time",
                    at(),
                    fields[0]
                ),
            },
        };
        let labels: Vec<String> = fields[1]
            .split([' ', ';'])
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if labels.is_empty() {
            bail!("{}: no labels", at());
        }
        let duration = match fields[2].parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 5.0 * 24.0 * 3600.0 => (s * 1000.0) as Millis,
            _ => bail!(
                "{}: duration {:?} is not a number of seconds between 0 and 5 days",
                at(),
                fields[2]
            ),
        };
        let repo = match fields.get(3).map(String::as_str) {
            None | Some("") => None,
            Some(r) => {
                let ok = r
                    .split_once('/')
                    .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
                if !ok {
                    bail!("{}: repo {r:?} is not owner/name", at());
                }
                Some(r.to_string())
            }
        };
        lines.push(Line {
            line: n + 1,
            queued,
            labels,
            duration,
            repo,
        });
    }
    if lines.is_empty() {
        bail!("{name}: no jobs in the trace");
    }
    let absolute = lines.iter().any(|l| matches!(l.queued, Queued::At(_)));
    if absolute && let Some(l) = lines.iter().find(|l| matches!(l.queued, Queued::Offset(_))) {
        bail!(
            "{name} line {}: seconds from the start mixed with RFC 3339 times; use one or the other",
            l.line
        );
    }
    let earliest = lines
        .iter()
        .filter_map(|l| match l.queued {
            Queued::At(t) => Some(t),
            Queued::Offset(_) => None,
        })
        .min();
    let start = earliest.unwrap_or(0);
    let jobs = lines
        .into_iter()
        .map(|l| TraceJob {
            at: match l.queued {
                Queued::Offset(o) => o,
                Queued::At(t) => t - start,
            },
            labels: l.labels,
            duration: l.duration,
            repo: l.repo.unwrap_or_else(|| default_repo.to_string()),
        })
        .collect();
    Ok(Trace {
        jobs,
        start: earliest,
    })
}

/// Where a trace line without a repo comes from: the first of
/// `github.repos` (`owner/*` read as `owner/repo`).
fn default_repo(cfg: &Config) -> String {
    cfg.github
        .repos
        .as_ref()
        .and_then(|r| r.first())
        .map(|r| r.replace('*', "repo"))
        .unwrap_or_else(|| "owner/repo".to_string())
}

/// One variation of the config and what it did.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// pool -> warm (outside its warm schedule's windows)
    warm: BTreeMap<String, u32>,
    /// pool -> number of `warm_schedule` entries (pools with some only)
    warm_schedule: BTreeMap<String, usize>,
    /// pool -> market
    market: BTreeMap<String, &'static str>,
    jobs: usize,
    completed: usize,
    queue_seconds: Quantiles,
    instances: usize,
    instance_hours: f64,
    cost_usd: f64,
    /// Every end-of-run invariant held.
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn market_name(m: Market) -> &'static str {
    match m {
        Market::Spot => "spot",
        Market::OnDemand => "on-demand",
        Market::SpotThenOnDemand => "spot-then-on-demand",
    }
}

/// The config as given (warm schedules included), then `warm` = 0 / 2 / 5
/// in every pool (within `max_runners`, all day: no warm schedule), then
/// every pool on-demand and every pool spot-then-on-demand.
fn variations(cfg: &Config) -> Vec<(String, Config)> {
    let mut out = vec![("as configured".to_string(), cfg.clone())];
    for w in [0u32, 2, 5] {
        let mut c = cfg.clone();
        for p in &mut c.pools {
            p.warm = w.min(p.max_runners);
            p.warm_schedule.clear();
        }
        out.push((format!("warm = {w}"), c));
    }
    for m in [Market::OnDemand, Market::SpotThenOnDemand] {
        let mut c = cfg.clone();
        for p in &mut c.pools {
            p.market = m;
        }
        out.push((format!("market = {}", market_name(m)), c));
    }
    out
}

fn row(name: String, cfg: &Config, s: &Summary, prices: &BTreeMap<String, Price>) -> Result<Row> {
    let mut cost = 0.0;
    let mut secs = 0u64;
    for u in &s.usage {
        let p = prices.get(&u.instance_type).ok_or_else(|| {
            anyhow!(
                "no price for instance type {}; add it to --prices (CSV: instance_type,on_demand,spot)",
                u.instance_type
            )
        })?;
        let per_hour = if u.market == "spot" {
            p.spot
        } else {
            p.on_demand
        };
        cost += per_hour * u.seconds as f64 / 3600.0;
        secs += u.seconds;
    }
    let q = &s.queue_to_start_ms;
    let sec = |ms: u64| ms as f64 / 1000.0;
    Ok(Row {
        name,
        warm: cfg.pools.iter().map(|p| (p.name.clone(), p.warm)).collect(),
        warm_schedule: cfg
            .pools
            .iter()
            .filter(|p| !p.warm_schedule.is_empty())
            .map(|p| (p.name.clone(), p.warm_schedule.len()))
            .collect(),
        market: cfg
            .pools
            .iter()
            .map(|p| (p.name.clone(), market_name(p.market)))
            .collect(),
        jobs: s.jobs,
        completed: s.completed,
        queue_seconds: Quantiles {
            p50: sec(q.p50),
            p90: sec(q.p90),
            p99: sec(q.p99),
            max: sec(q.max),
        },
        instances: s.instances_launched,
        instance_hours: secs as f64 / 3600.0,
        cost_usd: cost,
        ok: s.ok(),
    })
}

/// Runs `runfleet simulate`.
pub fn run(
    config_path: &Path,
    trace_path: &Path,
    prices_path: Option<&Path>,
    start: Option<&str>,
    seed: u64,
    json: bool,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read config {}", config_path.display()))?;
    let cfg = parse(&text, &NoSecrets).map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
    let trace_text = std::fs::read_to_string(trace_path)
        .with_context(|| format!("cannot read trace {}", trace_path.display()))?;
    let Trace {
        jobs: trace,
        start: trace_start,
    } = parse_trace(
        &trace_text,
        &trace_path.display().to_string(),
        &default_repo(&cfg),
    )?;
    let start = match start {
        Some(s) => runfleet_github::timestamp::parse_millis(s).ok_or_else(|| {
            anyhow!("--start {s:?} is not an RFC 3339 time like 2026-01-05T08:00:00Z")
        })?,
        None => trace_start.unwrap_or(0),
    };
    let prices = prices(prices_path)?;
    let missing: Vec<&str> = cfg
        .pools
        .iter()
        .flat_map(|p| &p.instance_types)
        .filter(|t| !prices.contains_key(t.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "no price for instance type{} {}; add {} to --prices (CSV: instance_type,on_demand,spot, USD per hour)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        );
    }
    // Jobs no pool serves (or from a repository not allowed) are never
    // launched for: say so and leave them out of the replay.
    let (served, unserved): (Vec<TraceJob>, Vec<TraceJob>) = trace
        .into_iter()
        .partition(|j| pool_for(&cfg, &j.labels).is_some() && cfg.repo_allowed(&j.repo));
    for j in unserved.iter().take(5) {
        eprintln!(
            "runfleet: trace job at {} s with labels {:?} in {} is served by no pool or repository of the config: left out",
            j.at / 1000,
            j.labels,
            j.repo
        );
    }
    if served.is_empty() {
        bail!("no job of the trace matches a pool of the config");
    }
    let end = served.iter().map(|j| j.at + j.duration).max().unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (name, c) in variations(&cfg) {
        let opts = SimOptions {
            seed,
            trace: Some(served.clone()),
            time_limit: end + 6 * 60 * 60 * 1000,
            start,
            ..SimOptions::default()
        };
        let s = rt
            .block_on(runfleet_sim::run(&opts, c.clone(), &mut |_| {}))
            .map_err(|e| anyhow!("simulation of {name:?} failed: {e}"))?;
        rows.push(row(name, &c, &s, &prices)?);
    }
    let all_ok = rows.iter().all(|r| r.ok);
    if json {
        let out = serde_json::json!({
            "trace": {
                "jobs": served.len() + unserved.len(),
                "simulated": served.len(),
                "unserved": unserved.len(),
            },
            "prices": if prices_path.is_some() { "built-in + file" } else { "built-in" },
            "seed": seed,
            "start": runfleet_github::timestamp::format_millis(start),
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} jobs simulated ({} left out: no pool), seed {seed}; queue = queued -> running, seconds; cost in USD ({})",
            served.len(),
            unserved.len(),
            if prices_path.is_some() {
                "built-in prices + file"
            } else {
                "built-in prices: Linux, us-east-1, approximate"
            }
        );
        println!(
            "{:<30} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9}",
            "variation", "jobs", "p50", "p90", "p99", "max", "instances", "inst-hours", "cost"
        );
        for r in &rows {
            println!(
                "{:<30} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>10.2} {:>9.2}{}",
                r.name,
                format!("{}/{}", r.completed, r.jobs),
                r.queue_seconds.p50,
                r.queue_seconds.p90,
                r.queue_seconds.p99,
                r.queue_seconds.max,
                r.instances,
                r.instance_hours,
                r.cost_usd,
                if r.ok { "" } else { "  (invariant broken)" }
            );
        }
        if cfg.pools.iter().any(|p| !p.warm_schedule.is_empty()) {
            println!(
                "\"as configured\" follows the warm schedules with the trace starting at {}; the warm = N rows have none.",
                runfleet_github::timestamp::format_millis(start)
            );
        }
        println!("spot interruptions are not modelled; spot rows assume spot capacity held.");
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse_and_errors_name_the_line() {
        let t = "queued,labels,duration,repo\n# a comment\n0,self-hosted linux,60\n\n2.5,\"self-hosted;linux\",30,acme/lib\n";
        let trace = parse_trace(t, "t.csv", "acme/app").unwrap();
        assert_eq!(trace.start, None);
        let jobs = trace.jobs;
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].repo, "acme/app");
        assert_eq!(jobs[1].at, 2_500);
        assert_eq!(jobs[1].labels, vec!["self-hosted", "linux"]);
        assert_eq!(jobs[1].repo, "acme/lib");

        let t = "2026-01-01T10:00:10Z,x,5\n2026-01-01T10:00:00Z,x,5\n";
        let trace = parse_trace(t, "t.csv", "a/b").unwrap();
        assert_eq!(
            trace.start,
            runfleet_github::timestamp::parse_millis("2026-01-01T10:00:00Z")
        );
        let jobs = trace.jobs;
        assert_eq!(jobs[0].at, 10_000);
        assert_eq!(jobs[1].at, 0);

        for (t, want) in [
            ("0,x,60\nsoon,x,60\n", "t.csv line 2: queued time \"soon\""),
            ("0,x,60\n1,,60\n", "t.csv line 2: no labels"),
            ("0,x,-1\n", "t.csv line 1: duration \"-1\""),
            ("0,x\n", "t.csv line 1: expected 3 or 4 fields"),
            (
                "0,x,1,acme\n",
                "t.csv line 1: repo \"acme\" is not owner/name",
            ),
            ("0,\"x,1\n", "t.csv line 1: unterminated double quote"),
            (
                "2026-01-01T10:00:00Z,x,5\n3,x,5\n",
                "t.csv line 2: seconds from the start mixed",
            ),
            ("# nothing\n", "t.csv: no jobs"),
        ] {
            let e = parse_trace(t, "t.csv", "a/b").unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }
}
