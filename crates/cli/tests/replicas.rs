//! Several `runfleet serve` replicas on one PostgreSQL store, black-box: the
//! real binary three times, a throwaway PostgreSQL cluster, the project's
//! fake GitHub and a real moto server, all on 127.0.0.1.
//!
//! A burst of jobs is announced by webhooks sent to different replicas; the
//! leader is killed with SIGKILL in the middle of it; another replica must
//! take the lease within two lease periods, and at the end every job has
//! exactly one instance (counted in moto by the `runfleet:launch` tag): none
//! lost, none launched twice.
//!
//! Needs PostgreSQL (`crates/store/tests/install-postgres.sh`) and moto
//! (`crates/aws/tests/install-moto.sh`): without them the test prints why and
//! passes, except with `CI=true`, where it fails.

/// The AWS adapter's moto harness (server on a free port, VPC, launch template).
#[path = "../../aws/tests/common/mod.rs"]
mod aws;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runfleet_github::fake::FakeGitHub;
use runfleet_store::testpg::{PgCluster, cluster_or_skip};

const SECRET: &str = "webhook-secret-for-replicas";
const LINUX: &[&str] = &["self-hosted", "linux", "x64"];
/// The lease period of the test's replicas.
const TTL: Duration = Duration::from_secs(3);

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// `/readyz`'s `leader`, or `None` when the replica does not answer.
    async fn leads(&self, http: &reqwest::Client) -> Option<bool> {
        let v: serde_json::Value = http
            .get(format!("{}/readyz", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["leader"].as_bool()
    }

    async fn status(&self, http: &reqwest::Client) -> serde_json::Value {
        http.get(format!("{}/status.json", self.url))
            .send()
            .await
            .expect("status.json")
            .json()
            .await
            .expect("status.json is JSON")
    }
}

struct Env {
    moto: aws::Moto,
    world: aws::World,
    fake: FakeGitHub,
    _pg: PgCluster,
    store_url: String,
    dir: std::path::PathBuf,
    fleet: String,
}

impl Env {
    async fn new(name: &str) -> Option<Env> {
        let pg = tokio::task::spawn_blocking(cluster_or_skip).await.ok()??;
        let moto = aws::Moto::start(name)?;
        let world = aws::World::create(&aws::sdk_config(&moto.url), name).await;
        let fake = FakeGitHub::start().await;
        fake.add_org("acme");
        fake.add_repo("acme/app");
        let store_url = pg.create_database().await;
        let dir =
            std::env::temp_dir().join(format!("runfleet-replicas-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Env {
            moto,
            world,
            fake,
            _pg: pg,
            store_url,
            dir,
            fleet: format!("r-{name}"),
        })
    }

    fn config(&self) -> std::path::PathBuf {
        let text = format!(
            r#"
fleet = "{fleet}"
[server]
listen = "127.0.0.1:0"
store = "env:TEST_STORE_URL"
reconcile_interval = "2s"
completed_grace = "1s"
boot_timeout = "10m"
lease_ttl = "{ttl}s"
[github]
api_url = "{api}"
token = "env:TEST_GITHUB_TOKEN"
webhook_secret = "env:TEST_WEBHOOK_SECRET"
repos = ["acme/app"]
[aws]
region = "us-east-1"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux", "x64"]
launch_template = "{lt}"
instance_types = ["t3.micro", "t3.small"]
subnets = ["{s0}", "{s1}"]
max_runners = 50
"#,
            fleet = self.fleet,
            ttl = TTL.as_secs(),
            api = self.fake.url(),
            lt = self.world.template_id,
            s0 = self.world.subnets[0],
            s1 = self.world.subnets[1],
        );
        let p = self.dir.join("runfleet.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn start(&self, n: usize, config: &std::path::Path) -> Replica {
        let log = std::fs::File::create(self.dir.join(format!("replica-{n}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_runfleet"))
            .args(["serve", "--log-format", "json"])
            .args(["--config", config.to_str().unwrap()])
            .env("TEST_STORE_URL", &self.store_url)
            .env(
                "TEST_GITHUB_TOKEN",
                self.fake.pat().expect("the fake has a PAT"),
            )
            .env("TEST_WEBHOOK_SECRET", SECRET)
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "AKIDRUNFLEETTEST")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUNFLEET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("runfleet starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("first stdout line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("replica {n}: {e}: {line:?}"));
        let url = format!(
            "http://{}",
            v["listening"].as_str().expect("listening address")
        );
        Replica { child, url }
    }

    /// Live instances of this fleet per `runfleet:launch` tag.
    async fn instances_by_launch(&self) -> BTreeMap<String, Vec<String>> {
        let out = self
            .world
            .ec2
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:runfleet:fleet")
                    .values(&self.fleet)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeInstances");
        let mut by_launch: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            let launch = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("runfleet:launch"))
                .and_then(|t| t.value())
                .unwrap_or("(untagged)")
                .to_string();
            by_launch
                .entry(launch)
                .or_default()
                .push(i.instance_id().unwrap_or_default().to_string());
        }
        by_launch
    }

    /// Instances per job id of the tag (launch ids are
    /// `<fleet>-j<job id>-<n>`; a call for several launches is tagged with
    /// its first launch's id and `-x<size>`, see [`batch_size`]).
    async fn instances_by_job(&self) -> BTreeMap<u64, Vec<String>> {
        let prefix = format!("{}-j", self.fleet);
        let mut by_job: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (launch, ids) in self.instances_by_launch().await {
            let job = launch
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|j| j.parse().ok())
                .unwrap_or_else(|| panic!("instance with launch tag {launch:?} of no job"));
            by_job.entry(job).or_default().extend(ids);
        }
        by_job
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The replicas' logs stay for a failed test to be read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How many launches a `runfleet:launch` tag stands for: a launch call for
/// several launches (a batch) is tagged `<first launch id>-x<size>`.
fn batch_size(tag: &str) -> usize {
    tag.rsplit_once("-x")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// Instances in all, and each tag's count checked against its batch size:
/// a launch call never starts more instances than it has launches.
fn total_instances(by_launch: &BTreeMap<String, Vec<String>>) -> usize {
    for (tag, ids) in by_launch {
        assert!(
            ids.len() <= batch_size(tag),
            "launch {tag} has instances {ids:?}"
        );
    }
    by_launch.values().map(Vec::len).sum()
}

/// Waits until exactly one replica says it leads; answers its index.
async fn single_leader(
    replicas: &[Option<Replica>],
    http: &reqwest::Client,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        if let [one] = leaders(replicas, http).await[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no single replica leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replicas that say they lead (by index), polling each once, with the
/// epoch each holds. Two replicas may both answer during a handover (one
/// polled just before it lapsed, the other just after it took over), but
/// never at the same epoch: that would be two leaders at once.
async fn leaders(replicas: &[Option<Replica>], http: &reqwest::Client) -> Vec<usize> {
    let mut out: Vec<(usize, u64)> = Vec::new();
    for (n, r) in replicas.iter().enumerate() {
        if let Some(r) = r
            && r.leads(http).await == Some(true)
        {
            let v = r.status(http).await;
            if let Some(epoch) = v["health"]["lease"]["epoch"].as_u64() {
                out.push((n, epoch));
            }
        }
    }
    let mut epochs: Vec<u64> = out.iter().map(|(_, e)| *e).collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(
        epochs.len(),
        out.len(),
        "two replicas lead at one epoch: {out:?}"
    );
    out.into_iter().map(|(n, _)| n).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_burst_loses_no_job_and_launches_none_twice() {
    let Some(e) = Env::new("failover").await else {
        return;
    };
    let http = reqwest::Client::new();
    let config = e.config();
    let mut replicas: Vec<Option<Replica>> = (0..3).map(|n| Some(e.start(n, &config))).collect();

    // One replica leads; the others are ready (they take intake). (On a
    // starved machine the lease may move between replicas at any time; the
    // checks below hold whoever leads.)
    let first = single_leader(&replicas, &http, Duration::from_secs(30)).await;
    let mut followers = 0;
    for r in replicas.iter().flatten() {
        // Each replica publishes its lease view as soon as its driver runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = r.status(&http).await;
            if status["health"]["lease"].is_object() {
                break status;
            }
            assert!(Instant::now() < deadline, "no lease view: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let lease = &status["health"]["lease"];
        assert!(lease["replica"].as_str().is_some_and(|s| !s.is_empty()));
        if lease["leader"].as_bool() == Some(false) {
            followers += 1;
            let ready = http
                .get(format!("{}/readyz", r.url))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(ready, 200, "a follower is ready for intake");
        }
    }
    assert!(followers >= 1, "no follower besides replica {first}");

    // A burst of jobs, webhooks round-robin over the replicas; the leader
    // is killed after the first half.
    let mut jobs = Vec::new();
    let total = 16;
    let mut killed_at = None;
    let mut leader = first;
    for n in 0..total {
        if n == total / 2 {
            // Mid-burst: the leader has launched for some jobs, not all.
            let deadline = Instant::now() + Duration::from_secs(30);
            while e.instances_by_launch().await.is_empty() {
                assert!(Instant::now() < deadline, "the leader launched nothing");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            leader = single_leader(&replicas, &http, Duration::from_secs(30)).await;
            let mut dead = replicas[leader].take().unwrap();
            dead.child.kill().expect("SIGKILL the leader");
            let _ = dead.child.wait();
            killed_at = Some(Instant::now());
        }
        let alive: Vec<usize> = (0..3).filter(|i| replicas[*i].is_some()).collect();
        let target = alive[n % alive.len()];
        let url = &replicas[target].as_ref().unwrap().url;
        e.fake.set_webhook(&format!("{url}/webhook"), SECRET);
        jobs.push(e.fake.queue_job("acme/app", LINUX, true).await.job_id);
    }
    let killed_at = killed_at.unwrap();

    // Another replica takes over within two lease periods.
    let new_leader = loop {
        let l = leaders(&replicas, &http).await;
        if let Some(one) = l.first() {
            break *one;
        }
        assert!(
            killed_at.elapsed() < 2 * TTL + Duration::from_secs(1),
            "no replica took over within two lease periods"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failover = killed_at.elapsed();
    eprintln!(
        "failover: replica {new_leader} leads {failover:?} after the leader was killed (lease_ttl {TTL:?})"
    );
    assert_ne!(new_leader, leader);
    assert!(failover <= 2 * TTL, "failover took {failover:?}");

    // Every webhook was accepted (202) by a live replica.
    let refused: Vec<_> = e
        .fake
        .deliveries()
        .into_iter()
        .filter(|d| d.status != Some(202))
        .collect();
    assert!(refused.is_empty(), "deliveries not accepted: {refused:?}");

    // Every job gets its instance: none lost. (Launches of several jobs go
    // out as one call whose instances share one tag, so the count is
    // checked in all; the sim's crash tests check each launch's binding.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let by_launch = e.instances_by_launch().await;
        let total = total_instances(&by_launch);
        if total >= jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{total} instances for {} jobs: {by_launch:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more reconciles of the new leader: still exactly one per job.
    let status = |r: &Replica| {
        let http = http.clone();
        let url = r.url.clone();
        async move {
            let v: serde_json::Value = http
                .get(format!("{url}/status.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["reconciles"].as_u64().unwrap_or(0)
        }
    };
    // (Summed over the survivors: whichever of them leads by then.)
    let reconciles = || async {
        let mut sum = 0;
        for r in replicas.iter().flatten() {
            sum += status(r).await;
        }
        sum
    };
    let start = reconciles().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reconciles().await < start + 2 {
        assert!(
            Instant::now() < deadline,
            "the new leader does not reconcile"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly one instance per job: none launched twice.
    let by_launch = e.instances_by_launch().await;
    assert_eq!(
        total_instances(&by_launch),
        jobs.len(),
        "instances for {} jobs: {by_launch:?}",
        jobs.len()
    );
    let by_job = e.instances_by_job().await;
    assert!(
        by_job.keys().all(|j| jobs.contains(j)),
        "instances for unknown jobs: {by_job:?}"
    );

    // One more job, announced to a follower: the leader hears of it through
    // the store's notification, not at its next tick.
    let follower = (0..3)
        .find(|i| *i != new_leader && replicas[*i].is_some())
        .unwrap();
    let url = &replicas[follower].as_ref().unwrap().url;
    e.fake.set_webhook(&format!("{url}/webhook"), SECRET);
    let sent = Instant::now();
    let late = e.fake.queue_job("acme/app", LINUX, true).await.job_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !e.instances_by_job().await.contains_key(&late) {
        assert!(Instant::now() < deadline, "no instance for job {late}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "webhook to a follower -> instance launched by the leader: {:?}",
        sent.elapsed()
    );
    jobs.push(late);

    // A follower's status view, refreshed from the store, shows every
    // instance and names the replica that leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    'caught_up: loop {
        let mut views = Vec::new();
        for r in replicas.iter().flatten() {
            views.push(r.status(&http).await);
        }
        let lease = |v: &serde_json::Value, k: &str| v["health"]["lease"][k].clone();
        let leading: Vec<String> = views
            .iter()
            .filter(|v| lease(v, "leader").as_bool() == Some(true))
            .filter_map(|v| lease(v, "replica").as_str().map(str::to_owned))
            .collect();
        for v in &views {
            let instances = v["instances"].as_array().map_or(0, Vec::len);
            let holder = lease(v, "holder");
            if lease(v, "leader").as_bool() == Some(false)
                && instances == jobs.len()
                && holder
                    .as_str()
                    .is_some_and(|h| leading.iter().any(|l| l == h))
            {
                break 'caught_up;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no follower's view caught up: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
