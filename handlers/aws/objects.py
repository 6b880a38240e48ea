"""Where S3 objects are read and results written: S3 itself through boto3, or, for local
invokes only, a folder standing in for it (MODELFN_LOCAL_S3=DIR maps s3://bucket/key to
DIR/bucket/key) so `modelfn invoke NAME --event events/aws/s3-put.json` works without an
AWS account."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from handlers.aws.clients import client

EXTENSION_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".txt": "text/plain",
}


class ObjectMissing(LookupError):
    """No object at that bucket and key."""


class StoredObject:
    def __init__(self, body: bytes, content_type: str | None = None, metadata: dict[str, str] | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self.metadata = metadata or {}


class ObjectStore(Protocol):
    def get(self, bucket: str, key: str, max_bytes: int) -> StoredObject: ...

    def put(self, bucket: str, key: str, body: bytes, content_type: str, metadata: dict[str, str]) -> None: ...


class TooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the object is {size / 2**20:.1f} MB; this function reads at most {limit / 2**20:.1f} MB")


class S3Store:
    def get(self, bucket: str, key: str, max_bytes: int) -> StoredObject:
        s3 = client("s3")
        try:
            found = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            raise ObjectMissing(f"s3://{bucket}/{key} does not exist") from None
        if found.get("ContentLength", 0) > max_bytes:
            found["Body"].close()
            raise TooLarge(found["ContentLength"], max_bytes)
        return StoredObject(found["Body"].read(), found.get("ContentType"), found.get("Metadata") or {})

    def put(self, bucket: str, key: str, body: bytes, content_type: str, metadata: dict[str, str]) -> None:
        client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata)


class FolderStore:
    """A folder per bucket; only for local invokes, never on Lambda."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to(self.root / bucket):
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


def store() -> ObjectStore:
    local = os.environ.get("MODELFN_LOCAL_S3")
    return FolderStore(Path(local)) if local else S3Store()


def location(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
