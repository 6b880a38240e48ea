"""Build inputs for the stacks, made with plain file copies and pip so that `cdk synth` needs
no Docker: the function's code folder (zip asset), the build context of a container image,
and the layers (ONNX Runtime + NumPy from `modelfn.deploy.layer`, and a dependency layer with the
handler's and the codec's other libraries)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfn.deploy.dependencies import Requirements, requirements
from modelfn.deploy.dependencies import name as distribution
from modelfn.deploy.layer import (
    MARKER,
    build_layer,
    compile_bytecode,
    find_interpreter,
    platform_tag,
    tree_bytes,
    zip_tree,
)
from modelfn.deploy.plan import function_files
from modelfn.spec import FunctionSpec, write_compiled_spec
from modelfn_cdk.settings import REPO, DeployRefused

# Never copied into a bundle: caches, half-written downloads, editor and VCS litter.
SKIPPED = ("__pycache__", "*.pyc", "*.partial", "*.lock", ".*")
PACKAGES = ("modelfn", "handlers")
DOCKERFILE = Path(__file__).resolve().parent.parent / "lambda.Dockerfile"
LAMBDA_TASK_ROOT = "/var/task"
GLIBC_MINOR = 34  # python3.12 and 3.13 Lambda runtimes: Amazon Linux 2023, glibc 2.34


@dataclass(frozen=True)
class LayerArtifact:
    """A built layer: the zip CDK uploads as it is, and its unzipped size for the 250 MB budget."""

    zip_path: Path
    unzipped_bytes: int
    description: str


def copy_tree(source: Path, target: Path, spec: FunctionSpec | None = None) -> None:
    skipped = shutil.ignore_patterns(*SKIPPED)
    unused = function_files(spec) if spec else None  # the original `modelfn optimize` keeps
    ignore = (lambda d, n: set(skipped(d, n)) | unused(d, n)) if unused else skipped
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)


def copy_sources(spec: FunctionSpec, root: Path) -> Path:
    # start empty: a file deleted from the function folder must leave the asset too
    shutil.rmtree(root, ignore_errors=True)
    for package in PACKAGES:
        copy_tree(REPO / package, root / package)
    copy_tree(spec.folder, root / "functions" / spec.name, spec)
    write_compiled_spec(root / "functions" / spec.name)  # the cold start reads JSON, no TOML parser
    return root


def stage_code(spec: FunctionSpec, staging_dir: Path) -> Path:
    """`modelfn/`, `handlers/` and `functions/<name>/` in one folder: the zip asset's root, so
    Lambda's `/var/task` holds exactly what the handler imports and the function it serves."""
    root = copy_sources(spec, staging_dir / spec.name / "code")
    compile_code(root, spec.deploy.python)
    return root


def stage_image(spec: FunctionSpec, staging_dir: Path) -> Path:
    """The container build context: the same files as the zip asset plus the Dockerfile and
    a requirements.txt with everything the function needs on AWS (modelfn.deploy.dependencies)."""
    context = copy_sources(spec, staging_dir / spec.name / "image")
    shutil.copyfile(DOCKERFILE, context / "Dockerfile")
    (context / "requirements.txt").write_text("\n".join(requirements(spec, "aws").all()) + "\n")
    return context


def compile_code(root: Path, python: str) -> None:
    """Bytecode for the staged packages, made by the target interpreter: /var/task is
    read-only, so without it every cold start compiles modelfn and the handler again."""
    interpreter = find_interpreter(python)
    if interpreter is None:
        _stderr(f"no Python {python} interpreter here: {root.parent.name}'s code ships without bytecode")
        return
    command = [
        interpreter, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
        "-s", str(root), "-p", LAMBDA_TASK_ROOT, *(str(root / package) for package in PACKAGES),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def code_bytes(root: Path) -> int:
    """Unzipped bytes of the staged packages (without the function folder, counted as the model)."""
    return sum(tree_bytes(root / package) for package in PACKAGES)


def runtime_layer(python: str, arch: str, layers_dir: Path, prebuilt: Path | None) -> LayerArtifact:
    """The ONNX Runtime + NumPy layer: `prebuilt` (a zip, or a folder `modelfn layer build`
    wrote) when given, else the one under `layers_dir`, built there on first use."""
    if prebuilt is not None:
        return _prebuilt_layer(prebuilt, python, arch)
    report = build_layer(python, arch, layers_dir, progress=_stderr)
    return LayerArtifact(report.zip_path, report.unzipped_bytes, f"ONNX Runtime + NumPy for Python {python} ({arch})")


def dependency_layer(needs: Requirements, python: str, arch: str, layers_dir: Path) -> LayerArtifact:
    """Everything a zip function needs beyond the runtime layer (the handler's, the codec's, the
    model client's and the hooks' libraries), pip-installed for the Lambda platform with
    bytecode, cached under `layers_dir` by requirement set, Python and architecture.

    The codec's libraries go in without their dependencies: Pillow has none, and tokenizers
    needs huggingface_hub only for `from_pretrained` downloads, which a function never does
    (it ships its tokenizer.json)."""
    with_dependencies = [*needs.handler, *needs.model, *needs.hooks]
    codec = sorted(needs.codec)
    wanted = [*with_dependencies, *codec]
    key = hashlib.sha256(json.dumps([wanted, python, arch]).encode()).hexdigest()[:10]
    name = f"deps-{key}-py{python}-{arch}"
    directory, zip_path = layers_dir / name, layers_dir / f"{name}.zip"
    description = f"{', '.join(distribution(r) for r in wanted)} for Python {python} ({arch})"
    marker = directory / MARKER
    if marker.is_file() and zip_path.is_file():
        return LayerArtifact(zip_path, json.loads(marker.read_text())["unzipped_bytes"], description)
    site = directory / "python"
    shutil.rmtree(directory, ignore_errors=True)
    _stderr(f"pip install {' '.join(wanted)} for Python {python} on {platform_tag(arch)}")
    _pip_install(site, with_dependencies, python, arch, description)
    if codec:
        _pip_install(site, codec, python, arch, description, with_dependencies=False)
    for litter in [*site.rglob("__pycache__"), site / "bin"]:
        shutil.rmtree(litter, ignore_errors=True)
    compile_bytecode(site, python, _stderr)
    unzipped = tree_bytes(site)
    zip_tree(site, zip_path)
    marker.write_text(json.dumps({"requirements": wanted, "unzipped_bytes": unzipped}, indent=2) + "\n")
    return LayerArtifact(zip_path, unzipped, description)


def _pip_install(
    site: Path, requirements: Sequence[str], python: str, arch: str, description: str, *, with_dependencies: bool = True
) -> None:
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(site), *lambda_platforms(arch), "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp", *requirements,
        *([] if with_dependencies else ["--no-deps"]),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployRefused(f"pip could not install the layer {description}:\n{result.stderr.strip()}")


def lambda_platforms(arch: str) -> list[str]:
    """pip `--platform` options for every manylinux tag Lambda's Amazon Linux 2023 (glibc 2.34)
    runs: given explicit platforms, pip accepts only those, not the older glibc versions below."""
    machine = platform_tag(arch).removeprefix("manylinux_2_28_")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{machine}"]
    return [option for tag in tags for option in ("--platform", tag)]


def _prebuilt_layer(path: Path, python: str, arch: str) -> LayerArtifact:
    if path.is_dir():
        marker = path / MARKER
        fields = json.loads(marker.read_text()) if marker.is_file() else {}
        if fields and (fields.get("python"), fields.get("arch")) != (python, arch):
            raise DeployRefused(
                f"modelfn:layer {path} was built for Python {fields.get('python')} ({fields.get('arch')}), "
                f"not {python} ({arch}); build the matching one with "
                f"`modelfn layer build --python {python} --arch {arch}`"
            )
        zip_path = path.parent / f"{path.name}.zip"
        if not zip_path.is_file():
            raise DeployRefused(f"modelfn:layer {path} has no zip beside it ({path.name}.zip); rebuild the layer")
        return LayerArtifact(zip_path, tree_bytes(path / "python"), f"ONNX Runtime + NumPy ({path.name})")
    if path.suffix == ".zip" and path.is_file():
        import zipfile

        with zipfile.ZipFile(path) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
        return LayerArtifact(path, unzipped, f"ONNX Runtime + NumPy ({path.name})")
    raise DeployRefused(f"modelfn:layer {path} is neither a layer folder nor a .zip")


def _stderr(message: str) -> None:
    # `cdk synth` prints the template on stdout; progress goes to stderr
    print(message, file=sys.stderr)
