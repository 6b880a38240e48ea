"""Where inputs are read and outputs written: a local folder, `s3://bucket/prefix`,
`gs://bucket/prefix` or `az://container/prefix` (Azure Blob, account from
$AZURE_STORAGE_CONNECTION_STRING). Each write is atomic: a reader sees a whole output or
none, which is what lets a rerun skip the inputs whose output is there."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelfn.errors import BadRequest
from modelfn.spec import bucket_uri


@dataclass(frozen=True)
class Entry:
    """An object below the store's prefix: its path relative to the prefix, and its size."""

    name: str
    size: int


class Store(Protocol):
    uri: str

    def list(self) -> list[Entry]: ...
    def read(self, name: str) -> bytes: ...
    def exists(self, name: str) -> bool: ...
    def put_file(self, name: str, path: Path) -> None: ...


def open_store(uri: str, s3_client: Any = None) -> Store:
    """The store for a folder or a bucket prefix; `s3_client`, a boto3 client to reuse for s3://."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme == "file":
        return LocalStore(Path(rest if sep else uri))
    _, bucket, prefix = bucket_uri(uri)
    if not bucket:
        raise BadRequest(f"{uri}: name a bucket or container, e.g. {scheme}://bucket/prefix/")
    if scheme == "s3":
        return S3Store(bucket, prefix, s3_client)
    if scheme == "gs":
        return GcsStore(bucket, prefix)
    if scheme == "az":
        return AzureStore(bucket, prefix)
    raise BadRequest(f"{uri}: unknown scheme {scheme!r}; use a folder, s3://, gs:// or az://")


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root.resolve())

    def list(self) -> list[Entry]:
        if self.root.is_file():
            raise BadRequest(f"{self.root} is a file: give the folder that holds the inputs")
        if not self.root.is_dir():
            raise BadRequest(f"no such folder: {self.root}")
        return [
            Entry(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        ]

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def put_file(self, name: str, path: Path) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # a hidden temporary name in the target folder, then one rename: never a half-written output
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


class S3Store:
    """boto3, with its usual credentials and $AWS_ENDPOINT_URL; an upload (multipart or not)
    appears whole or not at all."""

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}"
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client: Any = client

    def list(self) -> list[Entry]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [
            Entry(o["Key"][len(self.prefix) :], int(o["Size"]))
            for page in pages
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        ]

    def read(self, name: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read())

    def exists(self, name: str) -> bool:
        # A listing, not HeadObject: it needs only s3:ListBucket scoped to the output prefix (a
        # missing object's HeadObject is a 403 without an unscoped ListBucket). The key itself
        # sorts before every longer key it prefixes.
        key = self.prefix + name
        found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        return bool(found) and found[0]["Key"] == key

    def put_file(self, name: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self.prefix + name)


class GcsStore:
    """google-cloud-storage (honours $STORAGE_EMULATOR_HOST); an upload is one object version."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from google.cloud import storage

        self.prefix = prefix
        self.uri = f"gs://{bucket}/{prefix}"
        self.client = storage.Client()
        self.bucket = self.client.bucket(bucket)

    def list(self) -> list[Entry]:
        return [
            Entry(b.name[len(self.prefix) :], int(b.size or 0))
            for b in self.client.list_blobs(self.bucket, prefix=self.prefix)
            if not b.name.endswith("/")
        ]

    def read(self, name: str) -> bytes:
        return bytes(self.bucket.blob(self.prefix + name).download_as_bytes())

    def exists(self, name: str) -> bool:
        return bool(self.bucket.blob(self.prefix + name).exists())

    def put_file(self, name: str, path: Path) -> None:
        self.bucket.blob(self.prefix + name).upload_from_filename(str(path))


class AzureStore:
    """azure-storage-blob with $AZURE_STORAGE_CONNECTION_STRING; a block blob is committed whole."""

    def __init__(self, container: str, prefix: str) -> None:
        from azure.storage.blob import BlobServiceClient

        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not connection:
            raise BadRequest("az:// needs the storage account: set AZURE_STORAGE_CONNECTION_STRING")
        self.prefix = prefix
        self.uri = f"az://{container}/{prefix}"
        self.container = BlobServiceClient.from_connection_string(connection).get_container_client(container)

    def list(self) -> list[Entry]:
        return [
            Entry(b.name[len(self.prefix) :], int(b.size or 0))
            for b in self.container.list_blobs(name_starts_with=self.prefix or None)
            if not b.name.endswith("/")
        ]

    def read(self, name: str) -> bytes:
        return bytes(self.container.download_blob(self.prefix + name).readall())

    def exists(self, name: str) -> bool:
        return bool(self.container.get_blob_client(self.prefix + name).exists())

    def put_file(self, name: str, path: Path) -> None:
        with path.open("rb") as data:
            self.container.upload_blob(self.prefix + name, data, overwrite=True)
