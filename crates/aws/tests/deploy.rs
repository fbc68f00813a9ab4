//! The deployable package (`Dockerfile`, `deploy/`, `docs/alerts.yml`)
//! checked against the code it deploys.
//!
//! - The CloudFormation template is deployed to a real moto server on
//!   loopback by `deploy/moto_deploy.py`, run with the moto virtualenv's
//!   Python and boto3 (so no CloudFormation SDK enters the build); the script
//!   checks what the stack created (roles and their exact actions, queue,
//!   rule, launch template, security groups, controller) and prints a JSON
//!   summary that this test checks again.
//! - The controller config the template writes parses with runfleet's own
//!   config parser; the systemd unit it writes is byte for byte
//!   `deploy/systemd/runfleet.service`.
//! - Every metric name in `docs/alerts.yml` is one that
//!   `crates/server/src/metrics.rs` exports.
//! - The Dockerfile's entrypoint, user, port and health check.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runfleet_core::config::{MapSecrets, parse};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn template() -> String {
    read("deploy/cloudformation/runfleet.yaml")
}

/// The lines of the heredoc `<<'MARK'` in the template's user data, with the
/// block's indentation removed.
fn heredoc(text: &str, mark: &str) -> String {
    let open = format!("<<'{mark}'\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no heredoc {mark} in the template"))
        + open.len();
    let rest = &text[start..];
    let indent = rest.len() - rest.trim_start_matches(' ').len();
    let close = format!("\n{}{mark}\n", " ".repeat(indent));
    let end = rest
        .find(&close)
        .unwrap_or_else(|| panic!("heredoc {mark} is not closed"));
    let mut out = String::new();
    for line in rest[..end + 1].split_inclusive('\n') {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            let stripped = line
                .strip_prefix(&" ".repeat(indent))
                .unwrap_or_else(|| panic!("heredoc {mark}: line {line:?} is less indented"));
            out.push_str(stripped);
        }
    }
    out
}

/// The Python next to the moto server (the moto virtualenv's, with boto3).
fn moto_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNFLEET_MOTO_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let server = std::env::var_os("RUNFLEET_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/runfleet-venv/bin/moto_server"));
    let py = server.parent()?.join("python");
    py.is_file().then_some(py)
}

#[test]
fn stack_deploys_on_moto_with_least_privilege_roles() {
    let Some(moto) = common::Moto::start("stack_deploys_on_moto_with_least_privilege_roles") else {
        return;
    };
    let python = moto_python().expect(
        "no Python beside moto_server (set RUNFLEET_MOTO_PYTHON to the moto venv's python)",
    );
    let started = Instant::now();
    let mut child = Command::new(&python)
        .arg(repo().join("deploy/moto_deploy.py"))
        .arg(&moto.url)
        .arg(repo().join("deploy/cloudformation/runfleet.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let deadline = started + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("moto_deploy.py did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "moto_deploy.py failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"));
    eprintln!(
        "deployed in {} ms: {summary}",
        started.elapsed().as_millis()
    );
    assert_eq!(summary["stack_status"], "CREATE_COMPLETE");
    // Only the queue policy is left out by moto (it has no
    // AWS::SQS::QueuePolicy); the script checks it from the template. A new
    // entry here means moto skipped something else the test believes exists.
    assert_eq!(
        summary["skipped_by_moto"],
        serde_json::json!(["EventsQueuePolicy (AWS::SQS::QueuePolicy)"])
    );
    assert_eq!(summary["resources"], 12, "{summary}");
    for output in [
        "WebhookUrl",
        "EventsQueueUrl",
        "RunnerLaunchTemplateId",
        "ControllerRoleArn",
        "RunnerRoleArn",
    ] {
        assert!(
            summary["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == output),
            "no output {output}: {summary}"
        );
    }
}

#[test]
fn controller_config_written_by_the_template_parses() {
    let t = template();
    let text = heredoc(&t, "CONFIG");
    // The values CloudFormation substitutes, as they look after !Sub.
    let subs = [
        ("${FleetName}", "acme-ci"),
        ("${WebhookPort}", "8080"),
        ("${Repos}", "\"acme/app\", \"acme/*\""),
        ("${AWS::Region}", "eu-west-2"),
        (
            "${EventsQueue}",
            "https://sqs.eu-west-2.amazonaws.com/123456789012/runfleet-acme-ci-events",
        ),
        ("${PoolName}", "linux-x64"),
        ("${Labels}", "\"self-hosted\", \"linux\", \"x64\""),
        ("${RunnerLaunchTemplate}", "lt-0123456789abcdef0"),
        ("${Types}", "\"m7i.large\", \"m6i.large\""),
        ("${Subnets}", "\"subnet-aaa\", \"subnet-bbb\""),
        ("${RunnerMarket}", "spot-then-on-demand"),
        ("${MaxRunners}", "20"),
    ];
    let mut cfg_text = text.clone();
    for (k, v) in subs {
        assert!(cfg_text.contains(k), "the config no longer uses {k}");
        cfg_text = cfg_text.replace(k, v);
    }
    assert!(
        !cfg_text.contains("${"),
        "unsubstituted variable in:\n{cfg_text}"
    );
    // `aws.events_queue` is the key of the EC2 events feature (issue 10);
    // until that config key exists, the rest of the config must still parse.
    let knows_events_queue = include_str!("../../core/src/config.rs").contains("events_queue");
    if !knows_events_queue {
        eprintln!("config has no aws.events_queue yet: checking the template's config without it");
        cfg_text = cfg_text
            .lines()
            .filter(|l| !l.starts_with("events_queue"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let secrets = MapSecrets::new()
        .with_file("/run/runfleet/github-token", "ghp_example\n")
        .with_file("/run/runfleet/webhook-secret", "hook-secret\n");
    let cfg = parse(&cfg_text, &secrets)
        .unwrap_or_else(|e| panic!("the template's config does not parse: {e}\n{cfg_text}"));
    assert_eq!(cfg.fleet, "acme-ci");
    assert_eq!(cfg.server.listen, "0.0.0.0:8080");
    assert_eq!(cfg.server.store, "sqlite:///var/lib/runfleet/runfleet.db");
    assert_eq!(cfg.pools.len(), 1);
    assert_eq!(cfg.pools[0].max_runners, 20);
    // The store is in the unit's StateDirectory, the secrets in its
    // RuntimeDirectory.
    let unit = read("deploy/systemd/runfleet.service");
    assert!(unit.contains("StateDirectory=runfleet\n"));
    assert!(unit.contains("RuntimeDirectory=runfleet\n"));
}

#[test]
fn template_installs_the_systemd_unit_byte_for_byte() {
    let t = template();
    assert_eq!(
        heredoc(&t, "UNIT"),
        read("deploy/systemd/runfleet.service"),
        "the unit in the template's user data differs from deploy/systemd/runfleet.service"
    );
}

#[test]
fn template_takes_secret_names_never_values() {
    let t = template();
    for p in ["GitHubTokenParameter", "WebhookSecretParameter"] {
        let decl = t
            .split(&format!("\n  {p}:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no parameter {p}"));
        // The parameter's own lines: indented deeper than its name.
        let decl: String = decl
            .lines()
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            decl.contains("AllowedPattern: \"^/"),
            "{p} must be an SSM parameter name: {decl}"
        );
    }
    for word in ["NoEcho", "Token:", "Secret:", "Password"] {
        assert!(
            !t.contains(word),
            "the template takes a secret value ({word})"
        );
    }
}

/// Metric names exported by `crates/server/src/metrics.rs`, with the
/// suffixes the Prometheus text format adds per type.
fn exported_metrics() -> BTreeSet<String> {
    let src = read("crates/server/src/metrics.rs");
    // Field types of `struct Metrics`.
    let body = src
        .split("pub struct Metrics {")
        .nth(1)
        .expect("struct Metrics")
        .split("\n}")
        .next()
        .unwrap();
    let field_type = |field: &str| -> String {
        body.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{field}: ")))
            .unwrap_or_else(|| panic!("no field {field} in struct Metrics"))
            .to_string()
    };
    let mut out = BTreeSet::new();
    for call in src.split("registry.register(").skip(1) {
        let mut parts = call.splitn(2, ')');
        let args: Vec<&str> = parts.next().unwrap().split(',').map(str::trim).collect();
        let name = args[0].trim_matches('"');
        let field = args
            .last()
            .unwrap()
            .trim_end_matches(".clone(")
            .trim_end_matches(".clone");
        let ty = field_type(field);
        assert!(name.starts_with("runfleet_"), "unexpected metric {name}");
        if ty.contains("Counter") {
            out.insert(format!("{name}_total"));
        } else if ty.contains("Histogram") {
            for s in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{s}"));
            }
        } else {
            out.insert(name.to_string());
        }
    }
    out
}

#[test]
fn alert_rules_use_metrics_runfleet_exports() {
    let exported = exported_metrics();
    for must in [
        "runfleet_jobs_total",
        "runfleet_instances",
        "runfleet_queue_to_start_seconds_bucket",
        "runfleet_launch_errors_total",
        "runfleet_queued_jobs",
    ] {
        assert!(exported.contains(must), "{must} not in {exported:?}");
    }
    let rules = read("docs/alerts.yml");
    let mut used = BTreeSet::new();
    let bytes = rules.as_bytes();
    let mut i = 0;
    while let Some(off) = rules[i..].find("runfleet_") {
        let start = i + off;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // `job="runfleet"` style labels and `runfleet:` recording rules
        // are not metric names; a name is preceded by neither a letter nor ':'.
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if !matches!(before, Some(b) if b.is_ascii_alphanumeric() || b == b':' || b == b'_') {
            used.insert(rules[start..end].to_string());
        }
        i = end;
    }
    assert!(used.len() >= 5, "alerts use too few metrics: {used:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "docs/alerts.yml uses metrics runfleet does not export: {unknown:?} (exported: {exported:?})"
    );
}

#[test]
fn dockerfile_runs_serve_as_non_root_with_a_health_check() {
    let d = read("Dockerfile");
    let instr: Vec<(String, String)> = d
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let get = |k: &str| -> Vec<&str> {
        instr
            .iter()
            .filter(|(i, _)| i == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let froms = get("FROM");
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    assert!(froms[0].starts_with("rust:1-bookworm AS "), "{froms:?}");
    assert!(
        d.contains("cargo build --release -p runfleet --locked"),
        "the build command"
    );
    assert_eq!(get("ENTRYPOINT"), ["[\"runfleet\"]"]);
    assert_eq!(get("CMD"), ["[\"serve\"]"]);
    let user = get("USER");
    assert_eq!(user.len(), 1);
    assert!(!user[0].starts_with("root") && !user[0].starts_with("0"));
    assert_eq!(get("EXPOSE"), ["8080"]);
    assert!(
        get("VOLUME")
            .iter()
            .any(|v| v.contains("/var/lib/runfleet"))
    );
    assert!(d.contains("RUNFLEET_CONFIG=/etc/runfleet/runfleet.toml"));
    assert!(d.contains("http://127.0.0.1:8080/healthz"));
    // The port the image exposes is the config's default listen port.
    let cfg = parse(
        "fleet = \"f\"\n[github]\ntoken = \"t\"\nwebhook_secret = \"s\"\nrepos = [\"o/r\"]\n\
         [[pool]]\nname = \"p\"\nlabels = [\"self-hosted\"]\nlaunch_template = \"lt-1\"\n\
         instance_types = [\"m5.large\"]\n",
        &MapSecrets::new(),
    )
    .expect("a minimal config parses");
    assert!(
        cfg.server.listen.ends_with(":8080"),
        "default listen {} is not the exposed port",
        cfg.server.listen
    );
}
