//! Memory of the state per tracked runner: the heap the engine holds after
//! loading a store of N jobs, each running on its own instance with its
//! launch (what `serve` holds for N busy runners), the runners as GitHub's
//! listing gives them, and the status view the server keeps (rebuilt each
//! step). Counted by a global allocator that keeps the live byte count, so
//! these are shares of the heap, not the process's RSS (`cargo bench -p
//! runfleet --bench system -- runners` measures that).
//!
//! `cargo bench -p runfleet-server --bench state_memory [-- N]` (default 10000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use runfleet_core::config::CapacityMarket;
use runfleet_core::model::{
    Instance, InstanceState, Job, JobEvent, JobState, JobStatus, Launch, LaunchBatch, LaunchState,
    Offering, Runner, Scope, runner_name,
};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{Mutation, Store};
use runfleet_engine::{Engine, EngineOptions};
use runfleet_sim::adapters::{SimCloud, SimGitHub};
use runfleet_sim::demo_config;
use runfleet_sim::world::{World, WorldConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const POOL: &str = "linux-x64";
const REPO: &str = "acme/app";

fn records(i: u64) -> (Job, Launch, Instance, Runner) {
    let iid = format!("i-{:017x}", 0x0abc_0000_0000u64 + i);
    let runner = runner_name(POOL, &iid);
    let mut job = Job::new(&JobEvent {
        job_id: 1_000_000 + i,
        run_id: 500_000 + i / 10,
        repo: REPO.into(),
        labels: ["self-hosted", "linux", "x64"].map(String::from).to_vec(),
        status: JobStatus::Queued,
        runner_name: None,
        conclusion: None,
        at: 1_700_000_000_000,
    });
    job.state = JobState::InProgress;
    job.started_at = Some(1_700_000_060_000);
    job.runner_name = Some(runner.clone());
    job.launches = 1;
    let launch_id = format!("demo-j{}-1", job.id);
    let offering = Offering {
        instance_type: "m7i.large".into(),
        subnet: Some("subnet-0a1b2c3d4e5f60718".into()),
        market: CapacityMarket::Spot,
    };
    let launch = Launch {
        id: launch_id.clone(),
        pool: POOL.into(),
        scope: Scope::Repo(REPO.into()),
        job_id: Some(job.id),
        unique_label: None,
        name: None,
        state: LaunchState::Launched,
        requested_at: 1_700_000_000_100,
        instance_id: Some(iid.clone()),
        error: None,
        not_before: 0,
        batch: Some(LaunchBatch {
            id: format!("{launch_id}-x20"),
            size: 20,
        }),
    };
    let mut inst = Instance::new(
        &iid,
        "demo",
        POOL,
        InstanceState::Running,
        1_700_000_001_000,
    );
    inst.launch_id = Some(launch_id);
    inst.scope = Some(Scope::Repo(REPO.into()));
    inst.market = Some(CapacityMarket::Spot);
    inst.offering = Some(offering);
    inst.jit_written = true;
    inst.runner_online_at = Some(1_700_000_030_000);
    inst.busy = true;
    let runner = Runner {
        id: 10_000 + i,
        name: runner,
        scope: Scope::Repo(REPO.into()),
        online: true,
        busy: true,
        labels: ["self-hosted", "linux", "x64"].map(String::from).to_vec(),
    };
    (job, launch, inst, runner)
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut cfg = demo_config();
        for p in &mut cfg.pools {
            p.max_runners = n as u32;
            p.warm = 0;
            p.warm_schedule.clear();
        }
        let world = Arc::new(std::sync::Mutex::new(World::new(WorldConfig::default())));
        let store = Arc::new(MemStore::new());
        let mut runners = Vec::new();
        let mut muts = Vec::new();
        for i in 0..n {
            let (job, launch, inst, runner) = records(i);
            muts.push(Mutation::PutJob(job));
            muts.push(Mutation::PutLaunch(launch));
            muts.push(Mutation::PutInstance(inst));
            runners.push(runner);
        }
        store.apply(&muts).await.unwrap();
        drop(muts);
        let before = live();
        let engine = Engine::new(
            Arc::new(cfg),
            Arc::new(SimGitHub(world.clone())),
            Arc::new(SimCloud(world.clone())),
            store.clone(),
            EngineOptions::default(),
            1_700_000_100_000,
        )
        .await
        .unwrap();
        let state = live() - before;
        let before = live();
        let listed: Vec<Runner> = runners.clone();
        let listing = live() - before;
        let o = engine.observed();
        assert_eq!(o.instances.len() as u64, n);
        let before = live();
        let view = runfleet_server::view::View::of(&engine, 1_700_000_100_000);
        let view_bytes = live() - before;
        assert_eq!(view.instances.len() as u64, n);
        let per = |b: isize| b as f64 / n as f64;
        println!("| engine state, {n} busy runners (job, launch, instance each) | value |");
        println!("|---|---|");
        println!(
            "| engine after loading the store | {:.1} MB ({:.0} bytes per runner) |",
            state as f64 / 1048576.0,
            per(state)
        );
        println!(
            "| the runners as GitHub's listing gives them | {:.1} MB ({:.0} bytes per runner) |",
            listing as f64 / 1048576.0,
            per(listing)
        );
        println!(
            "| the status view (`View::of`, rebuilt each step) | {:.1} MB ({:.0} bytes per runner) |",
            view_bytes as f64 / 1048576.0,
            per(view_bytes)
        );
        drop(view);
        drop(listed);
        drop(engine);
    });
}
