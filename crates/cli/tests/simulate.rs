//! `runfleet simulate` black-box: a job trace replayed against a config in
//! the simulator, with its variations; a bad trace line is named.

use std::path::PathBuf;
use std::process::{Command, Output};

const CONFIG: &str = r#"
fleet = "sim"
[github]
token = "env:RUNFLEET_SIMULATE_UNSET_TOKEN"
webhook_secret = "env:RUNFLEET_SIMULATE_UNSET_SECRET"
repos = ["acme/app"]
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "lt-0123456789abcdef0"
instance_types = ["m7i.large", "m6i.large"]
market = "spot-then-on-demand"
max_runners = 20
"#;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("runfleet-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn simulate(trace: &str, extra: &[&str]) -> Output {
    let d = dir();
    let config = d.join("runfleet.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let t = d.join(format!("trace-{}.csv", trace.len()));
    std::fs::write(&t, trace).unwrap();
    Command::new(env!("CARGO_BIN_EXE_runfleet"))
        .args(["simulate", "--config"])
        .arg(&config)
        .arg("--trace")
        .arg(&t)
        .args(extra)
        .env_remove("RUNFLEET_CONFIG")
        .output()
        .expect("runfleet runs")
}

#[test]
fn a_trace_gives_queue_times_and_cost_for_each_variation() {
    let trace = "queued,labels,duration,repo\n0,self-hosted linux x64,60,acme/app\n30,self-hosted;linux;x64,120,acme/app\n600,self-hosted linux x64,90,acme/app\n";
    let o = simulate(trace, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let rows = v["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in ["as configured", "warm = 2", "market = on-demand"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap();
    let base = row("as configured");
    assert_eq!(base["jobs"], 3);
    assert_eq!(base["completed"], 3);
    assert_eq!(base["ok"], true);
    let cold = base["queue_seconds"]["p50"].as_f64().unwrap();
    let warm = row("warm = 2")["queue_seconds"]["p50"].as_f64().unwrap();
    assert!(
        warm < cold,
        "a warm pool starts jobs sooner: {warm} vs {cold}"
    );
    // On-demand costs more than spot for the same instances.
    let od = row("market = on-demand")["cost_usd"].as_f64().unwrap();
    let spot = base["cost_usd"].as_f64().unwrap();
    assert!(od > spot && spot > 0.0, "on-demand {od} vs spot {spot}");

    let o = simulate(trace, &[]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("as configured") && table.contains("p99"),
        "{table}"
    );
}

#[test]
fn a_bad_trace_line_is_named() {
    let o = simulate(
        "queued,labels,duration\n0,self-hosted linux x64,60\nsoon,self-hosted,10\n",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("line 3") && e.contains("\"soon\""), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
}

/// CONFIG with warm instances on weekdays' working hours only.
const SCHEDULED: &str =
    "warm = 0\n[[pool.warm_schedule]]\ndays = [\"mon-fri\"]\nhours = \"08:00-18:00\"\nwarm = 3\n";

fn simulate_with(config: &str, trace: &str, extra: &[&str]) -> Output {
    let d = dir();
    let path = d.join(format!("runfleet-{}.toml", config.len()));
    std::fs::write(&path, config).unwrap();
    let t = d.join(format!("trace-s{}.csv", trace.len()));
    std::fs::write(&t, trace).unwrap();
    Command::new(env!("CARGO_BIN_EXE_runfleet"))
        .args(["simulate", "--json", "--config"])
        .arg(&path)
        .arg("--trace")
        .arg(&t)
        .args(extra)
        .env_remove("RUNFLEET_CONFIG")
        .output()
        .expect("runfleet runs")
}

#[test]
fn warm_schedules_are_honoured_at_the_traces_own_time() {
    // Monday 2026-01-05, from 09:00 UTC: a job every five minutes.
    let mut trace = String::from("queued,labels,duration\n");
    for i in 0..8 {
        trace.push_str(&format!(
            "2026-01-05T09:{:02}:00Z,self-hosted linux x64,120\n",
            i * 5
        ));
    }
    let config = format!("{CONFIG}{SCHEDULED}");
    let p50 = |extra: &[&str]| {
        let o = simulate_with(&config, &trace, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rows = v["rows"].as_array().unwrap().clone();
        let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
        let configured = row("as configured");
        assert_eq!(configured["completed"], 8);
        assert_eq!(configured["warm_schedule"]["linux-x64"], 1);
        assert_eq!(row("warm = 0")["warm_schedule"], serde_json::json!({}));
        (
            v["start"].as_str().unwrap().to_string(),
            configured["queue_seconds"]["p50"].as_f64().unwrap(),
            row("warm = 0")["queue_seconds"]["p50"].as_f64().unwrap(),
        )
    };
    let (start, weekday, cold) = p50(&[]);
    assert!(start.starts_with("2026-01-05T09:00:00"), "{start}");
    assert!(
        weekday * 3.0 < cold,
        "in working hours warm instances wait: {weekday} s vs {cold} s"
    );
    // The same trace on a Saturday: no window opens, as cold as warm = 0.
    let (start, saturday, cold) = p50(&["--start", "2026-01-10T09:00:00Z"]);
    assert!(start.starts_with("2026-01-10T09:00:00"), "{start}");
    assert_eq!(saturday, cold);

    let o = simulate_with(&config, &trace, &["--start", "monday"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--start \"monday\" is not an RFC 3339 time"),
        "{e}"
    );
}
