//! runfleet's pure domain.
//!
//! **Owns**: the configuration schema and its validation ([`config`]), label
//! matching ([`labels`]), the job / launch / instance / runner model and its
//! transitions ([`model`]), the planner that decides every action
//! ([`plan`]), warm schedules ([`schedule`]), the state of on-demand runs
//! ([`runs`]), and the rendering of instance boot scripts ([`userdata`]).
//!
//! **Never**: performs I/O, reads a clock, spawns, or is async. Time comes in
//! as an argument (`now`), secrets come in through a caller-supplied
//! [`config::SecretSource`]. Everything the engine decides can therefore be
//! replayed from recorded observations.
//!
//! **Public boundary**: [`config::Config`] (parsed by [`config::parse`]),
//! [`model`] types, [`plan::plan`] with [`plan::Observed`] in and
//! [`plan::Action`]s out, and [`userdata::render`].

pub mod bucket;
pub mod config;
pub mod labels;
pub mod model;
pub mod plan;
pub mod runs;
pub mod schedule;
pub mod userdata;
