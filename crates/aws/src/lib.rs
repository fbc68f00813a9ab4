//! runfleet's AWS side: the engine's [`Cloud`](runfleet_engine::ports::Cloud)
//! on EC2, SSM, STS and SQS through the official AWS SDK for Rust, and the library
//! part of `runfleet check`.
//!
//! # Owns
//!
//! - **Launch** ([`AwsCloud`] as `Cloud::launch`): one instance per launch
//!   from the pool's launch template, walking the request's offerings in
//!   order (next type, next subnet, then on-demand when the chain has it);
//!   tags (`runfleet:fleet`, `runfleet:pool`, `Name`, `runfleet:launch`) on
//!   the instance and its volumes in the launch call itself;
//!   `InstanceInitiatedShutdownBehavior=terminate`; spot as one-time with
//!   interruption behaviour terminate; the rendered user data base64-encoded
//!   here.
//! - **Errors** mapped to the closed [`ErrorKind`](runfleet_core::model::ErrorKind)
//!   set by AWS code first, HTTP status second ([`error`]).
//! - **Pacing**: client-side token buckets shaped like EC2's (RunInstances
//!   5 / 2 per s, TerminateInstances 100 / 5, Describe 100 / 20, refilled at
//!   90 % of EC2's rate to absorb latency jitter), one set per account
//!   session, and jittered retry of throttled answers within a bounded time
//!   ([`pacing`]). The SDK's own retry is off so that every
//!   request is counted ([`AwsCloud::request_counts`]) and a capacity error
//!   (which EC2 sends as HTTP 500) is not sent three times.
//! - **SSM**: the runner's JIT config as a SecureString at
//!   `/runfleet/<fleet>/instances/<instance id>/jitconfig` (put with
//!   overwrite, delete with "missing" = success, list by path without
//!   decryption, all pages). Throttled puts are retried with backoff.
//! - **STS**: one session per (role ARN, external id), assumed with the
//!   base credentials, cached and renewed ten minutes before it expires
//!   ([`session`]). One `AwsCloud` serves pools in different accounts; it
//!   lists and cleans every account the config's pools launch in.
//! - **Observe and clean**: instances by `tag:runfleet:fleet`, all pages;
//!   termination in batches after an ownership look-up.
//! - **Events** ([`events`]): EC2 spot interruption warnings, rebalance
//!   recommendations and state changes from the SQS queue an EventBridge
//!   rule feeds (`aws.events_queue`), as `Cloud::poll_events`; messages are
//!   deleted (`Cloud::ack_events`) only once the engine stored their effect;
//!   unreadable ones are logged and left for the queue's dead-letter queue.
//! - **Check** ([`check()`]): EC2 `DryRun` of every call the config needs,
//!   launch template and subnets readable, an SSM canary written and
//!   deleted, STS caller identity and each role assumed; [`render_table`].
//!
//! # Never
//!
//! - Terminates an instance that does not carry `runfleet:fleet = <fleet>`:
//!   every id is looked up (DescribeInstances) before TerminateInstances and
//!   a foreign one is refused with an `Invalid` error and no call.
//! - Writes or deletes a parameter outside `/runfleet/<fleet>/`: names are
//!   built from validated path segments only.
//! - Logs or returns a secret: the JIT config and external ids go to their
//!   one destination only; error messages are scrubbed of the value sent
//!   (some AWS validation messages quote it); parameters are listed without
//!   decryption.
//!
//! # Public boundary
//!
//! [`AwsCloud`] (constructors [`AwsCloud::new`] on an explicit
//! `aws_config::SdkConfig`, [`AwsCloud::from_config`] on the standard
//! credential chain), [`AwsOptions`], [`check()`], [`check_with`],
//! [`CheckRow`], [`render_table`], the event consumer
//! ([`events::EventQueue`], [`AwsCloud::with_events_queue`], [`events::parse_message`]),
//! and the pure helpers the tests and the
//! CLI may use ([`offering_token`], [`jit_parameter`], [`error::classify`]).
//!
//! # RunInstances, not CreateFleet
//!
//! Launches use `RunInstances`, one call per offering tried, each with its
//! own `ClientToken` ([`offering_token`]: the launch id plus a digest of the
//! offering, because EC2 rejects a token reused with other parameters, so
//! the request's token cannot be shared by the calls of the fallback chain;
//! the same launch and offering always get the same token, so a retried
//! launch never makes a second instance). Why not `CreateFleet type=instant`:
//!
//! - user data. `CreateFleet` takes none; it would need a runfleet-managed
//!   launch template version per pool and user-data digest, which means
//!   writing into the operator's launch template (or cloning it), an extra
//!   permission, and versions to garbage-collect. `RunInstances` takes
//!   `UserData` next to the operator's template, unchanged.
//! - one instance per launch. The engine's launches are one instance each,
//!   each with its own idempotency token and its own `runfleet:launch` tag,
//!   which is how a launch whose answer was lost is found again. A batched
//!   fleet call carries one tag set and one token for all its instances, so
//!   it cannot keep either per launch.
//! - `InstanceInitiatedShutdownBehavior=terminate` and the spot options are
//!   per call in `RunInstances`; in `CreateFleet` they come from the template.
//! - errors are exact: each offering gets its own answer, where CreateFleet
//!   reports capacity per override inside a 200 answer.
//!
//! The price: a capacity error costs one call per offering walked (the
//! engine's unavailable-offerings cache skips them for the next launches),
//! and a burst is paced by RunInstances' bucket (5, then 2 per second).
//!
//! The client token is [`offering_token`], not the launch id itself. An answer
//! lost in transit (timeout, 5xx) is handled by looking the launch up by its
//! `runfleet:launch` tag before sending the same call again (with the same
//! token), which also holds on endpoints that ignore client tokens (moto).

pub mod check;
pub mod cloud;
pub mod error;
pub mod events;
pub mod pacing;
pub mod session;

pub use check::{CheckRow, check, check_with, render_table};

/// `tracing` filter directives that every binary using this crate appends
/// to its own: the SDK and its HTTP stack log raw requests and responses at
/// TRACE, and an AWS error message may quote a value that was sent (the JIT
/// config of a PutParameter, say). Capped at DEBUG, nothing they log holds
/// a body.
pub const LOG_CAPS: &str = "aws_smithy_runtime=debug,aws_smithy_runtime_api=debug,\
aws_smithy_http=debug,aws_smithy_http_client=debug,aws_sdk_ec2=debug,aws_sdk_ssm=debug,\
aws_sdk_sts=debug,aws_sdk_sqs=debug,aws_config=debug,hyper=info,hyper_util=info,h2=info,rustls=info";
pub use cloud::{AwsCloud, AwsOptions, jit_parameter, offering_token};
pub use pacing::{Api, BucketShape, Pacing, RetryPolicy};
pub use session::RoleKey;
