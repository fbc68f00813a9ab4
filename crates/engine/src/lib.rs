//! The runfleet controller.
//!
//! **Owns**: turning observations (webhooks, API calls, polls, the cloud's
//! EC2 events: spot interruption warnings, rebalance recommendations, state
//! changes) into durable state (an event is acknowledged to its feed only
//! once its effect is stored), running the planner over that state,
//! executing its actions through the adapter traits with bounded
//! concurrency, and reconciling the state with what GitHub and the cloud
//! report.
//!
//! **Never**: decides anything itself (the planner in `runfleet-core` does),
//! talks to GitHub or AWS except through [`ports::GitHub`] and
//! [`ports::Cloud`], acts on a launch before it is durable in the
//! [`ports::Store`], reads a clock (time is passed in), or logs a secret.
//!
//! **Public boundary**: [`ports`] (the traits adapters implement),
//! [`Engine`] (`new`, `intake`, `step` (which also pulls cloud events),
//! `reconcile`; `plan`, `execute_actions`, `observe_run`, `take_last_error`
//! and `give_up_launch` for a caller that acts on one run only),
//! [`memstore::MemStore`].

pub mod driver;
pub mod engine;
pub mod memstore;
pub mod ports;

pub use engine::{Engine, EngineOptions, Health, Stats};
