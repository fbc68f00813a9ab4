//! The runfleet controller.
//!
//! **Owns**: turning observations (webhooks, API calls, polls, the cloud's
//! EC2 events: spot interruption warnings, rebalance recommendations, state
//! changes) into durable state (an event is acknowledged to its feed only
//! once its effect is stored), running the planner over that state,
//! executing its actions through the adapter traits with bounded
//! concurrency (launches of a pool batched into one call, paced by EC2's
//! request and instance buckets), and reconciling the state with what GitHub and the cloud
//! report; with several replicas on one store, acting only while holding
//! the leadership lease.
//!
//! **Never**: decides anything itself (the planner in `runfleet-core` does),
//! talks to GitHub or AWS except through [`ports::GitHub`] and
//! [`ports::Cloud`], acts on a launch before it is durable in the
//! [`ports::Store`], writes without the lease when it runs as one of several
//! replicas, reads a clock in [`Engine`] (time is passed in; only
//! [`driver`] and [`lease`] read the wall and monotonic clocks), or logs a
//! secret.
//!
//! **Public boundary**: [`ports`] (the traits adapters implement),
//! [`Engine`] (`new`, `intake`, `step` (which also pulls cloud events),
//! `reconcile`, `reload`, `next_due` (when a launch waiting for its batch
//! or a bucket comes due); `plan`, `execute_actions`, `observe_run`,
//! `take_last_error` and `give_up_launch` for a caller that acts on one run
//! only), [`memstore::MemStore`], [`driver`], and [`lease`] (several
//! replicas on one store: only the lease holder acts, its writes fenced by
//! epoch).

pub mod driver;
pub mod engine;
pub mod lease;
pub mod memstore;
pub mod ports;

pub use engine::{Engine, EngineOptions, Health, Stats};
