"""The shadow as an invocation of its own on Azure Functions: with MODELFN_SHADOW_QUEUE set, the
live HTTP trigger puts each copy on a Storage Queue (Azurite, through the real SDK) and runs no
shadow; the app's `<name>_shadow` Queue trigger, handed that message as the worker would, runs
the shadow and logs its agreement. The Functions host cannot run here (see test_azure_azurite):
the test takes the message from the queue and calls the registered function itself."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from azure.functions.queue import QueueMessage
from support.providers import azure_request
from test_azure_azurite import CONNECTION, azurite, queue_client  # noqa: F401  (a fixture)
from test_traffic import FACTORS, ROW, versioned_function

from handlers.azure_functions import build_app
from handlers.local.azure import invoke

pytestmark = pytest.mark.slow  # Azurite

QUEUE = "shadow-copies"


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    versioned_function(tmp_path, "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"')
    with (tmp_path / "ab" / "function.toml").open("a") as toml:
        toml.write("[triggers]\nhttp = true\n")
    return tmp_path


@pytest.fixture
def app_functions(
    functions: Path,
    azurite: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv(CONNECTION, azurite)  # the app setting the bindings' `connection` names
    monkeypatch.setenv("MODELFN_SHADOW_QUEUE", QUEUE)
    monkeypatch.setenv("MODELFN_SHADOW_CONNECTION", CONNECTION)
    queue_client(azurite, QUEUE).create_queue()
    yield {f.get_function_name(): f for f in build_app("ab", root=functions).get_functions()}
    queue_client(azurite, QUEUE).delete_queue()


def versions_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "modelfn.versions"]  # type: ignore[attr-defined]


def test_the_live_answer_queues_the_copy_and_the_shadow_trigger_runs_it(
    app_functions: dict[str, Any],
    azurite: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    shadow_function = app_functions["ab_shadow"]
    [trigger] = json.loads(shadow_function.get_function_json())["bindings"]
    assert (trigger["type"], trigger["queueName"], trigger["connection"]) == ("queueTrigger", QUEUE, CONNECTION)

    with caplog.at_level(logging.INFO, "modelfn"):
        response, _ = invoke(
            app_functions["ab_http"], azure_request("POST", "/functions/ab", json.dumps({"x": ROW}).encode())
        )
    version = response.headers["x-modelfn-version"]
    assert response.status_code == 200
    assert np.allclose(json.loads(response.get_body())["y"], np.multiply(ROW, FACTORS[version]))
    assert [line["role"] for line in versions_lines(caplog)] == ["live"]  # no shadow ran here

    [message] = queue_client(azurite, QUEUE).receive_messages(max_messages=5, visibility_timeout=30)
    copy = json.loads(message.content)
    assert (copy["function"], copy["version"], copy["live_version"]) == ("ab", "3", version)

    caplog.clear()
    with caplog.at_level(logging.INFO, "modelfn"):
        invoke(shadow_function, QueueMessage(id=message.id, body=message.content, dequeue_count=1))
    [line] = versions_lines(caplog)
    assert (line["role"], line["version"], line["status"]) == ("shadow", "3", 200)
    gap = abs(FACTORS[version] - FACTORS["3"]) * np.max(ROW)  # x1.001 against the live x1 or x2
    assert line["agreement"]["y"]["max_abs_diff"] == pytest.approx(gap, rel=1e-3)


def test_without_a_shadow_queue_the_app_has_no_shadow_trigger(functions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFN_SHADOW_QUEUE", raising=False)
    names = [f.get_function_name() for f in build_app("ab", root=functions).get_functions()]
    assert names == ["ab_http"]


def test_a_failed_send_never_fails_the_live_answer(
    functions: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a storage endpoint where nothing listens: the SDK's send fails at once (its retries are connection errors)
    monkeypatch.setenv(
        CONNECTION, "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/a;"
    )
    monkeypatch.setenv("MODELFN_SHADOW_QUEUE", QUEUE)
    monkeypatch.setenv("MODELFN_SHADOW_CONNECTION", CONNECTION)
    http_function = next(
        f for f in build_app("ab", root=functions).get_functions() if f.get_function_name() == "ab_http"
    )
    with caplog.at_level(logging.INFO, "modelfn"):
        response, _ = invoke(http_function, azure_request("POST", "/functions/ab", json.dumps({"x": ROW}).encode()))
    assert response.status_code == 200
    assert any(r.getMessage().startswith(f"shadow copy not sent to queue {QUEUE}") for r in caplog.records)


def test_the_generated_app_names_the_shadow_queue_and_says_how_to_create_it(functions: Path, tmp_path: Path) -> None:
    from modelfn.deploy.azure import local_settings, write
    from modelfn.deploy.plan import place
    from modelfn.spec import load_spec

    spec = load_spec(functions / "ab")
    values = local_settings(spec)["Values"]
    assert values["MODELFN_SHADOW_QUEUE"] == "ab-shadow-copies"
    write(spec, place(spec, "azure"), tmp_path / "out")
    readme = (tmp_path / "out" / "ab" / "README.md").read_text()
    assert "az storage queue create --name ab-shadow-copies --account-name <account>" in readme
    assert "--settings MODELFN_SHADOW_QUEUE=ab-shadow-copies" in readme
    plain_spec = load_spec(Path(__file__).resolve().parent.parent / "functions" / "breast-cancer")
    assert "MODELFN_SHADOW_QUEUE" not in local_settings(plain_spec)["Values"]
    write(plain_spec, place(plain_spec, "azure"), tmp_path / "plain")
    assert "shadow" not in (tmp_path / "plain" / "breast-cancer" / "README.md").read_text()
