"""The CDK app, synthesised in-process once for a set of test-only functions that exercise every
spec option (provisioned concurrency, SnapStart, each trigger, an s3:// model, a container
package, a GPU function), then asserted resource by resource, linted by cfn-lint and checked
by cdk-nag's AwsSolutions pack. Nothing here needs Docker or an AWS account."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
pytest.importorskip("aws_cdk", reason="the CDK app needs aws-cdk-lib (pip install 'modelfn[cdk]')")
pytest.importorskip("cdk_nag", reason="the CDK app's checks need cdk-nag (pip install 'modelfn[cdk]')")

from aws_cdk import App
from aws_cdk.assertions import Match, Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cdk"))

from modelfn_cdk.assets import dependency_layer, runtime_layer  # noqa: E402
from modelfn_cdk.build import build  # noqa: E402
from modelfn_cdk.settings import DeployRefused, Settings  # noqa: E402
from modelfn_cdk.stack import HANDLER  # noqa: E402

from modelfn.deploy.dependencies import requirements  # noqa: E402
from modelfn.deploy.layer import find_interpreter  # noqa: E402
from modelfn.deploy.plan import place  # noqa: E402
from modelfn.spec import FunctionSpec, load_spec  # noqa: E402

CANCER_MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
DIGITS_MODEL = ROOT / "functions" / "digits" / "model.onnx"
CDK_CONTEXT = json.loads((ROOT / "cdk" / "cdk.json").read_text())["context"]
SCHEDULES = {"warm": [{"name": "WorkdayMornings", "cron": "cron(0 8 ? * MON-FRI *)", "min": 4, "max": 10}]}

# Test-only functions, one per group of options; `model` names the file copied beside the spec.
OPTION_FUNCTIONS: dict[str, tuple[Path | None, str]] = {
    "warm": (
        CANCER_MODEL,
        """
name = "warm"
description = "provisioned concurrency with autoscaling and a canary rollout"
[model]
source = "model.onnx"
[deploy]
memory_mb = 1536
timeout_s = 20
ephemeral_storage_mb = 1024
provisioned_concurrency = 2
provisioned_concurrency_max = 6
rollout = "canary"
[triggers]
http = { api = true, function_url = true }
""",
    ),
    "snap": (
        CANCER_MODEL,
        """
name = "snap"
[model]
source = "model.onnx"
[deploy]
snapstart = true
rollout = "linear"
timeout_s = 60
[triggers]
http = { api = true, function_url = true, auth = "none" }
s3 = { prefix = "in/", output_prefix = "out/" }
sns = { topic = "snap-requests" }
""",
    ),
    "events": (
        None,
        """
name = "events"
[model]
source = "s3://acme-models/cancer/v3/model.onnx"
[model.versions.4]
source = "s3://acme-models/cancer/v4/model.onnx"
[traffic]
shadow = "4"
[triggers]
http = false
sqs = { batch_size = 20, output_s3 = "s3://acme-results/from-sqs/" }
sns = { output_topic = "arn:aws:sns:us-east-1:123456789012:scores" }
eventbridge = { source = ["acme.orders"], detail_type = ["Order placed"] }
[triggers.s3]
bucket = "acme-inputs"
prefix = "incoming/"
suffix = ".json"
output_prefix = "predictions/"
output_bucket = "acme-results"
""",
    ),
    "boxed": (
        DIGITS_MODEL,
        """
name = "boxed"
[model]
source = "model.onnx"
[io]
codec = "image"
[io.image]
width = 8
height = 8
mode = "L"
layout = "flat"
[deploy]
package = "container"
architecture = "arm64"
python = "3.13"
memory_mb = 3008
""",
    ),
    "gpu": (
        CANCER_MODEL,
        """
name = "gpu"
[model]
source = "model.onnx"
[runtime]
accelerator = "gpu"
""",
    ),
}


def write_functions(root: Path) -> Path:
    for name, (model, toml) in OPTION_FUNCTIONS.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "function.toml").write_text(toml.lstrip())
        if model is not None:
            shutil.copyfile(model, folder / "model.onnx")
    (root / "snap" / "profile.json").write_text(json.dumps({"format": "modelfn.profile/1", "function": "snap"}))
    return root


def build_layers(*specs: FunctionSpec) -> None:
    """The layers under build/layers that `specs` need (breast-cancer's when none are given),
    each built once: pip downloads the wheels the first time; skips the test where it cannot."""
    try:
        runtime_layer("3.12", "x86_64", ROOT / "build" / "layers", None)
        for spec in specs or (load_spec(ROOT / "functions" / "breast-cancer"),):
            dependency_layer(requirements(spec, "aws"), "3.12", "x86_64", ROOT / "build" / "layers")
    except (RuntimeError, DeployRefused) as exc:
        pytest.skip(f"the Lambda layers could not be built here (PyPI unreachable?): {exc}")


@pytest.fixture(scope="module")
def layers() -> None:
    build_layers()


@dataclass
class Synthesis:
    outdir: Path
    staging: Path
    skipped: dict[str, str]
    templates: dict[str, dict[str, Any]]

    def template(self, name: str) -> Template:
        return Template.from_json(self.templates[name])

    def resources(self, name: str, kind: str) -> dict[str, dict[str, Any]]:
        found = self.templates[name]["Resources"].items()
        return {key: value.get("Properties", {}) for key, value in found if value["Type"] == kind}

    def one(self, name: str, kind: str) -> dict[str, Any]:
        found = self.resources(name, kind)
        assert len(found) == 1, f"{name}: expected one {kind}, found {sorted(found)}"
        return next(iter(found.values()))

    def alias(self, name: str, alias: str = "live") -> str:
        """The logical id of the function's `live` alias (or its shadow's `shadow` alias)."""
        return next(key for key, props in self.resources(name, "AWS::Lambda::Alias").items() if props["Name"] == alias)

    def async_config(self, name: str, alias_id: str) -> dict[str, Any]:
        """The asynchronous invoke settings of the alias `alias_id` (its qualifier is split out of its ARN)."""
        configs = self.resources(name, "AWS::Lambda::EventInvokeConfig").values()
        [config] = [c for c in configs if {"Ref": alias_id} in c["Qualifier"]["Fn::Select"][1]["Fn::Split"]]
        return config

    def function(self, name: str) -> tuple[str, dict[str, Any]]:
        """The model function (not CDK's helper functions): the one serving MODELFN_FUNCTION."""
        for key, props in self.resources(name, "AWS::Lambda::Function").items():
            variables = props.get("Environment", {}).get("Variables", {})
            if variables.get("MODELFN_FUNCTION") == name and variables.get("MODELFN_ROLE") != "shadow":
                return key, props
        raise AssertionError(f"{name}: no Lambda function serves it")


def synthesise(root: Path, functions: Path, extra: dict[str, Any] | None = None) -> Synthesis:
    """The app for every function under `functions`, synthesised in-process into `root`
    (`cdk.out` and the staging folder), with cdk.json's context and `extra` on top."""
    context = {
        **CDK_CONTEXT,
        "modelfn:functionsDir": str(functions),
        "modelfn:stagingDir": str(root / "staging"),
        **(extra or {}),
    }
    app = App(context=context, outdir=str(root / "cdk.out"))
    built = build(app, Settings.from_context(app.node))
    app.synth()  # raises if cdk-nag or CDK's own validation reports a finding not acknowledged
    templates = {
        name: json.loads((root / "cdk.out" / f"{stack.stack_name}.template.json").read_text())
        for name, stack in built.stacks.items()
    }
    return Synthesis(root / "cdk.out", root / "staging", built.skipped, templates)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory, layers: None) -> Synthesis:
    root = tmp_path_factory.mktemp("cdk-options")
    return synthesise(root, write_functions(root / "functions"), {"modelfn:schedules": SCHEDULES})


def render(value: Any) -> str:
    """An ARN from the template as text: partition literal, `<Id.Attr>` for references."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(render(part) for part in parts)
    if value.get("Ref") == "AWS::Partition":
        return "aws"
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    raise AssertionError(f"unexpected intrinsic {value}")


def role_statements(synth: Synthesis, name: str, role: str) -> Iterator[tuple[str, Any, Any]]:
    """(action, resource, condition) for every Allow statement of the policies attached to `role`."""
    for policy in synth.resources(name, "AWS::IAM::Policy").values():
        if {"Ref": role} not in policy["Roles"]:
            continue
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                for resource in resources:
                    yield action, resource, statement.get("Condition")


def role_grants(synth: Synthesis, name: str, role: str | None = None) -> dict[str, set[str]]:
    """Action -> resources granted to the model function's role (or the role `role` names), across its policies."""
    if role is None:
        role = synth.function(name)[1]["Role"]["Fn::GetAtt"][0]
    grants: dict[str, set[str]] = {}
    for action, resource, _ in role_statements(synth, name, role):
        grants.setdefault(action, set()).add(render(resource))
    return grants


def test_every_cpu_function_becomes_a_stack_and_the_gpu_one_is_skipped_with_the_cloud_run_route(
    synth: Synthesis,
) -> None:
    assert sorted(synth.templates) == ["boxed", "events", "snap", "warm"]
    assert list(synth.skipped) == ["gpu"]
    assert "Lambda has no GPUs" in synth.skipped["gpu"]
    assert "Cloud Run GPU" in synth.skipped["gpu"]


def test_zip_function_follows_the_spec(synth: Synthesis) -> None:
    synth.template("warm").has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": HANDLER,
            "Runtime": "python3.12",
            "Architectures": ["x86_64"],
            "MemorySize": 1536,
            "Timeout": 20,
            "EphemeralStorage": {"Size": 1024},
            "Environment": {
                "Variables": {
                    "MODELFN_FUNCTION": "warm",
                    "MODELFN_FUNCTIONS_DIR": "/var/task/functions",
                    "MODELFN_CACHE_DIR": "/tmp/modelfn",
                    "HOME": "/tmp",
                }
            },
            "Layers": [{"Ref": Match.string_like_regexp("^Layer0")}, {"Ref": Match.string_like_regexp("^Layer1")}],
            "LoggingConfig": {"LogGroup": {"Ref": Match.string_like_regexp("^Logs")}},
        },
    )
    layers = synth.resources("warm", "AWS::Lambda::LayerVersion").values()
    assert sorted(layer["Description"] for layer in layers) == [
        "ONNX Runtime + NumPy for Python 3.12 (x86_64)",
        "aws-lambda-powertools, orjson for Python 3.12 (x86_64)",
    ]
    assert all(layer["CompatibleRuntimes"] == ["python3.12"] for layer in layers)
    assert all(layer["CompatibleArchitectures"] == ["x86_64"] for layer in layers)
    log_groups = synth.resources("warm", "AWS::Logs::LogGroup")
    assert {key[:4] for key in log_groups} == {"Logs", "ApiA"}  # the function's and the API's access logs
    assert {group["RetentionInDays"] for group in log_groups.values()} == {30}


def test_zip_asset_holds_the_code_and_the_function_folder_only(synth: Synthesis) -> None:
    code = synth.staging / "warm" / "code"
    assert (code / "modelfn" / "spec.py").is_file()
    assert (code / "handlers" / "__init__.py").is_file()
    assert (code / "functions" / "warm" / "function.toml").is_file()
    assert (code / "functions" / "warm" / "model.onnx").read_bytes() == CANCER_MODEL.read_bytes()
    compiled = json.loads((code / "functions" / "warm" / "function.toml.json").read_text())  # read at cold start
    assert compiled["toml"] == (code / "functions" / "warm" / "function.toml").read_text()
    assert compiled["table"]["name"] == "warm" and load_spec(code / "functions" / "warm").name == "warm"
    assert sorted(p.name for p in code.iterdir()) == ["functions", "handlers", "modelfn"]
    assert not list(code.rglob(f"*.cpython-{sys.version_info.major}{sys.version_info.minor}.pyc"))
    assert not list((code / "functions").rglob("__pycache__"))
    if find_interpreter("3.12") is not None:  # bytecode for the Lambda runtime, made by a 3.12 interpreter
        assert (code / "modelfn" / "__pycache__" / "spec.cpython-312.pyc").is_file()


def test_provisioned_concurrency_on_the_live_alias_scales_on_utilisation(synth: Synthesis) -> None:
    template = synth.template("warm")
    template.has_resource_properties(
        "AWS::Lambda::Alias", {"Name": "live", "ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 2}}
    )
    template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "MinCapacity": 2,
            "MaxCapacity": 6,
            "ScalableDimension": "lambda:function:ProvisionedConcurrency",
            "ServiceNamespace": "lambda",
        },
    )
    template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"},
                "TargetValue": 0.7,
            },
        },
    )
    assert "SnapStart" not in synth.function("warm")[1]


def test_scheduled_provisioned_concurrency_comes_from_context(synth: Synthesis) -> None:
    target = synth.one("warm", "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ScheduledActions"] == [
        {
            "ScheduledActionName": "WorkdayMornings",
            "Schedule": "cron(0 8 ? * MON-FRI *)",
            "ScalableTargetAction": {"MinCapacity": 4, "MaxCapacity": 10},
        }
    ]


def test_snapstart_on_published_versions_without_provisioned_concurrency(synth: Synthesis) -> None:
    _, function = synth.function("snap")
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    alias = synth.one("snap", "AWS::Lambda::Alias")
    assert alias["Name"] == "live"
    assert "ProvisionedConcurrencyConfig" not in alias
    assert alias["FunctionVersion"]["Fn::GetAtt"][1] == "Version"  # a published version, which SnapStart needs
    assert synth.resources("snap", "AWS::ApplicationAutoScaling::ScalableTarget") == {}


def test_http_api_routes_reach_the_live_alias_with_iam_auth(synth: Synthesis) -> None:
    routes = synth.resources("warm", "AWS::ApiGatewayV2::Route")
    assert {r["RouteKey"] for r in routes.values()} == {
        "POST /functions/warm",
        "POST /v2/models/warm/infer",
        "POST /v2/models/warm/versions/{version}/infer",
        "GET /v2/models/warm",
        "GET /v2/models/warm/versions/{version}",
        "GET /v2/models/warm/ready",
        "GET /v2/models/warm/versions/{version}/ready",
        "GET /v2/health/live",
        "GET /v2/health/ready",
    }
    assert {r["AuthorizationType"] for r in routes.values()} == {"AWS_IAM"}
    integration = synth.one("warm", "AWS::ApiGatewayV2::Integration")
    assert integration["IntegrationUri"] == {"Ref": synth.resources("warm", "AWS::Lambda::Alias").popitem()[0]}
    stage = synth.one("warm", "AWS::ApiGatewayV2::Stage")
    assert stage["StageName"] == "$default"
    assert "$context.requestId" in stage["AccessLogSettings"]["Format"]
    assert set(synth.templates["warm"]["Outputs"]) >= {"ApiUrl", "FunctionUrl", "AliasArn", "FunctionName"}


def test_function_url_is_iam_by_default_and_open_when_auth_is_none(synth: Synthesis) -> None:
    assert synth.one("warm", "AWS::Lambda::Url")["AuthType"] == "AWS_IAM"
    assert synth.one("warm", "AWS::Lambda::Url")["Qualifier"] == "live"
    assert synth.one("snap", "AWS::Lambda::Url")["AuthType"] == "NONE"
    routes = synth.resources("snap", "AWS::ApiGatewayV2::Route").values()
    assert {r.get("AuthorizationType", "NONE") for r in routes} == {"NONE"}
    assert synth.resources("events", "AWS::Lambda::Url") == {}
    assert synth.resources("events", "AWS::ApiGatewayV2::Api") == {}


def test_s3_notification_on_a_named_bucket_filters_prefix_and_suffix(synth: Synthesis) -> None:
    notification = synth.one("events", "Custom::S3BucketNotifications")
    assert notification["BucketName"] == "acme-inputs"
    assert notification["Managed"] is False  # the bucket's other notifications are left alone
    [config] = notification["NotificationConfiguration"]["LambdaFunctionConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    rules = {rule["Name"]: rule["Value"] for rule in config["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "incoming/", "suffix": ".json"}
    assert not "predictions/".startswith(rules["prefix"])  # results never re-trigger the function
    assert config["LambdaFunctionArn"] == {"Ref": synth.alias("events")}


def test_s3_trigger_without_a_bucket_creates_a_private_one(synth: Synthesis) -> None:
    bucket = synth.one("snap", "AWS::S3::Bucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    policy = json.dumps(synth.one("snap", "AWS::S3::BucketPolicy"))
    assert '"aws:SecureTransport": "false"' in policy
    [config] = synth.one("snap", "Custom::S3BucketNotifications")["NotificationConfiguration"][
        "LambdaFunctionConfigurations"
    ]
    assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "in/"}]
    assert "InputBucketName" in synth.templates["snap"]["Outputs"]


def test_sqs_queue_has_a_dead_letter_queue_and_reports_partial_batch_failures(synth: Synthesis) -> None:
    queues = synth.resources("events", "AWS::SQS::Queue")
    requests = next(q for key, q in queues.items() if key.startswith("Requests"))
    dead_letters_id = next(key for key in queues if key.startswith("DeadLetters"))
    assert requests["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dead_letters_id, "Arn"]},
        "maxReceiveCount": 3,
    }
    assert requests["VisibilityTimeout"] == 6 * 30
    assert requests["SqsManagedSseEnabled"] is True
    mapping = synth.one("events", "AWS::Lambda::EventSourceMapping")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 20
    assert mapping["MaximumBatchingWindowInSeconds"] == 1
    assert mapping["FunctionName"]["Fn::Join"][1][-1] == ":live"


def test_sns_subscription_delivers_to_the_live_alias(synth: Synthesis) -> None:
    alias_id = next(iter(synth.resources("snap", "AWS::Lambda::Alias")))
    subscription = synth.one("snap", "AWS::SNS::Subscription")
    assert subscription["Protocol"] == "lambda"
    assert subscription["Endpoint"] == {"Ref": alias_id}
    topic = synth.one("snap", "AWS::SNS::Topic")
    assert topic["TopicName"] == "snap-requests"
    assert render(topic["KmsMasterKeyId"]).endswith(":alias/aws/sns")
    assert synth.one("events", "AWS::SNS::Subscription")["Protocol"] == "lambda"


def test_eventbridge_rule_matches_the_spec_and_targets_the_live_alias(synth: Synthesis) -> None:
    rule = synth.one("events", "AWS::Events::Rule")
    assert rule["EventPattern"] == {"source": ["acme.orders"], "detail-type": ["Order placed"]}
    [target] = rule["Targets"]
    assert target["Arn"] == {"Ref": synth.alias("events")}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 2}


def test_failed_asynchronous_events_are_parked_in_a_queue(synth: Synthesis) -> None:
    config = synth.async_config("events", synth.alias("events"))  # the shadow alias has its own (no retries)
    assert config["MaximumRetryAttempts"] == 2
    destination = config["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
    assert destination.startswith("FailedEvents")
    assert synth.resources("warm", "AWS::Lambda::EventInvokeConfig") == {}  # HTTP only: callers see failures


def test_role_reads_only_the_model_object_and_input_prefix_and_writes_only_output_prefixes(
    synth: Synthesis,
) -> None:
    grants = role_grants(synth, "events")
    assert grants["s3:GetObject"] == {
        "arn:aws:s3:::acme-models/cancer/v3/model.onnx",
        "arn:aws:s3:::acme-models/cancer/v4/model.onnx",  # the shadow version's model, [model.versions.4]
        "arn:aws:s3:::acme-inputs/incoming/*",
    }
    assert grants["s3:PutObject"] == {
        "arn:aws:s3:::acme-results/predictions/*",
        "arn:aws:s3:::acme-results/from-sqs/*",
    }
    assert grants["sns:Publish"] == {"arn:aws:sns:us-east-1:123456789012:scores"}
    assert {a for a in grants if a.startswith("s3:")} == {"s3:GetObject", "s3:PutObject"}
    assert all(
        "*" not in resource
        for action, resources in grants.items()
        if action.startswith("logs:")
        for resource in resources
    )


def test_a_shadow_version_gets_its_own_function_alias_and_an_async_invoke_grant(synth: Synthesis) -> None:
    _, live = synth.function("events")
    [(shadow_id, shadow)] = [
        (key, props)
        for key, props in synth.resources("events", "AWS::Lambda::Function").items()
        if props.get("Environment", {}).get("Variables", {}).get("MODELFN_ROLE") == "shadow"
    ]
    shadow_alias = synth.alias("events", "shadow")
    # the same code and layers, the same handler recognising the copies; no target of its own
    assert (shadow["Code"], shadow["Handler"], shadow["Layers"]) == (live["Code"], live["Handler"], live["Layers"])
    variables = shadow["Environment"]["Variables"]
    assert variables["MODELFN_FUNCTION"] == "events" and "MODELFN_SHADOW_TARGET" not in variables
    assert live["Environment"]["Variables"]["MODELFN_SHADOW_TARGET"] == {"Ref": shadow_alias}
    alias = synth.resources("events", "AWS::Lambda::Alias")[shadow_alias]
    assert alias["FunctionName"] == {"Ref": shadow_id}
    config = synth.async_config("events", shadow_alias)
    assert (config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"]) == (0, 300)
    # least privilege: the live role may invoke exactly the shadow alias, nothing else
    assert role_grants(synth, "events")["lambda:InvokeFunction"] == {f"<{shadow_alias}>"}
    shadow_role = shadow["Role"]["Fn::GetAtt"][0]
    assert shadow_role != live["Role"]["Fn::GetAtt"][0]
    shadow_grants = role_grants(synth, "events", shadow_role)
    assert shadow_grants["s3:GetObject"] == {
        "arn:aws:s3:::acme-models/cancer/v3/model.onnx",
        "arn:aws:s3:::acme-models/cancer/v4/model.onnx",
    }
    assert {a.split(":")[0] for a in shadow_grants} == {"s3", "logs"}  # no trigger's prefixes, no invoke
    for name in ("warm", "snap", "boxed"):  # no shadow version: nothing of the kind
        assert not any(p.get("Name") == "shadow" for p in synth.resources(name, "AWS::Lambda::Alias").values())


def test_role_on_a_created_bucket_is_scoped_to_its_prefixes(synth: Synthesis) -> None:
    grants = role_grants(synth, "snap")
    bucket = next(iter(synth.resources("snap", "AWS::S3::Bucket")))
    assert grants["s3:GetObject"] == {f"<{bucket}.Arn>/in/*"}
    assert grants["s3:PutObject"] == {f"<{bucket}.Arn>/out/*"}
    # a packaged model needs no S3 access at all
    assert {a for a in role_grants(synth, "warm") if a.startswith("s3:")} == set()


def test_alarms_on_errors_throttles_and_p99_duration_of_the_live_alias(synth: Synthesis) -> None:
    alarms = {a["MetricName"]: a for a in synth.resources("warm", "AWS::CloudWatch::Alarm").values()}
    assert set(alarms) == {"Errors", "Throttles", "Duration"}
    assert alarms["Errors"]["Statistic"] == "Sum" and alarms["Errors"]["Threshold"] == 1
    assert alarms["Throttles"]["Statistic"] == "Sum" and alarms["Throttles"]["Threshold"] == 1
    assert alarms["Duration"]["ExtendedStatistic"] == "p99"
    assert alarms["Duration"]["Threshold"] == 16_000  # 80% of the 20 s timeout
    for alarm in alarms.values():
        dimensions = {d["Name"]: render(d["Value"]) for d in alarm["Dimensions"]}
        assert dimensions["Resource"].endswith(":live")


def test_a_function_with_a_drift_profile_alarms_on_its_largest_psi(synth: Synthesis) -> None:
    drift = [a for a in synth.resources("snap", "AWS::CloudWatch::Alarm").values() if a["MetricName"] == "DriftPSIMax"]
    assert len(drift) == 1
    alarm = drift[0]
    assert alarm["Namespace"] == "modelfn" and alarm["Statistic"] == "Maximum" and alarm["Threshold"] == 0.25
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {"service": "modelfn", "function": "snap"}
    # no profile, no drift alarm; and drift never rolls a deployment back
    assert all(a["MetricName"] != "DriftPSIMax" for a in synth.resources("warm", "AWS::CloudWatch::Alarm").values())


def test_gradual_rollout_shifts_traffic_and_rolls_back_on_the_alarms(synth: Synthesis) -> None:
    group = synth.one("warm", "AWS::CodeDeploy::DeploymentGroup")
    assert group["DeploymentConfigName"] == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
    alarm_ids = set(synth.resources("warm", "AWS::CloudWatch::Alarm"))
    assert {a["Name"]["Ref"] for a in group["AlarmConfiguration"]["Alarms"]} == alarm_ids
    assert group["AutoRollbackConfiguration"] == {
        "Enabled": True,
        "Events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"],
    }
    alias = next(r for r in synth.templates["warm"]["Resources"].values() if r["Type"] == "AWS::Lambda::Alias")
    assert "CodeDeployLambdaAliasUpdate" in alias["UpdatePolicy"]
    linear = synth.one("snap", "AWS::CodeDeploy::DeploymentGroup")["DeploymentConfigName"]
    assert linear == "CodeDeployDefault.LambdaLinear10PercentEvery1Minute"
    assert synth.resources("events", "AWS::CodeDeploy::DeploymentGroup") == {}


def test_container_package_becomes_an_image_function_staged_without_docker(synth: Synthesis) -> None:
    _, function = synth.function("boxed")
    assert function["PackageType"] == "Image"
    assert function["Architectures"] == ["arm64"]
    assert "Layers" not in function and "Runtime" not in function
    context = synth.staging / "boxed" / "image"
    assert (context / "Dockerfile").read_text().count('CMD ["handlers.aws_lambda.handler"]') == 1
    assert (context / "requirements.txt").read_text().split() == [
        "aws-lambda-powertools>=3.0",
        "numpy>=1.26",
        "onnxruntime>=1.18",
        "orjson>=3.9",
        "pillow>=10",
    ]
    assert (context / "functions" / "boxed" / "model.onnx").is_file()
    assets = json.loads((synth.outdir / "Modelfn-boxed.assets.json").read_text())
    [image] = assets["dockerImages"].values()
    assert image["source"]["platform"] == "linux/arm64"
    assert image["source"]["dockerBuildArgs"] == {"PYTHON": "3.13"}


def test_cdk_nag_finds_nothing_unacknowledged_and_every_acknowledgement_has_a_reason(synth: Synthesis) -> None:
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    plugins = {p["pluginName"]: p for p in report["pluginReports"]}
    assert plugins["AwsSolutions"]["conclusion"] == "success"
    for plugin in plugins.values():
        assert plugin["violations"] == []
    acknowledged = {
        v["acknowledgedId"]: v["reason"] for p in plugins.values() for v in p.get("suppressedViolations", [])
    }
    assert all(len(reason) > 30 for reason in acknowledged.values())
    # no stale acknowledgement: each one the app records matches a finding
    recorded: set[str] = set()
    for metadata in synth.outdir.glob("*.metadata.json"):
        for entries in json.loads(metadata.read_text()).values():
            for entry in entries:
                if entry["type"] == "aws:cdk:acknowledged-rules":
                    recorded |= {rule for rule in entry["data"] if not rule.startswith("Annotation::")}
    assert recorded == set(acknowledged)


def test_cfn_lint_passes_on_every_template(synth: Synthesis) -> None:
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    templates = sorted(str(p) for p in synth.outdir.glob("*.template.json"))
    assert len(templates) == 4
    result = subprocess.run([cfn_lint, "--ignore-checks", "W3005", "--", *templates], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def refused(tmp_path: Path, toml: str, model: Path | None = CANCER_MODEL, **context: Any) -> str:
    """Build (without synthesising) one function; returns the app's refusal message."""
    folder = tmp_path / "functions" / "f"
    folder.mkdir(parents=True)
    (folder / "function.toml").write_text(toml)
    if model is not None:
        shutil.copyfile(model, folder / "model.onnx")
    app = App(context={"modelfn:functionsDir": str(folder.parent), "modelfn:nag": False, **context})
    with pytest.raises(DeployRefused) as caught:
        build(app, Settings.from_context(app.node))
    return str(caught.value)


def test_snapstart_with_provisioned_concurrency_is_refused_even_past_the_spec_loader(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copyfile(CANCER_MODEL, folder / "model.onnx")
    (folder / "function.toml").write_text('name = "f"\n[model]\nsource = "model.onnx"\n')
    spec = load_spec(folder)
    # built in code, so the loader's own check never ran
    both = dataclasses.replace(spec, deploy=dataclasses.replace(spec.deploy, snapstart=True, provisioned_concurrency=2))
    app = App(context={"modelfn:nag": False})
    with pytest.raises(DeployRefused, match="snapstart and provisioned_concurrency cannot be combined"):
        build(app, Settings.from_context(app.node), specs=[both])


def test_python_311_is_refused_with_the_glibc_reason(tmp_path: Path) -> None:
    message = refused(tmp_path, 'name = "f"\n[model]\nsource = "model.onnx"\n[deploy]\npython = "3.11"\n')
    assert message.startswith("f: ")
    assert "glibc 2.28" in message and "'3.12'" in message


def test_snapstart_on_a_container_image_is_refused(tmp_path: Path) -> None:
    toml = 'name = "f"\n[model]\nsource = "model.onnx"\n[deploy]\nsnapstart = true\npackage = "container"\n'
    assert "SnapStart does not support container images" in refused(tmp_path, toml)


def test_snapstart_with_more_than_512_mb_of_tmp_is_refused(tmp_path: Path) -> None:
    toml = 'name = "f"\n[model]\nsource = "model.onnx"\n[deploy]\nsnapstart = true\nephemeral_storage_mb = 2048\n'
    assert "SnapStart supports at most 512 MB" in refused(tmp_path, toml)


def test_missing_local_model_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, 'name = "f"\n[model]\nsource = "model.onnx"\n', model=None)
    assert "model.onnx does not exist" in message


def test_schedules_need_a_provisioned_concurrency_ceiling(tmp_path: Path) -> None:
    toml = 'name = "f"\n[model]\nsource = "model.onnx"\n[deploy]\nprovisioned_concurrency = 1\n'
    message = refused(tmp_path, toml, **{"modelfn:schedules": json.dumps({"f": SCHEDULES["warm"]})})
    assert "provisioned_concurrency_max" in message


def test_unknown_function_names_are_refused(tmp_path: Path) -> None:
    toml = 'name = "f"\n[model]\nsource = "model.onnx"\n'
    assert "['nope']" in refused(tmp_path, toml, **{"modelfn:functions": "f,nope"})


def test_plan_places_the_option_functions_as_the_app_builds_them(tmp_path: Path) -> None:
    functions = write_functions(tmp_path / "functions")
    targets = {name: place(load_spec(functions / name), "aws").target for name in OPTION_FUNCTIONS}
    assert targets == {
        "warm": "lambda-zip",
        "snap": "lambda-zip",
        "events": "lambda-zip",
        "boxed": "lambda-container",
        "gpu": "unsupported",
    }
