"""Running the Lambda handler here: a stand-in context, and buckets as folders
(MODELFN_LOCAL_S3=DIR maps s3://bucket/key to DIR/bucket/key) so
`modelfn invoke NAME --event events/aws/s3-put.json` works without an AWS account."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from handlers import aws_lambda
from handlers.aws import objects
from handlers.aws.app import current, reset
from handlers.aws.objects import ObjectMissing, StoredObject, TooLarge
from modelfn.events import EXTENSION_TYPES

BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket naming rule: also what keeps a bucket from naming a path outside the folder."""


class LocalContext:
    """The context object for a local invoke; on Lambda the runtime passes the real one."""

    function_version = "$LATEST"
    log_group_name = "local"
    log_stream_name = "local"

    def __init__(self, function_name: str, memory_limit_in_mb: int = 1024, timeout_s: int = 30) -> None:
        self.function_name = function_name
        self.memory_limit_in_mb = memory_limit_in_mb
        self.timeout_s = timeout_s
        self.aws_request_id = str(uuid.uuid4())
        self.started = time.monotonic()

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


class FolderStore:
    """A folder per bucket, standing in for S3."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, bucket: str, key: str) -> Path:
        if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise ObjectMissing(f"s3://{bucket}/{key}: {bucket!r} is not a valid bucket name")
        folder = self.root / bucket
        path = (folder / key).resolve()
        if not path.is_relative_to(folder):
            raise ObjectMissing(f"s3://{bucket}/{key} points outside the local bucket folder")
        return path

    def get(self, bucket: str, key: str, max_bytes: int) -> StoredObject:
        path = self.path(bucket, key)
        if not path.is_file():
            raise ObjectMissing(f"s3://{bucket}/{key} does not exist (looked for {path})")
        if path.stat().st_size > max_bytes:
            raise TooLarge(path.stat().st_size, max_bytes)
        return StoredObject(path.read_bytes(), EXTENSION_TYPES.get(path.suffix.lower()))

    def put(self, bucket: str, key: str, body: bytes, content_type: str, metadata: dict[str, str]) -> None:
        path = self.path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def use_folders(root: Path | str | None = None) -> FolderStore:
    """Buckets as folders under `root` (default $MODELFN_LOCAL_S3, else the sample events' bucket)."""
    store = FolderStore(Path(root or os.environ.get("MODELFN_LOCAL_S3") or sample_bucket_folder()))
    objects.use(store)
    return store


def handler(event: Any, context: Any) -> Any:
    """`handlers.aws_lambda.handler` with buckets as folders under $MODELFN_LOCAL_S3: for the
    runtime client run against a local Runtime API."""
    if os.environ.get("MODELFN_LOCAL_S3"):
        use_folders()
    return aws_lambda.handler(event, context)


def _aws_configured() -> bool:
    names = (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    )
    return any(os.environ.get(n) for n in names) or any(
        (Path.home() / ".aws" / f).is_file() for f in ("credentials", "config")
    )


def sample_bucket_folder() -> Path:
    """The folder holding the sample events' bucket (`events/aws/s3/<bucket>/<key>`)."""
    here = Path.cwd() / "events" / "aws" / "s3"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "events" / "aws" / "s3"


def local_invoke(function_name: str, event: Any) -> Any:
    """Run the handler on one event in this process, as Lambda would, with a stand-in context.
    S3 goes to real S3 (or AWS_ENDPOINT_URL); with no AWS configuration at all, or with
    MODELFN_LOCAL_S3=DIR, buckets are folders under DIR (default: the sample events' folder)."""
    os.environ["MODELFN_FUNCTION"] = function_name
    if os.environ.get("MODELFN_LOCAL_S3") or not _aws_configured():
        use_folders()
    else:
        objects.use(None)
    reset()
    deploy = current().spec().deploy
    return aws_lambda.handler(event, LocalContext(function_name, deploy.memory_mb, deploy.timeout_s))
