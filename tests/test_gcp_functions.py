"""Cloud Functions adapter under functions-framework's own server (a subprocess, loopback only):
HTTP routes identical to the local server, Pub/Sub CloudEvents in structured and binary mode and
as raw push bodies, malformed and retryable messages, and Cloud Storage end to end against
gcp-storage-emulator with the real google-cloud-storage client."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import LiveServer, wait_until

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events" / "gcp"
HANDLER = ROOT / "handlers" / "gcp_functions.py"
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
FUNCTIONS_FRAMEWORK = Path(sys.executable).parent / "functions-framework"
INVOKE = [sys.executable, "-m", "modelfn.cli", "invoke"]

BREAST_CANCER_TOML = """name = "breast-cancer"
[model]
source = "model.onnx"
[triggers]
http = true
gcs = {{ prefix = "incoming/", output_prefix = "predictions/" }}
{extra}
"""


def event_file(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_functions(root: Path, extra: str = "", broken: bool = False) -> Path:
    folder = root / "breast-cancer"
    folder.mkdir(parents=True)
    (folder / "function.toml").write_text(BREAST_CANCER_TOML.format(extra=extra))
    shutil.copy(MODEL, folder / "model.onnx")
    if broken:
        # A model that cannot be loaded: the retryable case (ModelUnavailable).
        (root / "broken").mkdir()
        (root / "broken" / "function.toml").write_text('name = "broken"\n[model]\nsource = "missing.onnx"\n')
    return root


class FunctionsFramework:
    """`functions-framework --target ... --source handlers/gcp_functions.py` on a loopback port."""

    def __init__(self, target: str, signature: str, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [str(FUNCTIONS_FRAMEWORK), f"--target={target}", f"--source={HANDLER}"]
        command += [f"--signature-type={signature}", "--host=127.0.0.1", f"--port={self.port}"]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WORKERS": "1", "THREADS": "4", **env}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"functions-framework did not start:\n{log.read_text()}") from None
                time.sleep(0.1)

    def lines(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines the function wrote so far. Read while the server may be
        writing: only whole lines count, a last one without its newline is still being written."""
        found = []
        for line in self.log.read_bytes().split(b"\n")[:-1]:
            if line.startswith(b"{"):
                found.append(json.loads(line))
        return found

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:  # gunicorn lets requests in flight (an emulator's push) finish first
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[str]:
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_functions(tmp_path_factory.mktemp("gcp-functions"))


@pytest.fixture(scope="module")
def http_function(functions_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionsFramework]:
    env = {"MODELFN_FUNCTIONS_DIR": str(functions_dir), "MODELFN_FUNCTION": "breast-cancer"}
    server = FunctionsFramework("modelfn_http", "http", env, tmp_path_factory.mktemp("ff-http") / "log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def event_function(
    functions_dir: Path, gcs_emulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionsFramework]:
    env = {
        "MODELFN_FUNCTIONS_DIR": str(functions_dir),
        "MODELFN_FUNCTION": "breast-cancer",
        "STORAGE_EMULATOR_HOST": gcs_emulator,
    }
    server = FunctionsFramework("modelfn_event", "cloudevent", env, tmp_path_factory.mktemp("ff-event") / "log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_server(functions_dir: Path) -> Iterator[LiveServer]:
    """The local server (`modelfn serve`, FastAPI) on the same functions: the reference."""
    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    with LiveServer(create_app(Registry.from_dir(functions_dir))) as server:
        yield server


def test_http_function_predicts_like_the_local_server(
    http_function: FunctionsFramework, local_server: LiveServer, cancer_rows: np.ndarray
) -> None:
    single = {"X": cancer_rows[0].tolist()}
    batch = {"X": cancer_rows[:3].tolist()}
    v2 = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 30], "data": cancer_rows[:2].ravel().tolist()}]}
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/functions/breast-cancer", single),
        ("POST", "/functions/breast-cancer", batch),
        ("POST", "/v2/models/breast-cancer/infer", v2),
        ("GET", "/v2/models/breast-cancer", None),
        ("GET", "/v2/models/breast-cancer/ready", None),
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/functions", None),
        ("POST", "/functions/breast-cancer", {"X": [1.0, 2.0]}),  # wrong shape: 422
        ("POST", "/functions/breast-cancer", b'{"X": [1.0,'),  # malformed JSON: 400
        ("POST", "/functions/no-such-function", single),  # 404
    ]
    for method, path, body in requests:
        content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        headers = {"content-type": "application/json"}
        ours = httpx.request(method, http_function.url + path, content=content, headers=headers)
        reference = httpx.request(method, local_server.url + path, content=content, headers=headers)
        assert (ours.status_code, ours.json()) == (reference.status_code, reference.json()), (method, path)
        assert ours.headers["content-type"] == "application/json"

    wrong_method = httpx.get(f"{http_function.url}/functions/breast-cancer")
    reference = httpx.get(f"{local_server.url}/functions/breast-cancer")
    assert (wrong_method.status_code, wrong_method.json()) == (reference.status_code, reference.json())
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"

    answer = httpx.post(f"{http_function.url}/functions/breast-cancer", json=single).json()
    assert answer["label"] == 0  # row 0 of the data set is malignant
    assert answer["probabilities"][0] > 0.99


def test_http_event_file_gives_its_prediction(http_function: FunctionsFramework) -> None:
    event = event_file("http-predict.json")
    response = httpx.request(event["method"], http_function.url + event["path"], json=event["body"])
    assert response.status_code == 200
    assert response.json()["label"] == 0


def test_http_function_takes_a_raw_pubsub_push_body(http_function: FunctionsFramework) -> None:
    push = event_file("pubsub-push.json")
    response = httpx.post(http_function.url + "/", json=push)
    assert response.status_code == 200
    outcome = response.json()
    assert outcome["outcome"] == "logged"
    assert outcome["message_id"] == "11937923948280"
    assert outcome["result"]["label"] == 1
    assert outcome["result"]["probabilities"][1] == pytest.approx(0.9994, abs=1e-3)


def test_http_push_of_a_malformed_message_is_acknowledged(http_function: FunctionsFramework) -> None:
    push = event_file("pubsub-push.json")
    push["message"]["data"] = "not base64 at all!"
    response = httpx.post(http_function.url + "/", json=push)
    assert response.status_code == 200  # 2xx: Pub/Sub does not redeliver it
    assert response.json()["outcome"] == "dropped"
    assert response.json()["code"] == "bad_request"


def _published_results(server: FunctionsFramework, message_id: str) -> list[dict[str, Any]]:
    lines = [line for line in server.lines() if f"Pub/Sub message {message_id} " in line["message"]]
    return [json.loads(line["message"].split(": ", 1)[1]) for line in lines if line["message"].startswith("result")]


def test_pubsub_cloudevent_in_structured_mode(event_function: FunctionsFramework) -> None:
    from cloudevents.conversion import to_structured
    from cloudevents.http import CloudEvent

    event = event_file("pubsub-message-published.json")
    attributes = {k: v for k, v in event.items() if k != "data"}
    headers, body = to_structured(CloudEvent(attributes, event["data"]))
    assert headers["content-type"] == "application/cloudevents+json"
    response = httpx.post(event_function.url, content=body, headers=headers)
    assert response.status_code == 200
    (result,) = _published_results(event_function, "11937923948272")
    assert result["label"] == 0
    assert result["probabilities"][0] == pytest.approx(0.9984, abs=1e-3)


def test_pubsub_cloudevent_in_binary_mode(event_function: FunctionsFramework, cancer_rows: np.ndarray) -> None:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    event = event_file("pubsub-message-published.json")
    data = json.loads(json.dumps(event["data"]))
    data["message"]["messageId"] = "binary-1"
    data["message"]["data"] = base64.b64encode(json.dumps({"X": cancer_rows[19].tolist()}).encode()).decode()
    attributes = {k: v for k, v in event.items() if k != "data"} | {"id": "binary-1"}
    headers, body = to_binary(CloudEvent(attributes, data))
    assert headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    response = httpx.post(event_function.url, content=body, headers=headers)
    assert response.status_code == 200
    (result,) = _published_results(event_function, "binary-1")
    assert result["label"] == 1  # row 19 is benign


def test_raw_pubsub_push_reaches_the_cloudevent_function(event_function: FunctionsFramework) -> None:
    push = event_file("pubsub-push.json")
    push["message"]["messageId"] = push["message"]["message_id"] = "raw-push-1"
    response = httpx.post(event_function.url, json=push)
    assert response.status_code == 200
    (result,) = _published_results(event_function, "raw-push-1")
    assert result["label"] == 1


def test_malformed_pubsub_message_is_dropped_with_a_log_line(event_function: FunctionsFramework) -> None:
    event = event_file("pubsub-malformed.json")
    response = httpx.post(event_function.url, json=event, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 200  # acknowledged: a retry would fail the same way
    (line,) = [line for line in event_function.lines() if "11937923948273" in line["message"]]
    assert line["severity"] == "WARNING"
    assert line["message"].startswith("dropped Pub/Sub message 11937923948273 for breast-cancer: malformed JSON")
    assert "not retried" in line["message"]


def test_unsupported_event_type_is_dropped(event_function: FunctionsFramework) -> None:
    event = event_file("pubsub-message-published.json") | {"type": "google.cloud.audit.log.v1.written", "id": "a-1"}
    response = httpx.post(event_function.url, json=event, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 200
    assert any("dropped CloudEvent a-1" in line["message"] for line in event_function.lines())


def test_model_unavailable_is_retried(tmp_path: Path) -> None:
    functions = make_functions(tmp_path / "functions", broken=True)
    env = {"MODELFN_FUNCTIONS_DIR": str(functions), "MODELFN_FUNCTION": "broken"}
    server = FunctionsFramework("modelfn_event", "cloudevent", env, tmp_path / "log")
    try:
        event = event_file("pubsub-message-published.json")
        response = httpx.post(server.url, json=event, headers={"content-type": "application/cloudevents+json"})
        # an error status: Eventarc (and a push subscription) deliver the event again
        assert response.status_code == 500
        (line,) = [line for line in server.lines() if line["message"].startswith("retrying")]
        assert line["severity"] == "ERROR"
        assert "Pub/Sub message 11937923948272 for broken" in line["message"]
        assert "missing.onnx" in line["message"]
    finally:
        server.stop()


def _gcs_event(bucket: str, name: str, content_type: str = "application/json") -> dict[str, Any]:
    event = event_file("storage-object-finalized.json")
    event["id"] = f"gcs-{name}"
    event["source"] = f"//storage.googleapis.com/projects/_/buckets/{bucket}"
    event["subject"] = f"objects/{name}"
    event["data"] |= {"bucket": bucket, "name": name, "contentType": content_type}
    return event


def test_storage_object_is_predicted_and_written_under_the_output_prefix(
    event_function: FunctionsFramework, gcs_emulator: str, cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    client = storage.Client()
    bucket = client.create_bucket("modelfn-gcs-e2e")
    rows = {"X": cancer_rows[[0, 19]].tolist()}
    bucket.blob("incoming/day-1/batch.json").upload_from_string(json.dumps(rows), content_type="application/json")

    event = _gcs_event(bucket.name, "incoming/day-1/batch.json")
    headers, body = to_binary(CloudEvent({k: v for k, v in event.items() if k != "data"}, event["data"]))
    # the function reads and writes the emulator within the request: more than httpx's 5 s default
    # on a loaded machine, for the first request that sets up the storage client
    assert httpx.post(event_function.url, content=body, headers=headers, timeout=60).status_code == 200

    written = json.loads(bucket.blob("predictions/day-1/batch.json.json").download_as_bytes())
    assert written["label"] == [0, 1]
    assert np.asarray(written["probabilities"]).shape == (2, 2)

    # Writing the result finalizes an object too: that event must not trigger another prediction.
    echo = _gcs_event(bucket.name, "predictions/day-1/batch.json.json")
    assert httpx.post(
        event_function.url, json=echo, headers={"content-type": "application/cloudevents+json"}, timeout=60
    ).is_success
    assert not bucket.blob("predictions/predictions/day-1/batch.json.json.json").exists()
    assert sorted(b.name for b in client.list_blobs(bucket.name)) == [
        "incoming/day-1/batch.json",
        "predictions/day-1/batch.json.json",
    ]
    assert any("under the output prefix" in line["message"] for line in event_function.lines())


def test_storage_objects_outside_the_prefix_or_gone_are_dropped(
    event_function: FunctionsFramework, gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = storage.Client().create_bucket("modelfn-gcs-skips")
    bucket.blob("elsewhere/x.json").upload_from_string('{"X": []}', content_type="application/json")
    bucket.blob("incoming/bad.json").upload_from_string("{not json", content_type="application/json")
    headers = {"content-type": "application/cloudevents+json"}
    for name in ("elsewhere/x.json", "incoming/bad.json", "incoming/deleted-since.json"):
        response = httpx.post(event_function.url, json=_gcs_event(bucket.name, name), headers=headers, timeout=60)
        assert response.status_code == 200, name
    messages = [line["message"] for line in event_function.lines()]
    assert any("skipped gs://modelfn-gcs-skips/elsewhere/x.json: outside the input prefix" in m for m in messages)
    assert any(m.startswith("dropped object gs://modelfn-gcs-skips/incoming/bad.json") for m in messages)
    assert any(m.startswith("dropped object gs://modelfn-gcs-skips/incoming/deleted-since.json") for m in messages)
    assert [b.name for b in bucket.list_blobs(prefix="predictions/")] == []


def test_local_invoke_runs_every_sample_event(monkeypatch: pytest.MonkeyPatch, gcs_emulator: str) -> None:
    from google.cloud import storage

    from handlers.local.gcp import local_invoke

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    sample = event_file("storage-object-finalized.json")
    bucket = storage.Client().create_bucket(sample["data"]["bucket"])
    request = event_file("http-predict.json")["body"]
    bucket.blob(sample["data"]["name"]).upload_from_string(json.dumps(request), content_type="application/json")

    outcomes = {
        path.name: local_invoke("breast-cancer", json.loads(path.read_text())) for path in EVENTS.glob("*.json")
    }
    assert outcomes["http-predict.json"]["status"] == 200
    assert outcomes["http-predict.json"]["body"]["label"] == 0
    assert outcomes["http-health-ready.json"] == {
        "status": 200,
        "headers": {"content-type": "application/json", "content-length": "14"},
        "body": {"ready": True},
    }
    assert outcomes["pubsub-message-published.json"]["result"]["label"] == 0
    assert outcomes["pubsub-push.json"]["status"] == 200
    assert outcomes["pubsub-push.json"]["body"]["result"]["label"] == 1
    assert outcomes["pubsub-malformed.json"]["outcome"] == "dropped"
    assert outcomes["storage-object-finalized.json"] == {
        "outcome": "written",
        "function": "breast-cancer",
        "object": "gs://modelfn-demo/incoming/patient-0001.json",
        "output": "gs://modelfn-demo/predictions/patient-0001.json.json",
    }
    assert json.loads(bucket.blob("predictions/patient-0001.json.json").download_as_bytes())["label"] == 0


def test_local_invoke_push_with_an_unloadable_model_asks_for_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers.local.gcp import local_invoke

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(make_functions(tmp_path / "functions", broken=True)))
    reply = local_invoke("broken", event_file("pubsub-push.json"))
    assert reply["status"] == 503  # not acknowledged: the push subscription delivers it again
    assert reply["body"]["code"] == "retry"
    assert "missing.onnx" in reply["body"]["error"]


def test_cli_invoke_prints_the_prediction() -> None:
    result = subprocess.run(
        [*INVOKE, "breast-cancer", "--provider", "gcp", "--event", str(EVENTS / "pubsub-message-published.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["outcome"] == "logged"
    assert printed["result"]["label"] == 0


def pubsub_emulator() -> Path | None:
    """The emulator script of the Debian package google-cloud-cli-pubsub-emulator, if installed."""
    try:
        files = subprocess.run(["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    for line in files.stdout.splitlines():
        if line.endswith("/bin/cloud-pubsub-emulator") and Path(line).is_file():
            return Path(line)
    return None


@pytest.fixture(scope="module")
def pubsub_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    script = pubsub_emulator()
    if script is None or shutil.which("java") is None:
        pytest.skip("no Pub/Sub emulator here: it comes only with the Debian package google-cloud-cli-pubsub-emulator")
    port = free_port()
    log = tmp_path_factory.mktemp("pubsub-emulator") / "log"
    process = subprocess.Popen(
        [str(script), "--host=127.0.0.1", f"--port={port}"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while "Server started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGTERM)
            raise RuntimeError(f"the Pub/Sub emulator did not start:\n{log.read_text()}")
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(20)


def test_pubsub_end_to_end_through_the_emulator(
    pubsub_host: str, tmp_path: Path, cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish requests; the emulator pushes them to the HTTP function, which publishes its results
    to the output topic; read them back from a subscription on it."""
    from google.api_core.exceptions import DeadlineExceeded
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_host)
    functions = make_functions(tmp_path / "functions", 'pubsub = { topic = "requests", output_topic = "predictions" }')
    env = {
        "MODELFN_FUNCTIONS_DIR": str(functions),
        "MODELFN_FUNCTION": "breast-cancer",
        "PUBSUB_EMULATOR_HOST": pubsub_host,
    }
    server = FunctionsFramework("modelfn_http", "http", env, tmp_path / "log")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        requests = publisher.create_topic(name="projects/demo-project/topics/requests").name
        predictions = publisher.create_topic(name="projects/demo-project/topics/predictions").name
        results = subscriber.create_subscription(
            name="projects/demo-project/subscriptions/predictions-pull", topic=predictions
        ).name
        subscriber.create_subscription(
            name="projects/demo-project/subscriptions/requests-push",
            topic=requests,
            push_config=pubsub_v1.types.PushConfig(push_endpoint=server.url + "/"),
        )
        sent = {}
        for row, label in ((0, 0), (19, 1)):
            data = json.dumps({"X": cancer_rows[row].tolist()}).encode()
            sent[publisher.publish(requests, data, **{"content-type": "application/json"}).result(30)] = label
        malformed = publisher.publish(requests, b'{"X": [1.0,').result(30)

        received: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            try:
                # the emulator holds an empty pull until just before its deadline, and a busy one
                # can miss that: nothing arrived yet, the loop's own deadline decides
                reply = subscriber.pull(subscription=results, max_messages=10, timeout=10)
            except DeadlineExceeded:
                continue
            for message in reply.received_messages:
                received[message.message.attributes["source_message_id"]] = json.loads(message.message.data)
            if reply.received_messages:
                ack_ids = [m.ack_id for m in reply.received_messages]
                subscriber.acknowledge(subscription=results, ack_ids=ack_ids)
        assert {mid: result["label"] for mid, result in received.items()} == sent
        assert malformed not in received
        # The emulator pushes in no set order: the malformed message may come after both results.
        dropped = f"dropped Pub/Sub message {malformed} "
        assert wait_until(lambda: any(line["message"].startswith(dropped) for line in server.lines()), 30, 0.2), (
            f"no {dropped!r} line in the function's log"
        )
    finally:
        server.stop()
        publisher.transport.close()
        subscriber.close()
