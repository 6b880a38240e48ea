"""The shadow version's own Lambda, for a spec whose `[traffic]` names a shadow: the same code
(and layers, or image) as the live function, a role and log group of its own, a `shadow` alias,
and on the live function's role `lambda:InvokeFunction` on exactly that alias. The live
function finds the alias in MODELFN_SHADOW_TARGET and sends each sampled copy there as an
asynchronous invoke (`handlers/aws/shadow.py`); a lost copy is never retried."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import CfnOutput, Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs

from modelfn_cdk.access import allow
from modelfn_cdk.nag import acknowledge

if TYPE_CHECKING:
    from modelfn_cdk.stack import FunctionStack

ALIAS = "shadow"
TARGET_ENV = "MODELFN_SHADOW_TARGET"  # handlers.aws.shadow.TARGET_ENV; the CDK app does not import handlers


def add_shadow(stack: FunctionStack, retention: logs.RetentionDays) -> lambda_.Alias | None:
    """The shadow function and alias when the spec has a shadow version; None otherwise."""
    spec = stack.spec
    if not spec.traffic.shadow:
        return None
    log_group = logs.LogGroup(stack, "ShadowLogs", retention=retention)
    role = iam.Role(
        stack,
        "ShadowRole",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"modelfn {spec.name} shadow: its logs and the model objects only",
    )
    log_group.grant_write(role)
    stack.model_access(role)
    overrides = {
        "role": role,
        "log_group": log_group,
        "environment": {**stack.function_environment(), "MODELFN_ROLE": "shadow"},
        "description": f"modelfn {spec.name}: shadow version {spec.traffic.shadow}, run on copies of live requests",
    }
    settings = {**stack.function_settings(), **overrides}
    function: lambda_.Function
    if stack.image_code is not None:
        function = lambda_.DockerImageFunction(stack, "ShadowFunction", code=stack.image_code, **settings)  # type: ignore[arg-type]
    else:
        assert stack.code is not None  # a zip function's asset, staged before this
        function = lambda_.Function(
            stack,
            "ShadowFunction",
            runtime=stack.function.runtime,
            handler=stack.handler,
            code=stack.code,
            layers=stack.layers,
            **settings,  # type: ignore[arg-type]
        )
        acknowledge(
            function,
            "AwsSolutions-L1",
            f"deploy.python = {spec.deploy.python!r} in function.toml pins the runtime of the live function and "
            "its shadow alike; the layers hold wheels built for that interpreter",
        )
    alias = lambda_.Alias(stack, "Shadow", alias_name=ALIAS, version=function.current_version)
    # a copy that fails or waits too long is dropped: shadow metrics are a sample, never a backlog
    alias.configure_async_invoke(retry_attempts=0, max_event_age=Duration.minutes(5))
    allow(
        stack.role,
        ["lambda:InvokeFunction"],
        alias.function_arn,
        "the live function sends shadow copies to the shadow alias only",
    )
    stack.function.add_environment(TARGET_ENV, alias.function_arn)
    CfnOutput(stack, "ShadowAliasArn", value=alias.function_arn, description="the shadow version's alias")
    return alias
