"""The spec's AWS triggers, one small function each, all pointing at the `live` alias so that
provisioned concurrency, SnapStart and gradual deployment apply to every path in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs

from modelfn.routes import function_routes
from modelfn.spec import FunctionSpec
from modelfn_cdk.access import allow, read_prefix, s3_arn, s3_uri_parts, write_prefix
from modelfn_cdk.nag import acknowledge

# Async invocations (S3, SNS, EventBridge) are retried twice by Lambda, then parked here.
ASYNC_RETRIES = 2
SQS_DLQ_RECEIVES = 3


@dataclass
class Target:
    """What a trigger attaches to: the stack, the function's spec, its role and live alias."""

    stack: Stack
    spec: FunctionSpec
    role: iam.Role
    alias: lambda_.Alias
    log_retention: logs.RetentionDays


def http_routes(name: str) -> list[tuple[apigw.HttpMethod, str]]:
    """The core route table's routes that concern this function (`modelfn.routes`), with its
    name literal in the path so an API only ever reaches its own function."""
    return [(apigw.HttpMethod(method), path) for method, path in function_routes(name)]


def add_http(target: Target) -> None:
    http = target.spec.triggers.http
    if http is None:
        return
    stack, open_to_all = target.stack, http.auth == "none"
    if http.api:
        api = apigw.HttpApi(
            stack, "Api", api_name=f"modelfn-{target.spec.name}", description=target.spec.description[:1024] or None
        )
        access_logs = logs.LogGroup(stack, "ApiAccessLogs", retention=target.log_retention)
        stage = cast(apigw.CfnStage, api.default_stage.node.default_child)  # type: ignore[union-attr]
        stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn, format=ACCESS_LOG_FORMAT
        )
        integration = integrations.HttpLambdaIntegration("Function", target.alias)
        authorizer: apigw.IHttpRouteAuthorizer = (
            apigw.HttpNoneAuthorizer() if open_to_all else authorizers.HttpIamAuthorizer()
        )
        for method, path in http_routes(target.spec.name):
            api.add_routes(path=path, methods=[method], integration=integration, authorizer=authorizer)
        if open_to_all:
            acknowledge(
                api, "AwsSolutions-APIG4", "triggers.http.auth = 'none' in function.toml opens the API on purpose"
            )
        CfnOutput(stack, "ApiUrl", value=api.api_endpoint, description="HTTP API base URL (POST /functions/<name>)")
    if http.function_url:
        auth = lambda_.FunctionUrlAuthType.NONE if open_to_all else lambda_.FunctionUrlAuthType.AWS_IAM
        url = target.alias.add_function_url(auth_type=auth)
        CfnOutput(stack, "FunctionUrl", value=url.url, description=f"Function URL ({auth.value} auth)")


def add_s3(target: Target) -> None:
    trigger = target.spec.triggers.s3
    if trigger is None:
        return
    stack = target.stack
    bucket = (
        s3.Bucket.from_bucket_name(stack, "InputBucket", trigger.bucket)
        if trigger.bucket
        else private_bucket(stack, "InputBucket")
    )
    if not trigger.bucket:
        CfnOutput(stack, "InputBucketName", value=bucket.bucket_name, description=f"upload under {trigger.prefix!r}")
    # The output prefix lies outside the input prefix (the spec refuses otherwise), so
    # results written back never match this filter and never re-trigger the function.
    key_filter = s3.NotificationKeyFilter(prefix=trigger.prefix or None, suffix=trigger.suffix or None)
    bucket.add_event_notification(s3.EventType.OBJECT_CREATED, s3n.LambdaDestination(target.alias), key_filter)
    read_prefix(target.role, bucket.arn_for_objects(f"{trigger.prefix}*"), "S3 trigger's input prefix")
    if trigger.output_bucket and trigger.output_bucket != trigger.bucket:
        output_arn = s3_arn(stack, trigger.output_bucket, f"{trigger.output_prefix}*")
    else:
        output_arn = bucket.arn_for_objects(f"{trigger.output_prefix}*")
    write_prefix(target.role, output_arn, "S3 trigger's output prefix")
    acknowledge_notification_handler(stack)


def add_sqs(target: Target) -> None:
    trigger = target.spec.triggers.sqs
    if trigger is None:
        return
    stack, timeout = target.stack, target.spec.deploy.timeout_s
    dead_letters = sqs.Queue(
        stack,
        "DeadLetters",
        retention_period=Duration.days(14),
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
    )
    queue = sqs.Queue(
        stack,
        "Requests",
        # AWS's guidance for Lambda consumers: six times the function timeout
        visibility_timeout=Duration.seconds(min(6 * timeout, 43_200)),
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letters, max_receive_count=SQS_DLQ_RECEIVES),
    )
    target.alias.add_event_source(
        sources.SqsEventSource(
            queue,
            batch_size=trigger.batch_size,
            # SQS requires a batching window for batches over 10 messages
            max_batching_window=Duration.seconds(1) if trigger.batch_size > 10 else None,
            report_batch_item_failures=True,
        )
    )
    CfnOutput(stack, "QueueUrl", value=queue.queue_url, description="send prediction requests here")
    CfnOutput(stack, "DeadLetterQueueUrl", value=dead_letters.queue_url)
    if trigger.output_queue:
        allow(target.role, ["sqs:SendMessage"], queue_arn(stack, trigger.output_queue), "one output queue")
    if trigger.output_s3:
        bucket, prefix = s3_uri_parts(trigger.output_s3)
        write_prefix(target.role, s3_arn(stack, bucket, f"{prefix}*"), "SQS trigger's output prefix")


def add_sns(target: Target) -> None:
    trigger = target.spec.triggers.sns
    if trigger is None:
        return
    stack = target.stack
    if trigger.topic and trigger.topic.startswith("arn:"):
        topic = sns.Topic.from_topic_arn(stack, "Topic", trigger.topic)
    else:
        topic = sns.Topic(
            stack,
            "Topic",
            topic_name=trigger.topic,
            master_key=kms.Alias.from_alias_name(stack, "SnsKey", "alias/aws/sns"),
            enforce_ssl=True,
        )
        CfnOutput(stack, "TopicArn", value=topic.topic_arn, description="publish prediction requests here")
    target.alias.add_event_source(sources.SnsEventSource(topic))
    acknowledge(
        target.alias,
        "W3694",
        "the endpoint is the live alias's ARN; SNS invokes a qualified Lambda ARN like a function's",
        pack="CloudFormation-Validate",
    )
    if trigger.output_topic:
        allow(target.role, ["sns:Publish"], topic_arn(stack, trigger.output_topic), "one output topic")


def add_eventbridge(target: Target) -> None:
    trigger = target.spec.triggers.eventbridge
    if trigger is None:
        return
    rule = events.Rule(
        target.stack,
        "Rule",
        description=f"modelfn {target.spec.name}: predict on matching events",
        event_pattern=events.EventPattern(source=trigger.source, detail_type=trigger.detail_type),
    )
    rule.add_target(targets.LambdaFunction(target.alias, retry_attempts=ASYNC_RETRIES))


TRIGGERS: tuple[Callable[[Target], None], ...] = (add_http, add_s3, add_sqs, add_sns, add_eventbridge)
ASYNC_TRIGGERS = ("s3", "sns", "eventbridge")


def add_all(target: Target) -> None:
    for add in TRIGGERS:
        add(target)
    if any(getattr(target.spec.triggers, name) is not None for name in ASYNC_TRIGGERS):
        park_failed_async_events(target)


def park_failed_async_events(target: Target) -> None:
    """Events Lambda could not process after its retries land in a queue instead of vanishing."""
    failures = sqs.Queue(
        target.stack,
        "FailedEvents",
        retention_period=Duration.days(14),
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
    )
    acknowledge(failures, "AwsSolutions-SQS3", "this queue is the on-failure destination of asynchronous invocations")
    target.alias.configure_async_invoke(on_failure=destinations.SqsDestination(failures), retry_attempts=ASYNC_RETRIES)
    CfnOutput(target.stack, "FailedEventsQueueUrl", value=failures.queue_url)


def private_bucket(stack: Stack, construct_id: str) -> s3.Bucket:
    bucket = s3.Bucket(
        stack,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
    )
    acknowledge(
        bucket,
        "AwsSolutions-S1",
        "inputs and results are traced per object in the function's logs; server access logs would need "
        "a log bucket of their own per function (name an existing bucket in triggers.s3.bucket to use yours)",
    )
    return bucket


def acknowledge_notification_handler(stack: Stack) -> None:
    """CDK configures S3 notifications through its own singleton custom-resource function."""
    for child in stack.node.children:
        if child.node.id.startswith("BucketNotificationsHandler"):
            acknowledge(
                child,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "CDK's bucket-notification custom resource, run only while deploying: the managed policy lets it "
                "write its own logs, nothing else",
            )


def queue_arn(stack: Stack, queue: str) -> str:
    """An SQS ARN from a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`), ARN or name."""
    if queue.startswith("arn:"):
        return queue
    if queue.startswith("https://"):
        host, account, name = queue.removeprefix("https://").split("/")[:3]
        region = host.split(".")[1]
        return f"arn:{stack.partition}:sqs:{region}:{account}:{name}"
    return stack.format_arn(service="sqs", resource=queue)


def topic_arn(stack: Stack, topic: str) -> str:
    return topic if topic.startswith("arn:") else stack.format_arn(service="sns", resource=topic)


ACCESS_LOG_FORMAT = (
    '{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","requestTime":"$context.requestTime",'
    '"httpMethod":"$context.httpMethod","routeKey":"$context.routeKey","status":"$context.status",'
    '"protocol":"$context.protocol","responseLength":"$context.responseLength",'
    '"integrationLatency":"$context.integrationLatency","integrationError":"$context.integrationErrorMessage"}'
)
