"""Model sources against real servers on loopback (an HTTP server and moto's S3 server): fetched
once, confined to the function's folder, over safe transports only, retried where the network
failed, named in messages without their secrets."""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelfn import sources
from modelfn.errors import IntegrityError, ModelUnavailable
from modelfn.registry import Registry
from modelfn.sources import cache_dir, clean_partials, public_message, redact, refused_address, resolve

MODEL = Path(__file__).resolve().parent.parent / "functions" / "breast-cancer" / "model.onnx"
DIGEST = hashlib.sha256(MODEL.read_bytes()).hexdigest()


class _ModelServer(http.server.ThreadingHTTPServer):
    hits = 0


@pytest.fixture
def model_server() -> Iterator[_ModelServer]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits += 1
            if self.path != "/models/model.onnx":
                self.send_error(404)
                return
            data = MODEL.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = _ModelServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _url(server: _ModelServer, path: str = "/models/model.onnx") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_local_source_resolves_relative_to_the_function_folder() -> None:
    assert resolve("model.onnx", MODEL.parent, DIGEST) == MODEL


def test_local_sha256_mismatch_refuses_to_load() -> None:
    with pytest.raises(IntegrityError, match="does not match its sha256 pin"):
        resolve("model.onnx", MODEL.parent, "0" * 64)


def test_missing_local_file_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve("absent.onnx", tmp_path)


def test_https_source_downloads_once_into_the_cache(model_server: _ModelServer) -> None:
    progress: list[tuple[int, int | None]] = []
    first = resolve(_url(model_server), Path("."), DIGEST, progress=lambda done, total: progress.append((done, total)))
    second = resolve(_url(model_server), Path("."), DIGEST)
    assert first == second and first.parent == cache_dir()
    assert first.read_bytes() == MODEL.read_bytes()
    assert model_server.hits == 1
    assert progress[-1] == (MODEL.stat().st_size, MODEL.stat().st_size)


def test_concurrent_cold_starts_never_see_a_partial_file(model_server: _ModelServer) -> None:
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: resolve(_url(model_server), Path("."), DIGEST), range(8)))
    assert len(set(paths)) == 1
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == DIGEST
    assert model_server.hits == 1
    assert not [p for p in cache_dir().iterdir() if p.name.startswith(".partial-")]


def test_downloaded_sha256_mismatch_refuses_and_caches_nothing(model_server: _ModelServer) -> None:
    with pytest.raises(IntegrityError):
        resolve(_url(model_server), Path("."), "f" * 64)
    assert not [p for p in cache_dir().glob("*model.onnx")]


def test_unreachable_source_is_model_unavailable(model_server: _ModelServer) -> None:
    with pytest.raises(ModelUnavailable, match="could not fetch model"):
        resolve(_url(model_server, "/missing.onnx"), Path("."), DIGEST)


def test_s3_source_through_moto_server(monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="cancer/model.onnx", Body=MODEL.read_bytes())
        path = resolve("s3://models/cancer/model.onnx", Path("."), DIGEST)
        assert path.read_bytes() == MODEL.read_bytes()
        with pytest.raises(ModelUnavailable, match="NoSuchKey"):
            resolve("s3://models/absent.onnx", Path("."))
    finally:
        server.stop()


# --- confinement: local sources stay inside the function's folder ------------------------------


@pytest.fixture
def functions_root(tmp_path: Path) -> Path:
    """Two function folders side by side, each with its own model."""
    for name in ("mine", "other"):
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "model.onnx").write_bytes(MODEL.read_bytes())
    return tmp_path / "functions"


@pytest.mark.parametrize(
    "source", ["../../../../etc/passwd", "/etc/hostname", "../other/model.onnx", "./../other/model.onnx"]
)
def test_local_sources_outside_the_function_folder_are_refused(functions_root: Path, source: str) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        resolve(source, functions_root / "mine")
    assert caught.value.message == (
        f"model source {source!r} lies outside the function's folder; a local model must be a file inside it "
        "(or give an s3://, gs:// or https:// URI)"
    )
    assert str(functions_root) not in caught.value.message


def test_a_link_out_of_the_function_folder_is_refused(functions_root: Path) -> None:
    (functions_root / "mine" / "linked.onnx").symlink_to(functions_root / "other" / "model.onnx")
    with pytest.raises(ModelUnavailable, match=r"'linked\.onnx' lies outside the function's folder"):
        resolve("linked.onnx", functions_root / "mine")
    (functions_root / "mine" / "sub").mkdir()
    assert resolve("sub/../model.onnx", functions_root / "mine", DIGEST) == functions_root / "mine" / "model.onnx"


def test_a_missing_local_model_is_named_without_the_server_path(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        resolve("absent.onnx", tmp_path)
    assert caught.value.message == "model file 'absent.onnx' does not exist in the function's folder"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("file:///etc/passwd", "model source file:///etc/passwd: scheme 'file' is not supported"),
        ("ftp://host/m.onnx?token=abc", "model source ftp://host/m.onnx: scheme 'ftp' is not supported"),
        (
            "http://models.example/m.onnx",
            "model source http://models.example/m.onnx: plain http:// can be altered on the way; "
            "pin it with model.sha256 or use https://",
        ),
    ],
)
def test_sources_without_a_safe_transport_are_refused(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        resolve(source, tmp_path)
    assert caught.value.message.startswith(message)


# --- the network: private addresses, redirects, retries ---------------------------------------


class _Store(http.server.ThreadingHTTPServer):
    """A model store whose answers a test scripts: path -> list of (status, headers, body), one per hit."""

    daemon_threads = True

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.hits: list[str] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                store.hits.append(self.path)
                answers = store.script.get(self.path.split("?")[0]) or [(404, {}, b"")]
                status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def store() -> Iterator[_Store]:
    server = _Store()
    yield server
    server.shutdown()


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "RETRY_DELAYS_S", (0.0, 0.0))


def test_loopback_sources_are_refused_before_any_request_unless_allowed(
    store: _Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.script["/m.onnx"] = [(200, {}, MODEL.read_bytes())]
    monkeypatch.delenv(sources.ALLOW_PRIVATE)
    with pytest.raises(ModelUnavailable) as caught:
        resolve(store.url("/m.onnx"), Path("."), DIGEST)
    assert "model host 127.0.0.1 is a loopback address; refusing to fetch from it" in caught.value.message
    assert "set MODELFN_ALLOW_PRIVATE_SOURCES=1 to allow it" in caught.value.message
    assert store.hits == []
    monkeypatch.setenv(sources.ALLOW_PRIVATE, "1")
    assert resolve(store.url("/m.onnx"), Path("."), DIGEST).read_bytes() == MODEL.read_bytes()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a link-local address (instance metadata)"),
        ("169.254.170.2", "a link-local address (instance metadata)"),
        ("fd00:ec2::254", "a link-local address (instance metadata)"),
        ("fe80::1%eth0", "a link-local address (instance metadata)"),
        ("0.0.0.0", "not a host address"),
        ("10.0.12.7", None),
        ("52.216.8.21", None),
    ],
)
def test_which_addresses_are_refused(monkeypatch: pytest.MonkeyPatch, address: str, why: str | None) -> None:
    monkeypatch.delenv(sources.ALLOW_PRIVATE)
    assert refused_address(address) == why


def test_redirects_are_followed_only_to_https(store: _Store, no_retry_delay: None) -> None:
    store.script["/to-http"] = [(302, {"Location": store.url("/m.onnx")}, b"")]
    with pytest.raises(ModelUnavailable) as caught:
        resolve(store.url("/to-http"), Path("."), DIGEST)
    assert caught.value.message == (
        f"model source redirected to {store.url('/m.onnx')}; only redirects to https:// are followed"
    )
    closed = f"https://127.0.0.1:{_closed_port()}/m.onnx?X-Amz-Signature=SIGSECRET"
    store.script["/to-https"] = [(301, {"Location": closed}, b"")]
    with pytest.raises(ModelUnavailable) as caught:
        resolve(store.url("/to-https"), Path("."), DIGEST)
    assert "Connection refused" in caught.value.message and "SIGSECRET" not in caught.value.message
    assert store.hits == ["/to-http", "/to-https", "/to-https", "/to-https"]  # followed, and retried


def test_fetches_are_retried_on_5xx_and_connection_errors_not_on_4xx(
    store: _Store, no_retry_delay: None, caplog: pytest.LogCaptureFixture
) -> None:
    store.script["/flaky.onnx"] = [(503, {}, b""), (502, {}, b""), (200, {}, MODEL.read_bytes())]
    assert resolve(store.url("/flaky.onnx"), Path("."), DIGEST).read_bytes() == MODEL.read_bytes()
    assert store.hits == ["/flaky.onnx"] * 3
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 2 and "HTTP Error 503: Service Unavailable" in retries[0]

    store.script["/gone.onnx"] = [(500, {}, b"")] * 4
    with pytest.raises(ModelUnavailable, match="HTTP Error 500"):
        resolve(store.url("/gone.onnx"), Path("."), DIGEST)
    assert store.hits.count("/gone.onnx") == 3

    store.script["/forbidden.onnx"] = [(403, {}, b"")]
    with pytest.raises(ModelUnavailable, match="HTTP Error 403: Forbidden"):
        resolve(store.url("/forbidden.onnx"), Path("."), DIGEST)
    assert store.hits.count("/forbidden.onnx") == 1


def test_a_fetch_cut_short_and_retried_leaves_no_stale_bytes(store: _Store, no_retry_delay: None) -> None:
    data = MODEL.read_bytes()
    store.script["/cut.onnx"] = [(500, {}, data[:1000]), (200, {}, data)]
    assert resolve(store.url("/cut.onnx"), Path("."), DIGEST).read_bytes() == data


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- secrets: no credentials or query strings in any message or log line ------------------------

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
)


def test_redact_keeps_what_a_reader_needs_and_drops_the_secrets() -> None:
    assert (
        redact(f"could not fetch model {PRESIGNED}") == "could not fetch model https://bucket.s3.amazonaws.com/m.onnx"
    )
    assert (
        redact("'https://user:pa55@host:8443/a/m.onnx#t' and s3://b/k") == "'https://host:8443/a/m.onnx' and s3://b/k"
    )
    assert (
        public_message("Load model from /var/task/functions/x/model.onnx failed") == "Load model from model.onnx failed"
    )
    assert public_message("see https://h/a/b.onnx and s3://b/c/d") == "see https://h/a/b.onnx and s3://b/c/d"
    root = Path("/srv/functions/x")
    assert public_message("/srv/functions/x/sub/m.onnx in /srv/functions/x: /srv/functions/xy/m", root) == (
        "sub/m.onnx in .: m"
    )


def test_a_presigned_source_that_fails_tells_why_without_its_signature(
    tmp_path: Path, store: _Store, no_retry_delay: None, caplog: pytest.LogCaptureFixture
) -> None:
    store.script["/m.onnx"] = [(403, {}, b"")]
    signed = store.url("/m.onnx") + PRESIGNED.partition("m.onnx")[2]
    with_password = store.url("/m.onnx").replace("http://", "http://reader:pa55word@")
    closed = PRESIGNED.replace("bucket.s3.amazonaws.com", f"127.0.0.1:{_closed_port()}")
    for name, source in (("signed", signed), ("password", with_password), ("unreachable", closed)):
        folder = tmp_path / "functions" / name
        folder.mkdir(parents=True)
        (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "{source}"\nsha256 = "{DIGEST}"\n')
    registry = Registry.from_dir(tmp_path / "functions")
    caplog.set_level(logging.DEBUG)
    registry.load_all()
    failed = {name: exc.message for name, exc in registry.failed.items()}
    assert failed["signed"] == (
        f"function 'signed' is not available: could not fetch model {store.url('/m.onnx')}: "
        "HTTPError: HTTP Error 403: Forbidden"
    )
    assert "Connection refused" in failed["unreachable"] and "HTTP Error 403" in failed["password"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed to load" in logged
    for text in (*failed.values(), logged):
        for secret in ("X-Amz-Signature", "fe5f80f77d5f", "AKIAIOSFODNN7EXAMPLE", "pa55word", "reader"):
            assert secret not in text


def _provider_gets(provider: str, paths: list[str], functions: Path, name: str) -> list[tuple[int, str]]:
    """GET each of `paths`, in turn, on one instance of a provider's HTTP path, deployed as it
    starts: the local server (models loaded at start), the Lambda handler on HTTP API events, the
    Cloud Functions HTTP function and the Azure app's HTTP trigger, serving `name` under `functions`."""
    import json

    answers: list[tuple[int, str]] = []
    if provider == "local":
        import httpx
        from live_server import LiveServer

        from modelfn.asgi import create_app

        with LiveServer(create_app(Registry.from_dir(functions))) as live:
            for path in paths:
                answer = httpx.get(f"{live.url}{path}")
                answers.append((answer.status_code, answer.text))
    elif provider == "aws":
        from handlers import aws_lambda
        from handlers.aws import app
        from handlers.local.aws import LocalContext

        app.reset()
        try:
            for path in paths:
                event = json.loads((MODEL.parents[2] / "events" / "aws" / "apigw-v2.json").read_text())
                event.update(rawPath=path, body="", isBase64Encoded=False, headers={})
                event["requestContext"]["http"].update(method="GET", path=path)
                response = aws_lambda.handler(event, LocalContext(name))
                answers.append((int(response["statusCode"]), str(response["body"])))
        finally:
            app.reset()
    elif provider == "gcp":
        import flask

        from handlers import gcp_functions
        from handlers.gcp import instance

        instance._services.clear()
        try:
            for path in paths:
                with flask.Flask(__name__).test_request_context(path, method="GET"):
                    reply = gcp_functions.serve_http(flask.request)
                answers.append((int(reply.status_code), reply.get_data(as_text=True)))
        finally:
            instance._services.clear()
    else:
        import azure.functions as func

        from handlers.azure_functions import build_app
        from handlers.local.azure import close_app, invoke, registered

        azure_app = build_app(name, root=functions, enable=("http",))
        try:
            trigger = registered(azure_app, "http")  # the app indexes its functions once
            for path in paths:
                url = f"https://{name}.azurewebsites.net{path}"
                request = func.HttpRequest("GET", url, headers={}, route_params={"path": path.lstrip("/")}, body=b"")
                response, _ = invoke(trigger, request)
                answers.append((int(response.status_code), response.get_body().decode()))
        finally:
            close_app(azure_app)
    return answers


@pytest.mark.parametrize("provider", ["local", "aws", "gcp", "azure"])
def test_readiness_names_a_presigned_source_without_its_query_on_every_provider(
    tmp_path: Path,
    store: _Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    provider: str,
) -> None:
    """GET /v2/health/ready is open without the key: a model whose presigned source fails (a
    loopback store answering 404) is named there with its URL's path, never its signature."""
    import json

    signed = store.url("/m.onnx") + PRESIGNED.partition("m.onnx")[2]
    folder = tmp_path / "functions" / "signed"
    folder.mkdir(parents=True)
    (folder / "function.toml").write_text(
        f'name = "signed"\n[model]\nsource = "{signed}"\nsha256 = "{DIGEST}"\n[triggers]\nhttp = true\n'
    )
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(tmp_path / "functions"))
    monkeypatch.setenv("MODELFN_FUNCTION", "signed")
    monkeypatch.delenv("MODELFN_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)
    # a model request first: it loads the model where the provider does not load it at start
    paths = ["/v2/models/signed", "/v2/health/ready"]
    predicted, (status, text) = _provider_gets(provider, paths, tmp_path / "functions", "signed")
    assert status == 503, text
    assert json.loads(text) == {
        "ready": False,
        "failed": {
            "signed": f"function 'signed' is not available: could not fetch model {store.url('/m.onnx')}: "
            "HTTPError: HTTP Error 404: Not Found"
        },
    }
    assert predicted[0] == 503 and "could not fetch model" in predicted[1]
    assert any(hit.startswith("/m.onnx?X-Amz-Algorithm=") for hit in store.hits)  # the signed URL was asked
    seen = "\n".join([text, predicted[1], *(r.getMessage() for r in caplog.records), *capfd.readouterr()])
    for secret in ("X-Amz", "fe5f80f77d5f", "AKIAIOSFODNN7EXAMPLE", "m.onnx?"):
        assert secret not in seen, secret


def test_the_password_in_a_source_is_sent_as_basic_authentication(store: _Store) -> None:
    store.script["/private.onnx"] = [(200, {}, MODEL.read_bytes())]
    seen: list[str | None] = []
    handler = store.RequestHandlerClass
    original = handler.do_GET  # type: ignore[attr-defined]

    def remember(self: http.server.BaseHTTPRequestHandler) -> None:
        seen.append(self.headers.get("Authorization"))
        original(self)

    handler.do_GET = remember  # type: ignore[attr-defined]
    url = store.url("/private.onnx").replace("http://", "http://reader:pa%40ss@")
    assert resolve(url, Path("."), DIGEST).read_bytes() == MODEL.read_bytes()
    assert seen == ["Basic " + base64.b64encode(b"reader:pa@ss").decode()]


def test_local_failures_leave_no_server_path_in_readiness(tmp_path: Path) -> None:
    for name, source in (("missing", "absent.onnx"), ("corrupt", "model.onnx"), ("escaping", "../../etc/hostname")):
        folder = tmp_path / "functions" / name
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"not a model")
        (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "{source}"\n')
    registry = Registry.from_dir(tmp_path / "functions")
    registry.load_all()
    failed = {name: exc.message for name, exc in registry.failed.items()}
    assert failed["missing"] == (
        "function 'missing' is not available: model file 'absent.onnx' does not exist in the function's folder"
    )
    assert "lies outside the function's folder" in failed["escaping"]
    assert failed["corrupt"].startswith("function 'corrupt' is not available: ONNX Runtime could not load model.onnx")
    for message in failed.values():
        assert str(tmp_path) not in message and "/tmp" not in message, message


# --- downloads cut short ------------------------------------------------------------------------


def test_stale_partial_downloads_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import time

    host = sources._host()
    gone = subprocess.Popen(["true"])
    gone.wait()
    files = {
        "old": tmp_path / ".partial-abc123",
        "dead-process": tmp_path / f".partial-{host}~{gone.pid}~x1",
        "this-process": tmp_path / f".partial-{host}~{os.getpid()}~x2",
        "this-pid-not-downloading": tmp_path / f".partial-{host}~{os.getpid()}~x4",
        "other-host": tmp_path / f".partial-elsewhere~{gone.pid}~x3",
        "fresh": tmp_path / ".partial-def456",
        "model": tmp_path / "0123456789abcdef-model.onnx",
    }
    for path in files.values():
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(files["old"], (two_hours_ago, two_hours_ago))
    sources._downloading.add(files["this-process"].name)
    try:
        removed = clean_partials(tmp_path)
    finally:
        sources._downloading.discard(files["this-process"].name)
    assert sorted(p.name for p in removed) == sorted(
        files[k].name for k in ("old", "dead-process", "this-pid-not-downloading")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        files[k].name for k in ("this-process", "other-host", "fresh", "model")
    )


def test_the_first_download_of_a_process_cleans_the_cache(model_server: _ModelServer) -> None:
    import os
    import time

    cache_dir().mkdir(parents=True, exist_ok=True)
    stale = cache_dir() / ".partial-killed"
    stale.write_bytes(b"half a model")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    sources._cleaned.discard(cache_dir())
    resolve(_url(model_server), Path("."), DIGEST)
    assert not stale.exists()
