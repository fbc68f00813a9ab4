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
