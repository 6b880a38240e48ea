"""Test-wide settings: fake AWS credentials, a private model cache, loopback only."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["support.aws_fixtures"]

SLOW_MODULES = {
    # whole modules that start servers or subprocesses, or synthesise CDK apps: `pytest -m "not slow"`
    # leaves them out for a fast loop; single slow tests elsewhere carry @pytest.mark.slow themselves
    "test_aws_runtime",  # the Lambda runtime client against a loopback Runtime API
    "test_azure_azurite",  # Azurite
    "test_azure_deploy",  # the generated app in a worker subprocess
    "test_batching_faults",  # uvicorn servers under faults
    "test_cdk_cli",  # the real `npx cdk synth`
    "test_cdk_stacks",  # CDK synthesis, cdk-nag and cfn-lint
    "test_cdk_workflow",  # actionlint
    "test_faults",  # model sources and servers under faults
    "test_fuzz",  # schemathesis against a live server
    "test_gcp_container",  # podman builds
    "test_gcp_deploy",  # functions-framework on the generated folder
    "test_gcp_functions",  # functions-framework servers and the emulators
    "test_layer",  # pip downloads and a bare Python 3.12
    "test_log_privacy",  # the Lambda runtime client and servers
    "test_sentence_embed",  # the 86 MB model
    "test_plan",  # the real `modelfn` command in subprocesses
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


FUNCTIONS = ROOT / "functions"

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # model stores in tests are loopback servers; tests of the refusal unset it
        "MODELFN_ALLOW_PRIVATE_SOURCES": "1",
    }
)
os.environ.pop("MODELFN_API_KEY", None)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFN_CACHE_DIR", str(tmp_path / "model-cache"))
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(FUNCTIONS))


@pytest.fixture(scope="session")
def cancer_rows() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data.astype(np.float32)


@pytest.fixture(autouse=True)
def _no_stand_in_store() -> Iterator[None]:
    """A local invoke installs a folder standing in for S3; the next test starts with S3 again."""
    yield
    objects = sys.modules.get("handlers.aws.objects")
    if objects is not None:
        objects.use(None)
