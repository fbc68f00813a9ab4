//! `runfleet launch` black-box: the real binary against the project's fake
//! GitHub and a real moto server, all on 127.0.0.1; and the composite
//! action (`action.yml`) against the example workflow that uses it.

/// The AWS adapter's moto harness (server on a free port, VPC, launch template).
#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use runfleet_github::fake::FakeGitHub;
use tokio::process::Command;

struct Env {
    _moto: aws::Moto,
    moto_url: String,
    world: aws::World,
    fake: FakeGitHub,
    dir: PathBuf,
    fleet: String,
}

async fn env(name: &str) -> Option<Env> {
    let moto = aws::Moto::start(name)?;
    let world = aws::World::create(&aws::sdk_config(&moto.url), name).await;
    let fake = FakeGitHub::start().await;
    fake.add_org("acme");
    fake.add_repo("acme/app");
    let dir = std::env::temp_dir().join(format!("runfleet-launch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(Env {
        moto_url: moto.url.clone(),
        _moto: moto,
        world,
        fake,
        dir,
        fleet: format!("b-{name}"),
    })
}

impl Env {
    fn config_with(&self, boot_timeout: &str, template: &str, subnets: [&str; 2]) -> PathBuf {
        let text = format!(
            r#"
fleet = "{fleet}"
[server]
store = "sqlite://{dir}/runfleet.db"
boot_timeout = "{boot_timeout}"
[github]
api_url = "{api}"
token = "env:TEST_GITHUB_TOKEN"
repos = ["acme/app"]
poll = true
[aws]
region = "us-east-1"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "{template}"
instance_types = ["t3.micro", "t3.small"]
subnets = ["{s0}", "{s1}"]
max_runners = 3
"#,
            fleet = self.fleet,
            dir = self.dir.display(),
            api = self.fake.url(),
            s0 = subnets[0],
            s1 = subnets[1],
        );
        let p = self.dir.join("runfleet.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn config(&self, boot_timeout: &str) -> PathBuf {
        self.config_with(
            boot_timeout,
            &self.world.template_id,
            [&self.world.subnets[0], &self.world.subnets[1]],
        )
    }

    /// The binary with this test's GitHub token and AWS endpoint, and a
    /// fresh `GITHUB_OUTPUT` file.
    fn launch(&self, args: &[&str], config: &Path, output_file: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runfleet"));
        c.arg("launch")
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env(
                "TEST_GITHUB_TOKEN",
                self.fake.pat().expect("the fake has a PAT"),
            )
            .env("GITHUB_OUTPUT", output_file)
            .env("AWS_ENDPOINT_URL", &self.moto_url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETTEST")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("RUNFLEET_CONFIG")
            .env_remove("RUNFLEET_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn ours(&self) -> Vec<(String, String)> {
        self.world
            .instances_tagged("runfleet:fleet", &self.fleet)
            .await
    }

    async fn alive(&self) -> usize {
        self.ours()
            .await
            .iter()
            .filter(|(_, s)| s == "pending" || s == "running")
            .count()
    }

    async fn tags(&self, instance_id: &str) -> BTreeMap<String, String> {
        let out = self
            .world
            .ec2
            .describe_tags()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("resource-id")
                    .values(instance_id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect()
    }

    async fn param(&self, instance_id: &str) -> Option<String> {
        let name = format!("/runfleet/{}/instances/{instance_id}/jitconfig", self.fleet);
        let out = self
            .world
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .ok()?;
        out.parameter()?.value().map(str::to_string)
    }

    /// What the boot script does once it has read its config.
    async fn delete_param(&self, instance_id: &str) {
        let name = format!("/runfleet/{}/instances/{instance_id}/jitconfig", self.fleet);
        self.world
            .ssm
            .delete_parameter()
            .name(name)
            .send()
            .await
            .unwrap();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The one JSON object on stdout: (labels, instance id, runner name).
fn answer(o: &Output) -> (Vec<String>, String, String) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {:?}", text(&o.stdout)));
    let labels = v["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    (
        labels,
        v["instance_id"].as_str().expect("instance_id").to_string(),
        v["runner_name"].as_str().expect("runner_name").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_prints_labels_writes_outputs_and_registers_a_runner_only_its_job_can_take() {
    let Some(e) = env("basic").await else { return };
    let config = e.config("10m");
    let out_file = e.dir.join("github_output");
    let o = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--name",
                "broker-made",
            ],
            &config,
            &out_file,
        )
        .output()
        .await
        .unwrap();
    let (labels, iid, runner) = answer(&o);
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert_eq!(labels[0], "self-hosted");
    let unique = labels[1].clone();
    assert!(
        unique.starts_with("rf-") && unique.len() > 10,
        "unique label {unique}"
    );
    assert!(iid.starts_with("i-"), "{iid}");
    assert_eq!(runner, format!("runfleet-linux-x64-{iid}"));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        format!("labels=[\"self-hosted\",\"{unique}\"]\ninstance-id={iid}\nrunner-name={runner}\n")
    );

    // The instance, tagged from the launch call itself.
    assert_eq!(e.alive().await, 1);
    let tags = e.tags(&iid).await;
    assert_eq!(tags.get("Name").map(String::as_str), Some("broker-made"));
    assert_eq!(tags.get("runfleet:fleet"), Some(&e.fleet));
    assert_eq!(
        tags.get("runfleet:pool").map(String::as_str),
        Some("linux-x64")
    );

    // Its runner's config is in SSM, and names a runner that carries only
    // self-hosted and the unique label.
    let jit = e.param(&iid).await.expect("the JIT config is in SSM");
    let registered = e.fake.runner_of_jit(&jit).expect("a runner for the config");
    assert_eq!(registered.name, runner);
    assert_eq!(
        registered.labels,
        vec!["self-hosted".to_string(), unique.clone()]
    );
    assert!(
        !text(&o.stdout).contains(&jit) && !text(&o.stderr).contains(&jit),
        "the JIT config is never printed"
    );
    assert!(!text(&o.stderr).contains(&e.fake.pat().unwrap()));

    // A second launch: its own instance, its own label, the default Name.
    let out2 = e.dir.join("github_output2");
    let o2 = e
        .launch(
            &["--pool", "linux-x64", "--repo", "acme/app"],
            &config,
            &out2,
        )
        .output()
        .await
        .unwrap();
    let (labels2, iid2, _) = answer(&o2);
    assert_ne!(labels2[1], unique, "each launch has its own label");
    assert_ne!(iid2, iid);
    assert_eq!(
        e.tags(&iid2).await.get("Name").map(String::as_str),
        Some("runfleet-linux-x64")
    );
    // The first run's instance is untouched by the second broker.
    assert_eq!(e.alive().await, 2);
    assert!(e.param(&iid).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_returns_once_the_runner_is_online_and_its_parameter_is_gone() {
    let Some(e) = env("wait").await else { return };
    let config = e.config("10m");
    let out_file = e.dir.join("github_output");
    let child = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--wait",
                "--timeout",
                "2m",
            ],
            &config,
            &out_file,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Play the machine: once its config is in SSM, the boot script reads
    // it, deletes it, and the runner connects.
    let deadline = Instant::now() + Duration::from_secs(60);
    let jit = loop {
        if let Some((iid, _)) = e.ours().await.first()
            && let Some(jit) = e.param(iid).await
        {
            e.delete_param(iid).await;
            break jit;
        }
        assert!(
            Instant::now() < deadline,
            "no instance with its config in SSM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !out_file.exists() || std::fs::read_to_string(&out_file).unwrap().is_empty(),
        "nothing is written before the runner is online"
    );
    e.fake.connect_jit(&jit).await.unwrap();
    let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("launch --wait returns once the runner is online")
        .unwrap();
    let (labels, iid, runner) = answer(&o);
    assert_eq!(labels[0], "self-hosted");
    assert!(e.fake.runner_by_name(&runner).unwrap().online);
    assert!(
        e.param(&iid).await.is_none(),
        "the parameter is gone once the runner is online"
    );
    assert!(
        std::fs::read_to_string(&out_file)
            .unwrap()
            .contains(&format!("instance-id={iid}\n"))
    );
    assert_eq!(e.alive().await, 1, "the instance stays for its job");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_times_out_and_leaves_no_instance_parameter_or_runner() {
    let Some(e) = env("timeout").await else {
        return;
    };
    let config = e.config("10m");
    let out_file = e.dir.join("github_output");
    let started = Instant::now();
    let o = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--wait",
                "--timeout",
                "4s",
            ],
            &config,
            &out_file,
        )
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = text(&o.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("runfleet: ")
            // (or, on a machine so loaded that even the launch took 4 s, "not set up")
            && (last.contains("did not come online within 4s")
                || last.contains("was not set up within 4s")),
        "one-line reason: {stderr}"
    );
    assert!(o.stdout.is_empty(), "no answer on stdout");
    assert!(!out_file.exists(), "no step outputs");
    let ours = e.ours().await;
    assert_eq!(ours.len(), 1, "one instance was launched");
    let iid = &ours[0].0;
    assert_eq!(e.alive().await, 0, "and it is terminated");
    assert!(e.param(iid).await.is_none(), "its parameter is deleted");
    assert!(
        e.fake
            .runner_by_name(&format!("runfleet-linux-x64-{iid}"))
            .is_none(),
        "its runner is deregistered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_broker_cleans_up_before_it_exits() {
    let Some(e) = env("cancel").await else {
        return;
    };
    let config = e.config("10m");
    let child = e
        .launch(
            &["--pool", "linux-x64", "--repo", "acme/app", "--wait"],
            &config,
            &e.dir.join("out"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let iid = loop {
        if let Some((iid, _)) = e.ours().await.first()
            && e.param(iid).await.is_some()
        {
            break iid.clone();
        }
        assert!(Instant::now() < deadline, "no instance with its config");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What a cancelled workflow does to its steps.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the broker exits")
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .lines()
            .last()
            .unwrap()
            .contains("interrupted"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(e.alive().await, 0, "the instance is terminated");
    assert!(e.param(&iid).await.is_none());
    assert!(
        e.fake
            .runner_by_name(&format!("runfleet-linux-x64-{iid}"))
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_that_cannot_succeed_fails_with_the_reason() {
    let Some(e) = env("bad").await else { return };
    // Subnets that do not exist: every offering of the chain is refused.
    let config = e.config_with(
        "10m",
        &e.world.template_id,
        ["subnet-00000000000000001", "subnet-00000000000000002"],
    );
    let started = Instant::now();
    let o = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--timeout",
                "20s",
            ],
            &config,
            &e.dir.join("out"),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    let stderr = text(&o.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("runfleet: launch in pool linux-x64 failed")
            && last.contains("subnet-00000000000000002"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a permanent error does not wait for the timeout"
    );
    assert_eq!(e.alive().await, 0);

    // GitHub refuses the token: the instance is launched, its runner cannot
    // be registered, and the instance is terminated again.
    let config = e.config("10m");
    let o = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--wait",
                "--timeout",
                "30s",
            ],
            &config,
            &e.dir.join("out"),
        )
        .env(
            "TEST_GITHUB_TOKEN",
            "ghp_notavalidtokenatall000000000000000000",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    let stderr = text(&o.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("(auth)"), "{stderr}");
    assert!(!stderr.contains("ghp_notavalidtoken"), "no token printed");
    let ours = e.ours().await;
    assert_eq!(ours.len(), 1);
    assert_eq!(e.alive().await, 0, "the instance is terminated");
    assert!(e.param(&ours[0].0).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_still_failing_at_the_timeout_is_given_up_in_the_store() {
    let Some(e) = env("giveup").await else {
        return;
    };
    // moto answers a launch from an unknown template with HTTP 500: a
    // transient error, retried with the same token until the timeout.
    let config = e.config_with(
        "10m",
        "lt-0123456789abcdef0",
        [&e.world.subnets[0], &e.world.subnets[1]],
    );
    let o = e
        .launch(
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--timeout",
                "3s",
            ],
            &config,
            &e.dir.join("out"),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    let stderr = text(&o.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("not set up within 3s (still launching); last error: launch failed"),
        "{stderr}"
    );
    let store = runfleet_store::open(&format!("sqlite://{}/runfleet.db", e.dir.display()))
        .await
        .unwrap();
    let launches = store.load().await.unwrap().launches;
    assert_eq!(launches.len(), 1);
    assert_eq!(
        launches[0].state,
        runfleet_core::model::LaunchState::Failed,
        "no one resumes a launch the broker gave up"
    );
    assert_eq!(e.alive().await, 0);
}

#[tokio::test]
async fn an_unknown_pool_or_a_bad_repo_exits_1_naming_it() {
    let dir = std::env::temp_dir().join(format!("runfleet-launch-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("runfleet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
fleet = "args"
[server]
store = "sqlite://{}/runfleet.db"
[github]
token = "not-a-real-token"
repos = ["acme/app"]
poll = true
[[pool]]
name = "linux-x64"
labels = ["self-hosted"]
launch_template = "lt-0123456789abcdef0"
instance_types = ["t3.micro"]
"#,
            dir.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_runfleet"))
            .arg("launch")
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env_remove("GITHUB_OUTPUT")
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--pool", "gpu", "--repo", "acme/app"][..],
            "--pool \"gpu\" is not configured (pools: linux-x64)",
        ),
        (
            &["--pool", "linux-x64", "--repo", "acme"][..],
            "--repo \"acme\" is not OWNER/NAME",
        ),
        (
            &["--pool", "linux-x64", "--repo", "other/app"][..],
            "not in github.repos",
        ),
        (
            &[
                "--pool",
                "linux-x64",
                "--repo",
                "acme/app",
                "--timeout",
                "soon",
            ][..],
            "--timeout \"soon\"",
        ),
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let stderr = text(&o.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(o.stdout.is_empty());
    }
    assert!(
        !dir.join("runfleet.db").exists(),
        "nothing is stored for a refused launch"
    );
}

// ---------------------------------------------------------------- action.yml

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(path: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn keys(v: &serde_yaml_ng::Value) -> Vec<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_action_wraps_launch_and_maps_its_outputs() {
    let action = yaml("action.yml");
    assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
    let inputs = keys(&action["inputs"]);
    for i in ["pool", "repo", "config", "wait", "timeout", "name"] {
        assert!(inputs.contains(&i.to_string()), "input {i} in {inputs:?}");
    }
    assert_eq!(
        action["inputs"]["repo"]["default"].as_str(),
        Some("${{ github.repository }}")
    );
    let outputs = keys(&action["outputs"]);
    assert_eq!(outputs, vec!["labels", "instance-id", "runner-name"]);
    let steps = action["runs"]["steps"].as_sequence().unwrap();
    let step = steps
        .iter()
        .find(|s| s["run"].as_str().is_some_and(|r| r.contains("runfleet")))
        .expect("a step runs runfleet");
    let id = step["id"].as_str().expect("the step has an id");
    let run = step["run"].as_str().unwrap();
    assert!(run.contains("launch"), "{run}");
    for o in &outputs {
        assert_eq!(
            action["outputs"][o.as_str()]["value"].as_str(),
            Some(format!("${{{{ steps.{id}.outputs.{o} }}}}").as_str()),
            "output {o} maps the step's GITHUB_OUTPUT line"
        );
    }
    // Inputs reach the script through env, never spliced into the shell text.
    assert!(
        !run.contains("${{"),
        "no expression inside the script: {run}"
    );
}

#[test]
fn the_example_workflow_uses_only_what_the_action_declares() {
    let action = yaml("action.yml");
    let inputs = keys(&action["inputs"]);
    let outputs = keys(&action["outputs"]);
    let wf = yaml("examples/broker-workflow.yml");
    let jobs = &wf["jobs"];
    let start = &jobs["start"];
    let runs_on: Vec<&str> = start["runs-on"]
        .as_sequence()
        .expect("runs-on is a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(runs_on, vec!["self-hosted", "broker"]);
    let steps = start["steps"].as_sequence().unwrap();
    let uses: Vec<&serde_yaml_ng::Value> = steps
        .iter()
        .filter(|s| s["uses"].as_str().is_some_and(|u| u.contains("runfleet")))
        .collect();
    assert_eq!(uses.len(), 1, "one step uses the action");
    let step = uses[0];
    let step_id = step["id"].as_str().expect("the action step has an id");
    for k in keys(&step["with"]) {
        assert!(
            inputs.contains(&k),
            "input {k} is not declared by action.yml"
        );
    }
    // Every required input without a default is given.
    for i in &inputs {
        let decl = &action["inputs"][i.as_str()];
        if decl["required"].as_bool() == Some(true) && decl["default"].is_null() {
            assert!(!step["with"][i.as_str()].is_null(), "required input {i}");
        }
    }
    // Job outputs read only declared outputs of that step.
    let text = repo_file("examples/broker-workflow.yml");
    let prefix = format!("steps.{step_id}.outputs.");
    let mut seen = 0;
    for (at, _) in text.match_indices(&prefix) {
        let rest = &text[at + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        assert!(outputs.contains(&name), "output {name} is not declared");
        seen += 1;
    }
    assert!(seen >= 1, "the start job exports the action's outputs");
    assert!(!start["outputs"]["labels"].is_null());
    let build = &jobs["build"];
    assert_eq!(build["needs"].as_str(), Some("start"));
    assert_eq!(
        build["runs-on"].as_str(),
        Some("${{ fromJSON(needs.start.outputs.labels) }}")
    );
}

// ------------------------------------------------------------------ examples

#[test]
fn the_example_broker_config_is_valid() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_runfleet"))
        .args(["config", "validate", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/broker.toml"))
        .env("RUNFLEET_GITHUB_TOKEN", "placeholder")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Every AWS call the adapter makes is granted by the broker policy (or
/// explained in the setup guide), and the runner instances may only read
/// runner configs.
#[test]
fn the_example_iam_policies_cover_every_call_runfleet_makes() {
    let mut calls = std::collections::BTreeSet::new();
    for file in ["crates/aws/src/cloud.rs", "crates/aws/src/check.rs"] {
        let src = repo_file(file);
        for prefix in ["\"ec2:", "\"ssm:", "\"sts:"] {
            for (at, _) in src.match_indices(prefix) {
                let rest = &src[at + prefix.len()..];
                let op: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                // Operation names only ("ssm: fleet name is ..." is a message).
                if op.starts_with(|c: char| c.is_ascii_uppercase()) {
                    calls.insert(format!("{}{op}", &prefix[1..]));
                }
            }
        }
    }
    assert!(
        calls.contains("ec2:RunInstances") && calls.len() >= 8,
        "{calls:?}"
    );
    let policy: serde_json::Value =
        serde_json::from_str(&repo_file("examples/iam/broker-policy.json")).unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            serde_json::Value::String(a) => {
                granted.insert(a.clone());
            }
            serde_json::Value::Array(v) => {
                granted.extend(v.iter().map(|a| a.as_str().unwrap().to_string()));
            }
            other => panic!("Action {other}"),
        }
        let resources = st["Resource"].to_string();
        assert!(!resources.contains("\"*\"") || st["Sid"] == "DescribeCannotBeScopedByAws");
    }
    let guide = repo_file("examples/broker-setup.md");
    for call in &calls {
        assert!(
            granted.contains(call) || guide.contains(&format!("`{call}`")),
            "{call} is neither granted nor explained"
        );
    }
    for g in &granted {
        assert!(
            calls.contains(g) || g == "ec2:CreateTags" || g == "iam:PassRole",
            "{g} is granted but runfleet never calls it"
        );
    }
    let runner: serde_json::Value =
        serde_json::from_str(&repo_file("examples/iam/runner-instance-policy.json")).unwrap();
    let st = runner["Statement"].as_array().unwrap();
    assert_eq!(st.len(), 1);
    // Read its config, then delete it (the boot script does both).
    assert_eq!(
        st[0]["Action"],
        serde_json::json!(["ssm:GetParameter", "ssm:DeleteParameter"])
    );
    assert_eq!(
        st[0]["Resource"],
        "arn:aws:ssm:REGION:ACCOUNT_ID:parameter/runfleet/FLEET/instances/*"
    );
}
