"""`modelfn batch NAME --on aws`: start the function's Step Functions Distributed Map (made by the
CDK app from `[batch]`) on an S3 prefix; the map lists the prefix and the function's Lambda
scores each batch of objects. Prints the execution ARN; the console, or
`aws stepfunctions describe-execution`, follows it."""

from __future__ import annotations

import json
import uuid
from typing import Any

from modelfn.errors import BadRequest
from modelfn.spec import FunctionSpec, bucket_uri

OUTPUT = "BatchStateMachineArn"
"""The stack output naming the state machine (`cdk/modelfn_cdk/bulk.py`)."""


def execution_input(input_uri: str, output_uri: str) -> dict[str, str]:
    """What the state machine takes: the bucket and prefix its S3 reader lists, and the output."""
    scheme, bucket, prefix = bucket_uri(input_uri)
    if scheme != "s3" or not output_uri.startswith("s3://"):
        raise BadRequest("--on aws scores an s3:// prefix into an s3:// prefix")
    if not bucket:
        raise BadRequest(f"{input_uri}: name a bucket, e.g. s3://bucket/prefix/")
    output = output_uri if output_uri.endswith("/") else output_uri + "/"
    return {"bucket": bucket, "prefix": prefix, "output": output}


def _within_grants(spec: FunctionSpec, given: dict[str, str], input_uri: str) -> None:
    """The deployed map may list only below [batch].input and write only below [batch].output."""
    if spec.batch is None or not spec.batch.input.startswith("s3://"):
        return
    places = execution_input(spec.batch.input, spec.batch.output)
    source = f"s3://{given['bucket']}/{given['prefix']}"
    if not source.startswith(f"s3://{places['bucket']}/{places['prefix']}"):
        raise BadRequest(f"--input {input_uri}: the deployed map reads only below [batch].input {spec.batch.input}")
    if not given["output"].startswith(places["output"]):
        raise BadRequest(f"--output: the deployed map writes only below [batch].output {spec.batch.output}")


def state_machine_arn(spec: FunctionSpec, stack: str | None, cloudformation: Any) -> str:
    """The ARN the function's stack exports as `BatchStateMachineArn`."""
    name = stack or f"Modelfn-{spec.name}"
    try:
        [found] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except cloudformation.exceptions.ClientError as exc:
        raise BadRequest(f"stack {name}: {exc}; deploy it (cdk deploy), or pass --stack or --state-machine") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}
    if OUTPUT not in outputs:
        raise BadRequest(f"stack {name} has no {OUTPUT} output: give {spec.name} a [batch] table and deploy it again")
    return str(outputs[OUTPUT])


def start(spec: FunctionSpec, input_uri: str, output_uri: str, arn: str | None, stack: str | None) -> str:
    """Start one execution; returns its ARN."""
    import boto3

    given = execution_input(input_uri, output_uri)
    _within_grants(spec, given, input_uri)
    arn = arn or state_machine_arn(spec, stack, boto3.client("cloudformation"))
    # a readable, unique name: the function, then enough randomness for two starts in one second
    name = f"{spec.name}-{uuid.uuid4().hex[:12]}"
    started = boto3.client("stepfunctions").start_execution(stateMachineArn=arn, name=name, input=json.dumps(given))
    return str(started["executionArn"])
