//! The AWS part of `runfleet check`: every permission and resource the
//! config needs, verified without launching or changing anything but one
//! canary parameter under the fleet's own prefix (written, then deleted).
//!
//! EC2 calls are made with `DryRun`: `DryRunOperation` means allowed,
//! `UnauthorizedOperation` means the permission is missing (the row names
//! the IAM action). A `RunInstances` dry run with `TagSpecifications` is also
//! authorized against `ec2:CreateTags` (tagging on create), so a denial there
//! names both actions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_sdk_ec2::types::{InstanceType, ResourceType, ShutdownBehavior, Tag, TagSpecification};
use aws_sdk_ssm::types::ParameterType;
use rand::Rng;
use runfleet_core::config::{CapacityMarket, Config, PoolConfig, Secret};

use crate::cloud::{AwsCloud, config_roles, filter, instances_prefix, is_template_id};
use crate::error::code_of;
use crate::pacing::Api;
use crate::session::{RoleKey, Session};

/// One line of the check table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    /// What was checked, e.g. `ec2:RunInstances pool linux-x64 spot`.
    pub name: String,
    pub ok: bool,
    /// Why it passed or failed (never a secret).
    pub detail: String,
}

impl CheckRow {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        CheckRow {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        CheckRow {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Checks every AWS permission and resource `cfg` needs, with credentials
/// from the standard AWS chain.
pub async fn check(cfg: &Config) -> Vec<CheckRow> {
    let cloud = AwsCloud::from_config(cfg).await;
    check_with(&cloud, cfg).await
}

/// How a dry-run answer reads.
fn dry_run_row<E>(
    name: String,
    action: &str,
    r: Result<impl Sized, aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>,
) -> CheckRow
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(_) => CheckRow::pass(name, format!("{action} allowed (the call ran)")),
        Err(e) => match code_of(&e) {
            Some("DryRunOperation") => CheckRow::pass(name, format!("{action} allowed")),
            Some(c) if c.starts_with("UnauthorizedOperation") => {
                CheckRow::fail(name, format!("missing permission {action} ({c})"))
            }
            _ => CheckRow::fail(name, crate::error::from_sdk(action, &e).message),
        },
    }
}

/// [`check`] with a given adapter (tests point it at a local endpoint).
pub async fn check_with(cloud: &AwsCloud, cfg: &Config) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    let base = cloud.session(&RoleKey::base()).await;
    match base {
        Ok(s) => {
            s.pacer
                .acquire(Api::Sts, "sts:GetCallerIdentity")
                .await
                .ok();
            cloud.count("sts:GetCallerIdentity");
            match s.sts.get_caller_identity().send().await {
                Ok(out) => rows.push(CheckRow::pass(
                    "sts:GetCallerIdentity",
                    format!(
                        "account {} as {}",
                        out.account().unwrap_or("?"),
                        out.arn().unwrap_or("?")
                    ),
                )),
                Err(e) => rows.push(CheckRow::fail(
                    "sts:GetCallerIdentity",
                    crate::error::from_sdk("sts:GetCallerIdentity", &e).message,
                )),
            }
        }
        Err(e) => rows.push(CheckRow::fail("sts:GetCallerIdentity", e.message)),
    }

    // Pools grouped by the account session they launch in.
    let mut by_key: BTreeMap<RoleKey, Vec<&PoolConfig>> = BTreeMap::new();
    for key in config_roles(cfg) {
        by_key.entry(key).or_default();
    }
    for p in &cfg.pools {
        let role = p.role_arn.as_deref().or(cfg.aws.role_arn.as_deref());
        let ext = p
            .external_id
            .as_ref()
            .or(cfg.aws.external_id.as_ref())
            .map(Secret::expose);
        by_key.entry(RoleKey::new(role, ext)).or_default().push(p);
    }

    for (key, pools) in by_key {
        let session = match cloud.session(&key).await {
            Ok(s) => {
                if let Some(role) = &key.role_arn {
                    rows.push(CheckRow::pass(
                        format!("sts:AssumeRole {role}"),
                        if key.external_id.is_some() {
                            "assumed with the external id"
                        } else {
                            "assumed"
                        },
                    ));
                }
                s
            }
            Err(e) => {
                rows.push(CheckRow::fail(
                    format!("sts:AssumeRole {}", key.label()),
                    e.message,
                ));
                continue;
            }
        };
        let account = key.label().to_string();
        check_account(cloud, &session, cfg, &account, &mut rows).await;
        for p in pools {
            check_pool(cloud, &session, cfg, p, &mut rows).await;
        }
    }
    rows
}

async fn check_account(
    cloud: &AwsCloud,
    s: &Session,
    cfg: &Config,
    account: &str,
    rows: &mut Vec<CheckRow>,
) {
    let suffix = format!("({account})");
    s.pacer
        .acquire(Api::Describe, "ec2:DescribeInstances")
        .await
        .ok();
    cloud.count("ec2:DescribeInstances");
    let r = s
        .ec2
        .describe_instances()
        .dry_run(true)
        .filters(filter(
            &format!("tag:{}", crate::cloud::TAG_FLEET),
            [cfg.fleet.clone()],
        ))
        .send()
        .await;
    rows.push(dry_run_row(
        format!("ec2:DescribeInstances {suffix}"),
        "ec2:DescribeInstances",
        r,
    ));

    s.pacer
        .acquire(Api::TerminateInstances, "ec2:TerminateInstances")
        .await
        .ok();
    cloud.count("ec2:TerminateInstances");
    let r = s
        .ec2
        .terminate_instances()
        .dry_run(true)
        .instance_ids("i-0000000000000000f")
        .send()
        .await;
    let row = match &r {
        // Authorization is evaluated before existence: a dummy id that is
        // not found was not denied.
        Err(e) if code_of(e) == Some("InvalidInstanceID.NotFound") => CheckRow::pass(
            format!("ec2:TerminateInstances {suffix}"),
            "ec2:TerminateInstances not denied (dummy instance id not found)",
        ),
        _ => dry_run_row(
            format!("ec2:TerminateInstances {suffix}"),
            "ec2:TerminateInstances",
            r,
        ),
    };
    rows.push(row);

    // SSM: a SecureString canary under the fleet's prefix, then deleted.
    let canary = format!(
        "/runfleet/{}/check/canary-{:016x}",
        cfg.fleet,
        rand::rng().random::<u64>()
    );
    s.pacer
        .acquire(Api::SsmWrite, "ssm:PutParameter")
        .await
        .ok();
    cloud.count("ssm:PutParameter");
    let put = s
        .ssm
        .put_parameter()
        .name(&canary)
        .value("runfleet check canary")
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await;
    match put {
        Ok(_) => {
            rows.push(CheckRow::pass(
                format!("ssm:PutParameter {suffix}"),
                format!("SecureString {canary} written"),
            ));
            s.pacer
                .acquire(Api::SsmWrite, "ssm:DeleteParameter")
                .await
                .ok();
            cloud.count("ssm:DeleteParameter");
            match s.ssm.delete_parameter().name(&canary).send().await {
                Ok(_) => rows.push(CheckRow::pass(
                    format!("ssm:DeleteParameter {suffix}"),
                    format!("{canary} deleted"),
                )),
                Err(e) => rows.push(CheckRow::fail(
                    format!("ssm:DeleteParameter {suffix}"),
                    format!(
                        "{} (delete {canary} by hand)",
                        crate::error::from_sdk("ssm:DeleteParameter", &e).message
                    ),
                )),
            }
        }
        Err(e) => rows.push(CheckRow::fail(
            format!("ssm:PutParameter {suffix}"),
            crate::error::from_sdk("ssm:PutParameter", &e).message,
        )),
    }
    let prefix = instances_prefix(&cfg.fleet).unwrap_or_default();
    s.pacer
        .acquire(Api::SsmRead, "ssm:GetParametersByPath")
        .await
        .ok();
    cloud.count("ssm:GetParametersByPath");
    match s
        .ssm
        .get_parameters_by_path()
        .path(&prefix)
        .recursive(true)
        .with_decryption(false)
        .max_results(1)
        .send()
        .await
    {
        Ok(_) => rows.push(CheckRow::pass(
            format!("ssm:GetParametersByPath {suffix}"),
            format!("{prefix} listed"),
        )),
        Err(e) => rows.push(CheckRow::fail(
            format!("ssm:GetParametersByPath {suffix}"),
            crate::error::from_sdk("ssm:GetParametersByPath", &e).message,
        )),
    }
}

async fn check_pool(
    cloud: &AwsCloud,
    s: &Session,
    cfg: &Config,
    p: &PoolConfig,
    rows: &mut Vec<CheckRow>,
) {
    let pool = &p.name;
    let version = p.launch_template_version.as_deref().unwrap_or("$Default");
    let mut b = s.ec2.describe_launch_template_versions().versions(version);
    b = if is_template_id(&p.launch_template) {
        b.launch_template_id(&p.launch_template)
    } else {
        b.launch_template_name(&p.launch_template)
    };
    s.pacer
        .acquire(Api::Describe, "ec2:DescribeLaunchTemplateVersions")
        .await
        .ok();
    cloud.count("ec2:DescribeLaunchTemplateVersions");
    let name = format!("launch template {} (pool {pool})", p.launch_template);
    match b.send().await {
        Ok(out) => match out.launch_template_versions().first() {
            Some(v) => rows.push(CheckRow::pass(
                name,
                format!(
                    "version {} readable",
                    v.version_number()
                        .map_or("?".to_string(), |n| n.to_string())
                ),
            )),
            None => rows.push(CheckRow::fail(name, format!("no version {version}"))),
        },
        Err(e) => rows.push(CheckRow::fail(
            name,
            crate::error::from_sdk("ec2:DescribeLaunchTemplateVersions", &e).message,
        )),
    }

    if !p.subnets.is_empty() {
        s.pacer
            .acquire(Api::Describe, "ec2:DescribeSubnets")
            .await
            .ok();
        cloud.count("ec2:DescribeSubnets");
        let name = format!("subnets (pool {pool})");
        match s
            .ec2
            .describe_subnets()
            // A filter, not SubnetIds: a missing id then is absent from the
            // answer instead of failing the whole call, so each is named.
            .filters(filter("subnet-id", p.subnets.iter().cloned()))
            .send()
            .await
        {
            Ok(out) => {
                let found: Vec<&str> = out.subnets().iter().filter_map(|s| s.subnet_id()).collect();
                let missing: Vec<&str> = p
                    .subnets
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !found.contains(s))
                    .collect();
                if missing.is_empty() {
                    rows.push(CheckRow::pass(
                        name,
                        format!("{} exist", p.subnets.join(", ")),
                    ));
                } else {
                    rows.push(CheckRow::fail(
                        name,
                        format!("not found: {}", missing.join(", ")),
                    ));
                }
            }
            Err(e) => rows.push(CheckRow::fail(
                name,
                crate::error::from_sdk("ec2:DescribeSubnets", &e).message,
            )),
        }
    }

    let tags = vec![
        Tag::builder()
            .key(crate::cloud::TAG_FLEET)
            .value(&cfg.fleet)
            .build(),
        Tag::builder().key("runfleet:pool").value(pool).build(),
        Tag::builder()
            .key("Name")
            .value(format!("runfleet-{pool}"))
            .build(),
    ];
    for market in p.market.chain() {
        let market_name = match market {
            CapacityMarket::Spot => "spot",
            CapacityMarket::OnDemand => "on-demand",
        };
        let mut b = s
            .ec2
            .run_instances()
            .dry_run(true)
            .launch_template(crate::cloud::template_spec(
                &p.launch_template,
                p.launch_template_version.as_deref(),
            ))
            .instance_type(InstanceType::from(
                p.instance_types.first().map_or("m7i.large", String::as_str),
            ))
            .min_count(1)
            .max_count(1)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(tags.clone()))
                    .build(),
            );
        if let Some(subnet) = p.subnets.first() {
            b = b.subnet_id(subnet);
        }
        if *market == CapacityMarket::Spot {
            b = b.instance_market_options(
                aws_sdk_ec2::types::InstanceMarketOptionsRequest::builder()
                    .market_type(aws_sdk_ec2::types::MarketType::Spot)
                    .build(),
            );
        }
        s.pacer
            .acquire(Api::RunInstances, "ec2:RunInstances")
            .await
            .ok();
        cloud.count("ec2:RunInstances");
        let r = b.send().await;
        rows.push(dry_run_row(
            format!("ec2:RunInstances (pool {pool}, {market_name})"),
            "ec2:RunInstances with ec2:CreateTags on create",
            r,
        ));
    }
}

/// The rows as an aligned text table with a summary line.
pub fn render_table(rows: &[CheckRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(out, "{:<6}  {:<w$}  DETAIL", "RESULT", "CHECK");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<6}  {:<w$}  {}",
            if r.ok { "pass" } else { "FAIL" },
            r.name,
            r.detail
        );
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    let _ = writeln!(out, "{} checks, {} failing", rows.len(), failed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_counts() {
        let rows = vec![
            CheckRow::pass("sts:GetCallerIdentity", "account 1"),
            CheckRow::fail(
                "ec2:TerminateInstances (base credentials)",
                "missing permission",
            ),
        ];
        let t = render_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("pass    sts:GetCallerIdentity "));
        assert!(lines[2].starts_with("FAIL    ec2:TerminateInstances"));
        let col = lines[1].find("account 1").unwrap();
        assert_eq!(lines[2].find("missing").unwrap(), col);
        assert_eq!(lines[3], "2 checks, 1 failing");
    }
}
