"""Model sources: a local path, `s3://`, `gs://` or `https://`, fetched once into a cache
directory, written atomically and checked against an optional sha256 pin before loading."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from modelfn.errors import IntegrityError, ModelUnavailable

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) while a model downloads."""

CHUNK = 1 << 20


def on_serverless() -> bool:
    return any(
        k in os.environ
        for k in ("AWS_LAMBDA_FUNCTION_NAME", "K_SERVICE", "FUNCTION_TARGET", "FUNCTIONS_WORKER_RUNTIME")
    )


def cache_dir() -> Path:
    """`MODELFN_CACHE_DIR`, else /tmp on serverless platforms (the only writable place), else ~/.cache."""
    configured = os.environ.get("MODELFN_CACHE_DIR")
    if configured:
        return Path(configured)
    if on_serverless():
        import tempfile

        return Path(tempfile.gettempdir()) / "modelfn"
    return Path.home() / ".cache" / "modelfn"


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str | None, uri: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise IntegrityError(
            f"model {uri} does not match its sha256 pin: expected {expected.lower()}, got {actual}; "
            "refusing to load it",
            expected=expected.lower(),
            actual=actual,
        )


def _copy(src: BinaryIO, dst: BinaryIO, total: int | None, progress: Progress | None) -> None:
    done = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        dst.write(block)
        done += len(block)
        if progress:
            progress(done, total)


def _fetch_https(uri: str, dst: BinaryIO, progress: Progress | None) -> None:
    timeout = float(os.environ.get("MODELFN_FETCH_TIMEOUT_S", "60"))
    import urllib.request  # with http.client, email and ssl: ~30 ms a local model never needs

    with urllib.request.urlopen(uri, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        _copy(response, dst, int(length) if length else None, progress)


def _fetch_s3(uri: str, dst: BinaryIO, progress: Progress | None) -> None:
    import boto3  # only the S3 path pays for boto3
    from botocore.config import Config

    parsed = urlparse(uri)
    timeout = float(os.environ.get("MODELFN_FETCH_TIMEOUT_S", "60"))
    client = boto3.client(
        "s3", config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3})
    )
    body = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
    _copy(body["Body"], dst, body.get("ContentLength"), progress)


def _fetch_gs(uri: str, dst: BinaryIO, progress: Progress | None) -> None:
    try:
        from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        raise ModelUnavailable(f"{uri}: gs:// sources need google-cloud-storage (pip install 'modelfn[gcp]')") from None
    parsed = urlparse(uri)
    client = storage.Client()
    blob = client.bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
    with blob.open("rb") as src:
        _copy(src, dst, blob.size, progress)


FETCHERS: dict[str, Callable[[str, BinaryIO, Progress | None], None]] = {
    "https": _fetch_https,
    "http": _fetch_https,
    "s3": _fetch_s3,
    "gs": _fetch_gs,
}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One download per cache entry even when two processes cold-start together."""
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_path(uri: str) -> Path:
    name = Path(urlparse(uri).path).name or "model.onnx"
    import hashlib

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_dir() / f"{key}-{name}"


def resolve(source: str, folder: Path, sha256: str | None = None, progress: Progress | None = None) -> Path:
    """A local file for `source`, downloading it once into the cache when it is remote."""
    scheme = urlparse(source).scheme
    if scheme not in FETCHERS:
        path = (folder / source).resolve()
        if not path.is_file():
            raise ModelUnavailable(f"model file {path} does not exist")
        verify(path, sha256, source)
        return path

    target = cached_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        if target.exists():
            try:
                verify(target, sha256, source)
                return target
            except IntegrityError:
                target.unlink()  # a stale or tampered cache entry: fetch again
        import tempfile

        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                FETCHERS[scheme](source, tmp, progress)
                tmp.flush()
                os.fsync(tmp.fileno())
            verify(Path(tmp_name), sha256, source)
            os.replace(tmp_name, target)
        except IntegrityError:
            raise
        except ModelUnavailable:
            raise
        except Exception as exc:  # network, permissions, missing object: all mean "cannot load"
            raise ModelUnavailable(f"could not fetch model {source}: {type(exc).__name__}: {exc}") from exc
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    return target
