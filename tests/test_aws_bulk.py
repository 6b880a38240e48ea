"""Bulk predictions on AWS against moto's server on loopback: the Lambda handler given a
Distributed Map batch (items as the map's S3 reader lists them, the prefix and the output in
BatchInput) scores real objects with the `modelfn batch` code, and `modelfn batch --on aws`
starts a real execution of a state machine found through a stack's output."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from support.aws import boto, unique
from test_batch_stores import expected, jsonl

from modelfn import cli

pytestmark = pytest.mark.slow


def map_items(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The items a Distributed Map's S3 ListObjectsV2 reader hands on, from the real listing."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    return [
        {
            "Etag": o["ETag"],
            "Key": o["Key"],
            "LastModified": int(o["LastModified"].timestamp()),
            "Size": o["Size"],
            "StorageClass": o.get("StorageClass", "STANDARD"),
        }
        for o in listed
    ]


def batch_event(items: list[dict[str, Any]], bucket: str, output: str) -> dict[str, Any]:
    return {"Items": items, "BatchInput": {"bucket": bucket, "prefix": "daily/", "output": output}}


def test_a_map_batch_is_scored_into_the_output_layout_and_resumes(
    aws: Any, endpoint: str, cancer_rows: np.ndarray
) -> None:
    from handlers.aws_lambda import kind_of

    s3 = boto("s3", endpoint)
    bucket, results = unique("bulk-in"), unique("bulk-out")
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=results)
    s3.put_object(Bucket=bucket, Key="daily/a.jsonl", Body=jsonl(cancer_rows[:40]))
    s3.put_object(Bucket=bucket, Key="daily/eu/b.jsonl", Body=jsonl(cancer_rows[40:45], bad=True))
    s3.put_object(Bucket=bucket, Key="daily/one.json", Body=json.dumps({"X": cancer_rows[45].tolist()}).encode())
    s3.put_object(Bucket=bucket, Key="daily/notes.md", Body=b"not an input")
    event = batch_event(map_items(s3, bucket, "daily/"), bucket, f"s3://{results}/scores/")
    assert kind_of(event).__name__ == "DistributedMapBatch"

    summary = aws.handler(event, None)

    items = {item["key"]: item for item in summary["items"]}
    assert items["daily/a.jsonl"] == {
        "key": "daily/a.jsonl",
        "output": f"s3://{results}/scores/a.jsonl",
        "rows": 40,
        "failed_rows": 0,
    }
    assert items["daily/eu/b.jsonl"]["rows"] == 6 and items["daily/eu/b.jsonl"]["failed_rows"] == 1
    assert items["daily/one.json"]["output"] == f"s3://{results}/scores/one.json.json"
    assert summary["ignored"] == ["daily/notes.md"] and summary["failed"] == [] and summary["skipped"] == []
    assert (summary["rows"], summary["failed_rows"]) == (47, 1)
    written = s3.get_object(Bucket=results, Key="scores/a.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(line)["prediction"]["label"] for line in written] == expected(cancer_rows[:40])
    lines = s3.get_object(Bucket=results, Key="scores/eu/b.jsonl")["Body"].read().decode().splitlines()
    assert "error" in json.loads(lines[-1]) and len(lines) == 6  # the bad row keeps its place, with its error

    # a redriven batch skips what is done
    again = aws.handler(event, None)
    assert again["items"] == [] and sorted(again["skipped"]) == ["daily/a.jsonl", "daily/eu/b.jsonl", "daily/one.json"]


def test_an_unreadable_object_fails_the_batch_after_the_others_are_written(
    aws: Any, endpoint: str, cancer_rows: np.ndarray
) -> None:
    from handlers.aws.bulk import BatchItemsFailed

    s3 = boto("s3", endpoint)
    bucket = unique("bulk-in")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="daily/good.jsonl", Body=jsonl(cancer_rows[:3]))
    s3.put_object(Bucket=bucket, Key="daily/broken.parquet", Body=b"PAR1 cut short")
    items = map_items(s3, bucket, "daily/")
    items.append({"Key": "daily/gone.jsonl", "Size": 10, "Etag": '"0"', "LastModified": 0})  # deleted since listing
    with pytest.raises(BatchItemsFailed) as raised:
        aws.handler(batch_event(items, bucket, f"s3://{bucket}/scores/"), None)
    message = str(raised.value)
    assert message.startswith("2 of 3 object(s) failed: ")
    assert f"s3://{bucket}/daily/broken.parquet" in message and f"s3://{bucket}/daily/gone.jsonl" in message
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="scores/")["Contents"]
    assert [o["Key"] for o in listed] == ["scores/good.jsonl"]  # the readable one was written; no partial outputs


def test_batch_input_without_the_prefix_is_not_taken_for_a_map_batch() -> None:
    from handlers.aws_lambda import kind_of

    assert kind_of({"Items": [{"Key": "a"}], "BatchInput": {"bucket": "b"}}).__name__ == "DirectInvoke"
    assert kind_of({"Items": [1, 2]}).__name__ == "DirectInvoke"


STATE_MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


def test_on_aws_starts_the_state_machine_the_stack_names(
    aws: Any, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sfn, cloudformation = boto("stepfunctions", endpoint), boto("cloudformation", endpoint)
    arn = sfn.create_state_machine(
        name=unique("bulk"),
        definition=json.dumps(STATE_MACHINE),
        roleArn="arn:aws:iam::123456789012:role/bulk",
    )["stateMachineArn"]
    stack = unique("Modelfn-breast-cancer")
    template = {
        "Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"BatchStateMachineArn": {"Value": arn}},
    }
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(template))

    args = ["batch", "breast-cancer", "--on", "aws", "--input", "s3://acme-in/daily", "--output", "s3://acme-out/s"]
    assert cli.main([*args, "--stack", stack]) == 0
    execution = capsys.readouterr().out.strip()
    assert execution.startswith(arn.replace(":stateMachine:", ":execution:") + ":breast-cancer-")
    started = sfn.describe_execution(executionArn=execution)
    assert json.loads(started["input"]) == {"bucket": "acme-in", "prefix": "daily/", "output": "s3://acme-out/s/"}

    assert cli.main([*args, "--state-machine", arn]) == 0
    assert len(sfn.list_executions(stateMachineArn=arn)["executions"]) == 2


def test_on_aws_says_what_is_missing(aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["batch", "breast-cancer", "--on", "aws", "--input", "s3://acme-in/d/", "--output", "s3://acme-out/s/"]
    assert cli.main([*args, "--stack", unique("Modelfn-none")]) == 2
    assert "deploy it (cdk deploy), or pass --stack or --state-machine" in capsys.readouterr().err
    assert cli.main(["batch", "breast-cancer", "--on", "aws", "--input", "gs://a/b/", "--output", "s3://c/"]) == 2
    assert "s3:// prefix into an s3:// prefix" in capsys.readouterr().err
    assert cli.main(["batch", "breast-cancer", "--on", "aws"]) == 2
    assert "[batch] table" in capsys.readouterr().err
