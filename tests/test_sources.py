"""Model sources against real servers on loopback: an HTTP server and moto's S3 server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelfn.errors import IntegrityError, ModelUnavailable
from modelfn.sources import cache_dir, resolve

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
        resolve(_url(model_server, "/missing.onnx"), Path("."))


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
