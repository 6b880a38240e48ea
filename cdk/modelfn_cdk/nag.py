"""cdk-nag's AwsSolutions checks on every stack. A finding is either fixed where the resource
is made, or acknowledged right there with the reason; this module only spells findings the
way cdk-nag names them."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct

PACK = "AwsSolutions"


def acknowledge(construct: IConstruct, rule: str, reason: str, pack: str = PACK) -> None:
    """Acknowledge `rule` (e.g. "AwsSolutions-S1", or "AwsSolutions-IAM5[Resource::...]") of
    `pack` (cdk-nag's AwsSolutions, or CDK's own validators) on `construct` and its children."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule}", reason=reason))


def resource_finding(stack: Stack, value: Any) -> str:
    """The `Resource::...` part of an IAM5 finding for an ARN that may hold tokens, as cdk-nag
    renders it: `Ref` as `<Id>`, `Fn::GetAtt` as `<Id.Attr>`, joins concatenated."""
    return "Resource::" + _render(stack.resolve(value))


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_render(part) for part in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<" + ".".join(value["Fn::GetAtt"]) + ">"
    raise ValueError(f"cannot name the cdk-nag finding for {value!r}")
