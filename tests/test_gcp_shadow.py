"""The shadow as a function of its own on Cloud Functions: with MODELFN_SHADOW_TOPIC set, the live
function publishes each copy to Pub/Sub (the emulator) and runs no shadow; a second function,
pushed the topic's messages, runs the shadow and logs its agreement. Both are functions-framework
servers on loopback; the CloudEvent path is functions-framework's own app in-process."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_gcp_functions import HANDLER, FunctionsFramework, free_port, pubsub_host  # noqa: F401  (a fixture)
from test_traffic import FACTORS, ROW, versioned_function

from modelfn.observations import DROPPED
from modelfn.shadow_copy import ShadowCopy, ShadowInput

pytestmark = pytest.mark.slow  # functions-framework servers and the Pub/Sub emulator

PROJECT = "demo-project"


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    versioned_function(root, "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"')
    return root


@contextmanager
def recorded(logger: str) -> Iterator[list[logging.LogRecord]]:
    """The records `logger` (and its children) handle meanwhile; the Cloud Functions adapter's
    JSON logging does not propagate to the root, where caplog listens."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger(logger).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(logger).removeHandler(handler)


def shadow_lines(server: FunctionsFramework) -> list[dict[str, Any]]:
    return [line for line in server.lines() if line.get("metric") == "modelfn.version" and line["role"] == "shadow"]


def test_the_live_function_publishes_the_copy_and_the_shadow_function_runs_it(
    pubsub_host: str,  # noqa: F811
    functions: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_host)
    common = {
        "MODELFN_FUNCTIONS_DIR": str(functions),
        "MODELFN_FUNCTION": "ab",
        "PUBSUB_EMULATOR_HOST": pubsub_host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    # the live answer waits for the copy's publish: the first one connects to the emulator, which
    # can take more than the default 5 s on a loaded machine (the copy would be dropped, not sent)
    live_env = {**common, "MODELFN_SHADOW_TOPIC": "shadow-copies", "MODELFN_SHADOW_PUBLISH_TIMEOUT_S": "30"}
    live = FunctionsFramework("modelfn_http", "http", live_env, tmp_path / "live")
    shadow = FunctionsFramework("modelfn_http", "http", common, tmp_path / "shadow")  # no topic of its own
    try:
        topic = publisher.create_topic(name=f"projects/{PROJECT}/topics/shadow-copies").name
        subscriber.create_subscription(
            name=f"projects/{PROJECT}/subscriptions/shadow-push",
            topic=topic,
            push_config=pubsub_v1.types.PushConfig(push_endpoint=shadow.url + "/"),
        )
        response = httpx.post(
            f"{live.url}/functions/ab", json={"x": ROW}, headers={"x-modelfn-key": "user-7"}, timeout=60
        )
        version = response.headers["x-modelfn-version"]
        assert response.status_code == 200
        assert np.allclose(response.json()["y"], np.multiply(ROW, FACTORS[version]))

        deadline = time.monotonic() + 60
        while not shadow_lines(shadow) and time.monotonic() < deadline:
            time.sleep(0.2)
        [line] = shadow_lines(shadow)
        assert (line["function"], line["version"], line["status"], line["error"]) == ("ab", "3", 200, False)
        gap = abs(FACTORS[version] - FACTORS["3"]) * np.max(ROW)  # x1.001 against the live x1 or x2
        assert line["agreement"]["y"]["max_abs_diff"] == pytest.approx(gap, rel=1e-3)
        assert shadow_lines(live) == []  # the live function ran no shadow
        assert [line["role"] for line in live.lines() if line.get("metric") == "modelfn.version"] == ["live"]
    finally:
        live.stop()
        shadow.stop()
        publisher.transport.close()
        subscriber.close()


def test_a_shadow_copy_cloudevent_runs_the_shadow_and_logs_its_agreement(
    functions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    import functions_framework
    from cloudevents.http import CloudEvent, to_structured

    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setattr(instance, "_services", {})
    body = json.dumps({"x": ROW}).encode()
    copy = ShadowCopy("ab", "3", "2", ShadowInput("codec", body, "application/json"), {"y": np.multiply(ROW, 2.0)})
    message = {"data": base64.b64encode(copy.encoded()).decode(), "attributes": {"modelfn-shadow-copy": "1"}}
    event = CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": f"//pubsub/projects/{PROJECT}/topics/t"},
        {"message": {**message, "messageId": "42"}, "subscription": f"projects/{PROJECT}/subscriptions/s"},
    )
    headers, data = to_structured(event)
    client = functions_framework.create_app("modelfn_event", str(HANDLER), "cloudevent").test_client()
    with recorded("modelfn.versions") as records:
        assert client.post("/", headers=headers, data=data).status_code == 200
    [line] = [r.fields for r in records]  # type: ignore[attr-defined]
    assert (line["role"], line["version"], line["status"]) == ("shadow", "3", 200)
    # the shadow (x1.001) against a live answer of x2: [[1.001, 2.002]] against [[2, 4]]
    assert np.isclose(line["agreement"]["y"]["max_abs_diff"], 4.0 - 2.002, atol=1e-5)


def test_a_failed_publish_never_fails_the_live_answer(functions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import functions_framework

    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setenv("MODELFN_SHADOW_TOPIC", "shadow-copies")
    monkeypatch.setenv("MODELFN_SHADOW_PUBLISH_TIMEOUT_S", "1")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(instance, "_services", {})
    client = functions_framework.create_app("modelfn_http", str(HANDLER), "http").test_client()
    with recorded("modelfn") as records:
        response = client.post("/functions/ab", json={"x": ROW})
    assert response.status_code == 200 and "y" in response.get_json()
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"shadow copy not published to projects/{PROJECT}/topics/shadow-copies") for m in warnings)
    shadow = [r.fields for r in records if r.name == "modelfn.versions" and r.fields["role"] == "shadow"]  # type: ignore[attr-defined]
    assert [line["status"] for line in shadow] == [DROPPED]  # counted as dropped, never run here


@pytest.fixture(autouse=True)
def _fresh_instance() -> Iterator[None]:
    yield
    from handlers.gcp import instance

    instance._services.clear()


def test_the_generated_cloud_functions_config_deploys_the_shadow_on_its_topic(tmp_path: Path) -> None:
    from test_gcp_deploy import dry_run, load

    from modelfn.deploy.gcp import write
    from modelfn.deploy.plan import place
    from modelfn.spec import load_spec

    folder = versioned_function(tmp_path / "functions", "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"')
    with (folder / "function.toml").open("a") as toml:
        toml.write('[triggers]\nhttp = false\npubsub = { topic = "ab-requests" }\n')
    spec = load_spec(folder)
    write(spec, place(spec, "gcp"), tmp_path / "out")
    config = {f["name"]: f for f in load(tmp_path / "out" / "ab" / "cloud-functions.yaml")["functions"]}
    topic = "projects/PROJECT_ID/topics/ab-shadow-copies"
    assert config["ab-pubsub"]["environmentVariables"] == {"MODELFN_FUNCTION": "ab", "MODELFN_SHADOW_TOPIC": topic}
    shadow = config["ab-shadow"]
    assert shadow["entryPoint"] == "modelfn_event"
    assert shadow["environmentVariables"] == {"MODELFN_FUNCTION": "ab"}  # it publishes nothing on
    assert shadow["trigger"] == {
        "eventType": "google.cloud.pubsub.topic.v1.messagePublished",
        "pubsubTopic": topic,
        "retryPolicy": "RETRY_POLICY_DO_NOT_RETRY",
    }
    deploys = [c for c in dry_run(tmp_path / "out" / "ab" / "deploy.sh") if c.startswith("gcloud functions deploy")]
    [shadow_deploy] = [c for c in deploys if c.startswith("gcloud functions deploy ab-shadow ")]
    assert "--trigger-topic=ab-shadow-copies" in shadow_deploy and "--retry" not in shadow_deploy
    [live_deploy] = [c for c in deploys if c.startswith("gcloud functions deploy ab-pubsub ")]
    assert "MODELFN_SHADOW_TOPIC=projects/demo-project/topics/ab-shadow-copies" in live_deploy
