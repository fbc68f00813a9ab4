//! EC2 events from an SQS queue that an EventBridge rule feeds: the
//! consumer behind [`Cloud::poll_events`](runfleet_engine::ports::Cloud::poll_events)
//! and [`Cloud::ack_events`](runfleet_engine::ports::Cloud::ack_events).
//!
//! The rule (source `aws.ec2`) sends three detail types, which become
//! [`CloudEvent`]s:
//!
//! | `detail-type` | `detail` | [`CloudEventKind`] |
//! |---|---|---|
//! | `EC2 Spot Instance Interruption Warning` | `instance-id`, `instance-action` | `SpotInterruption` |
//! | `EC2 Instance Rebalance Recommendation` | `instance-id` | `RebalanceRecommendation` |
//! | `EC2 Instance State-change Notification` | `instance-id`, `state` | `StateChange` |
//!
//! Messages are taken as EventBridge puts them (the event JSON is the body),
//! or wrapped in an SNS notification (`"Type": "Notification"`, the event in
//! `Message`) when the rule targets a topic that the queue subscribes to.
//!
//! # Delivery
//!
//! SQS delivers at least once. A received message stays in the queue,
//! invisible for the queue's visibility timeout, until it is deleted; the
//! engine deletes ([`EventQueue::delete`]) only what it has stored the effect
//! of, so a crash between receiving and storing only brings the message
//! again, and handling it twice changes nothing.
//!
//! # Messages that are not EC2 events
//!
//! - **Unrelated** (a well-formed EventBridge event of another source or
//!   detail type: the rule sends more than runfleet reads): deleted here at
//!   once and logged at info. It can never have an effect, and keeping it
//!   would only bring it back every visibility timeout.
//! - **Malformed** (not JSON, not an event, an EC2 event without
//!   `detail.instance-id`, an unknown `state`, no `time`): reported
//!   ([`Received::malformed`], a warning naming the message id and what is
//!   wrong) and **left in the queue**, not deleted. runfleet never destroys
//!   input it could not read: the queue's redrive policy moves it to a
//!   dead-letter queue after `maxReceiveCount` receives, where an operator
//!   can read it. (Without a redrive policy it comes back every visibility
//!   timeout, with the same warning, until the queue's retention ends.)
//!   Other messages of the same receive are handled as usual.

use aws_config::retry::RetryConfig;
use aws_config::{Region, SdkConfig};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use runfleet_core::model::{ErrorKind, InstanceState, Millis};
use runfleet_engine::ports::{CloudEvent, CloudEventKind, PortError, PortResult};
use serde_json::Value;
use tracing::{info, warn};

use crate::error::from_sdk;
use crate::session::timeouts;

/// The `detail-type`s runfleet reads.
pub const SPOT_WARNING: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE: &str = "EC2 Instance Rebalance Recommendation";
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";

/// SQS's limit on messages per receive and entries per batch delete.
const BATCH: usize = 10;

/// What one message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An EC2 event runfleet acts on (its `ack` is left empty).
    Event(CloudEvent),
    /// A well-formed event runfleet does not read: its source and detail type.
    Unrelated(String),
}

/// A message that could not be read, left in the queue for its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub message_id: String,
    /// What is wrong, naming the field.
    pub reason: String,
    /// How many times SQS has delivered it (`ApproximateReceiveCount`).
    pub receive_count: u32,
}

/// One receive's worth of messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// EC2 events, each with its receipt handle as [`CloudEvent::ack`].
    pub events: Vec<CloudEvent>,
    /// Unreadable messages, not deleted.
    pub malformed: Vec<Malformed>,
    /// Message ids of unrelated events, already deleted.
    pub unrelated: Vec<String>,
    /// SQS requests made (for request counts), by operation.
    pub requests: Vec<&'static str>,
}

/// An SQS queue of EventBridge EC2 events.
#[derive(Clone, Debug)]
pub struct EventQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// `WaitTimeSeconds` of each receive: 0 (short poll) so the engine's
    /// step never blocks on an empty queue.
    pub wait_seconds: i32,
    /// Receives per poll at most (each up to 10 messages).
    pub max_receives: usize,
}

impl EventQueue {
    /// A consumer of the queue at `url` with the credentials of `sdk`. The
    /// region is taken from the URL (`https://sqs.<region>.amazonaws.com/...`)
    /// when it names one, else the SDK config's. The SDK's own retries are
    /// off: a failed receive is tried again at the next step.
    pub fn new(sdk: &SdkConfig, url: &str) -> EventQueue {
        let mut conf = aws_sdk_sqs::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts());
        if let Some(region) = region_of_queue(url) {
            conf = conf.region(Region::new(region));
        }
        EventQueue {
            client: aws_sdk_sqs::Client::from_conf(conf.build()),
            url: url.to_string(),
            wait_seconds: 0,
            max_receives: 5,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Receives what is visible now (up to `max_receives` batches of 10):
    /// EC2 events to hand to the engine, malformed messages (logged and left
    /// in the queue), unrelated events (deleted).
    pub async fn receive(&self) -> PortResult<Received> {
        let mut out = Received::default();
        let mut unrelated_handles = Vec::new();
        for _ in 0..self.max_receives.max(1) {
            out.requests.push("sqs:ReceiveMessage");
            let answer = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(BATCH as i32)
                .wait_time_seconds(self.wait_seconds)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| from_sdk("sqs:ReceiveMessage", &e))?;
            let messages = answer.messages();
            for m in messages {
                let message_id = m.message_id().unwrap_or("?").to_string();
                let Some(handle) = m.receipt_handle() else {
                    continue;
                };
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                match parse_message(m.body().unwrap_or("")) {
                    Ok(Parsed::Event(mut ev)) => {
                        ev.ack = handle.to_string();
                        out.events.push(ev);
                    }
                    Ok(Parsed::Unrelated(what)) => {
                        info!(queue = %self.url, message_id = %message_id, event = %what, "event runfleet does not read: deleted");
                        out.unrelated.push(message_id);
                        unrelated_handles.push(handle.to_string());
                    }
                    Err(reason) => {
                        warn!(queue = %self.url, message_id = %message_id, receive_count, %reason,
                            "unreadable event message left in the queue (its dead-letter queue takes it)");
                        out.malformed.push(Malformed {
                            message_id,
                            reason,
                            receive_count,
                        });
                    }
                }
            }
            if messages.len() < BATCH {
                break;
            }
        }
        if !unrelated_handles.is_empty() {
            let n = self.delete(&unrelated_handles).await?;
            out.requests
                .extend(std::iter::repeat_n("sqs:DeleteMessageBatch", n));
        }
        Ok(out)
    }

    /// Deletes messages by receipt handle, 10 per request; returns how many
    /// requests were made. A handle SQS no longer knows (the message is
    /// gone already) counts as deleted; any other refusal is an error that
    /// names how many were not deleted (they come again and change nothing).
    pub async fn delete(&self, handles: &[String]) -> PortResult<usize> {
        let mut requests = 0;
        let mut failed: Vec<String> = Vec::new();
        for chunk in handles.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .build()
                        .map_err(|e| {
                            PortError::new(
                                ErrorKind::Invalid,
                                format!("sqs:DeleteMessageBatch: entry not built: {e}"),
                            )
                        })
                })
                .collect::<PortResult<Vec<_>>>()?;
            requests += 1;
            let answer = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| from_sdk("sqs:DeleteMessageBatch", &e))?;
            for f in answer.failed() {
                if f.code() == "ReceiptHandleIsInvalid" {
                    continue;
                }
                failed.push(format!("{}: {}", f.code(), f.message().unwrap_or("")));
            }
        }
        if failed.is_empty() {
            Ok(requests)
        } else {
            Err(PortError::new(
                ErrorKind::Transient,
                format!(
                    "sqs:DeleteMessageBatch: {} of {} messages not deleted ({})",
                    failed.len(),
                    handles.len(),
                    failed.first().map(String::as_str).unwrap_or("")
                ),
            ))
        }
    }
}

/// The region named by an SQS queue URL (`https://sqs.<region>.amazonaws.com/...`).
pub fn region_of_queue(url: &str) -> Option<String> {
    let host = url.split_once("://")?.1.split('/').next()?;
    let rest = host.strip_prefix("sqs.")?;
    let (region, domain) = rest.split_once('.')?;
    (domain.starts_with("amazonaws.") && !region.is_empty()).then(|| region.to_string())
}

/// Reads one message body: an EventBridge event, or one wrapped in an SNS
/// notification. `Err` names what is wrong.
pub fn parse_message(body: &str) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = v
            .get("Message")
            .and_then(Value::as_str)
            .ok_or("SNS notification without a Message string")?;
        let v: Value =
            serde_json::from_str(inner).map_err(|e| format!("SNS Message is not JSON: {e}"))?;
        return parse_event(&v);
    }
    parse_event(&v)
}

/// Reads one EventBridge event (already parsed JSON).
pub fn parse_event(v: &Value) -> Result<Parsed, String> {
    let field = |name: &str| -> Result<&str, String> {
        v.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("not an EventBridge event: no string \"{name}\""))
    };
    let detail_type = field("detail-type")?;
    let source = field("source")?;
    let id = field("id")?;
    if source != "aws.ec2" || ![SPOT_WARNING, REBALANCE, STATE_CHANGE].contains(&detail_type) {
        return Ok(Parsed::Unrelated(format!("{source}: {detail_type}")));
    }
    let time = field("time")?;
    let at = parse_time(time)
        .ok_or_else(|| format!("\"time\" is not an RFC 3339 UTC time: {time:?}"))?;
    let detail = v
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or_else(|| format!("{detail_type} event {id}: no \"detail\" object"))?;
    let detail_str = |name: &str| -> Result<&str, String> {
        detail
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{detail_type} event {id}: no \"detail.{name}\""))
    };
    let instance_id = detail_str("instance-id")?;
    if !instance_id.starts_with("i-") {
        return Err(format!(
            "{detail_type} event {id}: \"detail.instance-id\" is not an instance id: {instance_id:?}"
        ));
    }
    let kind = match detail_type {
        SPOT_WARNING => CloudEventKind::SpotInterruption {
            action: detail_str("instance-action")
                .unwrap_or("terminate")
                .to_string(),
        },
        REBALANCE => CloudEventKind::RebalanceRecommendation,
        _ => {
            let state = detail_str("state")?;
            CloudEventKind::StateChange(state_of(state).ok_or_else(|| {
                format!("{detail_type} event {id}: unknown \"detail.state\" {state:?}")
            })?)
        }
    };
    Ok(Parsed::Event(CloudEvent {
        id: id.to_string(),
        instance_id: instance_id.to_string(),
        kind,
        at,
        ack: String::new(),
    }))
}

/// EC2's state names.
pub fn state_of(name: &str) -> Option<InstanceState> {
    Some(match name {
        "pending" => InstanceState::Pending,
        "running" => InstanceState::Running,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        "shutting-down" => InstanceState::ShuttingDown,
        "terminated" => InstanceState::Terminated,
        _ => return None,
    })
}

/// `YYYY-MM-DDThh:mm:ss[.fff]Z` (EventBridge's `time`) in milliseconds
/// since the Unix epoch.
pub fn parse_time(s: &str) -> Option<Millis> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ms: i64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<3}")[..3].parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + se;
    u64::try_from(total * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, detail: Value) -> String {
        serde_json::json!({
            "version": "0",
            "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": detail_type,
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2021-11-11T21:29:54Z",
            "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
            "detail": detail
        })
        .to_string()
    }

    #[test]
    fn reads_the_three_detail_types() {
        let at = parse_time("2021-11-11T21:29:54Z").unwrap();
        assert_eq!(at, 1_636_666_194_000);
        let p = parse_message(&event(
            SPOT_WARNING,
            serde_json::json!({"instance-id": "i-abcd1111", "instance-action": "terminate"}),
        ))
        .unwrap();
        let Parsed::Event(e) = p else { panic!() };
        assert_eq!(e.instance_id, "i-abcd1111");
        assert_eq!(e.at, at);
        assert_eq!(
            e.kind,
            CloudEventKind::SpotInterruption {
                action: "terminate".into()
            }
        );
        let Parsed::Event(e) = parse_message(&event(
            REBALANCE,
            serde_json::json!({"instance-id": "i-abcd1111"}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.kind, CloudEventKind::RebalanceRecommendation);
        let Parsed::Event(e) = parse_message(&event(
            STATE_CHANGE,
            serde_json::json!({"instance-id": "i-abcd1111", "state": "shutting-down"}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            e.kind,
            CloudEventKind::StateChange(InstanceState::ShuttingDown)
        );
    }

    #[test]
    fn sns_wrapped_events_are_read() {
        let inner = event(REBALANCE, serde_json::json!({"instance-id": "i-0123"}));
        let body = serde_json::json!({"Type": "Notification", "Message": inner}).to_string();
        assert!(matches!(parse_message(&body), Ok(Parsed::Event(_))));
    }

    #[test]
    fn unrelated_and_malformed_are_told_apart() {
        let other = event("EC2 AMI State Change", serde_json::json!({}));
        assert!(matches!(parse_message(&other), Ok(Parsed::Unrelated(_))));
        for (body, says) in [
            ("not json".to_string(), "not JSON"),
            ("{}".to_string(), "no string \"detail-type\""),
            (
                event(
                    SPOT_WARNING,
                    serde_json::json!({"instance-action": "terminate"}),
                ),
                "detail.instance-id",
            ),
            (
                event(
                    STATE_CHANGE,
                    serde_json::json!({"instance-id": "i-1", "state": "melted"}),
                ),
                "unknown \"detail.state\"",
            ),
            (
                event(
                    STATE_CHANGE,
                    serde_json::json!({"instance-id": "vol-1", "state": "running"}),
                ),
                "not an instance id",
            ),
        ] {
            let e = parse_message(&body).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn times_and_regions() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
        assert_eq!(parse_time("2021-11-11 21:29:54"), None);
        assert_eq!(parse_time("2021-13-11T21:29:54Z"), None);
        assert_eq!(
            region_of_queue("https://sqs.eu-west-2.amazonaws.com/123456789012/q").as_deref(),
            Some("eu-west-2")
        );
        assert_eq!(
            region_of_queue("http://127.0.0.1:5000/123456789012/q"),
            None
        );
    }
}
