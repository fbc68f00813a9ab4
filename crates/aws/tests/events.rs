//! The EC2 event consumer against moto's SQS: EventBridge-shaped messages
//! become `CloudEvent`s; only acknowledged messages are deleted; a
//! malformed message is reported and left for the dead-letter queue while
//! the others are handled; unrelated events are deleted at once.

mod common;

use std::time::Duration;

use common::{Moto, sdk_config};
use runfleet_aws::AwsCloud;
use runfleet_aws::events::{EventQueue, REBALANCE, SPOT_WARNING, STATE_CHANGE};
use runfleet_core::model::InstanceState;
use runfleet_engine::ports::{Cloud, CloudEventKind};
use serde_json::json;

fn envelope(id: &str, detail_type: &str, detail: serde_json::Value) -> String {
    let instance = detail["instance-id"].as_str().unwrap_or("i-0").to_string();
    json!({
        "version": "0",
        "id": id,
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-11-23T22:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": detail
    })
    .to_string()
}

struct Setup {
    _moto: Moto,
    sqs: aws_sdk_sqs::Client,
    url: String,
    dlq: String,
    sdk: aws_config::SdkConfig,
}

/// A queue with a short visibility timeout and a dead-letter queue after
/// two receives (as an operator would set it up).
async fn setup(name: &str) -> Option<Setup> {
    let moto = Moto::start(name)?;
    let sdk = sdk_config(&moto.url);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    Some(Setup {
        _moto: moto,
        sqs,
        url,
        dlq,
        sdk,
    })
}

impl Setup {
    async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Messages in `url` (visible or not), as SQS counts them.
    async fn count(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = attrs.attributes().unwrap();
        let n = |k: &A| a.get(k).map_or(0, |v| v.parse::<u64>().unwrap());
        n(&A::ApproximateNumberOfMessages) + n(&A::ApproximateNumberOfMessagesNotVisible)
    }
}

/// Polls `f` until it returns `Some` or 10 s pass.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn eventbridge_messages_become_cloud_events_and_only_acked_ones_go() {
    let Some(s) = setup("rf-events-parse").await else {
        return;
    };
    s.send(&envelope(
        "ev-1",
        SPOT_WARNING,
        json!({"instance-id": "i-0aaa", "instance-action": "terminate"}),
    ))
    .await;
    s.send(&envelope(
        "ev-2",
        REBALANCE,
        json!({"instance-id": "i-0bbb"}),
    ))
    .await;
    s.send(&envelope(
        "ev-3",
        STATE_CHANGE,
        json!({"instance-id": "i-0ccc", "state": "shutting-down"}),
    ))
    .await;

    let cloud = AwsCloud::new(s.sdk.clone(), Default::default()).with_events_queue(&s.sdk, &s.url);
    let mut events = cloud.poll_events().await.unwrap();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(events[0].instance_id, "i-0aaa");
    assert_eq!(
        events[0].kind,
        CloudEventKind::SpotInterruption {
            action: "terminate".into()
        }
    );
    assert_eq!(events[0].at, 1_795_471_200_000);
    assert_eq!(events[1].kind, CloudEventKind::RebalanceRecommendation);
    assert_eq!(
        events[2].kind,
        CloudEventKind::StateChange(InstanceState::ShuttingDown)
    );
    assert!(events.iter().all(|e| !e.ack.is_empty()));

    // Only the first two are acknowledged: the third comes again after the
    // visibility timeout, the others never.
    cloud
        .ack_events(&[events[0].ack.clone(), events[1].ack.clone()])
        .await
        .unwrap();
    assert_eq!(s.count(&s.url).await, 1);
    let again = eventually("the unacknowledged event again", || async {
        let evs = cloud.poll_events().await.unwrap();
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, "ev-3", "same event id on redelivery");
    cloud.ack_events(&[again[0].ack.clone()]).await.unwrap();
    // Acknowledging twice is fine.
    cloud.ack_events(&[again[0].ack.clone()]).await.unwrap();
    assert_eq!(s.count(&s.url).await, 0);
    let counts = cloud.request_counts();
    assert!(counts.get("sqs:ReceiveMessage").copied().unwrap_or(0) >= 2);
    assert_eq!(counts.get("sqs:DeleteMessageBatch"), Some(&3));
}

#[tokio::test]
async fn a_malformed_message_is_reported_and_left_for_the_dead_letter_queue() {
    let Some(s) = setup("rf-events-bad").await else {
        return;
    };
    s.send("this is not json").await;
    s.send(&envelope(
        "ev-bad",
        STATE_CHANGE,
        json!({"state": "terminated"}),
    ))
    .await;
    s.send(&envelope(
        "ev-ami",
        "EC2 AMI State Change",
        json!({"ImageId": "ami-1"}),
    ))
    .await;
    s.send(&envelope(
        "ev-good",
        SPOT_WARNING,
        json!({"instance-id": "i-0ddd", "instance-action": "terminate"}),
    ))
    .await;

    let q = EventQueue::new(&s.sdk, &s.url);
    let got = q.receive().await.unwrap();
    assert_eq!(got.events.len(), 1, "the good one is not lost: {got:#?}");
    assert_eq!(got.events[0].id, "ev-good");
    assert_eq!(got.unrelated.len(), 1, "{got:#?}");
    let mut reasons: Vec<&str> = got.malformed.iter().map(|m| m.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{got:#?}");
    assert!(reasons[0].contains("detail.instance-id"), "{reasons:?}");
    assert!(reasons[1].contains("not JSON"), "{reasons:?}");
    assert!(got.malformed.iter().all(|m| !m.message_id.is_empty()));

    q.delete(&[got.events[0].ack.clone()]).await.unwrap();
    // The unrelated one went at once; the good one once acknowledged; the
    // two malformed ones stay, then move to the dead-letter queue.
    assert_eq!(s.count(&s.url).await, 2);
    eventually("malformed messages in the dead-letter queue", || async {
        let got = q.receive().await.unwrap();
        assert!(got.events.is_empty());
        (s.count(&s.dlq).await == 2).then_some(())
    })
    .await;
    assert_eq!(s.count(&s.url).await, 0);
}

#[tokio::test]
async fn without_a_queue_there_are_no_events() {
    let Some(s) = setup("rf-events-none").await else {
        return;
    };
    s.send(&envelope(
        "ev-1",
        REBALANCE,
        json!({"instance-id": "i-0eee"}),
    ))
    .await;
    let cloud = AwsCloud::new(s.sdk.clone(), Default::default());
    assert!(cloud.poll_events().await.unwrap().is_empty());
    cloud.ack_events(&["whatever".into()]).await.unwrap();
    assert!(cloud.request_counts().is_empty());
    assert_eq!(s.count(&s.url).await, 1, "nothing was touched");
}

#[tokio::test]
async fn an_unreachable_queue_is_an_error_that_names_the_call() {
    let Some(s) = setup("rf-events-gone").await else {
        return;
    };
    let missing = s.url.replace("rf-events-gone", "rf-no-such-queue");
    let q = EventQueue::new(&s.sdk, &missing);
    let e = q.receive().await.unwrap_err();
    assert!(e.message.contains("sqs:ReceiveMessage"), "{e}");
}
