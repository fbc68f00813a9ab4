#!/usr/bin/env python3
"""Deploys deploy/cloudformation/runfleet.yaml to a moto server and checks
what it created.

Usage: moto_deploy.py ENDPOINT_URL TEMPLATE_PATH

Runs with the boto3 of the moto virtualenv (crates/aws/tests/install-moto.sh),
so the Rust test that calls it (crates/aws/tests/deploy.rs) needs no
CloudFormation SDK in the build. Talks to ENDPOINT_URL only (loopback), with
dummy credentials. Prints one JSON object on stdout; exits 1 with one line on
stderr naming the first check that failed.

What moto cannot do is kept out of the real template, not weakened in it:
- moto's CloudFormation skips resource types it does not implement
  (AWS::SQS::QueuePolicy today) with a warning; the policy is then checked
  from the template text instead (only the rule may send, TLS only).
- moto's CloudFormation ignores SecurityGroupEgress; egress is checked from
  the template text.
- moto's CloudFormation attaches no SecurityGroupIds to an instance; the
  controller's group is checked by its rules, not by its attachment.
- moto does not run user data or wait for cfn-signal, so the controller's
  bootstrap is checked by the Rust test (config parses, unit matches), not here.
Every parameter is passed explicitly; none of them has a moto-only value
except the network ids of the VPC made here.
"""

import ast
import json
import sys
import time

import boto3
import yaml

REGION = "us-east-1"
FLEET = "deploy-test"


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def cfn_yaml(text):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) as {"Fn": value}."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {suffix: value}

    Loader.add_multi_constructor("!", tag)
    return yaml.load(text, Loader=Loader)  # noqa: S506 (SafeLoader subclass)


def statements(doc):
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError:
            # moto keeps a CloudFormation-made inline policy as a Python repr.
            doc = ast.literal_eval(doc)
    st = doc["Statement"]
    # moto leaves an `!If [cond, ..., !Ref AWS::NoValue]` list item as None
    # where CloudFormation drops it.
    return [s for s in st if s is not None] if isinstance(st, list) else [st]


def by_sid(stmts):
    return {s.get("Sid"): s for s in stmts}


def as_list(v):
    return v if isinstance(v, list) else [v]


def main(endpoint, template_path):
    kw = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="AKIDRUNFLEETTEST",
        aws_secret_access_key="not-a-secret",
    )
    ec2 = boto3.client("ec2", **kw)
    ssm = boto3.client("ssm", **kw)
    cfn = boto3.client("cloudformation", **kw)
    iam = boto3.client("iam", **kw)
    sqs = boto3.client("sqs", **kw)
    events = boto3.client("events", **kw)
    body = open(template_path, encoding="utf-8").read()

    # The network and the secrets' parameters exist before the stack, as in
    # a real account.
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    token_param = f"/runfleet-secrets/{FLEET}/github-token"
    hook_param = f"/runfleet-secrets/{FLEET}/webhook-secret"
    for name in (token_param, hook_param):
        ssm.put_parameter(Name=name, Value="placeholder", Type="SecureString")

    params = {
        "FleetName": FLEET,
        "GitHubRepos": "acme/app,acme/lib",
        "GitHubTokenParameter": token_param,
        "WebhookSecretParameter": hook_param,
        "VpcId": vpc,
        "ControllerSubnetId": subnets[0],
        "RunnerSubnetIds": ",".join(subnets),
        "WebhookPort": "8443",
        "WebhookIngressCidr": "192.0.2.0/24",
        "RunfleetBinaryUrl": "https://example.invalid/runfleet",
        "RunfleetBinarySha256": "0" * 64,
        "MaxRunners": "7",
    }
    cfn.validate_template(TemplateBody=body)
    stack = f"runfleet-{FLEET}"
    cfn.create_stack(
        StackName=stack,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        status = s["StackStatus"]
        if not status.endswith("IN_PROGRESS"):
            break
        check(time.monotonic() < deadline, f"stack still {status} after 60 s")
        time.sleep(0.2)
    check(status == "CREATE_COMPLETE", f"stack status {status}: {s.get('StackStatusReason')}")

    resources = cfn.describe_stack_resources(StackName=stack)["StackResources"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in resources if "LogicalResourceId" in r}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}
    template = cfn_yaml(body)
    declared = template["Resources"]
    skipped = sorted(
        f"{k} ({v['Type']})"
        for k, v in declared.items()
        if k not in physical and "Condition" not in v
    )

    # --- IAM: the controller's policy is exactly what runfleet calls, scoped.
    role_name = lambda logical: iam.get_role(RoleName=physical[logical])["Role"]  # noqa: E731
    controller = role_name("ControllerRole")
    runner = role_name("RunnerRole")
    for role in (controller, runner):
        trust = statements(role["AssumeRolePolicyDocument"])
        check(
            trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
            f"{role['RoleName']}: trust policy is not EC2 only: {trust}",
        )
    names = iam.list_role_policies(RoleName=controller["RoleName"])["PolicyNames"]
    check(names == ["runfleet-controller"], f"controller inline policies {names}")
    cp = iam.get_role_policy(RoleName=controller["RoleName"], PolicyName="runfleet-controller")
    cs = statements(cp["PolicyDocument"])
    sids = by_sid(cs)
    actions = sorted({a for st in cs for a in as_list(st["Action"])})
    expected = sorted([
        "ec2:RunInstances", "ec2:CreateTags", "iam:PassRole", "ec2:TerminateInstances",
        "ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeSubnets",
        "ssm:PutParameter", "ssm:DeleteParameter", "ssm:GetParametersByPath", "ssm:GetParameter",
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    ])
    check(actions == expected, f"controller actions {actions}, expected {expected}")
    check(all("*" not in a for a in actions), "a wildcard action in the controller policy")
    check("DecryptOwnSecrets" not in sids, "kms:Decrypt granted without SecretsKmsKeyArn")
    term = sids["TerminateOnlyThisFleet"]
    check(
        term["Condition"] == {"StringEquals": {"aws:ResourceTag/runfleet:fleet": FLEET}},
        f"TerminateInstances not conditioned on the fleet tag: {term}",
    )
    launch = sids["LaunchTaggedInstances"]
    check(
        launch["Condition"] == {"StringEquals": {"aws:RequestTag/runfleet:fleet": FLEET}},
        f"RunInstances not conditioned on the request tag: {launch}",
    )
    check(
        sids["TagOnlyInTheLaunchCall"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        "CreateTags allowed outside RunInstances",
    )
    for st in cs:
        if any(a.startswith("ssm:") for a in as_list(st["Action"])):
            for r in as_list(st["Resource"]):
                check(
                    f":parameter/runfleet/{FLEET}/" in r or r.endswith(f":parameter/runfleet/{FLEET}/instances")
                    or r.endswith(token_param) or r.endswith(hook_param),
                    f"SSM resource outside the fleet's prefix and secrets: {r}",
                )
        if st.get("Resource") == "*":
            check(
                all(a.startswith("ec2:Describe") for a in as_list(st["Action"])),
                f"Resource * for a non-Describe action: {st}",
            )
    check(
        sids["PassOnlyTheRunnerRole"]["Resource"] == runner["Arn"],
        "iam:PassRole is not limited to the runner role",
    )
    check(
        sids["InterruptionEvents"]["Resource"].endswith(f":runfleet-{FLEET}-events"),
        "SQS permissions are not limited to the events queue",
    )
    rp = iam.get_role_policy(RoleName=runner["RoleName"], PolicyName="read-jit-config")
    rs = statements(rp["PolicyDocument"])
    check(
        len(rs) == 1 and sorted(as_list(rs[0]["Action"])) == ["ssm:DeleteParameter", "ssm:GetParameter"],
        f"runner policy {rs}",
    )
    check(
        rs[0]["Resource"].endswith(f":parameter/runfleet/{FLEET}/instances/*/jitconfig"),
        f"runner reads more than its fleet's JIT configs: {rs[0]['Resource']}",
    )
    profiles = iam.list_instance_profiles_for_role(RoleName=runner["RoleName"])["InstanceProfiles"]
    check(len(profiles) == 1, "runner role has no instance profile")

    # --- SQS and EventBridge.
    queue_url = outputs["EventsQueueUrl"]
    qa = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    check(qa.get("SqsManagedSseEnabled") == "true", f"queue not encrypted: {qa}")
    queue_arn = qa["QueueArn"]
    rule = events.describe_rule(Name=f"runfleet-{FLEET}-ec2-events")
    pattern = json.loads(rule["EventPattern"])
    check(pattern["source"] == ["aws.ec2"], f"rule source {pattern}")
    check(
        sorted(pattern["detail-type"]) == sorted([
            "EC2 Spot Instance Interruption Warning",
            "EC2 Instance Rebalance Recommendation",
            "EC2 Instance State-change Notification",
        ]),
        f"rule detail types {pattern['detail-type']}",
    )
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    check([t["Arn"] for t in targets] == [queue_arn], f"rule targets {targets}")
    # The queue policy (moto's CloudFormation does not create it): only this
    # rule may send, and nothing without TLS.
    qp = by_sid(declared["EventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"])
    only = qp["OnlyTheRunfleetEventRule"]
    check(
        only["Principal"] == {"Service": "events.amazonaws.com"} and only["Action"] == "sqs:SendMessage"
        and only["Condition"] == {"ArnEquals": {"aws:SourceArn": {"GetAtt": "Ec2EventsRule.Arn"}}},
        f"queue policy does not limit senders to the rule: {only}",
    )
    check(qp["TlsOnly"]["Effect"] == "Deny", "queue policy allows plain HTTP")

    # --- The runner launch template.
    lt_id = outputs["RunnerLaunchTemplateId"]
    ltv = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"][0]
    data = ltv["LaunchTemplateData"]
    check(data["MetadataOptions"]["HttpTokens"] == "required", f"IMDSv1 allowed: {data.get('MetadataOptions')}")
    check(data["InstanceInitiatedShutdownBehavior"] == "terminate", "shutdown does not terminate")
    ebs = [b["Ebs"] for b in data["BlockDeviceMappings"]]
    check(ebs and all(e["Encrypted"] for e in ebs), f"unencrypted runner volume: {ebs}")
    check(data["IamInstanceProfile"]["Arn"] == profiles[0]["Arn"], "runner template without the runner profile")
    check(ltv["LaunchTemplateName"] == f"runfleet-{FLEET}-linux-x64", f"template name {ltv['LaunchTemplateName']}")

    # --- Security groups: runners no ingress; controller only the webhook port.
    groups = {
        g["GroupId"]: g
        for g in ec2.describe_security_groups(
            GroupIds=[outputs["RunnerSecurityGroupId"], outputs["ControllerSecurityGroupId"]]
        )["SecurityGroups"]
    }
    rg = groups[outputs["RunnerSecurityGroupId"]]
    cg = groups[outputs["ControllerSecurityGroupId"]]
    check(rg["IpPermissions"] == [], f"runner ingress {rg['IpPermissions']}")
    # moto's CloudFormation ignores SecurityGroupEgress (it keeps EC2's
    # default allow-all), so egress is checked in the template: TCP 80 and
    # 443 only, for both groups (CloudFormation replaces the default rule
    # when the property is given).
    for logical in ("RunnerSecurityGroup", "ControllerSecurityGroup"):
        egress = declared[logical]["Properties"]["SecurityGroupEgress"]
        ports = sorted((e["IpProtocol"], e["FromPort"], e["ToPort"]) for e in egress)
        check(ports == [("tcp", 80, 80), ("tcp", 443, 443)], f"{logical} egress {ports}")
    ingress = [(p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in cg["IpPermissions"]]
    check(ingress == [(8443, 8443, ["192.0.2.0/24"])], f"controller ingress {ingress}")

    # --- The controller instance.
    inst = ec2.describe_instances(InstanceIds=[outputs["ControllerInstanceId"]])["Reservations"][0]["Instances"][0]
    check(inst["SubnetId"] == subnets[0], "controller not in its subnet")
    check(
        inst.get("IamInstanceProfile", {}).get("Arn", "").endswith(physical["ControllerInstanceProfile"]),
        f"controller instance profile {inst.get('IamInstanceProfile')}",
    )
    check(outputs["WebhookUrl"] == f"http://{inst['PrivateIpAddress']}:8443/webhook", f"webhook url {outputs['WebhookUrl']}")

    print(json.dumps({
        "stack_status": status,
        "resources": len(physical),
        "skipped_by_moto": skipped,
        "controller_actions": len(actions),
        "outputs": sorted(outputs),
    }))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: moto_deploy.py ENDPOINT_URL TEMPLATE_PATH")
    try:
        main(sys.argv[1], sys.argv[2])
    except CheckFailed as e:
        print(f"deploy check failed: {e}", file=sys.stderr)
        sys.exit(1)
