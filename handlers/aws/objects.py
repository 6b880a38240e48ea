"""Where S3 objects are read and results written: S3 itself through boto3. Local invokes
install a folder standing in for it (`handlers.local.aws`) through `use`."""

from __future__ import annotations

from typing import Protocol

from handlers.aws.clients import client


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


_store: ObjectStore | None = None


def store() -> ObjectStore:
    """S3, unless a stand-in was installed with `use` (local invokes: `handlers.local.aws`)."""
    return _store or S3Store()


def use(stand_in: ObjectStore | None) -> None:
    global _store
    _store = stand_in


def location(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
