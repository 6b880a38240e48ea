"""The slim Lambda layer: built for real with pip, then imported and run by a bare Python 3.12."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelfn.deploy.layer import (
    LAMBDA_UNZIPPED_LIMIT,
    LayerReport,
    LayerTooLarge,
    build_layer,
    check_budget,
    find_interpreter,
    pip_install,
    platform_tag,
)
from modelfn.errors import ModelfnError

MB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
BREAST_CANCER = REPO / "functions" / "breast-cancer" / "model.onnx"
# What pip prints when the registry cannot be reached, as opposed to a request that resolves to nothing.
OFFLINE_SIGNS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Could not fetch URL",
    "Temporary failure in name resolution",
    "ProxyError",
)
# Libraries every Lambda Python runtime provides (the manylinux_2_28 policy's system set).
SYSTEM_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}

# Runs under the layer's interpreter with no site-packages: it must find everything in the layer.
RUN_MODEL = """
import json, sys
layer, model, inputs, outputs = sys.argv[1:5]
sys.path.insert(0, layer)
import numpy as np
import onnxruntime as ort
assert ort.__file__.startswith(layer) and np.__file__.startswith(layer), (ort.__file__, np.__file__)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
results = session.run(None, {session.get_inputs()[0].name: np.load(inputs)})
np.savez(outputs, *results)
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "numpy": np.__version__, "onnxruntime": ort.__version__}))
"""

# Lists every layer file a model run touches: Python-level opens and imports, plus mapped libraries.
TRACE_RUN = """
import sys
layer, model = sys.argv[1:3]
sys.path.insert(0, layer)
touched = set()
def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        touched.add(args[0])
sys.addaudithook(audit)
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.ones((2, 30), dtype=np.float32)})
np.linalg.inv(np.eye(3)), np.fft.fft(np.ones(4)), np.random.default_rng(0).random(3)
touched.update(getattr(module, "__file__", None) or "" for module in list(sys.modules.values()))
with open("/proc/self/maps") as maps:
    touched.update(line.split()[-1] for line in maps if "/" in line)
for path in sorted(touched):
    if path.startswith(layer + "/") and "/__pycache__/" not in path:
        print(path[len(layer) + 1 :])
"""


def _skip_if_offline(error: RuntimeError) -> None:
    if any(sign in str(error) for sign in OFFLINE_SIGNS):
        pytest.skip(f"pip cannot reach the package registry: {str(error).splitlines()[-1]}")


@pytest.fixture(scope="module")
def x86_layer(tmp_path_factory: pytest.TempPathFactory) -> LayerReport:
    try:
        return build_layer("3.12", "x86_64", tmp_path_factory.mktemp("layers"), progress=lambda _: None)
    except RuntimeError as error:
        _skip_if_offline(error)
        raise


@pytest.fixture(scope="module")
def python312() -> str:
    interpreter = find_interpreter("3.12")
    if interpreter is None:
        pytest.skip("no CPython 3.12 interpreter on this machine (pyenv install 3.12) to run the layer with")
    return interpreter


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer model; a MatMul+Add of the same input shape where it has not been built."""
    if BREAST_CANCER.is_file():
        return BREAST_CANCER
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(7)
    weights = numpy_helper.from_array(rng.standard_normal((30, 2)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["scores"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 30])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])],
        [weights, bias],
    )
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_x86_64_layer_fits_the_budget_and_zip_matches_the_report(x86_layer: LayerReport) -> None:
    site = x86_layer.directory / "python"
    files = [path for path in site.rglob("*") if path.is_file()]

    assert x86_layer.unzipped_bytes <= 100 * MB
    assert x86_layer.unzipped_bytes == sum(path.stat().st_size for path in files)
    assert x86_layer.zipped_bytes == x86_layer.zip_path.stat().st_size
    assert x86_layer.removed_bytes > 50 * MB
    with zipfile.ZipFile(x86_layer.zip_path) as archive:
        entries = archive.infolist()
    names = [entry.filename for entry in entries]
    assert names == sorted(names)
    assert len(names) == len(files)
    assert all(name.startswith("python/") for name in names)
    assert {entry.date_time for entry in entries} == {(1980, 1, 1, 0, 0, 0)}
    assert sum(entry.file_size for entry in entries) == x86_layer.unzipped_bytes


def test_layer_drops_the_unlinked_runtime_library_tests_and_tooling(x86_layer: LayerReport) -> None:
    site = x86_layer.directory / "python"

    assert list(site.glob("onnxruntime/capi/onnxruntime_pybind11_state.*.so"))
    assert not list(site.glob("onnxruntime/capi/libonnxruntime.so*"))
    assert not list(site.glob("numpy/**/tests"))
    for gone in ("bin", "google", "numpy/f2py", "onnxruntime/transformers", "onnxruntime/quantization"):
        assert not (site / gone).exists(), gone
    assert not list(site.rglob("*.pyi"))
    assert (site / "onnxruntime" / "ThirdPartyNotices.txt").is_file(), "licence notices must ship"


def test_layer_ships_bytecode_for_its_own_python_only(x86_layer: LayerReport) -> None:
    pycs = list((x86_layer.directory / "python").rglob("*.pyc"))

    if find_interpreter("3.12") is None:
        assert pycs == []
    else:
        assert pycs and all(".cpython-312." in path.name for path in pycs)
        assert x86_layer.bytecode_bytes == sum(path.stat().st_size for path in pycs)


def test_second_build_reuses_the_layer_unless_forced(x86_layer: LayerReport) -> None:
    messages: list[str] = []

    again = build_layer("3.12", "x86_64", x86_layer.directory.parent, progress=messages.append)

    assert again == x86_layer
    assert messages and messages[0].startswith("reusing")


def test_cli_reuses_a_built_layer_naming_the_force_flag_and_prints_the_summary_once(x86_layer: LayerReport) -> None:
    result = modelfn("layer", "build", "--out", str(x86_layer.directory.parent))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"reusing {x86_layer.directory} (modelfn layer build --force rebuilds it)\n")
    assert "force=True" not in result.stdout
    assert result.stdout.count("layer onnxruntime + numpy, Python 3.12, x86_64") == 1
    assert result.stdout.rstrip().endswith(f"zip      {x86_layer.zip_path}")


@pytest.mark.parametrize("force", [False, True])
def test_cli_build_prints_its_steps_and_the_summary_once(tmp_path: Path, force: bool) -> None:
    out = tmp_path / "layers"
    first = modelfn_with_fake_pip("layer", "build", "--out", str(out))
    again = modelfn_with_fake_pip("layer", "build", "--out", str(out), *(["--force"] if force else []))

    for result in (first, again):
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("layer onnxruntime + numpy, Python 3.12, x86_64") == 1
        assert result.stdout.count("  zip      ") == 1
    assert "pip install onnxruntime numpy" in first.stdout and "reusing" not in first.stdout
    assert ("reusing" in again.stdout) is not force
    assert ("pip install onnxruntime numpy" in again.stdout) is force


def modelfn(*args: str) -> subprocess.CompletedProcess[str]:
    """The `modelfn` command installed beside this interpreter."""
    command = [str(Path(sys.executable).parent / "modelfn"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


# The CLI with pip's download replaced by a two-file site: the build's own steps run for real.
FAKE_PIP = """
import sys
import modelfn.deploy.layer as layer
from modelfn.cli import main

def pip_install(target, python, arch, *, onnxruntime_version=None):
    (target / "numpy" / "tests").mkdir(parents=True)
    (target / "numpy" / "__init__.py").write_text("")
    (target / "numpy" / "tests" / "test_it.py").write_text("")

layer.pip_install = pip_install
sys.exit(main(sys.argv[1:]))
"""


def modelfn_with_fake_pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", FAKE_PIP, *args], capture_output=True, text=True, timeout=300)


def test_every_kept_shared_library_finds_what_it_links(x86_layer: LayerReport) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    site = x86_layer.directory / "python"
    shipped = {path.name for path in site.rglob("*.so*")}

    for library in site.rglob("*.so*"):
        dynamic = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True, check=True).stdout
        needed = {line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line}
        assert needed <= SYSTEM_LIBRARIES | shipped, (library.name, needed - SYSTEM_LIBRARIES - shipped)


def test_bare_python_312_runs_the_model_from_the_layer_like_the_venv(
    x86_layer: LayerReport, python312: str, model: Path, tmp_path: Path
) -> None:
    features = _features()
    np.save(tmp_path / "inputs.npy", features)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: features})

    result = subprocess.run(
        [python312, "-I", "-S", "-B", "-c", RUN_MODEL, str(x86_layer.directory / "python"), str(model),
         str(tmp_path / "inputs.npy"), str(tmp_path / "outputs.npz")],
        capture_output=True, text=True, timeout=300, env=_lambda_like_env(tmp_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout.splitlines()[-1])
    assert versions["python"] == "3.12"
    with np.load(tmp_path / "outputs.npz") as outputs:
        actual = [outputs[f"arr_{i}"] for i in range(len(expected))]
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_slim_layer_keeps_every_file_a_model_run_touches_in_the_full_install(
    x86_layer: LayerReport, python312: str, model: Path, tmp_path: Path
) -> None:
    full = tmp_path / "python"
    try:
        pip_install(full, "3.12", "x86_64")
    except RuntimeError as error:
        _skip_if_offline(error)
        raise

    result = subprocess.run(
        [python312, "-I", "-S", "-B", "-c", TRACE_RUN, str(full), str(model)],
        capture_output=True, text=True, timeout=300, env=_lambda_like_env(tmp_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    touched = result.stdout.split()
    assert any(path.endswith(".so") for path in touched) and "numpy/__init__.py" in touched
    site = x86_layer.directory / "python"
    assert [path for path in touched if not (site / path).exists()] == []


def test_check_budget_names_each_part_when_over_250_mb() -> None:
    with pytest.raises(LayerTooLarge) as raised:
        check_budget(80 * MB, 5 * MB, 170 * MB)

    message = raised.value.message
    assert isinstance(raised.value, ModelfnError)
    assert "255.0 MB" in message and "250.0 MB" in message
    assert "layer 80.0 MB" in message and "code 5.0 MB" in message and "model 170.0 MB" in message


def test_check_budget_accepts_a_function_up_to_the_limit() -> None:
    check_budget(80 * MB, 5 * MB, 100 * MB)
    check_budget(LAMBDA_UNZIPPED_LIMIT - 2, 1, 1)


def test_lambda_architectures_map_to_manylinux_2_28_tags() -> None:
    assert platform_tag("x86_64") == "manylinux_2_28_x86_64"
    assert platform_tag("arm64") == "manylinux_2_28_aarch64"
    with pytest.raises(ValueError, match="arm64"):
        platform_tag("aarch64")


def test_unsupported_python_is_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"3\.12"):
        build_layer("3.9", "x86_64", tmp_path, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.environ.get("MODELFN_SKIP_ARM64_LAYER") == "1", reason="MODELFN_SKIP_ARM64_LAYER=1")
def test_arm64_layer_carries_aarch64_binaries_within_budget(tmp_path: Path) -> None:
    try:
        report = build_layer("3.12", "arm64", tmp_path, progress=lambda _: None)
    except RuntimeError as error:
        _skip_if_offline(error)
        raise

    assert report.zip_path.name == "onnxruntime-py3.12-arm64.zip"
    assert report.unzipped_bytes <= 100 * MB
    libraries = list((report.directory / "python").rglob("*.so*"))
    assert libraries and all(_elf_machine(path) == "aarch64" for path in libraries)


def _features() -> np.ndarray:
    """Real breast-cancer rows where scikit-learn is installed; the model's scale either way."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        return np.random.default_rng(0).uniform(0, 100, (8, 30)).astype(np.float32)
    return load_breast_cancer().data[:8].astype(np.float32)


def _lambda_like_env(home: Path) -> dict[str, str]:
    # onnxruntime writes a device id under $HOME, which is read-only on Lambda.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def _elf_machine(path: Path) -> str:
    with path.open("rb") as elf:
        machine = int.from_bytes(elf.read(20)[18:20], "little")
    return {62: "x86_64", 183: "aarch64"}.get(machine, str(machine))
