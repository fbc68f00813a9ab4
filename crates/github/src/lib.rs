//! runfleet's GitHub side.
//!
//! Owns everything runfleet says to and hears from GitHub:
//! - [`client`]: [`client::GitHubClient`], the REST client implementing the
//!   engine's [`GitHub`](runfleet_engine::ports::GitHub) port (PAT or GitHub
//!   App auth, just-in-time runner configs, runners, queued jobs,
//!   repositories), with rate-limit handling, retries, ETag caching and
//!   per-endpoint request counts;
//! - [`webhook`]: `X-Hub-Signature-256` verification and typed parsing of
//!   `workflow_job` deliveries into [`JobEvent`](runfleet_core::model::JobEvent)s;
//! - [`fake`]: [`fake::FakeGitHub`], an in-process (or standalone, see the
//!   `runfleet-fake-github` binary) HTTP server that behaves like the parts
//!   of GitHub runfleet uses, with a control surface and fault injection,
//!   its answers checked against GitHub's OpenAPI description
//!   (`tests/contract.rs`);
//! - [`timestamp`]: GitHub's RFC 3339 timestamps as milliseconds.
//!
//! Architecture invariants:
//! - Never logs, formats into an error, or returns in a message a token, a
//!   private key, a JIT config or a webhook secret. Secrets travel as
//!   [`Secret`](runfleet_core::config::Secret) and are exposed only into the
//!   one header or field that carries them.
//! - The client talks to the configured `api_url` and nothing else: request
//!   paths are built from validated owner/repository names, pagination
//!   links leaving `api_url` are refused, redirects are not followed.
//! - Nothing here panics on input from the network.
//!
//! API boundary: the engine sees only the `GitHub` trait; the server calls
//! [`webhook::receive`] (or its three steps) and
//! [`client::GitHubClient::request_counts`] for metrics; tests and black-box
//! runs use [`fake`].

#![recursion_limit = "256"]

pub mod client;
pub mod fake;
pub mod timestamp;
pub mod webhook;
mod wire;

pub use client::{ClientOptions, GitHubClient};
pub use webhook::{Delivery, Verifier, WebhookError, parse_delivery};
