"""The Azure Functions app in-process, with the `azure.functions` request, blob and queue types.

The Functions host (Core Tools) cannot run on this machine: its npm package downloads the host
binary from a host that is not reachable. So these tests call the functions the app registers
(`get_user_function()`) with the objects the Python worker would build, hand them
`OutputBinding` slots where the host would give its output bindings (the one stand-in here, for
the host), and check the bindings the host would index through `get_function_json()`."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import numpy as np
import pytest
from azure.functions.queue import QueueMessage
from live_server import LiveServer

from handlers.azure_functions import blob_bindings, build_app, output_blob_path, trigger_type
from handlers.local.azure import OutputBinding, close_app, invoke, local_invoke
from modelfn.asgi import create_app
from modelfn.errors import BadRequest, InvalidInput, NotFound, SpecError
from modelfn.registry import Registry
from modelfn.spec import BlobTrigger, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
EVENTS = ROOT / "events" / "azure"
CANCER_MODEL = FUNCTIONS / "breast-cancer" / "model.onnx"

ALL_TRIGGERS = """
[triggers]
http = { auth = "none" }
blob = { path = "uploads/{name}", output_path = "results/{name}.json", connection = "ModelStorage" }
queue = { queue = "scoring-in", output_queue = "scoring-out", connection = "ModelStorage" }
"""


def cancer_folder(root: Path, name: str = "cancer", triggers: str = ALL_TRIGGERS) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(CANCER_MODEL, folder / "model.onnx")
    (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "model.onnx"\n{triggers}')
    return root


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cancer_folder(tmp_path_factory.mktemp("azure-functions"))


@pytest.fixture(scope="module")
def functions(app_root: Path) -> dict[str, Any]:
    """The registered functions by trigger; `get_functions()` may run once per app object."""
    app = build_app("cancer", root=app_root)
    return {trigger_type(f): f for f in app.get_functions()}


def http_request(method: str, path: str, body: Any = None, content_type: str = "application/json") -> func.HttpRequest:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    headers = {"content-type": content_type} if raw else {}
    return func.HttpRequest(
        method, f"https://cancer.azurewebsites.net/{path}", headers=headers, route_params={"path": path}, body=raw
    )


def call_http(function: Any, request: func.HttpRequest) -> tuple[int, Any]:
    response, _ = invoke(function, request)
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def blob_stream(name: str, data: bytes) -> func.InputStream:
    return func.blob.InputStream(data=data, name=name, uri=f"http://127.0.0.1:10000/devstoreaccount1/{name}")


def test_bindings_the_host_indexes_match_the_spec(functions: dict[str, Any]) -> None:
    assert set(functions) == {"http", "blob", "queue"}
    indexed = {kind: json.loads(f.get_function_json()) for kind, f in functions.items()}
    assert {k: f.get_function_name() for k, f in functions.items()} == {
        "http": "cancer_http",
        "blob": "cancer_blob",
        "queue": "cancer_queue",
    }
    http = by_name(indexed["http"])
    assert http["req"] | {"methods": sorted(http["req"]["methods"])} == {
        "direction": "IN",
        "type": "httpTrigger",
        "route": "{*path}",
        "authLevel": "ANONYMOUS",
        "methods": ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"],
    }
    assert http["$return"] == {"direction": "OUT", "type": "http"}
    assert indexed["blob"]["scriptFile"] == "function_app.py"
    assert by_name(indexed["blob"]) == {
        "blob": {"direction": "IN", "type": "blobTrigger", "path": "uploads/{name}", "connection": "ModelStorage"},
        "result": {"direction": "OUT", "type": "blob", "path": "results/{name}.json", "connection": "ModelStorage"},
    }
    assert by_name(indexed["queue"]) == {
        "msg": {"direction": "IN", "type": "queueTrigger", "queueName": "scoring-in", "connection": "ModelStorage"},
        "result": {"direction": "OUT", "type": "queue", "queueName": "scoring-out", "connection": "ModelStorage"},
    }


def by_name(function_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: {k: v for k, v in b.items() if k != "name"} for b in function_json["bindings"]}


def test_each_function_takes_exactly_its_bindings_with_worker_types(functions: dict[str, Any]) -> None:
    """What the Python worker checks at indexing: every parameter is a binding, annotated with a type it converts."""
    expected = {
        "http": {"req": func.HttpRequest, "return": func.HttpResponse},
        "blob": {"blob": func.InputStream, "result": func.Out[str], "return": type(None)},
        "queue": {"msg": func.QueueMessage, "result": func.Out[str], "return": type(None)},
    }
    for kind, function in functions.items():
        hints = typing.get_type_hints(function.get_user_function())
        assert hints == expected[kind]
        names = {b.name for b in function.get_bindings()} - {"$return"}
        assert names == set(hints) - {"return"}


def test_a_spec_without_event_triggers_registers_http_only(tmp_path: Path) -> None:
    root = cancer_folder(tmp_path, triggers="")
    app = build_app("cancer", root=root)
    assert [json.loads(f.get_function_json())["bindings"][0]["authLevel"] for f in app.get_functions()] == ["FUNCTION"]


def test_the_function_comes_from_the_environment_or_is_the_only_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cancer_folder(tmp_path, "only", triggers="")
    only = build_app(root=root, preload=False)
    assert [f.get_function_name() for f in only.get_functions()] == ["only_http"]
    cancer_folder(tmp_path, "other", triggers="")
    with pytest.raises(SpecError, match=r"set MODELFN_FUNCTION to one of \['only', 'other'\]"):
        build_app(root=root, preload=False)
    monkeypatch.setenv("MODELFN_FUNCTION", "other")
    assert [f.get_function_name() for f in build_app(root=root, preload=False).get_functions()] == ["other_http"]
    with pytest.raises(NotFound, match="no function named 'nope'"):
        build_app("nope", root=root)


@pytest.fixture(scope="module")
def local_server() -> Iterator[LiveServer]:
    with LiveServer(create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]))) as live:
        yield live


PARITY = [
    ("POST", "functions/breast-cancer", "one row", "application/json"),
    ("POST", "functions/breast-cancer", "two rows", "application/json"),
    ("POST", "functions/breast-cancer", b"{not json", "application/json"),
    ("POST", "functions/breast-cancer", {"X": [1.0, 2.0]}, "application/json"),
    ("POST", "functions/breast-cancer", b"hello", "text/plain"),
    ("POST", "functions/unknown", {"X": [1.0]}, "application/json"),
    ("POST", "v2/models/breast-cancer/infer", "v2", "application/json"),
    ("GET", "v2/models/breast-cancer", None, ""),
    ("GET", "v2/models/breast-cancer/ready", None, ""),
    ("GET", "v2/health/live", None, ""),
    ("GET", "v2/health/ready", None, ""),
    ("GET", "functions", None, ""),
]
# Routes FastAPI answers itself on the local server, with its own `{"detail": ...}` body: status only.
UNROUTED = [("GET", "nowhere"), ("DELETE", "functions"), ("PUT", "functions/breast-cancer")]


def _parity_body(body: Any, rows: np.ndarray) -> Any:
    named = {
        "one row": {"X": rows[0].tolist()},
        "two rows": {"X": rows[:2].tolist()},
        "v2": {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": rows[0].tolist()}]},
    }
    return named.get(body, body) if isinstance(body, str) else body


@pytest.mark.parametrize("http_mode", ["direct", "asgi"])
def test_http_trigger_answers_like_the_local_server(
    http_mode: str, local_server: LiveServer, cancer_rows: np.ndarray
) -> None:
    app = build_app("breast-cancer", root=FUNCTIONS, http_mode=http_mode)
    (function,) = app.get_functions()
    for method, path, body, content_type in PARITY:
        body = _parity_body(body, cancer_rows)
        raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        local = httpx.request(
            method, f"{local_server.url}/{path}", content=raw, headers={"content-type": content_type} if raw else {}
        )
        status, answer = call_http(function, http_request(method, path, raw, content_type))
        assert (status, answer) == (local.status_code, local.json()), (method, path)
    for method, path in UNROUTED:
        local = httpx.request(method, f"{local_server.url}/{path}")
        status, answer = call_http(function, http_request(method, path))
        if http_mode == "asgi":
            assert (status, answer) == (local.status_code, local.json()), (method, path)
        else:
            assert status == local.status_code and answer["code"] in ("not_found", "method_not_allowed"), path
    _, answer = call_http(function, http_request("POST", "functions/breast-cancer", {"X": cancer_rows[:2].tolist()}))
    assert answer["label"] == [0, 0] and np.allclose(np.sum(answer["probabilities"], axis=1), 1, atol=1e-5)
    close_app(app)


def test_http_trigger_refuses_a_method_the_route_does_not_take(functions: dict[str, Any]) -> None:
    status, answer = call_http(functions["http"], http_request("PUT", "functions/cancer", {"X": [0.0] * 30}))
    assert status == 405 and answer["code"] == "method_not_allowed"


def test_http_trigger_checks_the_api_key_when_one_is_set(app_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFN_API_KEY", "s3cret")
    (function, *_) = build_app("cancer", root=app_root).get_functions()
    assert call_http(function, http_request("GET", "functions"))[0] == 401
    keyed = http_request("GET", "functions")
    keyed = func.HttpRequest(
        "GET", keyed.url, headers={"x-api-key": "s3cret"}, route_params={"path": "functions"}, body=b""
    )
    assert call_http(function, keyed) == (200, {"functions": ["cancer"]})


def test_blob_trigger_writes_the_prediction_through_the_output_binding(
    functions: dict[str, Any], cancer_rows: np.ndarray
) -> None:
    import onnxruntime as ort

    labels, probabilities = ort.InferenceSession(str(CANCER_MODEL)).run(None, {"X": cancer_rows[:3]})
    data = json.dumps({"X": cancer_rows[:3].tolist()}).encode()
    _, outputs = invoke(functions["blob"], blob_stream("uploads/batch-7.json", data))
    document = json.loads(outputs["result"].get() or "")
    assert document["function"] == "cancer" and document["blob"] == "uploads/batch-7.json"
    assert document["result"]["label"] == labels.tolist()
    assert np.allclose(document["result"]["probabilities"], probabilities, atol=1e-6)


def test_blob_without_a_json_extension_is_recognised_by_its_content(
    functions: dict[str, Any], cancer_rows: np.ndarray
) -> None:
    data = json.dumps({"X": cancer_rows[19].tolist()}).encode()
    _, outputs = invoke(functions["blob"], blob_stream("uploads/patient-19", data))
    assert json.loads(outputs["result"].get() or "")["result"]["label"] == 1


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("uploads/bad.json", b"{not json", 400, "bad_request"),
        ("uploads/short.json", b'{"X": [1, 2, 3]}', 422, "invalid_input"),
        ("uploads/notes.txt", b"hello", 415, "unsupported_media_type"),
    ],
)
def test_a_blob_that_cannot_be_predicted_gets_an_error_document(
    functions: dict[str, Any], name: str, data: bytes, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="modelfn"):
        _, outputs = invoke(functions["blob"], blob_stream(name, data))
    document = json.loads(outputs["result"].get() or "")
    assert (document["status"], document["code"], document["blob"]) == (status, code, name)
    assert f"blob {name} cannot be predicted ({status})" in caplog.text


def test_blob_trigger_reads_images_by_extension() -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    app = build_app("digits", root=FUNCTIONS, enable=("blob",))
    blob = next(f for f in app.get_functions() if trigger_type(f) == "blob")
    for index in (0, 7, 42):
        buffer = io.BytesIO()
        Image.fromarray((255 - digits.images[index] * 255 / 16).round().astype(np.uint8), "L").save(buffer, "PNG")
        _, outputs = invoke(blob, blob_stream(f"incoming/digit-{index}.png", buffer.getvalue()))
        assert json.loads(outputs["result"].get() or "")["result"]["label"] == int(digits.target[index])


def test_queue_trigger_sends_the_prediction_to_the_output_queue(
    functions: dict[str, Any], cancer_rows: np.ndarray
) -> None:
    message = QueueMessage(id="m-1", body=json.dumps({"X": cancer_rows[19].tolist()}).encode(), dequeue_count=1)
    _, outputs = invoke(functions["queue"], message)
    sent = json.loads(outputs["result"].get() or "")
    assert sent["function"] == "cancer" and sent["id"] == "m-1" and sent["result"]["label"] == 1
    assert abs(sum(sent["result"]["probabilities"]) - 1) < 1e-5


@pytest.mark.parametrize(
    ("body", "error"), [(b"{not json", BadRequest), (b'{"X": [1, 2]}', InvalidInput), (b"", BadRequest)]
)
def test_a_malformed_queue_message_raises_for_the_poison_queue_and_says_so(
    functions: dict[str, Any], body: bytes, error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    output = OutputBinding()
    message = QueueMessage(id="m-bad", body=body, dequeue_count=5)
    with caplog.at_level(logging.ERROR, logger="modelfn"), pytest.raises(error):
        functions["queue"].get_user_function()(msg=message, result=output)
    assert output.get() is None
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    line = record.getMessage()
    assert "queue message m-bad on scoring-in is malformed" in line and "attempt 5" in line
    assert "maxDequeueCount" in line and "scoring-in-poison" in line


def test_blob_binding_expressions_give_the_output_path() -> None:
    trigger = BlobTrigger(path="uploads/{day}/{name}.json", output_path="results/{day}/{name}.out.json")
    assert blob_bindings(trigger.path, "uploads/2024-05-01/a.json") == {"day": "2024-05-01", "name": "a"}
    assert output_blob_path(trigger, "uploads/2024-05-01/a.json") == "results/2024-05-01/a.out.json"
    assert output_blob_path(BlobTrigger(), "incoming/x/y.png") == "predictions/x/y.png.json"
    with pytest.raises(NotFound, match="does not match the trigger path"):
        blob_bindings(trigger.path, "elsewhere/a.json")


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        ('blob = { path = "data/{name}", output_path = "data/out/{name}.json" }', "would re-trigger"),
        ('blob = { path = "data/in/{name}", output_path = "data/{name}.json" }', "overlaps path"),
        ('queue = { queue = "jobs", output_queue = "jobs" }', "would re-trigger it"),
        ('queue = { queue = "Jobs_In" }', "not an Azure queue name"),
    ],
)
def test_triggers_that_would_re_trigger_or_cannot_exist_are_refused(triggers: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(_toml(f'name = "x"\n[model]\nsource = "m.onnx"\n[triggers]\n{triggers}'), Path("."))


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def test_separate_containers_are_accepted() -> None:
    triggers = '[triggers]\nblob = { path = "in/{name}", output_path = "in-x/{name}" }'
    spec = parse_spec(_toml(f'name = "x"\n[model]\nsource = "m.onnx"\n{triggers}'), Path("."))
    assert vars(spec.triggers.blob) == vars(BlobTrigger(path="in/{name}", output_path="in-x/{name}"))


def test_local_invoke_runs_the_sample_events() -> None:
    events = {kind: json.loads((EVENTS / f"{kind}.json").read_text()) for kind in ("http", "blob", "queue")}
    http = local_invoke("breast-cancer", events["http"])
    assert http["status"] == 200 and http["body"]["label"] == 1
    blob = local_invoke("breast-cancer", events["blob"])
    assert blob["output"] == "predictions/patient-0001.json.json"
    assert blob["document"]["blob"] == "incoming/patient-0001.json" and blob["document"]["result"]["label"] == [0, 1]
    queue = local_invoke("breast-cancer", events["queue"])
    assert queue["output"] == "modelfn-results" and queue["message"]["id"] == events["queue"]["id"]
    assert queue["message"]["result"]["label"] == 0


def test_local_invoke_takes_base64_blob_content_and_string_queue_bodies(cancer_rows: np.ndarray) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()
    broken = local_invoke("digits", {"name": "incoming/broken.png", "content_base64": png})
    assert broken["document"]["status"] == 400 and "could not be decoded" in broken["document"]["error"]
    with pytest.raises(BadRequest, match="malformed JSON"):
        local_invoke("breast-cancer", {"id": "q", "body": "{oops", "dequeue_count": 2})
    text = json.dumps({"X": cancer_rows[0].tolist()})
    assert local_invoke("breast-cancer", {"id": "q", "body": text})["message"]["result"]["label"] == 0


def test_the_blob_event_lies_under_the_trigger_path() -> None:
    trigger = load_spec(FUNCTIONS / "breast-cancer").triggers.blob or BlobTrigger()
    blob = json.loads((EVENTS / "blob.json").read_text())
    assert blob_bindings(trigger.path, blob["name"]) == {"name": "patient-0001.json"}
