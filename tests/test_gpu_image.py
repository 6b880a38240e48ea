"""The GPU image's CUDA base and the onnxruntime-gpu wheel it installs agree on the CUDA major
version: pip resolves the Dockerfile's own requirement for the image's Python (Ubuntu 24.04's
3.12, x86_64) and the test reads that wheel's metadata (its `nvidia-cuda-runtime` requirement)
without downloading it. A CUDA 13 build on a CUDA 12 base cannot load its provider, and the
function then refuses to start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # asks the package index

DOCKERFILE = Path(__file__).resolve().parent.parent / "containers" / "Dockerfile.gpu"


def build_arg(name: str) -> str:
    found = re.search(rf'^ARG {name}="?([^"\n]+)"?$', DOCKERFILE.read_text(), re.M)
    assert found, f"no ARG {name} in {DOCKERFILE}"
    return found.group(1)


def cuda_major_of_base() -> int:
    tag = build_arg("BASE_IMAGE")
    found = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-.*", tag)
    assert found, f"the GPU base {tag} is not an nvidia/cuda image with a version tag"
    return int(found.group(1))


def resolved_wheel(requirement: str, tmp_path: Path) -> dict[str, object]:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
        "--only-binary=:all:", "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
        "--report", str(report), requirement,
    ]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if ran.returncode != 0 and ("Could not find" in ran.stderr or "connection" in ran.stderr.lower()):
        pytest.skip(f"the package index cannot be asked here: {ran.stderr.strip().splitlines()[-1]}")
    assert ran.returncode == 0, ran.stderr
    (install,) = json.loads(report.read_text())["install"]
    return dict(install["metadata"])


def cuda_major_of(metadata: dict[str, object]) -> int:
    for requirement in metadata.get("requires_dist") or []:  # type: ignore[attr-defined]
        found = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*~=\s*(\d+)", str(requirement))
        if found:
            return int(found.group(1) or found.group(2))
    raise AssertionError(f"onnxruntime-gpu {metadata.get('version')} names no nvidia-cuda-runtime requirement")


def test_the_onnxruntime_gpu_the_image_installs_matches_the_base_images_cuda(tmp_path: Path) -> None:
    metadata = resolved_wheel(build_arg("ONNXRUNTIME_GPU"), tmp_path)
    assert metadata["name"] == "onnxruntime-gpu"
    assert cuda_major_of(metadata) == cuda_major_of_base(), (
        f"onnxruntime-gpu {metadata['version']} is a CUDA {cuda_major_of(metadata)} build; "
        f"the base image {build_arg('BASE_IMAGE')} carries CUDA {cuda_major_of_base()}"
    )


def test_the_check_tells_a_cuda_13_build_from_a_cuda_12_one(tmp_path: Path) -> None:
    """The check can fail: onnxruntime-gpu 1.31 is a CUDA 13 build, 1.26 a CUDA 12 one."""
    assert cuda_major_of(resolved_wheel("onnxruntime-gpu==1.31.1", tmp_path)) == 13
    assert cuda_major_of(resolved_wheel("onnxruntime-gpu==1.26.0", tmp_path)) == 12
