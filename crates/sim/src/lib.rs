//! A deterministic simulation of GitHub Actions and EC2 for runfleet.
//!
//! **Owns**: the simulated world ([`world`]: jobs that queue and run, runners
//! that register after boot and take any queued job whose labels fit, EC2
//! instances with launch latency, boot time, per-offering capacity and
//! request token buckets, SSM parameters, which an instance deletes itself
//! once it has read its own, unless `WorldConfig::self_delete_failure` makes
//! that fail), the engine's adapter traits over
//! it ([`adapters`]), and the driver that runs the real engine against it on
//! a virtual clock and judges the invariants ([`driver`]). Faults (5xx, rate
//! limits, throttling, capacity errors, lost / duplicated / delayed webhooks,
//! slow boots, broken instances, controller restarts) fire by probability
//! from one seeded generator and stop at a heal time; the driver adds
//! reordered webhooks from a second generator seeded from the same seed. Spot interruptions
//! (`WorldConfig::spot_interruption_weight`: a warning, sometimes after a
//! rebalance recommendation, then the reclaim two minutes later, failing a
//! job that runs there) and duplicated event deliveries draw from their own
//! seeded generator, so runs without them replay as before; the EC2 event
//! feed (`WorldConfig::ec2_events`) behaves like SQS (delivered at least
//! once, invisible for 30 s after a receive until deleted). GitHub's re-run
//! queues a new job id in the same run, as a new run attempt does.
//!
//! **Never**: reads the wall clock, uses an unseeded random source, or does
//! network or file I/O: the same seed gives the same run.
//!
//! **Public boundary**: [`driver::run`] (or [`driver::run_wrapped`]) with [`driver::SimOptions`] ->
//! [`driver::Summary`], [`driver::demo_config`], and [`world::World`] with
//! [`adapters::SimGitHub`] / [`adapters::SimCloud`] for tests that drive the
//! engine step by step ([`rig::EngineRig`] puts them together).

pub mod adapters;
pub mod driver;
pub mod rig;
pub mod world;

pub use driver::{
    Percentiles, Progress, SimOptions, Summary, TraceJob, Usage, demo_config, ever_warm, run,
    run_wrapped, without_warm,
};
