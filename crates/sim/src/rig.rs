//! The rig of engine-level tests: the real engine over the simulated world
//! and an in-memory store, driven step by step by the test.

use std::sync::{Arc, Mutex};

use runfleet_core::config::Config;
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::Cloud;
use runfleet_engine::{Engine, EngineOptions};

use crate::adapters::{Shared, SimCloud, SimGitHub};
use crate::world::{World, WorldConfig};

pub struct EngineRig {
    pub world: Shared,
    pub store: Arc<MemStore>,
    pub engine: Engine,
}

impl EngineRig {
    /// A default world serving `repos`, an empty store, and an engine with
    /// `config` and default options, started at time 0.
    pub async fn new(config: Config, repos: &[&str]) -> EngineRig {
        let world = Self::world(repos);
        let cloud = Arc::new(SimCloud(world.clone()));
        Self::with_cloud(config, world, cloud).await
    }

    /// A default world serving `repos`, for a test that wraps its cloud.
    pub fn world(repos: &[&str]) -> Shared {
        let world = Arc::new(Mutex::new(World::new(WorldConfig::default())));
        world.lock().unwrap().repos = repos.iter().map(|r| r.to_string()).collect();
        world
    }

    /// The engine over `world`'s GitHub and `cloud` (the world's, or a
    /// wrapper of it), an empty store, default options, time 0.
    pub async fn with_cloud(config: Config, world: Shared, cloud: Arc<dyn Cloud>) -> EngineRig {
        let store = Arc::new(MemStore::new());
        let engine = Engine::new(
            Arc::new(config),
            Arc::new(SimGitHub(world.clone())),
            cloud,
            store.clone(),
            EngineOptions::default(),
            0,
        )
        .await
        .expect("the engine starts on an empty store");
        EngineRig {
            world,
            store,
            engine,
        }
    }
}
