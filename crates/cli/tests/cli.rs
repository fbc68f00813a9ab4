//! The real `runfleet` binary, black-box.

use std::process::{Command, Output};

fn runfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runfleet"))
        .args(args)
        .env_remove("RUNFLEET_CONFIG")
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_json_summary_holds_every_invariant() {
    let o = runfleet(&["demo", "--jobs", "60", "--seed", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!(v["jobs"], 60);
    assert_eq!(v["completed"], 60);
    assert_eq!(v["instances_left"], 0);
    assert_eq!(v["runners_left"], 0);
    assert_eq!(v["orphans"], 0);
    assert_eq!(v["duplicate_runs"], 0);
    assert!(v["instances_launched"].as_u64().unwrap() >= 60);
    for k in ["p50", "p99", "max"] {
        assert!(
            v["queue_to_start_ms"][k].as_u64().is_some(),
            "queue_to_start_ms.{k}"
        );
    }
    assert!(v["queue_to_start_ms"]["p50"].as_u64() <= v["queue_to_start_ms"]["max"].as_u64());
}

#[test]
fn demo_with_faults_still_exits_zero() {
    let o = runfleet(&[
        "demo", "--jobs", "80", "--seed", "1", "--faults", "0.1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["completed"], 80);
    assert_eq!(v["ok"], true);
}

#[test]
fn demo_human_summary_on_stdout() {
    let o = runfleet(&["demo", "--jobs", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("completed            20/20"), "{out}");
    assert!(out.contains("ok: every invariant held"), "{out}");
}

#[test]
fn bad_demo_flags_are_one_line_errors() {
    let o = runfleet(&["demo", "--faults", "2"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("--faults must be between 0 and 1"), "{e}");
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runfleet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"
fleet = "acme-ci"
[github]
token = "ghp_not_a_real_token"
webhook_secret = "s3cret"
repos = ["acme/app"]
[aws]
region = "eu-west-2"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "lt-0123456789abcdef0"
instance_types = ["m7i.large"]
"#;

#[test]
fn config_validate_accepts_a_good_file() {
    let p = write("good.toml", GOOD);
    let o = runfleet(&["config", "validate", "--config", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("valid") && out.contains("linux-x64"), "{out}");
    assert!(!out.contains("ghp_not_a_real_token") && !out.contains("s3cret"));
}

#[test]
fn config_validate_names_the_key_and_line() {
    let cases = [
        (
            "unknown.toml",
            GOOD.replace("instance_types", "instnce_types"),
            "instnce_types",
            "line 13",
        ),
        (
            "dup.toml",
            format!(
                "{GOOD}\n[[pool]]\nname = \"linux-x64\"\nlabels = [\"a\"]\nlaunch_template = \"lt-1\"\ninstance_types = [\"m5.large\"]\n"
            ),
            "pool[1].name",
            "line",
        ),
        (
            "nolabels.toml",
            GOOD.replace(
                "labels = [\"self-hosted\", \"linux\", \"x64\"]",
                "labels = []",
            ),
            "pool[0].labels",
            "line 11",
        ),
        (
            "duration.toml",
            GOOD.replace(
                "[github]",
                "[server]\nboot_timeout = \"10 minutes\"\n[github]",
            ),
            "server.boot_timeout",
            "line 4",
        ),
        (
            "file.toml",
            GOOD.replace(
                "\"ghp_not_a_real_token\"",
                "\"file:/nonexistent/runfleet/token\"",
            ),
            "github.token",
            "/nonexistent/runfleet/token",
        ),
        (
            "type.toml",
            GOOD.replace(
                "instance_types = [\"m7i.large\"]",
                "instance_types = [\"m7i.large\"]\nmax_runners = \"many\"",
            ),
            "max_runners",
            "line",
        ),
    ];
    for (name, text, key, more) in cases {
        let p = write(name, &text);
        let o = runfleet(&["config", "validate", "--config", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.trim().lines().count(), 1, "{name}: one line: {e}");
        assert!(e.contains(key) && e.contains(more), "{name}: {e}");
        assert!(!e.contains("panicked"), "{name}: {e}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let o = runfleet(&[
        "config",
        "validate",
        "--config",
        "/nonexistent/runfleet.toml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read config /nonexistent/runfleet.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn status_without_a_store_says_so_and_creates_none() {
    let db = std::env::temp_dir().join(format!("runfleet-cli-{}-missing.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let text = GOOD.replace(
        "[github]",
        &format!("[server]\nstore = \"sqlite://{}\"\n[github]", db.display()),
    );
    let p = write("status-missing.toml", &text);
    let o = runfleet(&["status", "--config", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("no store at") && e.contains("missing.db"), "{e}");
    assert!(!db.exists(), "status created a store");
}

/// `runfleet status` names each instance as the status page does: a warm
/// instance waiting for a job is `warm`, not `booting`.
#[test]
fn status_names_instances_as_the_status_page_does() {
    use runfleet_core::model::{Instance, InstanceState, Launch, LaunchState, Scope};
    use runfleet_engine::ports::Mutation;

    let db = std::env::temp_dir().join(format!("runfleet-cli-{}-status.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let url = format!("sqlite://{}", db.display());
    let launch = |id: &str, warm: bool, iid: &str| Launch {
        id: id.into(),
        pool: "linux-x64".into(),
        scope: Scope::Repo("acme/app".into()),
        job_id: (!warm).then_some(7),
        unique_label: None,
        name: None,
        state: LaunchState::Launched,
        requested_at: 1,
        instance_id: Some(iid.into()),
        error: None,
        not_before: 0,
        batch: None,
    };
    let instance = |iid: &str, launch: &str, warm: bool| {
        let mut i = Instance::new(iid, "acme-ci", "linux-x64", InstanceState::Running, 1);
        i.launch_id = Some(launch.into());
        i.scope = (!warm).then(|| Scope::Repo("acme/app".into()));
        i
    };
    let mut busy = instance("i-0000000000000000b", "l-busy", false);
    busy.jit_written = true;
    busy.runner_online_at = Some(2);
    busy.busy = true;
    let muts = vec![
        Mutation::PutLaunch(launch("l-warm", true, "i-0000000000000000a")),
        Mutation::PutInstance(instance("i-0000000000000000a", "l-warm", true)),
        Mutation::PutLaunch(launch("l-busy", false, "i-0000000000000000b")),
        Mutation::PutInstance(busy),
        Mutation::PutLaunch(launch("l-boot", false, "i-0000000000000000c")),
        Mutation::PutInstance(instance("i-0000000000000000c", "l-boot", false)),
    ];
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = runfleet_store::open(&url).await.unwrap();
            store.apply(&muts).await.unwrap();
        });
    let text = GOOD.replace(
        "[github]",
        &format!("[server]\nstore = \"{url}\"\n[github]"),
    );
    let p = write("status-states.toml", &text);
    let o = runfleet(&["status", "--json", "--config", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runner = |id: &str| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .map(|i| i["runner"].as_str().unwrap().to_string())
    };
    assert_eq!(runner("i-0000000000000000a").as_deref(), Some("warm"));
    assert_eq!(runner("i-0000000000000000b").as_deref(), Some("busy"));
    assert_eq!(runner("i-0000000000000000c").as_deref(), Some("booting"));
    let o = runfleet(&["status", "--config", p.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("i-0000000000000000a"))
        .unwrap();
    assert!(line.contains("warm"), "{out}");
    let _ = std::fs::remove_file(&db);
}
