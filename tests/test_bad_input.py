"""The bad-input table (the README's "Bad input" section), row by row, on every provider's real HTTP path:
the local server under uvicorn, the Lambda handler on API Gateway HTTP API (v2) events, the
Cloud Functions HTTP function through functions-framework's app, and the Azure app's
registered HTTP function with `azure.functions.HttpRequest`. Each row must give the same
status, the same error code and a message naming the problem, never a traceback."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import LiveServer
from onnx import TensorProto
from onnx_models import function_folder, identity

from handlers.local.aws import LocalContext
from modelfn.http import MB

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
EVENTS = ROOT / "events" / "aws"
JSON = "application/json"

LOCAL_MAX_BODY_MB = 1  # the local server's cap is configurable: a small one keeps the row fast
LIMITS = {
    "local": LOCAL_MAX_BODY_MB * MB,
    "lambda": 6 * MB,  # synchronous invocation payload
    "gcp": 32 * MB,  # Cloud Functions' HTTP request limit
    "azure": 32 * MB,  # io.max_body_mb's default, under Azure's 100 MB HTTP limit
}

# A real row of scikit-learn's breast-cancer data (the first one): 30 features.
CANCER_ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095, 0.9053, 8.589]
CANCER_ROW += [153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33, 184.6, 2019.0, 0.1622]
CANCER_ROW += [0.6656, 0.7119, 0.2654, 0.4601, 0.1189]
NAN_ALLOWED_TOML = '[io]\nnan_policy = "allow"\n[triggers]\nhttp = true'


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def with_first(first: str) -> bytes:
    """A cancer row whose first feature is the raw JSON text `first` (NaN and Infinity are not JSON values)."""
    return f'{{"X": [{first}, {", ".join(map(str, CANCER_ROW[1:]))}]}}'.encode()


def v2_infer(datatype: str, shape: list[int], data: list[Any]) -> bytes:
    return dumps({"inputs": [{"name": "X", "shape": shape, "datatype": datatype, "data": data}]})


def v2_tensor(**fields: Any) -> dict[str, Any]:
    """A valid cancer row as an Open Inference Protocol input, with `fields` replaced."""
    return {"name": "X", "shape": [1, 30], "datatype": "FP32", "data": CANCER_ROW} | fields


DEEP = b"[" * 1000 + b"]" * 1000  # a RecursionError in the JSON parser once: a 500


def png_header(width: int, height: int) -> bytes:
    """A 45-byte PNG: the signature, an IHDR chunk declaring `width` x `height`, and no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Row:
    """One line of the table: a request (to the function `function`, deployed alone where the
    provider deploys one function per app) and what every provider must answer."""

    id: str
    function: str
    path: str
    body: bytes | Callable[[int], bytes]  # a callable gets the provider's body limit in bytes
    content_type: str | None
    status: int
    code: str | None  # None: a success, whose body must equal `result`
    fragment: str
    result: Any = None

    def payload(self, limit: int) -> bytes:
        return self.body(limit) if callable(self.body) else self.body


CANCER = "/functions/breast-cancer"
INFER = "/v2/models/breast-cancer/infer"
DIGITS = "/functions/digits"
ROWS = [
    Row("malformed-json", "breast-cancer", CANCER, b'{"X": [17.99, 10.38', JSON, 400, "bad_request", "malformed JSON"),
    Row("empty-body", "breast-cancer", CANCER, b"", JSON, 400, "bad_request", "empty body"),
    Row(
        "wrong-content-type",
        "breast-cancer",
        CANCER,
        b"17.99,10.38",
        "text/csv",
        415,
        "unsupported_media_type",
        "content type 'text/csv' is not accepted",
    ),
    Row("missing-input", "breast-cancer", CANCER, dumps({"inputs": {}}), JSON, 422, "invalid_input", "missing input"),
    Row(
        "unknown-input",
        "breast-cancer",
        CANCER,
        dumps({"X": CANCER_ROW, "Y": [1.0]}),
        JSON,
        422,
        "invalid_input",
        "unknown input(s) ['Y']",
    ),
    Row(
        "wrong-dtype",
        "breast-cancer",
        INFER,
        v2_infer("INT64", [1, 30], [1] * 30),
        JSON,
        422,
        "invalid_input",
        "datatype 'INT64' given, the model takes FP32",
    ),
    Row(
        "wrong-rank",
        "breast-cancer",
        CANCER,
        dumps({"X": [[CANCER_ROW]]}),
        JSON,
        422,
        "invalid_input",
        "expected rank 2",
    ),
    Row(
        "wrong-shape",
        "breast-cancer",
        CANCER,
        dumps({"X": CANCER_ROW[:29]}),
        JSON,
        422,
        "invalid_input",
        "axis 1 must be 30",
    ),
    Row(
        "wrong-shape-v2",
        "breast-cancer",
        INFER,
        v2_infer("FP32", [1, 30], CANCER_ROW[:29]),
        JSON,
        422,
        "invalid_input",
        "29 values do not fill shape [1, 30]",
    ),
    Row(
        "v2-name-not-a-string",  # found by schemathesis: an object as a tensor's name was a 500
        "breast-cancer",
        INFER,
        dumps({"inputs": [{"name": {"X": 1}, "shape": [1, 30], "datatype": "FP32", "data": CANCER_ROW}]}),
        JSON,
        422,
        "invalid_input",
        "inputs[0]: name and datatype must be strings",
    ),
    Row(
        "v2-huge-shape",  # np.prod wrapped to 0 once, then a reshape error: a 500
        "breast-cancer",
        INFER,
        dumps({"inputs": [v2_tensor(shape=[4611686018427387904, 4])]}),
        JSON,
        422,
        "invalid_input",
        "input 'X': shape [4611686018427387904, 4] declares more than the 2147483647 elements",
    ),
    Row(
        "v2-bool-in-shape",
        "breast-cancer",
        INFER,
        dumps({"inputs": [v2_tensor(shape=[True, 30])]}),
        JSON,
        422,
        "invalid_input",
        "input 'X': shape must be a list of non-negative integers",
    ),
    Row(
        "v2-duplicate-input",  # the last one won once
        "breast-cancer",
        INFER,
        dumps({"inputs": [v2_tensor(), v2_tensor(data=[0.0] * 30)]}),
        JSON,
        422,
        "invalid_input",
        "input 'X' is given more than once",
    ),
    Row(
        "v2-unknown-output",  # ignored once
        "breast-cancer",
        INFER,
        dumps({"inputs": [v2_tensor()], "outputs": [{"name": "nope"}]}),
        JSON,
        422,
        "invalid_input",
        "unknown output(s) ['nope']",
    ),
    Row(
        "v2-bool-for-float",  # accepted as 1.0 once
        "breast-cancer",
        INFER,
        dumps({"inputs": [v2_tensor(data=[True, *CANCER_ROW[1:]])]}),
        JSON,
        422,
        "invalid_input",
        "input 'X': true/false given for FP32; send numbers",
    ),
    Row("deep-json", "breast-cancer", CANCER, DEEP, JSON, 400, "bad_request", "JSON nested deeper than 64 levels"),
    Row("deep-json-v2", "breast-cancer", INFER, DEEP, JSON, 400, "bad_request", "JSON nested deeper than 64 levels"),
    Row(
        "deep-json-images",
        "digits",
        DIGITS,
        b'{"images": ' + DEEP + b"}",
        JSON,
        400,
        "bad_request",
        "JSON nested deeper than 64 levels of arrays and objects; flatten the document",
    ),
    Row("nan", "breast-cancer", CANCER, with_first("NaN"), JSON, 422, "invalid_input", "NaN and Infinity"),
    Row("infinity", "breast-cancer", CANCER, with_first("-Infinity"), JSON, 422, "invalid_input", "NaN and Infinity"),
    Row("float-overflow", "breast-cancer", CANCER, with_first("1e39"), JSON, 422, "invalid_input", "overflow float32"),
    Row(
        "nan-allowed",
        "nan-allowed",
        "/functions/nan-allowed",
        b'{"x": [NaN, 1.5, -Infinity]}',
        JSON,
        200,
        None,
        "",
        result={"y": [None, 1.5, None]},  # JSON has no NaN: non-finite outputs come back as null
    ),
    Row(
        "string-for-number",
        "breast-cancer",
        CANCER,
        dumps({"X": ["17.99", *CANCER_ROW[1:]]}),
        JSON,
        422,
        "invalid_input",
        "expected numbers",
    ),
    Row(
        "oversized",
        "breast-cancer",
        CANCER,
        lambda limit: b"x" * (limit + 1),
        JSON,
        413,
        "payload_too_large",
        "request body",
    ),
    # one byte under the 413: read, then refused for what it is, so the limit is exactly as documented
    Row("at-size-limit", "breast-cancer", CANCER, lambda limit: b"x" * limit, JSON, 400, "bad_request", "malformed"),
    Row(
        "corrupt-image",
        "digits",
        DIGITS,
        b"\x89PNG\r\n\x1a\n" + b"\x00not really a png" * 8,
        "image/png",
        400,
        "bad_request",
        "image could not be decoded",
    ),
    Row(
        "image-bomb-header",  # Pillow's DecompressionBombError escaped the codec once: a 500
        "digits",
        DIGITS,
        png_header(20000, 20000),
        "image/png",
        413,
        "payload_too_large",
        "the image declares more than 179.0 megapixels; this function decodes at most 40.0 megapixels",
    ),
    Row(
        "invalid-base64",
        "digits",
        DIGITS,
        dumps({"image": "iVBORw0K*not base64*"}),
        JSON,
        400,
        "bad_request",
        "invalid base64",
    ),
    Row(
        "unknown-function",
        "breast-cancer",
        "/functions/no-such-model",
        dumps({"X": CANCER_ROW}),
        JSON,
        404,
        "not_found",
        "unknown function 'no-such-model'",
    ),
    Row(
        "model-failed-to-load",
        "broken",
        "/functions/broken",
        dumps({"X": CANCER_ROW}),
        JSON,
        503,
        "model_unavailable",
        "function 'broken' is not available",
    ),
]


@dataclass
class Answer:
    status: int
    text: str


Send = Callable[[Row], Answer]


@pytest.fixture(scope="module")
def functions_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast-cancer and digits as shipped, a model that cannot load, and an identity model that allows NaN."""
    root = tmp_path_factory.mktemp("bad-input")
    for name in ("breast-cancer", "digits"):
        shutil.copytree(FUNCTIONS / name, root / name, ignore=shutil.ignore_patterns("*.py"))
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"these bytes are not an ONNX model")
    (broken / "function.toml").write_text('name = "broken"\n[model]\nsource = "model.onnx"\n[triggers]\nhttp = true\n')
    function_folder(root, "nan-allowed", identity(TensorProto.FLOAT, ["batch", 3]), NAN_ALLOWED_TOML)
    return root


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch, functions_root: Path) -> Iterator[Callable[[str], None]]:
    """Point the serverless adapters at one function, as one deployment serves it."""
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions_root))
    monkeypatch.delenv("MODELFN_MAX_BODY_MB", raising=False)
    monkeypatch.delenv("MODELFN_API_KEY", raising=False)
    yield lambda name: monkeypatch.setenv("MODELFN_FUNCTION", name)
    app.reset()  # the Lambda app built here must not outlive this test's environment


# --- local server: real uvicorn on loopback --------------------------------------------------


@pytest.fixture(scope="module")
def local_server(functions_root: Path) -> Iterator[httpx.Client]:
    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    app = create_app(Registry.from_dir(functions_root), max_body_mb=LOCAL_MAX_BODY_MB)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture
def local(local_server: httpx.Client) -> Send:
    def send(row: Row) -> Answer:
        headers = {"content-type": row.content_type} if row.content_type else {}
        response = local_server.post(row.path, content=row.payload(LIMITS["local"]), headers=headers)
        return Answer(response.status_code, response.text)

    return send


# --- AWS Lambda: the handler on an HTTP API (payload format 2.0) event ----------------------


def _sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def _binary(content_type: str | None) -> bool:
    """API Gateway base64-encodes bodies of non-text media types."""
    kind = (content_type or "").split(";")[0]
    return not (kind.startswith("text/") or kind.endswith("json"))


def http_api_event(path: str, content_type: str | None, body: bytes) -> dict[str, Any]:
    event = _sample("apigw-v2")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event.pop("pathParameters")
    headers = {k: v for k, v in event["headers"].items() if k != "content-type"}
    if content_type:
        headers["content-type"] = content_type
    event["headers"] = headers | {"content-length": str(len(body))}
    if body:
        binary = _binary(content_type)
        event["body"] = base64.b64encode(body).decode() if binary else body.decode()
        event["isBase64Encoded"] = binary
    else:
        del event["body"]  # API Gateway leaves the key out for an empty body
        event["isBase64Encoded"] = False
    return event


def lambda_answer(event: dict[str, Any]) -> Answer:
    from handlers import aws_lambda
    from handlers.aws import app

    app.reset()  # the environment names the function deployed: build the app afresh, as a new Lambda would
    response = aws_lambda.handler(event, LocalContext("modelfn-bad-input"))
    assert response["headers"] == {"content-type": "application/json"}
    return Answer(response["statusCode"], response["body"])


@pytest.fixture
def aws(deployed: Callable[[str], None]) -> Send:
    def send(row: Row) -> Answer:
        deployed(row.function)
        return lambda_answer(http_api_event(row.path, row.content_type, row.payload(LIMITS["lambda"])))

    return send


# --- Cloud Functions: functions-framework's app, in-process ---------------------------------


@pytest.fixture(scope="module")
def gcp_client(functions_root: Path) -> Iterator[Any]:
    """functions-framework's app for `modelfn_http`. Loading the source as the framework does sets
    FUNCTION_TARGET, adds a module and a sys.path entry and switches the function to Cloud Logging's
    JSON lines: all of it is undone afterwards so later tests see the process as it was."""
    import functions_framework

    logger = logging.getLogger("modelfn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELFN_FUNCTIONS_DIR", str(functions_root))
        patch.setenv("MODELFN_FUNCTION", "breast-cancer")  # what the import loads at instance start
        patch.setenv("FUNCTION_TARGET", "modelfn_http")
        patch.setattr(sys, "path", list(sys.path))
        patch.setitem(sys.modules, "gcp_functions", None)
        for name in ("handlers", "propagate", "level"):
            patch.setattr(logger, name, copy.copy(getattr(logger, name)))
        source = str(ROOT / "handlers" / "gcp_functions.py")
        yield functions_framework.create_app("modelfn_http", source).test_client()


@pytest.fixture
def gcp(gcp_client: Any, deployed: Callable[[str], None]) -> Send:
    def send(row: Row) -> Answer:
        deployed(row.function)
        headers = {"content-type": row.content_type} if row.content_type else {}
        response = gcp_client.post(row.path, data=row.payload(LIMITS["gcp"]), headers=headers)
        return Answer(response.status_code, response.get_data(as_text=True))

    return send


# --- Azure Functions: the app's registered HTTP function ------------------------------------


@pytest.fixture(scope="module")
def azure_apps(functions_root: Path) -> Iterator[dict[str, Any]]:
    """One app per function, as each is deployed; built on first use (`get_functions()` once per app)."""
    from handlers.azure_functions import build_app
    from handlers.local.azure import close_app, registered

    apps: dict[str, Any] = {}
    functions: dict[str, Any] = {}

    def http_function(name: str) -> Any:
        if name not in functions:
            apps[name] = build_app(name, root=functions_root, enable=("http",))
            functions[name] = registered(apps[name], "http")
        return functions[name]

    yield {"function": http_function}
    for app in apps.values():
        close_app(app)


@pytest.fixture
def azure(azure_apps: dict[str, Any], deployed: Callable[[str], None]) -> Send:
    import azure.functions as func

    from handlers.local.azure import invoke

    def send(row: Row) -> Answer:
        function = azure_apps["function"](row.function)
        headers = {"content-type": row.content_type} if row.content_type else {}
        request = func.HttpRequest(
            "POST",
            f"https://{row.function}.azurewebsites.net{row.path}",
            headers=headers,
            route_params={"path": row.path.lstrip("/")},
            body=row.payload(LIMITS["azure"]),
        )
        response, _ = invoke(function, request)
        assert response.mimetype == "application/json"
        return Answer(response.status_code, response.get_body().decode())

    return send


# --- the table, on every provider -----------------------------------------------------------


def check(row: Row, answer: Answer) -> None:
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    body = json.loads(answer.text)
    assert (answer.status, body.get("code") if row.code else None) == (row.status, row.code), body
    if row.code is None:
        assert body == row.result
        return
    assert set(body) <= {"error", "code", "detail"} and isinstance(body["error"], str)
    assert row.fragment in body["error"], body["error"]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
@pytest.mark.parametrize("provider", ["local", "aws", "gcp", "azure"])
def test_bad_input_table(provider: str, row: Row, request: pytest.FixtureRequest) -> None:
    send: Send = request.getfixturevalue(provider)
    check(row, send(row))


def _digit_png(index: int) -> tuple[bytes, int]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    buffer = io.BytesIO()
    Image.fromarray((255 - digits.images[index] * 255 / 16).round().astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue(), int(digits.target[index])


def rest_api_event(path: str, content_type: str, body: bytes) -> dict[str, Any]:
    """API Gateway REST (v1) with binary media types on: the body arrives base64-encoded."""
    event = _sample("apigw-v1")
    event["path"] = path
    event["pathParameters"] = {"name": path.rsplit("/", 1)[-1]}
    for name in ("headers", "multiValueHeaders"):
        event[name] = {k: v for k, v in event[name].items() if k != "Content-Type"}
    event["headers"]["Content-Type"] = content_type
    event["multiValueHeaders"]["Content-Type"] = [content_type]
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    return event


def test_image_rows_through_rest_api_with_base64_bodies(deployed: Callable[[str], None]) -> None:
    """The corrupt-image row through API Gateway REST, next to a real PNG on the same path:
    the 400 comes from the image, not from how the event carried it."""
    deployed("digits")
    png, digit = _digit_png(7)
    good = lambda_answer(rest_api_event(DIGITS, "image/png", png))
    assert good.status == 200 and json.loads(good.text)["label"] == digit
    row = next(r for r in ROWS if r.id == "corrupt-image")
    check(row, lambda_answer(rest_api_event(row.path, "image/png", row.payload(LIMITS["lambda"]))))


@pytest.mark.parametrize("row_id", ["deep-json", "deep-json-images", "image-bomb-header"])
def test_hostile_bodies_through_rest_api_with_base64_bodies(deployed: Callable[[str], None], row_id: str) -> None:
    """API Gateway REST (v1) carries the same hostile bodies base64-encoded: the same answers."""
    row = next(r for r in ROWS if r.id == row_id)
    deployed(row.function)
    check(row, lambda_answer(rest_api_event(row.path, row.content_type or JSON, row.payload(LIMITS["lambda"]))))


MEASURE_LAMBDA = """
import json, resource, sys, time
from handlers import aws_lambda
from handlers.local.aws import LocalContext

warm, event = (json.loads(open(path).read()) for path in sys.argv[1:3])
assert aws_lambda.handler(warm, LocalContext("digits"))["statusCode"] == 200  # model loaded, codecs imported
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
response = aws_lambda.handler(event, LocalContext("digits"))
seconds = time.perf_counter() - started
growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"status": response["statusCode"], "body": response["body"], "growth_kb": growth_kb,
                  "peak_before_kb": before, "seconds": seconds}))
"""


@pytest.mark.slow
def test_a_huge_one_colour_png_through_the_lambda_handler_is_refused_with_flat_memory(tmp_path: Path) -> None:
    """The 13300 x 13300 one-colour PNG (a few hundred KB, 177 megapixels) on an HTTP API event to
    digits: once decoded whole (peak RSS 61 -> 910 MB, 15 s, on a 1 GB function), now refused from
    its header. Measured in a fresh interpreter, after a real digit has loaded the model."""
    import subprocess

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (13300, 13300), 255).save(buffer, "PNG", optimize=True)
    png = buffer.getvalue()
    assert len(png) < 1 * MB
    (tmp_path / "warm.json").write_text(json.dumps(http_api_event(DIGITS, "image/png", _digit_png(7)[0])))
    (tmp_path / "huge.json").write_text(json.dumps(http_api_event(DIGITS, "image/png", png)))
    env = {**os.environ, "MODELFN_FUNCTIONS_DIR": str(FUNCTIONS), "MODELFN_FUNCTION": "digits"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("MODELFN_API_KEY", None)
    run = subprocess.run(
        [sys.executable, "-c", MEASURE_LAMBDA, str(tmp_path / "warm.json"), str(tmp_path / "huge.json")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["status"] == 413, measured
    assert json.loads(measured["body"]) == {
        "error": "the image is 13300x13300 (176.9 megapixels); this function decodes at most 40.0 megapixels "
        "per request (io.image.max_pixels)",
        "code": "payload_too_large",
        "detail": {"pixels": 13300 * 13300, "max_pixels": 40_000_000},
    }
    assert measured["growth_kb"] < 100 * 1024, measured  # decoding it took 850 MB more
    assert measured["seconds"] < 2.0, measured
    print(f"13300x13300 PNG ({len(png)} bytes) through the Lambda handler: {measured}")


def test_body_limits_are_capped_at_each_platforms_limit(
    deployed: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function asking for 500 MB bodies gets them locally, but no more than its platform carries."""
    from handlers.aws import app
    from handlers.azure_functions import ServedFunction
    from handlers.gcp import instance
    from modelfn.asgi import create_app
    from modelfn.registry import Registry
    from modelfn.spec import load_spec

    toml = "[io]\nmax_body_mb = 500\n[triggers]\nhttp = true"
    folder = function_folder(tmp_path, "large", identity(TensorProto.FLOAT, ["batch", 3]), toml)
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(tmp_path))
    deployed("large")
    app.reset()
    assert app.current().service.limit("large") == 6 * MB
    assert instance.service().limit("large") == 32 * MB
    assert ServedFunction(load_spec(folder)).service.limit("large") == 100 * MB

    def local_limit(**options: Any) -> int:
        return create_app(Registry.from_dir(tmp_path), preload=False, **options).service.limit("large")

    assert local_limit() == 500 * MB
    assert local_limit(max_body_mb=2) == 2 * MB


def test_local_server_refuses_a_chunked_body_over_its_cap(local_server: httpx.Client) -> None:
    """No Content-Length to refuse early on: the body is counted as it streams in."""

    def chunks() -> Iterator[bytes]:
        for _ in range(LOCAL_MAX_BODY_MB * 16 + 1):
            yield b"x" * (64 * 1024)

    response = local_server.post(CANCER, content=chunks(), headers={"content-type": JSON})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == {
        "error": f"request body exceeds the limit here of {LOCAL_MAX_BODY_MB * 1024 * 1024} bytes "
        f"({LOCAL_MAX_BODY_MB:.1f} MB)",
        "code": "payload_too_large",
    }
