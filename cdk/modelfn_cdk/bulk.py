"""Bulk predictions over an S3 prefix (`[batch]` in function.toml) without a scheduler of our own:
a Step Functions Distributed Map lists the prefix (ItemReader, s3:listObjectsV2), hands the
objects in batches (ItemBatcher, with the prefix and the output in BatchInput) to the function's
live alias, tolerates the share of failed objects the spec allows, and writes its run's results
(ResultWriter) to the output bucket. `modelfn batch NAME --on aws` or an EventBridge Scheduler
schedule starts it with `{"prefix": ..., "output": ...}`.

Every grant names one bucket and one prefix: the state machine lists the input prefix, invokes
the alias and writes its results prefix; the function reads the input prefix, writes the output
prefix and lists it (to skip the objects already scored)."""

from __future__ import annotations

import json
from typing import Any, cast

import jsii
from aws_cdk import CfnElement, CfnOutput, Duration, Stack, TimeZone
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks

from modelfn import cron
from modelfn.batch.aws import OUTPUT  # the stack output `modelfn batch --on aws` reads
from modelfn.spec import BatchSpec, FunctionSpec, bucket_uri
from modelfn_cdk.access import read_prefix, s3_arn, write_prefix
from modelfn_cdk.nag import acknowledge, resource_finding

FAILED = "BatchItemsFailed"  # handlers.aws.bulk raises it when objects got no output


def s3_place(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an s3:// URI, the prefix ending in '/' unless empty."""
    _, bucket, prefix = bucket_uri(uri)
    return bucket, prefix


def bucket_arn(stack: Stack, bucket: str) -> str:
    return f"arn:{stack.partition}:s3:::{bucket}"


def list_prefix(stack: Stack, bucket: str, prefix: str) -> iam.PolicyStatement:
    """ListBucket on one bucket, only for listings that stay below `prefix`."""
    return iam.PolicyStatement(
        actions=["s3:ListBucket"],
        resources=[bucket_arn(stack, bucket)],
        conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
    )


class PrefixObjectsReader(sfn.S3ObjectsItemReader):
    """CDK's S3 objects reader, its ListBucket grant narrowed to the configured prefix (the
    prefix of a run comes from the execution input and must lie below it)."""

    def __init__(self, stack: Stack, bucket: s3.IBucket, prefix: str) -> None:
        super().__init__(bucket=bucket, prefix=sfn.JsonPath.string_at("$.prefix"))
        self._grant = list_prefix(stack, bucket.bucket_name, prefix)

    @jsii.member(jsii_name="providePolicyStatements")
    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [self._grant]


class PrefixResultWriter(sfn.ResultWriterV2):
    """CDK's result writer, its grant narrowed from the whole bucket to the results prefix."""

    def __init__(self, stack: Stack, bucket: s3.IBucket, prefix: str) -> None:
        super().__init__(bucket=bucket, prefix=prefix)
        self._grant = iam.PolicyStatement(
            actions=["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
            resources=[s3_arn(stack, bucket.bucket_name, f"{prefix}*")],
        )

    @jsii.member(jsii_name="providePolicyStatements")
    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [self._grant]


def add_bulk(stack: Stack, spec: FunctionSpec, role: iam.Role, alias: lambda_.Alias, retention: Any) -> None:
    """The Distributed Map for `[batch]` when it reads and writes S3; nothing otherwise (a
    `[batch]` table on gs:// or az:// is for `modelfn plan --provider gcp` and `modelfn batch`)."""
    batch = spec.batch
    if batch is None or not (batch.input.startswith("s3://") and batch.output.startswith("s3://")):
        return
    source_bucket, source_prefix = s3_place(batch.input)
    output_bucket, output_prefix = s3_place(batch.output)

    read_prefix(role, s3_arn(stack, source_bucket, f"{source_prefix}*"), "batch input prefix")
    write_prefix(role, s3_arn(stack, output_bucket, f"{output_prefix}*"), "batch output prefix")
    role.add_to_principal_policy(list_prefix(stack, output_bucket, output_prefix))

    machine = _state_machine(stack, spec, batch, alias, retention, source_bucket, source_prefix)
    CfnOutput(stack, OUTPUT, value=machine.state_machine_arn, description="modelfn batch NAME --on aws starts this")
    if batch.schedule:
        _schedule(stack, spec, batch, machine, source_prefix, f"s3://{output_bucket}/{output_prefix}")


def _state_machine(
    stack: Stack,
    spec: FunctionSpec,
    batch: BatchSpec,
    alias: lambda_.Alias,
    retention: Any,
    source_bucket: str,
    source_prefix: str,
) -> sfn.StateMachine:
    output_bucket, _ = s3_place(batch.output)
    results_prefix = batch.results_prefix if batch.results_prefix.endswith("/") else batch.results_prefix + "/"
    score = tasks.LambdaInvoke(
        stack,
        "ScoreObjects",
        lambda_function=alias,
        payload_response_only=True,
        retry_on_service_exceptions=True,
        comment="handlers.aws.bulk: score a batch of objects with the modelfn batch code",
    )
    # an object that got no output is tried once more (S3 or a download may have failed for a
    # moment); the objects already written are skipped on the way
    score.add_retry(errors=[FAILED], max_attempts=1, interval=Duration.seconds(30))
    distributed = sfn.DistributedMap(
        stack,
        "ScorePrefix",
        comment=f"modelfn {spec.name}: every object under the prefix, in batches",
        item_reader=PrefixObjectsReader(
            stack, s3.Bucket.from_bucket_name(stack, "BatchInput", source_bucket), source_prefix
        ),
        item_batcher=sfn.ItemBatcher(
            max_items_per_batch=batch.items_per_batch,
            batch_input={"bucket": source_bucket, "prefix.$": "$.prefix", "output.$": "$.output"},
        ),
        max_concurrency=batch.max_concurrency,
        tolerated_failure_percentage=batch.tolerated_failure_percentage,
        result_writer_v2=PrefixResultWriter(
            stack, s3.Bucket.from_bucket_name(stack, "BatchResults", output_bucket), results_prefix
        ),
        map_execution_type=sfn.StateMachineType.STANDARD,  # a batch may take the Lambda's 15 minutes
    )
    distributed.item_processor(score)
    log_group = logs.LogGroup(stack, "BatchLogs", retention=retention)
    machine = sfn.StateMachine(
        stack,
        "Batch",
        definition_body=sfn.DefinitionBody.from_chainable(distributed),
        comment=f"modelfn {spec.name}: bulk predictions over s3://{source_bucket}/{source_prefix}",
        logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        tracing_enabled=True,
    )
    _acknowledge(stack, machine, s3_arn(stack, output_bucket, f"{results_prefix}*"))
    return machine


def _schedule(
    stack: Stack, spec: FunctionSpec, batch: BatchSpec, machine: sfn.StateMachine, prefix: str, output: str
) -> None:
    assert batch.schedule is not None
    target = scheduler_targets.StepFunctionsStartExecution(
        machine,
        input=scheduler.ScheduleTargetInput.from_object({"prefix": prefix, "output": output}),
        retry_attempts=2,
    )
    scheduler.Schedule(
        stack,
        "BatchSchedule",
        schedule=scheduler.ScheduleExpression.expression(cron.eventbridge(batch.schedule), TimeZone.of(batch.timezone)),
        target=target,
        description=f"modelfn {spec.name}: score {batch.input} into {batch.output} ({batch.schedule})",
    )


def _acknowledge(stack: Stack, machine: sfn.StateMachine, results_arn: str) -> None:
    """The wildcards of the state machine's role, each acknowledged with its reason."""
    logical = stack.resolve(stack.get_logical_id(cast(CfnElement, machine.node.default_child)))
    # cdk-nag prints the state machine's name (taken from its ARN) as the intrinsic's JSON
    name = json.dumps({"Fn::Select": [6, {"Fn::Split": [":", {"Ref": logical}]}]}, separators=(",", ":"))
    executions = f"Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{name}"
    reasons = {
        executions + ":*": "the map run describes and stops the child executions of this state machine only",
        executions + "/*:*": "a redriven map run redrives the child executions of this state machine only",
        resource_finding(stack, results_arn): "the map run's result files (manifest, succeeded and failed "
        "batches) go below the results prefix only",
        "Resource::*": "CloudWatch Logs delivery and X-Ray trace segments take no narrower resource",
    }
    for finding, reason in reasons.items():
        acknowledge(machine, f"AwsSolutions-IAM5[{finding}]", reason)
