//! A deterministic simulation of GitHub Actions and EC2 for runfleet.
//!
//! **Owns**: the simulated world ([`world`]: jobs that queue and run, runners
//! that register after boot and take any queued job whose labels fit, EC2
//! instances with launch latency, boot time, per-offering capacity and
//! request token buckets, SSM parameters), the engine's adapter traits over
//! it ([`adapters`]), and the driver that runs the real engine against it on
//! a virtual clock and judges the invariants ([`driver`]). Faults (5xx, rate
//! limits, throttling, capacity errors, lost / duplicated / delayed webhooks,
//! slow boots, broken instances, controller restarts) fire by probability
//! from one seeded generator and stop at a heal time.
//!
//! **Never**: reads the wall clock, uses an unseeded random source, or does
//! network or file I/O: the same seed gives the same run.
//!
//! **Public boundary**: [`driver::run`] with [`driver::SimOptions`] ->
//! [`driver::Summary`], [`driver::demo_config`], and [`world::World`] with
//! [`adapters::SimGitHub`] / [`adapters::SimCloud`] for tests that drive the
//! engine step by step.

pub mod adapters;
pub mod driver;
pub mod world;

pub use driver::{
    Percentiles, Progress, SimOptions, Summary, TraceJob, Usage, demo_config, run, without_warm,
};
