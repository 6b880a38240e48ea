"""`modelfn invoke --version` and the traffic policy in `modelfn plan`, as a user runs them
(the real command in subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.providers import lambda_http_event
from test_cli import modelfn
from test_traffic import ROW, versioned_function

pytestmark = pytest.mark.slow  # subprocesses


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ab`: v1 (x1) 90 %, v2 (x2) 10 %, shadow v3 (x1.001) on half the requests."""
    root = tmp_path_factory.mktemp("functions")
    versioned_function(root, "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"\nshadow_sample = 0.5')
    return root


def http_event(tmp_path: Path) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(lambda_http_event("POST", "/functions/ab", json.dumps({"x": ROW}).encode())))
    return path


def test_invoke_version_answers_with_that_version_for_data_and_events(functions: Path, tmp_path: Path) -> None:
    data = modelfn(
        "--functions-dir", str(functions), "invoke", "ab", "--version", "2", "--data", json.dumps({"x": ROW})
    )
    assert data.returncode == 0, data.stderr
    assert json.loads(data.stdout) == {"y": [[2.0, 4.0]]}

    event = modelfn(
        "--functions-dir", str(functions), "invoke", "ab", "--version", "2", "--event", str(http_event(tmp_path))
    )
    assert event.returncode == 0, event.stderr
    answer = json.loads(event.stdout)
    assert answer["headers"]["x-modelfn-version"] == "2" and json.loads(answer["body"]) == {"y": [[2.0, 4.0]]}

    plain = modelfn(
        "--functions-dir", str(functions), "invoke", "ab", "--version", "1", "--data", json.dumps({"x": ROW})
    )
    assert json.loads(plain.stdout) == {"y": [[1.0, 2.0]]}


def test_invoke_an_unknown_version_names_the_versions(functions: Path) -> None:
    result = modelfn("--functions-dir", str(functions), "invoke", "ab", "--version", "9", "--data", "{}")
    assert result.returncode == 2
    assert "--version 9: ab has the versions ['1', '2', '3', 'other']" in result.stderr


def test_plan_shows_the_split_the_shadow_and_where_it_runs(functions: Path) -> None:
    text = modelfn("--functions-dir", str(functions), "plan")
    assert text.returncode == 0, text.stderr
    assert "traffic ab: versions 1, 2, 3, other; live 1 90 %, 2 10 % (sticky by x-modelfn-key)" in text.stdout
    assert "shadow 3 on 50 % of requests, runs:" in text.stdout
    assert "async invoke of its `shadow` alias" in text.stdout

    as_json = modelfn("--functions-dir", str(functions), "plan", "--provider", "aws", "--json")
    [placement] = json.loads(as_json.stdout)
    traffic = placement["traffic"]
    assert traffic["weights_percent"] == {"1": 90.0, "2": 10.0}
    assert (traffic["default"], traffic["shadow"], traffic["shadow_sample"]) == ("1", "3", 0.5)
    assert traffic["shadow_runs"].startswith("in a Lambda of its own")
