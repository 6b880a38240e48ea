"""Least-privilege grants for a function's role: one statement per thing it touches, scoped to
the model object, the input prefix or the output prefix, and the reason for any wildcard
recorded with cdk-nag where the grant is made."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlparse

from aws_cdk import Arn, ArnComponents, ArnFormat, Stack
from aws_cdk import aws_iam as iam

from modelfn_cdk.nag import acknowledge, resource_finding


def s3_arn(stack: Stack, bucket: str, key: str) -> str:
    """`arn:<partition>:s3:::bucket/key` (S3 ARNs carry neither region nor account)."""
    components = ArnComponents(
        service="s3",
        resource=bucket,
        resource_name=key,
        region="",
        account="",
        arn_format=ArnFormat.SLASH_RESOURCE_NAME,
    )
    return Arn.format(components, stack)


def s3_uri_parts(uri: str) -> tuple[str, str]:
    """("bucket", "key/or/prefix") of an `s3://bucket/key` URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def allow(role: iam.Role, actions: Sequence[str], resource: str, reason: str) -> None:
    """Grant `actions` on one resource; a resource with a wildcard (a prefix) is acknowledged
    for cdk-nag's IAM5 with `reason`, which must say why the scope is as narrow as it can be."""
    role.add_to_principal_policy(iam.PolicyStatement(actions=list(actions), resources=[resource]))
    stack = Stack.of(role)
    finding = resource_finding(stack, resource)
    if "*" in finding:
        acknowledge(role, f"AwsSolutions-IAM5[{finding}]", reason)


def read_prefix(role: iam.Role, objects_arn: str, what: str) -> None:
    allow(role, ["s3:GetObject"], objects_arn, f"reads only the objects under the {what}, which the trigger names")


def write_prefix(role: iam.Role, objects_arn: str, what: str) -> None:
    allow(role, ["s3:PutObject"], objects_arn, f"writes results only under the {what}, one object per input")
