"""The `modelfn` command as a user runs it, in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from live_server import wait_until_ready
from onnx import TensorProto
from onnx_models import function_folder, identity

ROOT = Path(__file__).resolve().parent.parent


def modelfn(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfn.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invoke_prints_the_prediction(cancer_rows) -> None:
    result = modelfn("invoke", "breast-cancer", "--data", json.dumps({"X": cancer_rows[0].tolist()}))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["label"] == 0 and abs(sum(out["probabilities"]) - 1) < 1e-5


def test_list_shows_each_function_with_its_codec() -> None:
    result = modelfn("list")
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert lines["breast-cancer"][1] == "tensor" and lines["digits"][1] == "image"


def test_check_passes_on_the_examples_and_prints_signatures() -> None:
    result = modelfn("check", "breast-cancer", "digits")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   breast-cancer" in result.stdout
    assert "in  X                    FP32   [-1, 30]" in result.stdout
    assert "2 of 2 function(s) ok" in result.stdout


def test_check_on_a_broken_spec_says_what_is_wrong_and_fails(tmp_path: Path) -> None:
    function_folder(tmp_path, "good", identity(TensorProto.FLOAT, ["n", 2]))
    bad = function_folder(tmp_path, "bad", identity(TensorProto.FLOAT, ["n", 2]))
    (bad / "function.toml").write_text('name = "bad"\n[model]\nsource = "model.onnx"\n[batching]\nmax_batch_size = 0\n')
    result = modelfn("--functions-dir", str(tmp_path), "check")
    assert result.returncode == 1
    assert "ok   good" in result.stdout
    assert "FAIL bad" in result.stdout and "batching.max_batch_size: must be >= 1, got 0" in result.stdout
    assert "1 of 2 function(s) ok" in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_new_model_folder_is_served_with_no_code(tmp_path: Path) -> None:
    function_folder(tmp_path, "doubler-free", identity(TensorProto.INT32, ["n", 3]))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelfn.cli", "--functions-dir", str(tmp_path), "serve", "--port", str(port)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process)
        answer = httpx.post(f"{url}/functions/doubler-free", json={"x": [[1, 2, 3]]})
        assert answer.json() == {"y": [[1, 2, 3]]}
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert f"POST {url}/functions/doubler-free" in stderr
