//! Webhook intake: `X-Hub-Signature-256` verification and typed parsing of
//! `workflow_job` deliveries into [`JobEvent`]s.
//!
//! The server calls, in this order (see [`receive`], which does all of it):
//! 1. [`Verifier::verify`] on the raw body: a missing, malformed or wrong
//!    signature is [`WebhookError::is_unauthenticated`] (answer 401, store
//!    nothing). The comparison is constant-time (`hmac`'s `verify_slice`).
//! 2. [`check_content_type`]: only `application/json` deliveries are
//!    accepted; a hook configured as `application/x-www-form-urlencoded` is
//!    rejected with a reason that says how to fix it (answer 415).
//! 3. [`parse_delivery`] with the `X-GitHub-Event` header: `ping`,
//!    `workflow_job`, or any other event name. A `workflow_job` payload that
//!    is not JSON or lacks a field runfleet needs is rejected naming that
//!    field (answer 400). Unknown fields are ignored.
//!
//! Nothing here panics on any input, and no error message contains the
//! secret or the body.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use runfleet_core::config::Secret;
use runfleet_core::model::{JobEvent, JobStatus, Millis};
use serde::Deserialize;
use sha2::Sha256;

use crate::timestamp;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. Every variant names what was wrong; none
/// carries the secret or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    MalformedSignature(&'static str),
    #[error("X-Hub-Signature-256 does not match the body")]
    BadSignature,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error(
        "unsupported content type {0:?}: configure the webhook with content type application/json"
    )]
    ContentType(String),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("workflow_job payload is missing {0}")]
    MissingField(&'static str),
    #[error("workflow_job payload has an invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl WebhookError {
    /// The signature did not verify: nothing about the delivery may be trusted.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            WebhookError::MissingSignature
                | WebhookError::MalformedSignature(_)
                | WebhookError::BadSignature
        )
    }

    /// The HTTP status the `/webhook` route answers with: 401 for signature
    /// failures, 415 for a wrong content type, 400 for everything else.
    pub fn http_status(&self) -> u16 {
        match self {
            e if e.is_unauthenticated() => 401,
            WebhookError::ContentType(_) => 415,
            _ => 400,
        }
    }
}

/// What a verified delivery carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// GitHub's `ping` when a hook is created.
    Ping,
    /// A `workflow_job` delivery (`queued`, `waiting`, `in_progress`, `completed`).
    WorkflowJob(JobEvent),
    /// Any other event, by its `X-GitHub-Event` name.
    Other(String),
}

/// Checks `X-Hub-Signature-256` with a key prepared once.
#[derive(Clone)]
pub struct Verifier {
    mac: HmacSha256,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    pub fn new(secret: &Secret) -> Self {
        Self::from_bytes(secret.expose().as_bytes())
    }

    pub fn from_bytes(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length.
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        Verifier { mac }
    }

    /// Verifies `header` (`sha256=<64 hex digits>`) against `body` in
    /// constant time.
    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
        let header = header.ok_or(WebhookError::MissingSignature)?.trim();
        let hex_part = header
            .strip_prefix("sha256=")
            .ok_or(WebhookError::MalformedSignature(
                "expected a sha256= prefix",
            ))?;
        if hex_part.len() != 64 {
            return Err(WebhookError::MalformedSignature("expected 64 hex digits"));
        }
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut expected)
            .map_err(|_| WebhookError::MalformedSignature("not hexadecimal"))?;
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(&expected)
            .map_err(|_| WebhookError::BadSignature)
    }

    /// The `X-Hub-Signature-256` value GitHub would send for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// One-shot [`Verifier::verify`].
pub fn verify_signature(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    Verifier::from_bytes(secret).verify(header, body)
}

/// One-shot [`Verifier::sign`].
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    Verifier::from_bytes(secret).sign(body)
}

/// Accepts `application/json` (any parameters, any case). GitHub's other
/// option, `application/x-www-form-urlencoded`, is refused with a reason.
pub fn check_content_type(header: Option<&str>) -> Result<(), WebhookError> {
    let value = header.unwrap_or("");
    let mime = value.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown: String = value.chars().take(80).collect();
        Err(WebhookError::ContentType(shown))
    }
}

/// Parses a verified delivery. `event_header` is `X-GitHub-Event`. Events
/// without a timestamp fall back to now.
pub fn parse_delivery(event_header: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    parse_delivery_at(event_header, body, timestamp::now_millis())
}

/// [`parse_delivery`] with an explicit observation time, used as the event
/// time when the payload carries none.
pub fn parse_delivery_at(
    event_header: &str,
    body: &[u8],
    observed_at: Millis,
) -> Result<Delivery, WebhookError> {
    match event_header.trim() {
        "ping" => Ok(Delivery::Ping),
        "workflow_job" => parse_workflow_job(body, observed_at).map(Delivery::WorkflowJob),
        "" => Err(WebhookError::MissingHeader("X-GitHub-Event")),
        other => Ok(Delivery::Other(other.chars().take(100).collect())),
    }
}

/// Everything the `/webhook` route needs, in the documented order:
/// signature, content type, then parsing. Returns the delivery id
/// (`X-GitHub-Delivery`) with the parsed delivery.
pub fn receive(
    verifier: &Verifier,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(String, Delivery), WebhookError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    verifier.verify(header("x-hub-signature-256"), body)?;
    check_content_type(header("content-type"))?;
    let delivery_id = header("x-github-delivery")
        .filter(|v| !v.is_empty())
        .ok_or(WebhookError::MissingHeader("X-GitHub-Delivery"))?
        .to_string();
    let event = header("x-github-event").ok_or(WebhookError::MissingHeader("X-GitHub-Event"))?;
    Ok((delivery_id, parse_delivery(event, body)?))
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    workflow_job: Option<WireJob<'a>>,
    #[serde(borrow)]
    repository: Option<WireRepo<'a>>,
}

#[derive(Deserialize)]
struct WireRepo<'a> {
    #[serde(borrow)]
    full_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireJob<'a> {
    id: Option<u64>,
    run_id: Option<u64>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    labels: Option<Vec<String>>,
    #[serde(borrow)]
    runner_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    conclusion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    started_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    completed_at: Option<Cow<'a, str>>,
}

/// Maps a job status string (webhook action or REST `status`) to runfleet's.
/// `waiting`, `pending` and `requested` are not yet on a runner: `Queued`.
pub fn job_status(s: &str) -> Option<JobStatus> {
    match s {
        "queued" | "waiting" | "pending" | "requested" => Some(JobStatus::Queued),
        "in_progress" => Some(JobStatus::InProgress),
        "completed" => Some(JobStatus::Completed),
        _ => None,
    }
}

/// The fields of a job object (webhook `workflow_job` or REST job) that make
/// a [`JobEvent`].
pub(crate) struct JobFields<'a> {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub status: &'a str,
    pub labels: Vec<String>,
    pub runner_name: Option<&'a str>,
    pub conclusion: Option<&'a str>,
    pub created_at: Option<&'a str>,
    pub started_at: Option<&'a str>,
    pub completed_at: Option<&'a str>,
}

impl JobFields<'_> {
    /// The event, timed by the timestamp of its status (`completed_at`,
    /// `started_at`, `created_at`), falling back to `observed_at`. A
    /// runner name is kept only once the job left the queue.
    pub fn into_event(self, observed_at: Millis) -> Result<JobEvent, WebhookError> {
        let status = job_status(self.status).ok_or_else(|| WebhookError::InvalidField {
            field: "workflow_job.status",
            reason: format!("unknown status {:?}", truncate(self.status)),
        })?;
        let stamp = match status {
            JobStatus::Queued => self.created_at,
            JobStatus::InProgress => self.started_at.or(self.created_at),
            JobStatus::Completed => self.completed_at.or(self.started_at).or(self.created_at),
        };
        let at = stamp
            .and_then(timestamp::parse_millis)
            .unwrap_or(observed_at);
        let runner_name = match status {
            JobStatus::Queued => None,
            _ => self
                .runner_name
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        };
        Ok(JobEvent {
            job_id: self.id,
            run_id: self.run_id,
            repo: self.repo,
            labels: self.labels,
            status,
            runner_name,
            conclusion: self
                .conclusion
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            at,
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a `workflow_job` body.
pub fn parse_workflow_job(body: &[u8], observed_at: Millis) -> Result<JobEvent, WebhookError> {
    let payload: Payload<'_> = serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages name a position and an expectation, never
        // echo the input.
        WebhookError::Json(e.to_string())
    })?;
    let job = payload
        .workflow_job
        .ok_or(WebhookError::MissingField("workflow_job"))?;
    let repo = payload
        .repository
        .ok_or(WebhookError::MissingField("repository"))?
        .full_name
        .ok_or(WebhookError::MissingField("repository.full_name"))?;
    if !valid_full_name(&repo) {
        return Err(WebhookError::InvalidField {
            field: "repository.full_name",
            reason: "expected owner/name".into(),
        });
    }
    let fields = JobFields {
        id: job
            .id
            .ok_or(WebhookError::MissingField("workflow_job.id"))?,
        run_id: job
            .run_id
            .ok_or(WebhookError::MissingField("workflow_job.run_id"))?,
        repo: repo.into_owned(),
        status: job
            .status
            .as_deref()
            .ok_or(WebhookError::MissingField("workflow_job.status"))?,
        labels: job
            .labels
            .ok_or(WebhookError::MissingField("workflow_job.labels"))?,
        runner_name: job.runner_name.as_deref(),
        conclusion: job.conclusion.as_deref(),
        created_at: job.created_at.as_deref(),
        started_at: job.started_at.as_deref(),
        completed_at: job.completed_at.as_deref(),
    };
    fields.into_event(observed_at)
}

/// `owner/name` with GitHub's name characters.
pub fn valid_full_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((o, n)) => valid_name(o) && valid_name(n),
        None => false,
    }
}

/// One path segment of an owner or repository name: letters, digits, `-`,
/// `_`, `.`, at most 100 characters, not `.` or `..`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_test_vector() {
        let v = Verifier::from_bytes(b"It's a Secret to Everybody");
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(v.sign(b"Hello, World!"), expected);
        assert_eq!(v.verify(Some(expected), b"Hello, World!"), Ok(()));
        assert_eq!(
            v.verify(Some(expected), b"Hello, World?"),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        let err = check_content_type(Some("application/x-www-form-urlencoded")).unwrap_err();
        assert_eq!(err.http_status(), 415);
        assert!(err.to_string().contains("application/json"));
        assert!(check_content_type(None).is_err());
    }
}
