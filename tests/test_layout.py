"""Runtime apart from tooling: what runs inside a function (the core and the adapters) never
imports the deploy tooling, and the core knows no adapter. Read from the source with `ast`,
so an import inside a function body counts as much as one at the top."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLING = "modelfn.deploy"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, package: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import in `path`, relative ones resolved against `package`
    (by default the one `path` is in), and for every `importlib.import_module("...")` or
    `__import__("...")` given a literal name."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def modules(folder: str, *leaving_out: str) -> list[Path]:
    found = sorted((ROOT / folder).rglob("*.py"))
    return [p for p in found if not any(p.relative_to(ROOT).as_posix().startswith(skip) for skip in leaving_out)]


def offenders(paths: list[Path], forbidden: str, package: str | None = None) -> list[str]:
    """`path:line imports name` for each import of `forbidden` or a module under it, once a line."""
    found: dict[tuple[Path, int], str] = {}
    for path in paths:
        for line, name in imported(path, package):
            if name == forbidden or name.startswith(forbidden + "."):
                found.setdefault((path, line), name)
    return [f"{_shown(path)}:{line} imports {name}" for (path, line), name in sorted(found.items())]


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


RUNTIME = modules("modelfn", "modelfn/deploy/", "modelfn/cli.py") + modules("handlers")


def test_the_walk_sees_the_runtime_and_the_adapters() -> None:
    names = {module_name(p) for p in RUNTIME}
    assert {"modelfn.spec", "modelfn.function", "handlers.aws_lambda"} <= names
    assert not any(n.startswith(TOOLING) for n in names) and "modelfn.cli" not in names


def test_the_walk_finds_relative_lazy_and_dynamic_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import importlib\n"
        "from . import deploy\n"
        "from .deploy.plan import place\n"
        "def later():\n"
        "    from modelfn.deploy import layer\n"
        "    return importlib.import_module('modelfn.deploy.gcp')\n"
        "WRITERS = {'gcp': 'modelfn.deploy.azure'}\n"
    )
    found = {name for _, name in imported(sample, "modelfn")}
    assert {"modelfn.deploy", "modelfn.deploy.plan", "modelfn.deploy.layer", "modelfn.deploy.gcp"} <= found
    assert "modelfn.deploy.azure" not in found  # a module's name in a dict is not an import
    assert offenders([sample], TOOLING, "modelfn") == [
        f"{sample}:2 imports modelfn.deploy",
        f"{sample}:3 imports modelfn.deploy.plan",
        f"{sample}:5 imports modelfn.deploy",
        f"{sample}:6 imports modelfn.deploy.gcp",
    ]


def test_no_runtime_module_or_adapter_imports_the_deploy_tooling() -> None:
    assert offenders(RUNTIME, TOOLING) == []


def test_the_core_imports_no_adapter() -> None:
    """`modelfn invoke --event` runs an adapter's local emulation, named by a string the CLI
    imports when asked to (`_local_invoke`): no import statement in the core names `handlers`."""
    assert offenders(modules("modelfn"), "handlers") == []
