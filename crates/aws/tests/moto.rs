//! runfleet-aws against a real moto server, with a fault-injecting proxy
//! for what moto cannot produce (capacity errors, throttling, lost answers,
//! denied permissions).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Fault, Moto, Proxy, World, sdk_config};
use runfleet_aws::{AwsCloud, AwsOptions, CheckRow, RetryPolicy, check_with, render_table};
use runfleet_core::config::{CapacityMarket, Config, MapSecrets, Secret};
use runfleet_core::model::{ErrorKind, InstanceState, Offering};
use runfleet_engine::ports::{Cloud, LaunchRequest};

/// Quick retries so that fault tests finish fast.
fn test_options() -> AwsOptions {
    AwsOptions {
        retry: RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            budget: Duration::from_secs(10),
        },
        ..AwsOptions::default()
    }
}

fn offering(t: &str, subnet: &str, market: CapacityMarket) -> Offering {
    Offering {
        instance_type: t.to_string(),
        subnet: Some(subnet.to_string()),
        market,
    }
}

fn request(
    fleet: &str,
    pool: &str,
    id: &str,
    world: &World,
    offerings: Vec<Offering>,
) -> LaunchRequest {
    LaunchRequest {
        client_token: id.to_string(),
        count: 1,
        fleet: fleet.to_string(),
        pool: pool.to_string(),
        launch_template: world.template_id.clone(),
        launch_template_version: None,
        offerings,
        tags: vec![
            ("runfleet:fleet".into(), fleet.into()),
            ("runfleet:pool".into(), pool.into()),
            ("Name".into(), format!("runfleet-{pool}")),
            ("runfleet:launch".into(), id.into()),
        ],
        user_data: format!("#!/bin/bash\necho launch {id}\npoweroff\n"),
        role_arn: None,
        external_id: None,
        resend: false,
    }
}

struct Setup {
    _moto: Moto,
    proxy: Proxy,
    world: World,
    cloud: AwsCloud,
}

/// moto, a proxy in front of it, a VPC and template (made directly in moto),
/// and an adapter that talks through the proxy.
async fn setup(name: &str) -> Option<Setup> {
    let moto = Moto::start(name)?;
    let proxy = Proxy::start(&moto.url).await;
    let world = World::create(&sdk_config(&moto.url), name).await;
    let cloud = AwsCloud::new(sdk_config(&proxy.url), test_options());
    Some(Setup {
        _moto: moto,
        proxy,
        world,
        cloud,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_sets_tags_user_data_spot_and_shutdown_behaviour() {
    let Some(s) = setup("launch_sets_tags").await else {
        return;
    };
    let subnet = s.world.subnets[1].clone();
    let req = request(
        "acme-ci",
        "linux-x64",
        "acme-ci-j1-1",
        &s.world,
        vec![offering("m5.large", &subnet, CapacityMarket::Spot)],
    );
    let out = s.cloud.launch(&req).await.expect("launch");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let l = out.instances.first().cloned().expect("an instance");
    assert_eq!(l.offering, req.offerings[0]);
    assert!(l.launched_at > 1_600_000_000_000, "{}", l.launched_at);
    assert_eq!(s.proxy.count("ec2:RunInstances"), 1);

    // The launch call itself carried the tags, the shutdown behaviour, the
    // spot options and the client token: no separate CreateTags.
    let body = &s.proxy.bodies("ec2:RunInstances")[0];
    for expected in [
        "InstanceInitiatedShutdownBehavior=terminate",
        "InstanceMarketOptions.MarketType=spot",
        "InstanceMarketOptions.SpotOptions.SpotInstanceType=one-time",
        "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior=terminate",
        "TagSpecification.1.ResourceType=instance",
        "TagSpecification.2.ResourceType=volume",
        "ClientToken=acme-ci-j1-1-",
        &format!("LaunchTemplate.LaunchTemplateId={}", s.world.template_id),
        "LaunchTemplate.Version=$Default",
        "InstanceType=m5.large",
        &format!("SubnetId={subnet}"),
    ] {
        assert!(body.contains(expected), "{expected} not in {body}");
    }
    assert_eq!(s.proxy.count("ec2:CreateTags"), 0);

    // Read back from moto directly.
    let ud = s
        .world
        .ec2
        .describe_instance_attribute()
        .instance_id(&l.instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let b64 = ud.user_data().and_then(|v| v.value()).expect("user data");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), req.user_data);

    let desc = s
        .world
        .ec2
        .describe_instances()
        .instance_ids(&l.instance_id)
        .send()
        .await
        .unwrap();
    let inst = &desc.reservations()[0].instances()[0];
    let tags: Vec<(String, String)> = inst
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    for t in &req.tags {
        assert!(tags.contains(t), "{t:?} missing in {tags:?}");
    }
    assert_eq!(inst.subnet_id(), Some(subnet.as_str()));
    assert_eq!(inst.instance_lifecycle().map(|l| l.as_str()), Some("spot"));

    let vols = s
        .world
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(&l.instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(!vols.volumes().is_empty(), "no volume");
    for v in vols.volumes() {
        assert!(
            v.tags()
                .iter()
                .any(|t| t.key() == Some("runfleet:fleet") && t.value() == Some("acme-ci")),
            "volume without the fleet tag: {:?}",
            v.tags()
        );
    }

    let listed = s.cloud.list_instances("acme-ci").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, l.instance_id);
    assert_eq!(listed[0].market, Some(CapacityMarket::Spot));
    assert_eq!(listed[0].tag("runfleet:pool"), Some("linux-x64"));
    assert!(matches!(
        listed[0].state,
        InstanceState::Pending | InstanceState::Running
    ));
    assert_eq!(listed[0].launched_at, l.launched_at);
}

/// A batch is one RunInstances for `count` instances: `MinCount` 1 and
/// `MaxCount` the count, so EC2 starts as many as the offering has room
/// for (what it cannot hold is asked of the next offering). moto starts
/// `MinCount` instances whatever `MaxCount` says, so here it answers like
/// an EC2 offering with room for one: the rest walks on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_asks_for_every_instance_and_walks_on_with_the_rest() {
    let Some(s) = setup("batch").await else {
        return;
    };
    let (a, b) = (s.world.subnets[0].clone(), s.world.subnets[1].clone());
    let mut req = request(
        "acme-ci",
        "linux-x64",
        "acme-ci-j7-1-x3",
        &s.world,
        vec![
            offering("m5.large", &a, CapacityMarket::OnDemand),
            offering("m5.large", &b, CapacityMarket::OnDemand),
            offering("m6i.large", &a, CapacityMarket::OnDemand),
        ],
    );
    req.count = 3;
    let out = s.cloud.launch(&req).await.expect("launch");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let bodies = s.proxy.bodies("ec2:RunInstances");
    assert!(!bodies.is_empty());
    assert!(bodies[0].contains("MaxCount=3"), "{}", bodies[0]);
    assert!(bodies[0].contains("MinCount=1"), "{}", bodies[0]);
    // Each offering is asked only for what is still missing, with a token
    // of its own, until the batch is complete.
    let mut asked = 3;
    for body in &bodies {
        assert!(body.contains(&format!("MaxCount={asked}")), "{body}");
        assert!(body.contains("ClientToken=acme-ci-j7-1-x3-"), "{body}");
        asked -= 1;
    }
    assert_eq!(out.instances.len(), 3, "{:?}", out.instances);
    assert_eq!(
        bodies.len(),
        3,
        "one call per offering, each with room for one"
    );
    let offerings: Vec<&Offering> = out.instances.iter().map(|l| &l.offering).collect();
    assert_eq!(offerings, req.offerings.iter().collect::<Vec<_>>());
    let mut ids: Vec<String> = out
        .instances
        .iter()
        .map(|l| l.instance_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct instances");
    // Every instance carries the batch's launch tag, so a listing finds them all.
    let listed = s.cloud.list_instances("acme-ci").await.unwrap();
    let tagged = listed
        .iter()
        .filter(|i| i.tag("runfleet:launch") == Some("acme-ci-j7-1-x3"))
        .count();
    assert_eq!(tagged, 3);
    // The same call again answers with the same instances, without a call.
    let again = s.cloud.launch(&req).await.unwrap();
    let mut again_ids: Vec<String> = again
        .instances
        .iter()
        .map(|l| l.instance_id.clone())
        .collect();
    again_ids.sort();
    assert_eq!(again_ids, ids);
    assert_eq!(s.proxy.count("ec2:RunInstances"), 3);

    // Re-sent by another process (the leader that sent it died): it finds
    // the batch's instances by their tag and starts none (moto, unlike EC2,
    // would start them again for the same ClientToken).
    let fresh = AwsCloud::new(sdk_config(&s.proxy.url), test_options());
    req.resend = true;
    let resent = fresh.launch(&req).await.expect("re-sent launch");
    let mut resent_ids: Vec<String> = resent
        .instances
        .iter()
        .map(|l| l.instance_id.clone())
        .collect();
    resent_ids.sort();
    assert_eq!(resent_ids, ids);
    assert_eq!(s.proxy.count("ec2:RunInstances"), 3, "no second call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_errors_walk_to_the_next_type_then_on_demand() {
    let Some(s) = setup("fallback").await else {
        return;
    };
    let (a, b) = (s.world.subnets[0].clone(), s.world.subnets[1].clone());

    // 1) m7i.large has no capacity anywhere: the next type launches.
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceType=m7i.large"],
        Fault::aws(500, "InsufficientInstanceCapacity"),
    );
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j2-1",
        &s.world,
        vec![
            offering("m7i.large", &a, CapacityMarket::Spot),
            offering("m6i.large", &a, CapacityMarket::Spot),
            offering("m7i.large", &a, CapacityMarket::OnDemand),
        ],
    );
    let out = s.cloud.launch(&req).await.unwrap();
    let l = out
        .instances
        .first()
        .cloned()
        .expect("second offering launches");
    assert_eq!(l.offering, req.offerings[1]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].0, req.offerings[0]);
    assert_eq!(out.errors[0].1.kind, ErrorKind::Capacity);
    assert!(
        out.errors[0].1.message.contains("ec2:RunInstances")
            && out.errors[0]
                .1
                .message
                .contains("InsufficientInstanceCapacity"),
        "{}",
        out.errors[0].1.message
    );
    // A capacity error is not retried by the SDK or by us: one call each.
    assert_eq!(s.proxy.count("ec2:RunInstances"), 2);

    // 2) No spot capacity at all (next subnet too): on-demand launches.
    s.proxy.clear();
    s.proxy.reset_counts();
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceMarketOptions.MarketType=spot"],
        Fault::aws(500, "InsufficientInstanceCapacity"),
    );
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceType=m6i.large"],
        Fault::aws(400, "Unsupported"),
    );
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j3-1",
        &s.world,
        vec![
            offering("m7i.large", &a, CapacityMarket::Spot),
            offering("m7i.large", &b, CapacityMarket::Spot),
            offering("m6i.large", &a, CapacityMarket::OnDemand),
            offering("m7i.large", &b, CapacityMarket::OnDemand),
        ],
    );
    let out = s.cloud.launch(&req).await.unwrap();
    let l = out.instances.first().cloned().expect("on-demand launches");
    assert_eq!(l.offering, req.offerings[3]);
    let failed: Vec<_> = out
        .errors
        .iter()
        .map(|(o, e)| (o.clone(), e.kind))
        .collect();
    assert_eq!(
        failed,
        vec![
            (req.offerings[0].clone(), ErrorKind::Capacity),
            (req.offerings[1].clone(), ErrorKind::Capacity),
            (req.offerings[2].clone(), ErrorKind::Capacity),
        ]
    );
    assert_eq!(s.proxy.count("ec2:RunInstances"), 4);
    let listed = s.cloud.list_instances("acme-ci").await.unwrap();
    let od = listed.iter().find(|i| i.id == l.instance_id).unwrap();
    assert_eq!(od.market, Some(CapacityMarket::OnDemand));

    // 3) A spot quota does not stop on-demand; every offering failing is an
    //    outcome without an instance, not an error.
    s.proxy.clear();
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceMarketOptions.MarketType=spot"],
        Fault::aws(400, "MaxSpotInstanceCountExceeded"),
    );
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceType=m7i.large"],
        Fault::aws(500, "InsufficientInstanceCapacity"),
    );
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j4-1",
        &s.world,
        vec![
            offering("m7i.large", &a, CapacityMarket::Spot),
            offering("m7i.large", &a, CapacityMarket::OnDemand),
        ],
    );
    let out = s.cloud.launch(&req).await.unwrap();
    assert!(out.instances.is_empty());
    let kinds: Vec<_> = out.errors.iter().map(|(_, e)| e.kind).collect();
    assert_eq!(kinds, vec![ErrorKind::Quota, ErrorKind::Capacity]);
    assert_eq!(s.cloud.list_instances("acme-ci").await.unwrap().len(), 2);

    // 4) A permission error stops the walk at once and is an error.
    s.proxy.clear();
    s.proxy.reset_counts();
    s.proxy
        .fail("ec2:RunInstances", Fault::aws(403, "UnauthorizedOperation"));
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j5-1",
        &s.world,
        vec![
            offering("m7i.large", &a, CapacityMarket::Spot),
            offering("m7i.large", &a, CapacityMarket::OnDemand),
        ],
    );
    let e = s.cloud.launch(&req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("UnauthorizedOperation"), "{}", e.message);
    assert_eq!(s.proxy.count("ec2:RunInstances"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_until_it_passes() {
    let Some(s) = setup("throttling").await else {
        return;
    };
    let a = s.world.subnets[0].clone();
    s.proxy.fail_times(
        "ec2:RunInstances",
        3,
        Fault::aws(503, "RequestLimitExceeded"),
    );
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j6-1",
        &s.world,
        vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
    );
    let out = s.cloud.launch(&req).await.unwrap();
    assert!(!out.instances.is_empty());
    assert!(out.errors.is_empty());
    assert_eq!(s.proxy.count("ec2:RunInstances"), 4);
    assert_eq!(
        s.world
            .instances_tagged("runfleet:launch", "acme-ci-j6-1")
            .await
            .len(),
        1
    );

    // SSM's low put rate: throttled puts are retried later, not failed.
    let id = out.one().unwrap().instance_id;
    s.proxy.fail_times(
        "ssm:PutParameter",
        4,
        Fault::aws(400, "ThrottlingException"),
    );
    s.cloud
        .put_jit("acme-ci", &id, &Secret::new("jit-value"))
        .await
        .expect("put after throttling");
    assert_eq!(s.proxy.count("ssm:PutParameter"), 5);

    // Describe throttled too.
    s.proxy.fail_times(
        "ec2:DescribeInstances",
        2,
        Fault::aws(503, "RequestLimitExceeded"),
    );
    assert_eq!(s.cloud.list_instances("acme-ci").await.unwrap().len(), 1);

    // Throttled beyond the budget: a Throttled error, never a hang.
    let cloud = AwsCloud::new(
        sdk_config(&s.proxy.url),
        AwsOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(20),
                budget: Duration::from_secs(5),
            },
            ..AwsOptions::default()
        },
    );
    s.proxy
        .fail("ssm:PutParameter", Fault::aws(400, "ThrottlingException"));
    let e = cloud
        .put_jit("acme-ci", &id, &Secret::new("jit-value"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert!(
        e.message.contains("ssm:PutParameter: ThrottlingException"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_token_never_makes_a_second_instance() {
    let Some(s) = setup("idempotent").await else {
        return;
    };
    let a = s.world.subnets[0].clone();
    let req = request(
        "acme-ci",
        "p",
        "acme-ci-j7-1",
        &s.world,
        vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
    );
    // moto executes the launch, the answer is lost: the adapter finds the
    // instance by its launch tag instead of launching another.
    s.proxy.fail_times("ec2:RunInstances", 1, Fault::LoseAnswer);
    let out = s.cloud.launch(&req).await.unwrap();
    let first = out.one().unwrap();
    assert_eq!(s.proxy.count("ec2:RunInstances"), 1);
    assert_eq!(s.proxy.faulted("ec2:RunInstances"), 1);
    let tagged = s
        .world
        .instances_tagged("runfleet:launch", "acme-ci-j7-1")
        .await;
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert_eq!(tagged[0].0, first.instance_id);

    // The engine calls again with the same launch id: same instance, no call.
    let again = s.cloud.launch(&req).await.unwrap().one().unwrap();
    assert_eq!(again.instance_id, first.instance_id);
    assert_eq!(s.proxy.count("ec2:RunInstances"), 1);

    // Every answer lost, three times: an error the engine retries later with
    // the same id; the next call (same id) finds the instance moto made.
    let req2 = request(
        "acme-ci",
        "p",
        "acme-ci-j8-1",
        &s.world,
        vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
    );
    s.proxy.fail_times("ec2:RunInstances", 1, Fault::LoseAnswer);
    s.proxy
        .fail_times("ec2:DescribeInstances", 1, Fault::aws(503, "Unavailable"));
    let r = s.cloud.launch(&req2).await;
    let tagged = s
        .world
        .instances_tagged("runfleet:launch", "acme-ci-j8-1")
        .await;
    match r {
        Ok(out) => assert_eq!(out.one().unwrap().instance_id, tagged[0].0),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Transient);
            let out = s.cloud.launch(&req2).await.unwrap();
            assert_eq!(out.one().unwrap().instance_id, tagged[0].0);
        }
    }
    let tagged = s
        .world
        .instances_tagged("runfleet:launch", "acme-ci-j8-1")
        .await;
    assert_eq!(tagged.len(), 1, "{tagged:?}");

    // The token sent is stable per (launch, offering).
    let bodies = s.proxy.bodies("ec2:RunInstances");
    let token = |b: &String| {
        b.split('&')
            .find_map(|kv| kv.strip_prefix("ClientToken="))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        token(&bodies[0]),
        runfleet_aws::offering_token("acme-ci-j7-1", &req.offerings[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_round_trip_secure_string_and_pagination() {
    let Some(s) = setup("ssm").await else { return };
    let cloud = AwsCloud::new(
        sdk_config(&s.proxy.url),
        AwsOptions {
            ssm_page_size: 3,
            ..test_options()
        },
    );
    let secret = Secret::new("eyJydW5uZXIiOiJqaXQtY29uZmlnLXZhbHVlIn0=");
    cloud
        .put_jit("acme-ci", "i-0123456789abcdef0", &secret)
        .await
        .unwrap();
    let p = s
        .world
        .ssm
        .get_parameter()
        .name("/runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    let p = p.parameter().unwrap();
    assert_eq!(p.value(), Some(secret.expose()));
    assert_eq!(
        p.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    // Overwrite works.
    cloud
        .put_jit("acme-ci", "i-0123456789abcdef0", &Secret::new("second"))
        .await
        .unwrap();

    for n in 0..7 {
        cloud
            .put_jit("acme-ci", &format!("i-{n:017x}"), &Secret::new("v"))
            .await
            .unwrap();
    }
    // Another fleet's parameter and a stray one under this fleet are not listed.
    cloud
        .put_jit("other", "i-00000000000000099", &secret)
        .await
        .unwrap();
    s.world
        .ssm
        .put_parameter()
        .name("/runfleet/acme-ci/instances/i-0aa/other")
        .value("x")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    s.proxy.reset_counts();
    let ids = cloud.list_jit("acme-ci").await.unwrap();
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(ids.contains(&"i-0123456789abcdef0".to_string()));
    assert!(!ids.contains(&"i-00000000000000099".to_string()));
    assert!(
        s.proxy.count("ssm:GetParametersByPath") >= 3,
        "{:?}",
        s.proxy.counts()
    );
    for b in s.proxy.bodies("ssm:GetParametersByPath") {
        assert!(b.contains("\"WithDecryption\":false"), "{b}");
    }

    cloud
        .delete_jit("acme-ci", "i-0123456789abcdef0")
        .await
        .unwrap();
    // Deleting a missing parameter is success.
    cloud
        .delete_jit("acme-ci", "i-0123456789abcdef0")
        .await
        .unwrap();
    let ids = cloud.list_jit("acme-ci").await.unwrap();
    assert_eq!(ids.len(), 7);
    assert_eq!(
        cloud.list_jit("other").await.unwrap(),
        vec!["i-00000000000000099".to_string()]
    );

    // Names that would leave the fleet's prefix are refused before any call.
    s.proxy.reset_counts();
    let e = cloud
        .delete_jit("acme-ci", "../../other/instances/x")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(s.proxy.count("ssm:DeleteParameter"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn the_jit_config_never_reaches_an_error_or_a_log() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    // Everything at TRACE except what binaries cap (the SDK's raw bodies).
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "trace,{}",
            runfleet_aws::LOG_CAPS
        )))
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let Some(s) = setup("secret").await else {
        return;
    };
    let secret = Secret::new("JITCONFIG-9f8e7d6c5b4a39281706f5e4d3c2b1a0-SECRET");
    // A validation error that quotes the value it got, as AWS services do.
    s.proxy.fail_times(
        "ssm:PutParameter",
        1,
        Fault::Aws {
            status: 400,
            code: "ValidationException".into(),
            message: "1 validation error detected: Value at 'value' failed: {body}".into(),
        },
    );
    let e = s
        .cloud
        .put_jit("acme-ci", "i-0123456789abcdef0", &secret)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message.contains("ssm:PutParameter: ValidationException"),
        "{}",
        e.message
    );
    assert!(!e.to_string().contains(secret.expose()), "{e}");
    assert!(!format!("{e:?}").contains("9f8e7d6c5b4a"), "{e:?}");
    // The proxy did see it: the test would notice if the value were not sent.
    assert!(s.proxy.bodies("ssm:PutParameter")[0].contains(secret.expose()));

    s.cloud
        .put_jit("acme-ci", "i-0123456789abcdef0", &secret)
        .await
        .unwrap();
    let ids = s.cloud.list_jit("acme-ci").await.unwrap();
    assert_eq!(ids, vec!["i-0123456789abcdef0".to_string()]);
    s.proxy.fail_times(
        "ssm:PutParameter",
        2,
        Fault::aws(400, "ThrottlingException"),
    );
    s.cloud
        .put_jit("acme-ci", "i-0123456789abcdef0", &secret)
        .await
        .unwrap();

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "nothing was logged at all");
    assert!(
        logs.contains("PutParameter") || logs.contains("retrying"),
        "{logs}"
    );
    assert!(!logs.contains("9f8e7d6c5b4a"), "secret in logs:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_roles_launch_in_their_own_account_once_per_session() {
    let Some(s) = setup("assume").await else {
        return;
    };
    let role = "arn:aws:iam::111111111111:role/runfleet-launcher";
    let external = Secret::new("ext-id-5a5a5a5a");

    // The other account needs its own VPC and template: make them with
    // credentials of that account (moto switches account by assumed role).
    let sts = aws_sdk_sts::Client::new(&sdk_config(&s._moto.url));
    let creds = sts
        .assume_role()
        .role_arn(role)
        .role_session_name("setup")
        .send()
        .await
        .unwrap();
    let c = creds.credentials().unwrap();
    let other_sdk = common::sdk_config(&s._moto.url)
        .to_builder()
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "setup",
            ),
        ))
        .build();
    let other = World::create(&other_sdk, "other-account").await;
    let me = aws_sdk_sts::Client::new(&other_sdk)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(me.account(), Some("111111111111"));

    let mut req = request(
        "acme-ci",
        "cross",
        "acme-ci-j9-1",
        &other,
        vec![offering(
            "m5.large",
            &other.subnets[0],
            CapacityMarket::OnDemand,
        )],
    );
    req.role_arn = Some(role.to_string());
    req.external_id = Some(external.clone());
    let l = s.cloud.launch(&req).await.unwrap().one().unwrap();
    let mut req2 = req.clone();
    req2.client_token = "acme-ci-j9-2".into();
    req2.tags[3].1 = "acme-ci-j9-2".into();
    s.cloud.launch(&req2).await.unwrap().one().unwrap();

    // One AssumeRole for both launches, with the external id.
    assert_eq!(s.proxy.count("sts:AssumeRole"), 1);
    let body = &s.proxy.bodies("sts:AssumeRole")[0];
    assert!(body.contains(&format!("RoleArn={role}")), "{body}");
    assert!(body.contains("ExternalId=ext-id-5a5a5a5a"), "{body}");

    // The instance is in account 111111111111, not in the base account.
    assert_eq!(
        other
            .instances_tagged("runfleet:launch", "acme-ci-j9-1")
            .await
            .len(),
        1
    );
    assert!(
        s.world
            .instances_tagged("runfleet:launch", "acme-ci-j9-1")
            .await
            .is_empty()
    );

    // A pool in the base account, same adapter.
    let base = request(
        "acme-ci",
        "local",
        "acme-ci-j10-1",
        &s.world,
        vec![offering(
            "m5.large",
            &s.world.subnets[0],
            CapacityMarket::OnDemand,
        )],
    );
    let lb = s.cloud.launch(&base).await.unwrap().one().unwrap();

    // Listing covers both accounts; parameters go to the instance's account.
    let listed = s.cloud.list_instances("acme-ci").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(listed.len(), 3, "{ids:?}");
    assert!(ids.contains(&l.instance_id.as_str()) && ids.contains(&lb.instance_id.as_str()));
    s.cloud
        .put_jit("acme-ci", &l.instance_id, &Secret::new("v"))
        .await
        .unwrap();
    let in_other = aws_sdk_ssm::Client::new(&other_sdk)
        .get_parameter()
        .name(format!(
            "/runfleet/acme-ci/instances/{}/jitconfig",
            l.instance_id
        ))
        .send()
        .await;
    assert!(in_other.is_ok(), "parameter not in the role's account");
    assert_eq!(
        s.cloud.list_jit("acme-ci").await.unwrap(),
        vec![l.instance_id.clone()]
    );

    // Termination reaches the other account too.
    s.cloud
        .terminate("acme-ci", std::slice::from_ref(&l.instance_id))
        .await
        .unwrap();
    let st = other
        .instances_tagged("runfleet:launch", "acme-ci-j9-1")
        .await;
    assert!(
        matches!(st[0].1.as_str(), "shutting-down" | "terminated"),
        "{st:?}"
    );
    // Still one session.
    assert_eq!(s.proxy.count("sts:AssumeRole"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_never_touches_another_fleets_instance() {
    let Some(s) = setup("terminate").await else {
        return;
    };
    let a = s.world.subnets[0].clone();
    let mine = s
        .cloud
        .launch(&request(
            "acme-ci",
            "p",
            "acme-ci-j11-1",
            &s.world,
            vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
        ))
        .await
        .unwrap()
        .one()
        .unwrap()
        .instance_id;
    let theirs = s
        .cloud
        .launch(&request(
            "other-fleet",
            "p",
            "other-fleet-j1-1",
            &s.world,
            vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
        ))
        .await
        .unwrap()
        .one()
        .unwrap()
        .instance_id;
    // An instance with no runfleet tag at all, launched by someone else.
    let untagged = s
        .world
        .ec2
        .run_instances()
        .image_id(&s.world.ami)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();

    s.proxy.reset_counts();
    let e = s
        .cloud
        .terminate("acme-ci", &[theirs.clone(), untagged.clone()])
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message.contains(&theirs) && e.message.contains(&untagged),
        "{}",
        e.message
    );
    assert_eq!(
        s.proxy.count("ec2:TerminateInstances"),
        0,
        "no call for foreign ids"
    );

    // Mixed: only ours is terminated, the refusal is reported.
    let e = s
        .cloud
        .terminate("acme-ci", &[mine.clone(), theirs.clone()])
        .await
        .unwrap_err();
    assert!(
        e.message.contains(&theirs) && !e.message.contains(&mine),
        "{}",
        e.message
    );
    assert_eq!(s.proxy.count("ec2:TerminateInstances"), 1);
    for b in s.proxy.bodies("ec2:TerminateInstances") {
        assert!(
            b.contains(&mine) && !b.contains(&theirs) && !b.contains(&untagged),
            "{b}"
        );
    }
    let state = |id: String| {
        let ec2 = s.world.ec2.clone();
        async move {
            ec2.describe_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap()
                .reservations()[0]
                .instances()[0]
                .state()
                .unwrap()
                .name()
                .unwrap()
                .as_str()
                .to_string()
        }
    };
    assert!(matches!(
        state(mine.clone()).await.as_str(),
        "shutting-down" | "terminated"
    ));
    assert_eq!(state(theirs.clone()).await, "running");
    assert_eq!(state(untagged.clone()).await, "running");

    // Terminating ours again, or an id that no longer exists, is fine.
    s.cloud
        .terminate("acme-ci", &[mine.clone(), "i-0ffffffffffffffff".into()])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_batches_and_list_paginates() {
    let Some(s) = setup("paginate").await else {
        return;
    };
    let cloud = AwsCloud::new(
        sdk_config(&s.proxy.url),
        AwsOptions {
            describe_page_size: 5,
            terminate_batch: 4,
            ..test_options()
        },
    );
    let a = s.world.subnets[0].clone();
    let mut ids = Vec::new();
    for n in 0..12 {
        let id = format!("acme-ci-j{}-1", 100 + n);
        let l = cloud
            .launch(&request(
                "acme-ci",
                "p",
                &id,
                &s.world,
                vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
            ))
            .await
            .unwrap()
            .one()
            .unwrap();
        ids.push(l.instance_id);
    }
    for n in 0..2 {
        let id = format!("other-j{n}-1");
        cloud
            .launch(&request(
                "other",
                "p",
                &id,
                &s.world,
                vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
            ))
            .await
            .unwrap();
    }
    s.proxy.reset_counts();
    let listed = cloud.list_instances("acme-ci").await.unwrap();
    assert_eq!(listed.len(), 12);
    assert!(
        listed
            .iter()
            .all(|i| i.tag("runfleet:fleet") == Some("acme-ci"))
    );
    assert!(
        s.proxy.count("ec2:DescribeInstances") >= 3,
        "{:?}",
        s.proxy.counts()
    );
    for b in s.proxy.bodies("ec2:DescribeInstances") {
        assert!(
            b.contains("MaxResults=5") && b.contains("Filter.1.Name=tag:runfleet:fleet"),
            "{b}"
        );
    }

    s.proxy.reset_counts();
    cloud.terminate("acme-ci", &ids).await.unwrap();
    assert_eq!(
        s.proxy.count("ec2:TerminateInstances"),
        3,
        "12 ids in batches of 4"
    );
    let listed = cloud.list_instances("acme-ci").await.unwrap();
    assert!(listed.iter().all(|i| i.state.is_gone()), "{listed:?}");
    assert_eq!(
        cloud
            .list_instances("other")
            .await
            .unwrap()
            .iter()
            .filter(|i| !i.state.is_gone())
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bucket_keeps_a_burst_under_ec2s_limit() {
    let Some(s) = setup("burst").await else {
        return;
    };
    // The proxy enforces EC2's RunInstances bucket (5 burst, 2 per second).
    s.proxy.buckets(&[("ec2:RunInstances", 5, 2.0)]);
    let cloud = std::sync::Arc::new(AwsCloud::new(sdk_config(&s.proxy.url), test_options()));
    let a = s.world.subnets[0].clone();
    let mut tasks = Vec::new();
    for n in 0..11 {
        let cloud = cloud.clone();
        let req = request(
            "acme-ci",
            "p",
            &format!("acme-ci-j{}-1", 200 + n),
            &s.world,
            vec![offering("m5.large", &a, CapacityMarket::OnDemand)],
        );
        tasks.push(tokio::spawn(async move { cloud.launch(&req).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().one().is_some());
    }
    assert_eq!(
        s.proxy.rejected().get("ec2:RunInstances"),
        None,
        "{:?}",
        s.proxy.rejected()
    );
    assert_eq!(s.proxy.count("ec2:RunInstances"), 11);
    assert_eq!(cloud.request_counts().get("ec2:RunInstances"), Some(&11));
}

fn config_text(fleet: &str, world: &World, market: &str) -> String {
    format!(
        r#"
fleet = "{fleet}"
[github]
token = "x"
webhook_secret = "y"
repos = ["acme/app"]
[aws]
region = "us-east-1"
[[pool]]
name = "linux-x64"
labels = ["self-hosted", "linux"]
launch_template = "{lt}"
instance_types = ["m5.large", "m6i.large"]
subnets = ["{s0}", "{s1}"]
market = "{market}"
[[pool]]
name = "by-name"
labels = ["self-hosted", "big"]
launch_template = "{name}"
instance_types = ["m5.xlarge"]
market = "on-demand"
"#,
        lt = world.template_id,
        name = world.template_name,
        s0 = world.subnets[0],
        s1 = world.subnets[1],
    )
}

fn failing(rows: &[CheckRow]) -> Vec<&CheckRow> {
    rows.iter().filter(|r| !r.ok).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_full_rights_and_names_a_missing_permission() {
    let Some(s) = setup("check").await else {
        return;
    };
    let cfg = Config::parse(
        &config_text("acme-ci", &s.world, "spot-then-on-demand"),
        &MapSecrets::new(),
    )
    .unwrap();
    let rows = check_with(&s.cloud, &cfg).await;
    let table = render_table(&rows);
    assert!(failing(&rows).is_empty(), "{table}");
    for name in [
        "sts:GetCallerIdentity",
        "ec2:DescribeInstances (base credentials)",
        "ec2:TerminateInstances (base credentials)",
        "ssm:PutParameter (base credentials)",
        "ssm:DeleteParameter (base credentials)",
        "ssm:GetParametersByPath (base credentials)",
        "ec2:RunInstances (pool linux-x64, spot)",
        "ec2:RunInstances (pool linux-x64, on-demand)",
        "ec2:RunInstances (pool by-name, on-demand)",
        "subnets (pool linux-x64)",
    ] {
        assert!(
            rows.iter().any(|r| r.name == name),
            "no row {name}:\n{table}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r.name.starts_with("launch template")
                && r.name.contains(&s.world.template_name)),
        "{table}"
    );
    // Dry runs only: nothing launched, nothing terminated, the canary gone.
    assert!(
        s.proxy
            .bodies("ec2:RunInstances")
            .iter()
            .all(|b| b.contains("DryRun=true"))
    );
    assert!(
        s.proxy
            .bodies("ec2:TerminateInstances")
            .iter()
            .all(|b| b.contains("DryRun=true"))
    );
    assert_eq!(
        s.world
            .ec2
            .describe_instances()
            .send()
            .await
            .unwrap()
            .reservations()
            .len(),
        0
    );
    let left = s
        .world
        .ssm
        .get_parameters_by_path()
        .path("/runfleet/acme-ci/")
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(left.parameters().is_empty(), "canary left behind");

    // One permission denied: that row fails and names the IAM action.
    s.proxy.fail(
        "ec2:TerminateInstances",
        Fault::aws(403, "UnauthorizedOperation"),
    );
    let rows = check_with(&s.cloud, &cfg).await;
    let bad = failing(&rows);
    assert_eq!(bad.len(), 1, "{}", render_table(&rows));
    assert_eq!(bad[0].name, "ec2:TerminateInstances (base credentials)");
    assert!(
        bad[0]
            .detail
            .contains("missing permission ec2:TerminateInstances"),
        "{}",
        bad[0].detail
    );

    s.proxy.clear();
    s.proxy.fail_when(
        "ec2:RunInstances",
        &["InstanceMarketOptions.MarketType=spot"],
        Fault::aws(403, "UnauthorizedOperation"),
    );
    s.proxy.fail(
        "ssm:DeleteParameter",
        Fault::aws(400, "AccessDeniedException"),
    );
    let rows = check_with(&s.cloud, &cfg).await;
    let bad: Vec<&str> = failing(&rows).iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        bad,
        vec![
            "ssm:DeleteParameter (base credentials)",
            "ec2:RunInstances (pool linux-x64, spot)"
        ],
        "{}",
        render_table(&rows)
    );
    assert!(render_table(&rows).contains("missing permission ec2:RunInstances"));

    // A template and a subnet that do not exist.
    s.proxy.clear();
    let text = config_text("acme-ci", &s.world, "on-demand")
        .replace(&s.world.template_name, "no-such-template")
        .replace(&s.world.subnets[1], "subnet-0deadbeef0000000");
    let cfg = Config::parse(&text, &MapSecrets::new()).unwrap();
    let rows = check_with(&s.cloud, &cfg).await;
    let bad: Vec<&CheckRow> = failing(&rows);
    assert!(
        bad.iter().any(|r| r.name.contains("no-such-template")),
        "{}",
        render_table(&rows)
    );
    assert!(
        bad.iter().any(|r| r.name == "subnets (pool linux-x64)"
            && r.detail.contains("subnet-0deadbeef0000000")),
        "{}",
        render_table(&rows)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_assumes_the_configured_role() {
    let Some(s) = setup("check_role").await else {
        return;
    };
    let text = config_text("acme-ci", &s.world, "on-demand").replace(
        "region = \"us-east-1\"",
        "region = \"us-east-1\"\nrole_arn = \"arn:aws:iam::222222222222:role/runfleet\"\nexternal_id = \"env:EXT\"",
    );
    let cfg = Config::parse(&text, &MapSecrets::new().with_env("EXT", "ext-check-77")).unwrap();
    let cloud = AwsCloud::for_config(&cfg, sdk_config(&s.proxy.url), test_options());
    let rows = check_with(&cloud, &cfg).await;
    let table = render_table(&rows);
    assert!(
        rows.iter()
            .any(|r| r.ok && r.name == "sts:AssumeRole arn:aws:iam::222222222222:role/runfleet"),
        "{table}"
    );
    assert!(!table.contains("ext-check-77"));
    assert!(s.proxy.bodies("sts:AssumeRole")[0].contains("ExternalId=ext-check-77"));
    // The template lives in the base account, not in 222222222222: the
    // check says so instead of passing.
    assert!(
        rows.iter()
            .any(|r| !r.ok && r.name.starts_with("launch template")),
        "{table}"
    );

    s.proxy
        .fail("sts:AssumeRole", Fault::aws(403, "AccessDenied"));
    let cloud = AwsCloud::for_config(&cfg, sdk_config(&s.proxy.url), test_options());
    let rows = check_with(&cloud, &cfg).await;
    let bad = failing(&rows);
    assert_eq!(bad.len(), 1, "{}", render_table(&rows));
    assert!(bad[0].name.starts_with("sts:AssumeRole") && bad[0].detail.contains("AccessDenied"));
}
