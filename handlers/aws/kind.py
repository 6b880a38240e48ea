"""The shape every trigger adapter takes, after Mangum: recognise an event, translate it in,
translate the outcome out. Adding a trigger means adding one subclass to the list in
`handlers.aws_lambda`, never editing a chain of `if`s."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.aws.app import LambdaApp


class EventKind:
    """One event shape a Lambda trigger delivers."""

    name: ClassVar[str]

    def __init__(self, app: LambdaApp) -> None:
        self.app = app

    @classmethod
    def recognise(cls, event: Any) -> bool:
        raise NotImplementedError

    def function_name(self, event: Any) -> str | None:
        """The model function this event goes to, for logs and metric dimensions."""
        return self.app.served

    def serve(self, event: Any, context: Any) -> Any:
        raise NotImplementedError


def records_from(event: Any, source_key: str, source: str) -> list[dict[str, Any]] | None:
    """`event["Records"]` when every record comes from `source` (S3, SQS and SNS say so under different keys)."""
    if not isinstance(event, dict):
        return None
    records = event.get("Records")
    if not isinstance(records, list) or not records:
        return None
    if all(isinstance(r, dict) and r.get(source_key) == source for r in records):
        return records
    return None
