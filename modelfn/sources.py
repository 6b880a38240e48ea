"""Model sources: a file in the function's folder, `s3://`, `gs://` or `https://` (plain
`http://` only with a sha256 pin), fetched once into a cache directory, written atomically and
checked against an optional sha256 pin before loading. Messages name a source without its
credentials or query string (a presigned URL's signature lives there)."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from modelfn.errors import IntegrityError, ModelUnavailable

log = logging.getLogger("modelfn")

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) while a model downloads."""

CHUNK = 1 << 20
ALLOW_PRIVATE = "MODELFN_ALLOW_PRIVATE_SOURCES"
"""Set to 1 to fetch models from loopback and link-local addresses (a test server, a local mirror)."""
RETRY_DELAYS_S = (0.5, 1.5)
"""Pauses between the three attempts of an http(s) fetch that met a connection error or a 5xx."""
STALE_PARTIAL_S = 3600
"""A partial download this old, or whose process is gone, was cut short: it is removed at start."""

# Compiled on first use (by `re`'s cache), not at import: ~0.7 ms of every Lambda cold start
# for messages that are only written when something failed.
_URL = r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/\s@?#'\"]*@)?([^\s?#'\"]*)(?:[?#][^\s'\"]*)?"
_SERVER_PATH = r"(?<![\w/:.~-])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])"


def redact(text: str) -> str:
    """`text` with each URL's credentials, query string and fragment taken out."""
    return re.sub(_URL, lambda m: m.group(1) + m.group(2), text)


def public_message(text: str, *roots: Path) -> str:
    """`text` fit for an open route: URLs redacted, and no path of this server (`roots` and any
    other absolute path lose their folders, keeping the file's name)."""
    text = redact(text)
    for root in sorted({str(r) for r in roots}, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(?:/|(?=[\s'\":,;)]|$))", lambda m: "" if m[0].endswith("/") else ".", text)
    return re.sub(_SERVER_PATH, "", text)


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
            f"model {redact(uri)} does not match its sha256 pin: expected {expected.lower()}, got {actual}; "
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
    """Three attempts where the network or the server failed (not where it refused: a 4xx)."""
    timeout = float(os.environ.get("MODELFN_FETCH_TIMEOUT_S", "60"))
    opener = _opener()
    for delay in (*RETRY_DELAYS_S, None):
        try:
            with opener.open(_request(uri), timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                _copy(response, dst, int(length) if length else None, progress)
            return
        except Exception as exc:
            if delay is None or not _transient(exc):
                raise
            log.warning("fetching model %s failed (%s); trying again in %.1f s", redact(uri), _reason(exc, uri), delay)
            time.sleep(delay)
            dst.seek(0)
            dst.truncate()


def _transient(exc: BaseException) -> bool:
    import http.client
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, OSError)
    return isinstance(exc, OSError | http.client.HTTPException)


def _request(uri: str) -> Any:
    """`user:password@` in a URL becomes basic authentication, sent to that host only (not
    along a redirect); urllib would otherwise take it for part of the host name."""
    import urllib.request

    parsed = urlparse(uri)
    if parsed.username is None:
        return urllib.request.Request(uri)
    import base64

    host = parsed.netloc.rpartition("@")[2]
    request = urllib.request.Request(parsed._replace(netloc=host).geturl())
    credentials = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def _reason(exc: BaseException, uri: str) -> str:
    """An exception's text without the URL's secrets, even where the library quoted them apart."""
    text = redact(f"{type(exc).__name__}: {exc}")
    parsed = urlparse(uri)
    for secret in (parsed.password, parsed.username, parsed.query, parsed.fragment):
        if secret:
            text = text.replace(secret, "…")
    return text


def allow_private() -> bool:
    return os.environ.get(ALLOW_PRIVATE, "").strip().lower() in ("1", "true", "yes")


def refused_address(ip: str) -> str | None:
    """Why a model may not be fetched from `ip` (loopback, link-local: the instance metadata
    service and its credentials live there), or None. Private networks are allowed: VPC
    endpoints and in-network mirrors have private addresses."""
    if allow_private():
        return None
    import ipaddress  # only remote sources need it: not on a local model's cold start

    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local or address == ipaddress.ip_address("fd00:ec2::254"):
        return "a link-local address (instance metadata)"
    if address.is_unspecified or address.is_multicast:
        return "not a host address"
    return None


def _check_peer(connection: Any) -> None:
    """After connecting and before any request: the address actually reached counts, so a name
    that resolves differently a second time gains nothing."""
    tunnelled = getattr(connection, "_tunnel_host", None)
    if tunnelled:  # through a proxy: the proxy is reached, the model's host is its business
        import socket  # the download path only: a local model never pays for it

        addresses = {info[4][0] for info in socket.getaddrinfo(tunnelled, None)}
    else:
        addresses = {connection.sock.getpeername()[0]}
    for address in addresses:
        why = refused_address(str(address))
        if why:
            connection.close()
            raise ModelUnavailable(
                f"model host {tunnelled or connection.host} is {why}; refusing to fetch from it "
                f"(set {ALLOW_PRIVATE}=1 to allow it)"
            )


@cache
def _opener() -> Any:
    """urllib, checking each address it connects to and following redirects only to https."""
    import http.client
    import urllib.request  # with http.client, email and ssl: ~30 ms a local model never needs

    class CheckedHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            _check_peer(self)

    class CheckedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            _check_peer(self)

    class CheckedHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(CheckedHTTPConnection, req)

    class CheckedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(CheckedHTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]

    class HttpsRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if urlparse(newurl).scheme != "https":
                raise ModelUnavailable(
                    f"model source redirected to {redact(newurl)}; only redirects to https:// are followed"
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(CheckedHTTPHandler, CheckedHTTPSHandler, HttpsRedirects)


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
    import fcntl  # only remote sources are downloaded

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


def _partial_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) from `.partial-<host>~<pid>~<random>`, the name a download is written under."""
    parts = name.removeprefix(".partial-").split("~")
    return (parts[0], int(parts[1])) if len(parts) == 3 and parts[1].isdigit() else None


def _alive(pid: int, name: str) -> bool:
    """Whether the download `name` of process `pid` may still be running. A process restarted
    with the pid of the one that wrote it (pid 1 in a container, say) knows its own downloads."""
    if pid == os.getpid():
        return name in _downloading
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    import socket

    return re.sub(r"[^\w.-]", "_", socket.gethostname())


def clean_partials(directory: Path, max_age_s: float = STALE_PARTIAL_S) -> list[Path]:
    """Remove downloads cut short (`.partial-*`): older than `max_age_s`, or written by a process
    of this host that is gone. A download in progress is neither."""
    removed = []
    now = time.time()
    with _partials_lock:  # a partial this process creates is registered in the same breath
        for path in directory.glob(".partial-*"):
            owner = _partial_owner(path.name)
            try:
                stale = now - path.stat().st_mtime > max_age_s or (
                    owner is not None and owner[0] == _host() and not _alive(owner[1], path.name)
                )
                if stale:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
    if removed:
        log.info("removed %d partial model download(s) left in %s", len(removed), directory)
    return removed


_cleaned: set[Path] = set()
_downloading: set[str] = set()
_partials_lock = threading.Lock()


def _local(source: str, folder: Path, sha256: str | None) -> Path:
    """A file inside the function's folder, after links are followed: never elsewhere on the server."""
    root = folder.resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        raise ModelUnavailable(
            f"model source {source!r} lies outside the function's folder; a local model must be a file "
            "inside it (or give an s3://, gs:// or https:// URI)"
        )
    if not path.is_file():
        raise ModelUnavailable(f"model file {source!r} does not exist in the function's folder")
    verify(path, sha256, source)
    return path


def resolve(source: str, folder: Path, sha256: str | None = None, progress: Progress | None = None) -> Path:
    """A local file for `source`, downloading it once into the cache when it is remote."""
    scheme = urlparse(source).scheme
    if scheme not in FETCHERS:
        if "://" in source:
            raise ModelUnavailable(
                f"model source {redact(source)}: scheme {scheme!r} is not supported; "
                "use a path, s3://, gs:// or https://"
            )
        return _local(source, folder, sha256)
    if scheme == "http" and sha256 is None:
        raise ModelUnavailable(
            f"model source {redact(source)}: plain http:// can be altered on the way; "
            "pin it with model.sha256 or use https://"
        )

    target = cached_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.parent not in _cleaned:
        _cleaned.add(target.parent)
        clean_partials(target.parent)
    with _locked(target):
        if target.exists():
            try:
                verify(target, sha256, source)
                return target
            except IntegrityError:
                target.unlink()  # a stale or tampered cache entry: fetch again
        import tempfile

        with _partials_lock:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".partial-{_host()}~{os.getpid()}~")
            _downloading.add(Path(tmp_name).name)
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
            raise ModelUnavailable(f"could not fetch model {redact(source)}: {_reason(exc, source)}") from exc
        finally:
            _downloading.discard(Path(tmp_name).name)
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    return target
