"""Build the slim AWS Lambda layer that carries ONNX Runtime and NumPy.

Lambda counts a function's code and its layers together against 250 MB unzipped. A plain
`pip install onnxruntime numpy` is ~150 MB, most of it files the Python binding never loads,
so the layer is that install minus what an import-and-run trace of it never touches.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfn.errors import ModelfnError

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
PYTHONS = ("3.12", "3.13")
PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "arm64": "manylinux_2_28_aarch64"}
MARKER = ".modelfn-layer.json"
LAMBDA_SITE = "/opt/python"

_MB = 1024 * 1024
# Zip's epoch: entries get this timestamp so two builds of the same files are byte-identical.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

Progress = Callable[[str], None]


class LayerTooLarge(ModelfnError):
    """Function code, layer and model together exceed Lambda's unzipped size limit."""

    status = 500
    code = "layer_too_large"


@dataclass(frozen=True)
class Removal:
    """A glob (relative to the layer's `python/`) that the runtime never loads, and why."""

    pattern: str
    why: str


# Each entry is checked by tests/test_layer.py: the slim layer must still import and run a
# model, and must keep every file that the same run touches in the unslimmed install.
REMOVALS: tuple[Removal, ...] = (
    Removal("bin", "console scripts (f2py, numpy-config, onnxruntime_test) pinned to the build host's Python"),
    Removal(
        "onnxruntime/capi/libonnxruntime.so*",
        "the C API library; the pybind module embeds the runtime and has no NEEDED entry for it",
    ),
    Removal("onnxruntime/transformers", "offline transformer graph optimiser, needs torch/onnx"),
    Removal("onnxruntime/quantization", "offline quantisation tooling, needs onnx"),
    Removal("onnxruntime/tools", "offline model conversion tooling"),
    Removal("onnxruntime/backend", "ONNX backend-test API; imports onnx, which the layer does not carry"),
    Removal("onnxruntime/datasets", "example models"),
    Removal("flatbuffers*", "used only by onnxruntime/tools"),
    Removal("google", "protobuf, used only by the offline tooling above"),
    Removal("protobuf-*.dist-info", "protobuf's metadata"),
    Removal("packaging*", "used only by onnxruntime/backend and the tooling"),
    Removal("numpy/**/tests", "NumPy's own test suite"),
    Removal("numpy/conftest.py", "pytest configuration for NumPy's test suite"),
    Removal("numpy/_core/_*_tests.*.so", "C modules that only NumPy's test suite imports"),
    Removal("numpy/_core/_simd.*.so", "SIMD test bindings, imported only by NumPy's test suite"),
    Removal("numpy/f2py", "Fortran wrapper generator; needs a compiler at build time"),
    Removal("numpy/_pyinstaller", "PyInstaller hook"),
    Removal("numpy/_core/include", "C headers for building extensions"),
    Removal("numpy/_core/lib", "static npymath library and pkg-config file for building extensions"),
    Removal("numpy/random/lib", "static npyrandom library for building extensions"),
    Removal("numpy/random/_examples", "Cython/Numba example sources"),
    Removal("**/*.pxd", "Cython declarations for building extensions"),
    Removal("**/__pycache__", "bytecode pip compiled for the build interpreter, not the Lambda one"),
    Removal("**/*.pyi", "type stubs, read by type checkers only"),
    Removal("*.dist-info/RECORD", "lists files that slimming deletes; importlib.metadata does not need it"),
)


@dataclass
class LayerReport:
    """Where a layer was built and how big it is; `removed_bytes` is what slimming deleted."""

    python: str
    arch: str
    directory: Path
    zip_path: Path
    unzipped_bytes: int
    zipped_bytes: int
    removed_bytes: int
    bytecode_bytes: int = 0

    def summary(self) -> str:
        naive = self.unzipped_bytes - self.bytecode_bytes + self.removed_bytes
        lines = [
            f"layer onnxruntime + numpy, Python {self.python}, {self.arch}",
            f"  unzipped {_mb(self.unzipped_bytes)} (Lambda allows {_mb(LAMBDA_UNZIPPED_LIMIT)} for code and layers)",
            f"  zipped   {_mb(self.zipped_bytes)}",
            f"  removed  {_mb(self.removed_bytes)} of the {_mb(naive)} pip install",
        ]
        if self.bytecode_bytes:
            lines.append(f"  bytecode {_mb(self.bytecode_bytes)} precompiled (Lambda's /opt is read-only)")
        lines.append(f"  zip      {self.zip_path}")
        return "\n".join(lines)


def platform_tag(arch: str) -> str:
    """The pip `--platform` tag for a Lambda architecture name (`arm64` is aarch64)."""
    try:
        return PLATFORMS[arch]
    except KeyError:
        raise ValueError(f"unknown Lambda architecture {arch!r}; use one of {', '.join(PLATFORMS)}") from None


def layer_name(python: str, arch: str, onnxruntime_version: str | None = None) -> str:
    version = f"-{onnxruntime_version}" if onnxruntime_version else ""
    return f"onnxruntime{version}-py{python}-{arch}"


def build_layer(
    python: str = "3.12",
    arch: str = "x86_64",
    out: Path = Path("build/layers"),
    *,
    onnxruntime_version: str | None = None,
    force: bool = False,
    progress: Progress = print,
) -> LayerReport:
    """Install, slim, precompile and zip the layer into `out`; reuse an earlier build unless `force`.
    `progress` hears each step; showing the report's `summary()` is the caller's choice."""
    if python not in PYTHONS:
        raise ValueError(f"unsupported Python {python!r}; Lambda layers are built for {', '.join(PYTHONS)}")
    platform_tag(arch)
    out = Path(out)
    name = layer_name(python, arch, onnxruntime_version)
    directory, zip_path = out / name, out / f"{name}.zip"
    cached = _cached_report(directory, zip_path)
    if cached is not None and not force:
        progress(f"reusing {directory} (modelfn layer build --force rebuilds it)")
        return cached

    out.mkdir(parents=True, exist_ok=True)
    # Build beside the final directory and rename at the end, so a failed build never leaves
    # a directory that looks finished.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        site = staging / "python"
        progress(f"pip install onnxruntime numpy for Python {python} on {platform_tag(arch)}")
        pip_install(site, python, arch, onnxruntime_version=onnxruntime_version)
        removed = slim(site)
        progress(f"removed {_mb(removed)} the Python binding never loads")
        bytecode = compile_bytecode(site, python, progress)
        unzipped = tree_bytes(site)
        zipped = zip_tree(site, staging / "layer.zip")
        report = LayerReport(python, arch, directory, zip_path, unzipped, zipped, removed, bytecode)
        _write_marker(staging, report)
        shutil.rmtree(directory, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
        (staging / "layer.zip").replace(zip_path)
        staging.replace(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def pip_install(target: Path, python: str, arch: str, *, onnxruntime_version: str | None = None) -> None:
    """`pip install --target` of Linux wheels for the Lambda runtime, whatever the host is."""
    requirement = f"onnxruntime=={onnxruntime_version}" if onnxruntime_version else "onnxruntime"
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target),
        "--platform", platform_tag(arch),
        "--only-binary=:all:",
        "--python-version", python,
        "--implementation", "cp",
        requirement, "numpy",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install the layer's wheels:\n{result.stderr.strip()}")


def slim(root: Path) -> int:
    """Delete every `REMOVALS` match under `root`; returns the bytes deleted."""
    removed = 0
    for removal in REMOVALS:
        for path in sorted(root.glob(removal.pattern), reverse=True):
            if not path.exists():
                continue  # inside a directory an earlier match already deleted
            if path.is_dir():
                removed += tree_bytes(path)
                shutil.rmtree(path)
            else:
                removed += path.stat().st_size
                path.unlink()
    return removed


def compile_bytecode(root: Path, python: str, progress: Progress = print) -> int:
    """Precompile with the target interpreter; returns the bytes of bytecode written.

    Lambda mounts layers read-only, so without shipped bytecode every cold start compiles
    NumPy and ONNX Runtime from source: importing them took ~2.5x as long in our measurement.
    Unchecked-hash pycs are used without comparing source timestamps, which the zip resets.
    """
    interpreter = find_interpreter(python)
    if interpreter is None:
        progress(f"no Python {python} interpreter found: the layer ships without bytecode (slower cold imports)")
        return 0
    command = [
        interpreter, "-m", "compileall", "-q", "-j", "0",
        "--invalidation-mode", "unchecked-hash",
        "-s", str(root), "-p", LAMBDA_SITE,
        str(root),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{interpreter} could not compile the layer:\n{(result.stdout + result.stderr).strip()}")
    return sum(path.stat().st_size for path in root.rglob("*.pyc"))


def find_interpreter(python: str) -> str | None:
    """A CPython `python` (e.g. "3.12") on this host: ours, one on PATH, or one under pyenv."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python:
        return sys.executable
    on_path = shutil.which(f"python{python}")
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installed = sorted(
        (str(path) for path in pyenv_root.glob(f"versions/{python}.*/bin/python{python}")),
        key=_version_key,
        reverse=True,
    )
    for candidate in ([on_path] if on_path else []) + installed:
        if _reports_version(candidate, python):
            return candidate
    return None


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root`: what Lambda counts as unzipped size."""
    return sum(path.stat().st_size for path in _files(root))


def zip_tree(root: Path, zip_path: Path) -> int:
    """Zip `root` as the layer's `python/` folder, deterministically; returns the zip's size."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(_files(root), key=lambda p: p.relative_to(root).as_posix()):
            info = zipfile.ZipInfo(f"python/{path.relative_to(root).as_posix()}", _ZIP_EPOCH)
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
    return zip_path.stat().st_size


def naive_size(
    python: str = "3.12", arch: str = "x86_64", *, onnxruntime_version: str | None = None
) -> tuple[int, int]:
    """(unzipped, zipped) bytes of the unslimmed `pip install --target`, for comparison."""
    with tempfile.TemporaryDirectory(prefix="modelfn-naive-layer-") as scratch:
        site = Path(scratch) / "python"
        pip_install(site, python, arch, onnxruntime_version=onnxruntime_version)
        return tree_bytes(site), zip_tree(site, Path(scratch) / "naive.zip")


def check_budget(layer_bytes: int, code_bytes: int, model_bytes: int) -> None:
    """Raise `LayerTooLarge` when layer + code + model exceed Lambda's 250 MB unzipped limit."""
    total = layer_bytes + code_bytes + model_bytes
    if total <= LAMBDA_UNZIPPED_LIMIT:
        return
    raise LayerTooLarge(
        f"the function is {_mb(total)} unzipped, over Lambda's {_mb(LAMBDA_UNZIPPED_LIMIT)} limit "
        f"(layer {_mb(layer_bytes)} + code {_mb(code_bytes)} + model {_mb(model_bytes)}); "
        "load the model from S3 at init or deploy as a container image (10 GB limit)",
        layer_bytes=layer_bytes,
        code_bytes=code_bytes,
        model_bytes=model_bytes,
        limit_bytes=LAMBDA_UNZIPPED_LIMIT,
    )


def _files(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def _reports_version(interpreter: str, python: str) -> bool:
    probe = "import sys; print(sys.implementation.name, '%d.%d' % sys.version_info[:2])"
    try:
        result = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.split() == ["cpython", python]


def _write_marker(directory: Path, report: LayerReport) -> None:
    fields = {
        "python": report.python,
        "arch": report.arch,
        "unzipped_bytes": report.unzipped_bytes,
        "zipped_bytes": report.zipped_bytes,
        "removed_bytes": report.removed_bytes,
        "bytecode_bytes": report.bytecode_bytes,
    }
    (directory / MARKER).write_text(json.dumps(fields, indent=2) + "\n")


def _cached_report(directory: Path, zip_path: Path) -> LayerReport | None:
    try:
        fields = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not zip_path.is_file() or zip_path.stat().st_size != fields.get("zipped_bytes"):
        return None
    return LayerReport(
        python=fields["python"],
        arch=fields["arch"],
        directory=directory,
        zip_path=zip_path,
        unzipped_bytes=fields["unzipped_bytes"],
        zipped_bytes=fields["zipped_bytes"],
        removed_bytes=fields["removed_bytes"],
        bytecode_bytes=fields.get("bytecode_bytes", 0),
    )
