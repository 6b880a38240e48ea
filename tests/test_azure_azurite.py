"""Blob and queue flows end to end against Azurite (npm, from the repo's node_modules) with the
Azure storage SDKs.

The Functions host (Core Tools) cannot run on this machine: its npm package downloads the host
binary from a host that is not reachable. So the small loops below do the host's part, and only
that: find the blob or take the message from real storage, hand the function the
`azure.functions` object the worker would build, write what its output binding was set to back
to storage, and for a failing message count dequeues and move it to `<queue>-poison` at
host.json's `maxDequeueCount`. Storage, the SDKs and the bindings they follow (read from
`get_function_json()`) are real."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import numpy as np
import pytest
from azure.functions.queue import QueueMessage

from handlers.azure_functions import blob_bindings, build_app, output_blob_path, trigger_type
from handlers.local.azure import invoke
from modelfn.deploy.azure import host_json
from modelfn.errors import NotFound
from modelfn.spec import BlobTrigger, load_spec

blob_sdk = pytest.importorskip("azure.storage.blob", reason="pip install azure-storage-blob")
queue_sdk = pytest.importorskip("azure.storage.queue", reason="pip install azure-storage-queue")

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
CANCER_MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
# Azurite's well-known development account (documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONNECTION = "ModelStorage"


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: all bound at once, so no two can be the same."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_for(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite exited with {process.returncode}: {log.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"azurite did not listen on {port} within {seconds} s")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A connection string to a fresh in-memory Azurite (Blob and Queue) on loopback."""
    if not AZURITE.exists() or shutil.which("node") is None:
        pytest.skip("Azurite is not installed: run `npm install` at the repo root (package.json has azurite)")
    blob_port, queue_port, table_port = _free_ports(3)
    workdir = tmp_path_factory.mktemp("azurite")
    log = workdir / "azurite.log"
    process = subprocess.Popen(
        [
            str(AZURITE),
            "--silent",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",  # the SDKs may speak a newer storage API version than this Azurite knows
            "--disableTelemetry",
            "--blobHost", "127.0.0.1", "--blobPort", str(blob_port),
            "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
            "--tableHost", "127.0.0.1", "--tablePort", str(table_port),
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )  # fmt: skip
    try:
        _wait_for(blob_port, process, log)
        _wait_for(queue_port, process, log)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob_port}/{ACCOUNT};QueueEndpoint=http://127.0.0.1:{queue_port}/{ACCOUNT};"
        )
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory, azurite: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("azurite-functions")
    folder = root / "cancer"
    folder.mkdir()
    shutil.copy(CANCER_MODEL, folder / "model.onnx")
    (folder / "function.toml").write_text(
        'name = "cancer"\n[model]\nsource = "model.onnx"\n[triggers]\nhttp = false\n'
        f'blob = {{ connection = "{CONNECTION}" }}\nqueue = {{ connection = "{CONNECTION}" }}\n'
    )
    saved = os.environ.get(CONNECTION)
    os.environ[CONNECTION] = azurite  # the app setting the host resolves the bindings' `connection` with
    try:
        yield {trigger_type(f): f for f in build_app("cancer", root=root).get_functions()}
    finally:
        os.environ.pop(CONNECTION) if saved is None else os.environ.update({CONNECTION: saved})


def bindings(function: Any) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in json.loads(function.get_function_json())["bindings"]}


def split(path: str) -> tuple[str, str]:
    container, _, rest = path.partition("/")
    return container, rest


def run_blob_host(function: Any) -> list[str]:
    """One scan of the trigger container, as the host's blob listener does: every blob that
    matches the trigger path and has no result yet runs the function; its output binding's value
    goes to the output path. Returns the output paths written."""
    declared = bindings(function)
    trigger, output = declared["blob"], declared["result"]
    service = blob_sdk.BlobServiceClient.from_connection_string(os.environ[trigger["connection"]])
    container, _ = split(trigger["path"])
    written = []
    for item in service.get_container_client(container).list_blobs():
        name = f"{container}/{item.name}"
        try:
            target = output_blob_path(BlobTrigger(trigger["path"], output["path"]), name)
        except NotFound:
            continue
        out_container, out_name = split(target)
        if service.get_blob_client(out_container, out_name).exists():
            continue  # the host's receipts: a blob is processed once
        client = service.get_blob_client(container, item.name)
        data = client.download_blob().readall()
        stream = func.blob.InputStream(data=data, name=name, uri=client.url, length=len(data))
        _, outputs = invoke(function, stream)
        value = outputs[output["name"]].get()
        assert value is not None
        service.get_blob_client(out_container, out_name).upload_blob(value.encode(), overwrite=True)
        written.append(target)
    return written


def queue_client(connection: str, queue: str) -> Any:
    # host.json sets messageEncoding = base64, the host's default: messages travel base64-encoded.
    return queue_sdk.QueueClient.from_connection_string(
        connection,
        queue,
        message_encode_policy=queue_sdk.TextBase64EncodePolicy(),
        message_decode_policy=queue_sdk.BinaryBase64DecodePolicy(),
    )


def run_queue_host(function: Any, max_dequeue_count: int) -> dict[str, int]:
    """Drain the trigger queue as the host's queue listener does: a message that runs is deleted
    and its output binding's value sent to the output queue; one that raises becomes visible
    again, until its dequeue count reaches `max_dequeue_count`, when it moves to `<queue>-poison`."""
    declared = bindings(function)
    trigger, output = declared["msg"], declared["result"]
    connection = os.environ[trigger["connection"]]
    source = queue_client(connection, trigger["queueName"])
    results = queue_client(connection, output["queueName"])
    poison = queue_client(connection, trigger["queueName"] + "-poison")
    counts = {"succeeded": 0, "failed": 0, "poisoned": 0}
    for _ in range(100):
        received = list(source.receive_messages(max_messages=16, visibility_timeout=30))
        if not received:
            return counts
        for message in received:
            msg = QueueMessage(
                id=message.id,
                body=message.content,
                dequeue_count=message.dequeue_count,
                pop_receipt=message.pop_receipt,
            )
            try:
                _, outputs = invoke(function, msg)
            except Exception:
                counts["failed"] += 1
                if message.dequeue_count >= max_dequeue_count:
                    poison.send_message(message.content.decode())
                    source.delete_message(message)
                    counts["poisoned"] += 1
                else:
                    source.update_message(message.id, message.pop_receipt, visibility_timeout=0)
                continue
            value = outputs[output["name"]].get()
            assert value is not None
            results.send_message(value)
            source.delete_message(message)
            counts["succeeded"] += 1
    raise AssertionError("the trigger queue did not drain")


def test_blob_flow_writes_predictions_that_the_trigger_does_not_pick_up(
    functions: dict[str, Any], azurite: str, cancer_rows: np.ndarray
) -> None:
    import onnxruntime as ort

    service = blob_sdk.BlobServiceClient.from_connection_string(azurite)
    for container in ("incoming", "predictions"):
        service.create_container(container)
    rows = cancer_rows[:3]
    service.get_blob_client("incoming", "patients/batch-1.json").upload_blob(json.dumps({"X": rows.tolist()}).encode())
    service.get_blob_client("incoming", "patients/bad.json").upload_blob(b'{"X": [1, 2]}')

    written = run_blob_host(functions["blob"])

    assert sorted(written) == ["predictions/patients/bad.json.json", "predictions/patients/batch-1.json.json"]
    labels, probabilities = ort.InferenceSession(str(CANCER_MODEL)).run(None, {"X": rows})
    document = json.loads(
        service.get_blob_client("predictions", "patients/batch-1.json.json").download_blob().readall()
    )
    assert document["blob"] == "incoming/patients/batch-1.json" and document["result"]["label"] == labels.tolist()
    assert np.allclose(document["result"]["probabilities"], probabilities, atol=1e-6)
    error = json.loads(service.get_blob_client("predictions", "patients/bad.json.json").download_blob().readall())
    assert (error["status"], error["code"]) == (422, "invalid_input")
    # the results live outside the trigger path: a second scan runs nothing and nothing new appears
    assert run_blob_host(functions["blob"]) == []
    assert sorted(b.name for b in service.get_container_client("incoming").list_blobs()) == [
        "patients/bad.json",
        "patients/batch-1.json",
    ]
    with pytest.raises(NotFound):
        blob_bindings(bindings(functions["blob"])["blob"]["path"], written[0])


def test_queue_flow_sends_results_and_poisons_malformed_messages(
    functions: dict[str, Any], azurite: str, cancer_rows: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # the value the generated host.json gives the host
    max_dequeue_count = host_json(load_spec(ROOT / "functions" / "breast-cancer"))["extensions"]["queues"][
        "maxDequeueCount"
    ]
    names = ("modelfn-requests", "modelfn-results", "modelfn-requests-poison")
    for name in names:
        queue_client(azurite, name).create_queue()
    requests, results, poison = (queue_client(azurite, name) for name in names)
    good = [json.dumps({"X": cancer_rows[i].tolist()}) for i in (0, 19)]
    for body in [good[0], "{not json", good[1]]:
        requests.send_message(body)

    with caplog.at_level(logging.ERROR, logger="modelfn"):
        counts = run_queue_host(functions["queue"], max_dequeue_count)

    assert counts == {"succeeded": 2, "failed": max_dequeue_count, "poisoned": 1}
    sent = [json.loads(m.content) for m in results.receive_messages(max_messages=10)]
    assert sorted(m["result"]["label"] for m in sent) == [0, 1] and all(m["function"] == "cancer" for m in sent)
    (poisoned,) = poison.receive_messages(max_messages=10)
    assert poisoned.content == b"{not json"
    assert requests.get_queue_properties().approximate_message_count == 0
    lines = [r.getMessage() for r in caplog.records if "is malformed" in r.getMessage()]
    assert [f"attempt {n}" in line for n, line in enumerate(lines, 1)] == [True] * max_dequeue_count
    assert all("modelfn-requests-poison" in line for line in lines)
