"""The `[batch]` table on AWS: a Step Functions Distributed Map over the function's live alias,
synthesised in-process with the app's own context, its definition read back as Step Functions
reads it, every IAM grant checked against the one bucket and prefix it is for, the templates
passed through cdk-nag (AwsSolutions) and cfn-lint, and the map's own reader and batcher
parameters replayed against moto's S3 into the Lambda handler."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aws_cdk", reason="the CDK app needs aws-cdk-lib (pip install 'modelfn[cdk]')")
pytest.importorskip("cdk_nag", reason="the CDK app's checks need cdk-nag (pip install 'modelfn[cdk]')")

from test_cdk_stacks import CANCER_MODEL, Synthesis, build_layers, render, role_statements, synthesise

pytestmark = pytest.mark.slow

FUNCTIONS = {
    "nightly": """
name = "nightly"
[model]
source = "model.onnx"
[triggers]
http = false
[batch]
input = "s3://acme-inputs/daily/"
output = "s3://acme-results/scores/"
items_per_batch = 25
tolerated_failure_percentage = 5
max_concurrency = 40
schedule = "30 2 * * 1-5"
timezone = "Europe/Berlin"
""",
    "ongcp": """
name = "ongcp"
[model]
source = "model.onnx"
[batch]
input = "gs://acme-inputs/daily/"
output = "gs://acme-results/scores/"
""",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesis:
    build_layers()
    root = tmp_path_factory.mktemp("cdk-bulk")
    for name, toml in FUNCTIONS.items():
        folder = root / "functions" / name
        folder.mkdir(parents=True)
        (folder / "function.toml").write_text(toml.lstrip())
        shutil.copyfile(CANCER_MODEL, folder / "model.onnx")
    return synthesise(root, root / "functions")


def definition(synth: Synthesis, name: str) -> dict[str, Any]:
    machine = synth.one(name, "AWS::StepFunctions::StateMachine")
    return dict(json.loads(render(machine["DefinitionString"])))


def text(value: Any) -> str:
    """`render`, with the state machine's name (the sixth part of its ARN) as `<Id.Name>`."""
    if isinstance(value, dict) and "Fn::Select" in value:
        return f"<{value['Fn::Select'][1]['Fn::Split'][1]['Ref']}.Name>"
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(text(part) for part in parts)
    return render(value)


def grants(synth: Synthesis, name: str, role_id: str) -> list[tuple[str, str, Any]]:
    """(action, resource, condition) for every statement of the policies attached to `role_id`."""
    return [
        (action, text(resource), condition) for action, resource, condition in role_statements(synth, name, role_id)
    ]


def test_the_map_lists_the_prefix_batches_objects_to_the_live_alias_and_writes_its_results(
    synth: Synthesis,
) -> None:
    states = definition(synth, "nightly")["States"]
    [(_, state)] = states.items()
    assert state["Type"] == "Map"
    assert state["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:listObjectsV2",
        "Parameters": {"Bucket": "acme-inputs", "Prefix.$": "$.prefix"},
    }
    assert state["ItemBatcher"] == {
        "MaxItemsPerBatch": 25,
        "BatchInput": {"bucket": "acme-inputs", "prefix.$": "$.prefix", "output.$": "$.output"},
    }
    assert state["ToleratedFailurePercentage"] == 5 and state["MaxConcurrency"] == 40
    assert state["ResultWriter"] == {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "acme-results", "Prefix": "batch-runs/"},
    }
    processor = state["ItemProcessor"]
    assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    [task] = processor["States"].values()
    alias_id = next(iter(synth.resources("nightly", "AWS::Lambda::Alias")))
    assert task["Resource"] == f"<{alias_id}>"  # the live alias itself: the response is the handler's summary
    retried = [error for rule in task["Retry"] for error in rule["ErrorEquals"]]
    assert "BatchItemsFailed" in retried and "Lambda.ServiceException" in retried
    assert "BatchStateMachineArn" in synth.templates["nightly"]["Outputs"]
    machine = synth.one("nightly", "AWS::StepFunctions::StateMachine")
    assert machine["LoggingConfiguration"]["Level"] == "ALL" and machine["TracingConfiguration"] == {"Enabled": True}


def test_the_state_machine_lists_only_the_input_prefix_and_invokes_only_the_alias(synth: Synthesis) -> None:
    machine = synth.one("nightly", "AWS::StepFunctions::StateMachine")
    role_id = machine["RoleArn"]["Fn::GetAtt"][0]
    alias_id = next(iter(synth.resources("nightly", "AWS::Lambda::Alias")))
    found = grants(synth, "nightly", role_id)
    s3 = sorted((a, r, c) for a, r, c in found if a.startswith("s3:"))
    assert s3 == [
        ("s3:AbortMultipartUpload", "arn:aws:s3:::acme-results/batch-runs/*", None),
        ("s3:GetObject", "arn:aws:s3:::acme-results/batch-runs/*", None),
        ("s3:ListBucket", "arn:aws:s3:::acme-inputs", {"StringLike": {"s3:prefix": ["daily/*"]}}),
        ("s3:ListMultipartUploadParts", "arn:aws:s3:::acme-results/batch-runs/*", None),
        ("s3:PutObject", "arn:aws:s3:::acme-results/batch-runs/*", None),
    ]
    assert [(a, r) for a, r, _ in found if a.startswith("lambda:")] == [("lambda:InvokeFunction", f"<{alias_id}>")]
    machine_id = next(iter(synth.resources("nightly", "AWS::StepFunctions::StateMachine")))
    executions = f"arn:aws:states:<AWS::Region>:<AWS::AccountId>:execution:<{machine_id}.Name>"
    assert sorted((a, r) for a, r, _ in found if a.startswith("states:")) == [
        ("states:DescribeExecution", executions + ":*"),
        ("states:RedriveExecution", executions + "/*:*"),
        ("states:StartExecution", f"<{machine_id}>"),
        ("states:StopExecution", executions + ":*"),
    ]
    others = {a.split(":")[0] for a, _, _ in found} - {"s3", "lambda", "states"}
    assert others <= {"logs", "xray"}


def test_the_function_reads_the_input_prefix_and_writes_and_lists_the_output_prefix(synth: Synthesis) -> None:
    _, function = synth.function("nightly")
    found = grants(synth, "nightly", function["Role"]["Fn::GetAtt"][0])
    s3 = sorted((a, r, c) for a, r, c in found if a.startswith("s3:"))
    assert s3 == [
        ("s3:GetObject", "arn:aws:s3:::acme-inputs/daily/*", None),
        ("s3:ListBucket", "arn:aws:s3:::acme-results", {"StringLike": {"s3:prefix": ["scores/*"]}}),
        ("s3:PutObject", "arn:aws:s3:::acme-results/scores/*", None),
    ]


def test_the_schedule_starts_the_map_on_the_configured_prefix_in_its_time_zone(synth: Synthesis) -> None:
    schedule = synth.one("nightly", "AWS::Scheduler::Schedule")
    assert schedule["ScheduleExpression"] == "cron(30 2 ? * 2-6 *)"
    assert schedule["ScheduleExpressionTimezone"] == "Europe/Berlin"
    machine_id = next(iter(synth.resources("nightly", "AWS::StepFunctions::StateMachine")))
    assert schedule["Target"]["Arn"] == {"Ref": machine_id}
    assert json.loads(schedule["Target"]["Input"]) == {"prefix": "daily/", "output": "s3://acme-results/scores/"}


def test_a_batch_table_on_cloud_storage_makes_no_state_machine(synth: Synthesis) -> None:
    assert synth.resources("ongcp", "AWS::StepFunctions::StateMachine") == {}
    assert "BatchStateMachineArn" not in synth.templates["ongcp"].get("Outputs", {})


def test_cdk_nag_and_cfn_lint_pass(synth: Synthesis) -> None:
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    plugins = {p["pluginName"]: p for p in report["pluginReports"]}
    assert plugins["AwsSolutions"]["conclusion"] == "success"
    assert all(plugin["violations"] == [] for plugin in plugins.values())
    # every acknowledgement the state machine makes matches a finding, with its reason
    suppressed = {v["acknowledgedId"]: v["reason"] for p in plugins.values() for v in p.get("suppressedViolations", [])}
    batch = {rule for rule in suppressed if "states:" in rule or "batch-runs" in rule or rule.endswith("[Resource::*]")}
    assert len(batch) == 4 and all(len(suppressed[rule]) > 30 for rule in batch)
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    templates = sorted(str(p) for p in synth.outdir.glob("*.template.json"))
    result = subprocess.run([cfn_lint, "--ignore-checks", "W3005", "--", *templates], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def run_map(state: dict[str, Any], execution_input: dict[str, Any], s3: Any, handler: Any) -> list[Any]:
    """What the Distributed Map does with the synthesised state, step by step: list with its
    ItemReader's parameters, cut the listing into ItemBatcher batches with its BatchInput
    (paths resolved against the execution input), and invoke the handler on each batch."""

    def resolved(parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            key.removesuffix(".$"): execution_input[value.removeprefix("$.")] if key.endswith(".$") else value
            for key, value in parameters.items()
        }

    listing = resolved(state["ItemReader"]["Parameters"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=listing["Bucket"], Prefix=listing["Prefix"])
    items = [
        {"Etag": o["ETag"], "Key": o["Key"], "LastModified": int(o["LastModified"].timestamp()), "Size": o["Size"]}
        for page in pages
        for o in page.get("Contents", [])
    ]
    size = state["ItemBatcher"]["MaxItemsPerBatch"]
    batch_input = resolved(state["ItemBatcher"]["BatchInput"])
    return [
        handler({"Items": items[i : i + size], "BatchInput": batch_input}, None) for i in range(0, len(items), size)
    ]


def test_the_synthesised_map_fed_to_the_handler_scores_the_prefix_on_s3(
    synth: Synthesis, aws: Any, endpoint: str, cancer_rows: Any
) -> None:
    from support.aws import boto

    [state] = definition(synth, "nightly")["States"].values()
    s3 = boto("s3", endpoint)
    for bucket in ("acme-inputs", "acme-results"):
        s3.create_bucket(Bucket=bucket)
    for i in range(60):
        body = json.dumps({"X": cancer_rows[i].tolist()}).encode()
        s3.put_object(Bucket="acme-inputs", Key=f"daily/2026-11-30/{i:02d}.json", Body=body)
    s3.put_object(Bucket="acme-inputs", Key="daily/2026-11-29/old.json", Body=b"{}")
    execution_input = {"prefix": "daily/2026-11-30/", "output": "s3://acme-results/scores/2026-11-30/"}

    summaries = run_map(state, execution_input, s3, aws.handler)

    assert len(summaries) == 3  # 60 objects, 25 per batch
    assert sum(len(s["items"]) for s in summaries) == 60 and all(s["failed"] == [] for s in summaries)
    listed = s3.list_objects_v2(Bucket="acme-results", Prefix="scores/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"scores/2026-11-30/{i:02d}.json.json" for i in range(60)]
