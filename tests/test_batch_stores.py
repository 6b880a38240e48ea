"""`modelfn batch` between buckets: S3 through moto's server, Cloud Storage through
gcp-storage-emulator and Azure Blob through Azurite, with the real SDKs over loopback HTTP.
The same rows give the same answers as ONNX Runtime run directly on the model file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from support.aws import boto, moto_server, unique, use_endpoint

from modelfn import cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def jsonl(rows: np.ndarray, bad: bool = False) -> bytes:
    lines = [json.dumps({"X": r.tolist()}) for r in rows] + (["{not json"] if bad else [])
    return ("\n".join(lines) + "\n").encode()


def expected(rows: np.ndarray) -> list[int]:
    labels = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"X": rows})[0]
    return [int(v) for v in labels]


def labels(data: bytes) -> list[Any]:
    return [json.loads(line).get("prediction", {}).get("label") for line in data.decode().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_s3_prefix_to_s3_prefix_and_resume(monkeypatch: pytest.MonkeyPatch, cancer_rows: np.ndarray) -> None:
    with moto_server() as endpoint:
        use_endpoint(monkeypatch, endpoint)
        s3 = boto("s3", endpoint)
        bucket = unique("batch")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="in/day-1/a.jsonl", Body=jsonl(cancer_rows[:50]))
        s3.put_object(Bucket=bucket, Key="in/day-2/b.jsonl", Body=jsonl(cancer_rows[50:60], bad=True))
        s3.put_object(Bucket=bucket, Key="in/one.json", Body=json.dumps({"X": cancer_rows[60].tolist()}).encode())
        args = ["batch", "breast-cancer", "--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out", "--quiet"]
        assert cli.main(args) == 1  # one row failed

        got = lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
        assert labels(got("out/day-1/a.jsonl")) == expected(cancer_rows[:50])
        b = got("out/day-2/b.jsonl").decode().splitlines()
        assert labels("\n".join(b[:10]).encode()) == expected(cancer_rows[50:60])
        assert json.loads(b[10])["error"]["code"] == "bad_request"
        assert json.loads(got("out/one.json.json"))["prediction"]["label"] == expected(cancer_rows[60:61])[0]

        s3.delete_object(Bucket=bucket, Key="out/day-1/a.jsonl")
        before = s3.head_object(Bucket=bucket, Key="out/day-2/b.jsonl")["LastModified"]
        assert cli.main(args) == 0  # only a.jsonl was left to do, and it has no bad row
        assert s3.head_object(Bucket=bucket, Key="out/day-2/b.jsonl")["LastModified"] == before
        assert labels(got("out/day-1/a.jsonl")) == expected(cancer_rows[:50])


def test_local_folder_to_s3_and_s3_to_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cancer_rows: np.ndarray
) -> None:
    with moto_server() as endpoint:
        use_endpoint(monkeypatch, endpoint)
        s3 = boto("s3", endpoint)
        bucket = unique("batch")
        s3.create_bucket(Bucket=bucket)
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "rows.jsonl").write_bytes(jsonl(cancer_rows[:5]))
        local, remote = str(tmp_path / "in"), f"s3://{bucket}/p/"
        assert cli.main(["batch", "breast-cancer", "--input", local, "--output", remote]) == 0
        assert labels(s3.get_object(Bucket=bucket, Key="p/rows.jsonl")["Body"].read()) == expected(cancer_rows[:5])
        # back again: an output line is no breast-cancer payload, so every row fails, and says why
        assert cli.main(["batch", "breast-cancer", "--input", remote, "--output", str(tmp_path / "o")]) == 1
        errors = [json.loads(line)["error"] for line in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
        assert len(errors) == 5 and "unknown input(s) ['prediction']" in errors[0]["message"]


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[str]:
    server_module = pytest.importorskip("gcp_storage_emulator.server", reason="pip install gcp-storage-emulator")
    port = free_port()
    server = server_module.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_gcs_prefix_to_gcs_prefix(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch, cancer_rows: np.ndarray) -> None:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    client = storage.Client(project="test")
    bucket = client.create_bucket("modelfn-batch")
    bucket.blob("in/part-0.jsonl").upload_from_string(jsonl(cancer_rows[:40]))
    bucket.blob("in/part-1.jsonl").upload_from_string(jsonl(cancer_rows[40:45], bad=True))
    args = ["batch", "breast-cancer", "--input", "gs://modelfn-batch/in", "--output", "gs://modelfn-batch/out"]
    assert cli.main(args) == 1
    assert labels(bucket.blob("out/part-0.jsonl").download_as_bytes()) == expected(cancer_rows[:40])
    part1 = bucket.blob("out/part-1.jsonl").download_as_bytes()
    assert labels(part1)[:5] == expected(cancer_rows[40:45]) and b'"error"' in part1.splitlines()[5]
    assert cli.main(args) == 0  # both outputs are there: nothing to do


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not AZURITE.exists() or shutil.which("node") is None:
        pytest.skip("Azurite is not installed: run `npm install` at the repo root (package.json has azurite)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite-batch")
    process = subprocess.Popen(
        [str(AZURITE), "--silent", "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
         "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--queuePort", str(free_port()), "--tablePort", str(free_port())],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert process.poll() is None and time.monotonic() < deadline, "azurite did not start"
            time.sleep(0.1)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    finally:
        process.terminate()
        process.wait(10)


def test_azure_blob_prefix_to_azure_blob_prefix(
    azurite: str, monkeypatch: pytest.MonkeyPatch, cancer_rows: np.ndarray
) -> None:
    blob_sdk = pytest.importorskip("azure.storage.blob", reason="pip install azure-storage-blob")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    container = blob_sdk.BlobServiceClient.from_connection_string(azurite).create_container("scores")
    container.upload_blob("in/2026/rows.jsonl", jsonl(cancer_rows[:33]))
    assert cli.main(["batch", "breast-cancer", "--input", "az://scores/in/", "--output", "az://scores/out/"]) == 0
    assert labels(container.download_blob("out/2026/rows.jsonl").readall()) == expected(cancer_rows[:33])
    assert sorted(b.name for b in container.list_blobs()) == ["in/2026/rows.jsonl", "out/2026/rows.jsonl"]


def test_az_needs_the_connection_string(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    assert cli.main(["batch", "breast-cancer", "--input", "az://c/in", "--output", "/tmp/x"]) == 2
    assert "set AZURE_STORAGE_CONNECTION_STRING" in capsys.readouterr().err
    os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
