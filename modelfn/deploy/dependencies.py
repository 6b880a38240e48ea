"""Which pip requirements a function needs where it runs, per provider: the one answer that
the CDK app's dependency layer and Lambda image, the Cloud Functions source folder and the
Azure `requirements.txt` all install. The lists themselves are pyproject.toml's (the core
dependencies and the extras), so `pip install 'modelfn[image]'` and a deployed image
function get the same Pillow."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from modelfn.spec import FunctionSpec

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("aws", "gcp", "azure")
# Code a bundle carries itself: never a requirement.
PACKAGES = ("modelfn", "handlers")
# A model source's scheme -> the distribution that fetches it (modelfn/sources.py).
MODEL_CLIENTS = {"s3": "boto3", "gs": "google-cloud-storage"}
# Requirements of a provider's extra that its bundles leave out, and why.
LEFT_OUT = {
    "aws": {
        "boto3": "every Lambda Python runtime ships it",
        "aws-xray-sdk": "only MODELFN_TRACING=1 uses it, and the layer stays small without it",
    },
}


@dataclass(frozen=True)
class Requirements:
    """What one function needs on one provider, in groups that no distribution appears in twice:
    writers install the groups differently (the Lambda runtime layer carries `runtime`, say)."""

    runtime: tuple[str, ...]
    """ONNX Runtime and NumPy."""
    handler: tuple[str, ...]
    """The provider adapter's libraries."""
    codec: tuple[str, ...]
    """The codec's libraries: Pillow for `image`, tokenizers for `text`."""
    model: tuple[str, ...]
    """The client that fetches a remote model."""
    hooks: tuple[str, ...]
    """Third-party distributions the function's hook modules import, as installed here."""

    def all(self) -> list[str]:
        """Every group, sorted by name: a `requirements.txt`."""
        return sorted((*self.runtime, *self.handler, *self.codec, *self.model, *self.hooks), key=name)


def name(requirement: str) -> str:
    """The distribution a requirement names, normalised: `Pillow>=10` -> `pillow`."""
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def dependency_groups() -> dict[str, list[str]]:
    """The project's requirements by extra ("" for the core), from pyproject.toml in a checkout,
    else from the installed package's metadata."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        return {"": project["dependencies"], **project.get("optional-dependencies", {})}
    groups: dict[str, list[str]] = {}
    for line in metadata.requires("modelfn") or []:
        requirement, _, marker = line.partition(";")
        extra = marker.split("extra ==")[-1].strip(" '\"") if "extra" in marker else ""
        groups.setdefault(extra, []).append(requirement.strip())
    return groups


def requirements(spec: FunctionSpec, provider: str) -> Requirements:
    """What `spec` needs installed on `provider` ("aws", "gcp" or "azure")."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    groups = dependency_groups()
    left_out = LEFT_OUT.get(provider, {})
    pinned = {name(r): r for extra, reqs in groups.items() if extra for r in reqs}
    seen: set[str] = set()

    def group(wanted: list[str]) -> tuple[str, ...]:
        kept = []
        for requirement in wanted:
            key = name(requirement)
            if key in seen or key in left_out or key in PACKAGES or key == "modelfn":
                continue
            seen.add(key)
            kept.append(requirement)
        return tuple(kept)

    runtime = group(groups.get("", []))
    handler = group(groups.get(provider, []))
    # a codec's libraries are the extra named after it (pyproject.toml: image, text)
    codec = group(groups.get(spec.io.codec, []) + (groups.get("cache", []) if spec.cache.enabled else []))
    client = MODEL_CLIENTS.get(urlparse(spec.model.source).scheme)
    model = group([pinned.get(client, client)] if client else [])
    return Requirements(runtime, handler, codec, model, group(hook_requirements(spec)))


def hook_requirements(spec: FunctionSpec) -> list[str]:
    """Third-party distributions the function's hook modules import, as installed here."""
    modules = {ref.split(":")[0] for ref in (spec.hooks.preprocess, spec.hooks.postprocess, spec.hooks.tokenize) if ref}
    distributions = metadata.packages_distributions()
    found: set[str] = set()
    for module in modules:
        path = spec.folder / Path(*module.split(".")).with_suffix(".py")
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for imported in names:
                top = imported.split(".")[0]
                if top in sys.stdlib_module_names or top in PACKAGES or (spec.folder / f"{top}.py").exists():
                    continue
                found.update(distributions.get(top, [top]))
    return sorted(found)
