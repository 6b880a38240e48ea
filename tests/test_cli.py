"""The `modelfn` command as a user runs it, in subprocesses."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from live_server import wait_until_ready
from onnx import TensorProto
from onnx_models import function_folder, identity, reflect_pad

ROOT = Path(__file__).resolve().parent.parent
WITHOUT = Path(__file__).resolve().parent / "support" / "without"


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


@pytest.mark.slow
def test_serve_workers_runs_several_processes_on_one_port(tmp_path: Path) -> None:
    function_folder(tmp_path, "echo", identity(TensorProto.INT32, ["n", 3]))
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfn.cli",
            "serve",
            "--functions-dir",
            str(tmp_path),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process)
        answers = [httpx.post(f"{url}/functions/echo", json={"x": [[i, 2, 3]]}).json() for i in range(8)]
        assert answers == [{"y": [[i, 2, 3]]} for i in range(8)]
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        servers = [
            c for c in children if "reloading_app" in Path(f"/proc/{c}/cmdline").read_text(errors="replace") or True
        ]
        assert len(servers) >= 2, children
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert "modelfn: 2 server processes" in stderr


def without(*modules: str) -> dict[str, str]:
    """The environment of a machine where these modules' extra is not installed."""
    path = os.pathsep.join(p for p in (str(WITHOUT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "MODELFN_TEST_WITHOUT": ",".join(modules)}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("provider", "event", "missing", "extra"),
    [
        ("aws", "events/aws/sqs.json", "aws_lambda_powertools", "aws"),
        ("gcp", "events/gcp/pubsub-message-published.json", "functions_framework", "gcp"),
        ("azure", "events/azure/queue.json", "azure", "azure"),
    ],
)
def test_invoke_event_without_the_providers_extra_names_the_extra(
    provider: str, event: str, missing: str, extra: str
) -> None:
    result = modelfn("invoke", "breast-cancer", "--provider", provider, "--event", event, env=without(missing))
    line = one_line_error(result)
    assert line.startswith("modelfn invoke: ") and "is not installed" in line
    assert f"pip install 'modelfn[{extra}]'" in line


def test_serve_without_the_server_extra_names_it() -> None:
    line = one_line_error(modelfn("serve", "breast-cancer", "--port", "1", env=without("uvicorn")))
    assert line == (
        "modelfn serve: uvicorn is not installed: pip install 'modelfn[server]' "
        "(in a checkout: pip install -e '.[server]')"
    )


def test_an_image_without_pillow_names_the_image_extra() -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (8, 8), color=255).save(png, format="PNG")
    data = json.dumps({"image": base64.b64encode(png.getvalue()).decode()})
    line = one_line_error(modelfn("invoke", "digits", "--data", data, env=without("PIL")))
    assert "pillow (PIL) is not installed: pip install 'modelfn[image]'" in line


def test_a_hook_without_tokenizers_names_the_text_extra(tmp_path: Path) -> None:
    folder = function_folder(tmp_path, "words", identity(TensorProto.INT64, ["n", "t"]))
    (folder / "function.toml").write_text(
        'name = "words"\n[model]\nsource = "model.onnx"\n[io]\ncodec = "text"\n[hooks]\ntokenize = "hooks:tokenize"\n'
    )
    (folder / "hooks.py").write_text("import tokenizers\n\n\ndef tokenize(texts):\n    return texts\n")
    result = modelfn("--functions-dir", str(tmp_path), "check", env=without("tokenizers"))
    assert result.returncode == 1
    assert "hooks.py needs tokenizers, which is not installed: pip install 'modelfn[text]'" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "notjson"], "modelfn: --data is not JSON (Expecting value: line 1 column 1 (char 0)): give a JSON"),
        (["--data", "@missing.json"], "modelfn: --data: no such file missing.json"),
        (["--event", "events/aws/missing.json"], "modelfn: --event: no such file events/aws/missing.json"),
        (["--data", "[1]", "--provider", "gcp"], "modelfn: --provider goes with --event"),
        (["--data", "{}", "--event", "events/aws/sqs.json"], "argument --event: not allowed with argument --data"),
        ([], "one of the arguments --data --event is required"),
    ],
)
def test_invoke_mistakes_get_one_line_and_status_2(args: list[str], message: str) -> None:
    assert message in one_line_error(modelfn("invoke", "breast-cancer", *args))


def test_functions_dir_works_before_or_after_the_subcommand(tmp_path: Path) -> None:
    function_folder(tmp_path, "only-here", identity(TensorProto.FLOAT, ["n", 2]))
    after = modelfn("list", "--functions-dir", str(tmp_path))
    assert after.stdout.split()[0] == "only-here" and after.stdout.count("\n") == 1
    before = modelfn("--functions-dir", str(tmp_path), "check")
    assert before.returncode == 0 and "ok   only-here" in before.stdout
    both = modelfn("--functions-dir", str(ROOT / "functions"), "check", "--functions-dir", str(tmp_path))
    assert "ok   only-here" in both.stdout, "the option after the subcommand wins"
    kept = modelfn("--functions-dir", str(tmp_path), "list")
    assert kept.stdout.split()[0] == "only-here", "a subcommand without the option keeps the one given before it"


def test_a_model_not_built_yet_is_skipped_with_its_build_command(tmp_path: Path) -> None:
    function_folder(tmp_path, "ready", identity(TensorProto.FLOAT, ["n", 2]))
    unbuilt = function_folder(tmp_path, "unbuilt", identity(TensorProto.FLOAT, ["n", 2]))
    (unbuilt / "model.onnx").unlink()
    (unbuilt / "build.py").write_text("# makes model.onnx\n")
    hint = f"not built yet: run python {unbuilt / 'build.py'}"

    check = modelfn("--functions-dir", str(tmp_path), "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SKIP unbuilt: {hint}" in check.stdout and "ok   ready" in check.stdout
    assert "1 of 2 function(s) ok, 1 not built yet" in check.stdout

    listed = modelfn("--functions-dir", str(tmp_path), "list").stdout.splitlines()
    assert listed[1].startswith("unbuilt") and listed[1].endswith(f"({hint})")

    invoked = modelfn("--functions-dir", str(tmp_path), "invoke", "unbuilt", "--data", "[[1, 2]]")
    assert one_line_error(invoked) == f"modelfn: unbuilt is {hint}"


def test_a_missing_model_without_a_build_script_still_fails_check(tmp_path: Path) -> None:
    lost = function_folder(tmp_path, "lost", identity(TensorProto.FLOAT, ["n", 2]))
    (lost / "model.onnx").unlink()
    check = modelfn("--functions-dir", str(tmp_path), "check")
    assert check.returncode == 1 and "FAIL lost: model file" in check.stdout


def test_a_warm_up_the_model_refuses_prints_no_onnx_runtime_error(tmp_path: Path) -> None:
    function_folder(tmp_path, "reflect", reflect_pad())
    check = modelfn("--functions-dir", str(tmp_path), "check")
    assert check.returncode == 0 and "ok   reflect" in check.stdout
    assert "[E:onnxruntime" not in check.stderr, check.stderr
    skipped = [line for line in check.stderr.splitlines() if "warm-up skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("INFO modelfn: ")
    assert "Pad reflect requires axis length >= 2" in skipped[0]
    answer = modelfn("--functions-dir", str(tmp_path), "invoke", "reflect", "--data", "[[1, 2, 3]]")
    assert json.loads(answer.stdout) == {"y": [[2.0, 1.0, 2.0, 3.0, 2.0]]}


def _functions_listed(url: str) -> list[str] | None:
    try:
        return sorted(
            f["name"] if isinstance(f, dict) else f for f in httpx.get(f"{url}/functions").json()["functions"]
        )
    except (httpx.TransportError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_serve_reload_picks_up_a_new_function_folder(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    function_folder(functions, "first", identity(TensorProto.FLOAT, ["n", 2]))
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfn.cli",
            "serve",
            "--reload",
            "--port",
            str(port),
            "--functions-dir",
            str(functions),
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    reloaded = False
    try:
        wait_until_ready(url, process)
        assert _functions_listed(url) == ["first"]
        second = function_folder(functions, "second", identity(TensorProto.FLOAT, ["n", 2]))
        deadline = time.monotonic() + 60
        touched = time.monotonic()
        while not reloaded and time.monotonic() < deadline and process.poll() is None:
            reloaded = _functions_listed(url) == ["first", "second"]
            if not reloaded and time.monotonic() - touched > 3:
                # files written in the instant a folder is created can come before inotify watches
                # it (a known race of file watchers, worse on a busy machine): save the spec again,
                # as an editor would, now that the folder is watched
                (second / "function.toml").write_text((second / "function.toml").read_text())
                touched = time.monotonic()
            time.sleep(0.2)
        if reloaded:
            assert httpx.post(f"{url}/functions/second", json={"x": [[1, 2]]}).json() == {"y": [[1.0, 2.0]]}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert reloaded, f"the server did not reload:\n{stderr}"
    assert "Will watch for changes" in stderr and f"POST {url}/functions/second" in stderr
