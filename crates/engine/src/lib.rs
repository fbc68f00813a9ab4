//! The runfleet controller.
//!
//! **Owns**: turning observations (webhooks, API calls, polls) into durable
//! state, running the planner over that state, executing its actions through
//! the adapter traits with bounded concurrency, and reconciling the state
//! with what GitHub and the cloud report.
//!
//! **Never**: decides anything itself (the planner in `runfleet-core` does),
//! talks to GitHub or AWS except through [`ports::GitHub`] and
//! [`ports::Cloud`], acts on a launch before it is durable in the
//! [`ports::Store`], reads a clock (time is passed in), or logs a secret.
//!
//! **Public boundary**: [`ports`] (the traits adapters implement),
//! [`Engine`] (`new`, `intake`, `step`, `reconcile`, `reload`),
//! [`memstore::MemStore`], [`driver`], and [`lease`] (several replicas on
//! one store: only the lease holder acts, its writes fenced by epoch).

pub mod driver;
pub mod engine;
pub mod lease;
pub mod memstore;
pub mod ports;

pub use engine::{Engine, EngineOptions, Health, Stats};
