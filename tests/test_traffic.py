"""Model versions, A/B splits and shadow traffic, as a user sees them: a function.toml with
versions, the split and stickiness over many requests, the versioned Open Inference Protocol
routes on the local server, the Lambda handler, the Cloud Functions HTTP function and the
Azure HTTP trigger, and a shadow version whose answers are measured but never returned.

The versions are tiny graphs y = x * factor, so every answer shows which version gave it."""

from __future__ import annotations

import collections
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_models import _model, save
from support.providers import azure_request, lambda_http_event

from handlers.local.aws import LocalContext
from modelfn.agreement import compare
from modelfn.errors import SpecError
from modelfn.http import HttpRequest, HttpResponse
from modelfn.observations import STATS
from modelfn.registry import Registry
from modelfn.service import Service
from modelfn.spec import load_spec, parse_spec

FACTORS = {"1": 1.0, "2": 2.0, "3": 1.001}
ROW = [[1.0, 2.0]]
Call = Callable[[str, str, bytes, dict[str, str]], tuple[int, Any, dict[str, str]]]


def scaled(factor: float, input_name: str = "x") -> Any:
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    f = helper.make_tensor("f", TensorProto.FLOAT, [], [factor])
    return _model(helper.make_graph([helper.make_node("Mul", [input_name, "f"], ["y"])], "scaled", [x], [y], [f]))


def versioned_function(root: Path, name: str, traffic: str) -> Path:
    """v1 (x1, the default), v2 (x2), v3 (x1.001) and `other` (takes input `z`, so it refuses
    every request the others take), with the `[traffic]` table given."""
    folder = root / name
    for version, factor in FACTORS.items():
        save(scaled(factor), folder / f"v{version}.onnx")
    save(scaled(1.0, "z"), folder / "other.onnx")
    (folder / "function.toml").write_text(
        f'name = "{name}"\n[model]\nsource = "v1.onnx"\n'
        '[model.versions.2]\nsource = "v2.onnx"\n[model.versions.3]\nsource = "v3.onnx"\n'
        '[model.versions.other]\nsource = "other.onnx"\n'
        f"[traffic]\n{traffic}\n"
    )
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    versioned_function(root, "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"')
    versioned_function(root, "failing-shadow", 'shadow = "other"')
    versioned_function(root, "sampled", 'shadow = "3"\nshadow_sample = 0.25')
    return root


def service(root: Path, name: str) -> Service:
    return Service(Registry([load_spec(root / name)]))


def predict(svc: Service, name: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps({"x": ROW}).encode()
    return svc.handle(
        HttpRequest("POST", f"/functions/{name}", {"content-type": "application/json", **(headers or {})}, body)
    )


def answered_by(response: HttpResponse) -> str:
    """The version named in the header, checked against the values it answered with."""
    version = response.headers["x-modelfn-version"]
    assert response.status == 200 and np.allclose(response.body["y"], np.multiply(ROW, FACTORS[version]))
    return version


def shares(counts: collections.Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {version: count / total for version, count in counts.items()}


# -- the spec ---------------------------------------------------------------------------------


def test_a_function_without_versions_is_version_1_as_before() -> None:
    spec = parse_spec({"name": "plain", "model": {"source": "m.onnx"}}, Path("."))
    assert (spec.model.version, spec.model.version_names, spec.traffic.weights) == ("1", ["1"], {})


def test_traffic_naming_a_version_that_does_not_exist_is_refused() -> None:
    data = {"name": "f", "model": {"source": "a.onnx", "versions": {"2": {"source": "b.onnx"}}}}
    with pytest.raises(SpecError) as refused:
        parse_spec({**data, "traffic": {"weights": {"1": 50, "3": 50}, "shadow": "2"}}, Path("."))
    assert refused.value.detail["errors"] == ["traffic.weights.3: no version '3'; the versions are ['1', '2']"]
    with pytest.raises(SpecError) as refused:
        parse_spec({**data, "traffic": {"weights": {"1": 50, "2": 50}, "shadow": "2"}}, Path("."))
    assert refused.value.detail["errors"] == ["traffic.shadow: version '2' also has live weight; a shadow only listens"]
    with pytest.raises(SpecError) as refused:
        parse_spec({**data, "traffic": {"weights": {"1": "most"}}}, Path("."))
    assert refused.value.detail["errors"] == ["traffic.weights.1: expected a number, got 'most'"]


def test_a_version_may_bring_its_own_io_table(tmp_path: Path) -> None:
    data = {
        "name": "f",
        "io": {"codec": "tensor"},
        "model": {
            "source": "a.onnx",
            "versions": {"2": {"source": "b.onnx", "io": {"codec": "records", "columns": ["a"]}}},
        },
    }
    spec = parse_spec(data, tmp_path)
    from modelfn.traffic import version_spec

    second = version_spec(spec, "2")
    assert (second.model.source, second.model.version, second.io.codec, second.io.columns) == (
        "b.onnx",
        "2",
        "records",
        ["a"],
    )
    assert version_spec(spec, "1") is spec


# -- the split and stickiness -------------------------------------------------------------------


def test_a_90_10_split_over_2000_keys_lands_within_3_percent(root: Path) -> None:
    svc = service(root, "ab")
    counts = collections.Counter(answered_by(predict(svc, "ab", {"x-modelfn-key": f"user-{i}"})) for i in range(2000))
    assert set(counts) == {"1", "2"}  # the shadow never answers
    assert abs(shares(counts)["2"] - 0.10) <= 0.03 and abs(shares(counts)["1"] - 0.90) <= 0.03


def test_without_a_key_requests_are_split_at_random_by_weight(root: Path) -> None:
    svc = service(root, "ab")
    counts = collections.Counter(answered_by(predict(svc, "ab")) for _ in range(2000))
    assert abs(shares(counts)["2"] - 0.10) <= 0.03


def test_a_sticky_key_always_gets_the_same_version(root: Path) -> None:
    svc = service(root, "ab")
    for i in range(100):
        seen = {answered_by(predict(svc, "ab", {"x-modelfn-key": f"customer-{i}"})) for _ in range(5)}
        assert len(seen) == 1, f"customer-{i} moved between versions {seen}"


def test_raising_a_canary_weight_moves_only_keys_towards_it(tmp_path: Path) -> None:
    """90/10 to 80/20: a key on version 2 stays there; only keys move from 1 to 2, never back."""
    before = {}
    for weights in ("{ 1 = 90, 2 = 10 }", "{ 1 = 80, 2 = 20 }"):
        folder = versioned_function(tmp_path / weights[4:6], "canary", f"weights = {weights}")
        svc = Service(Registry([load_spec(folder)]))
        now = {i: answered_by(predict(svc, "canary", {"x-modelfn-key": str(i)})) for i in range(500)}
        if before:
            assert all(now[i] == "2" for i in before if before[i] == "2")
            assert 0.17 <= list(now.values()).count("2") / 500 <= 0.23
        before = now


# -- shadow ---------------------------------------------------------------------------------------


def test_shadow_answers_never_reach_the_caller_and_their_agreement_is_recorded(root: Path) -> None:
    STATS.clear()
    svc = service(root, "ab")
    versions = [answered_by(predict(svc, "ab", {"x-modelfn-key": f"k{i}"})) for i in range(200)]
    assert "3" not in versions
    stats = {(s["version"], s["role"]): s for s in STATS.of("ab")}
    shadow = stats[("3", "shadow")]
    assert shadow["requests"] == 200 and shadow["errors"] == 0
    agreement = shadow["agreement"]["y"]
    assert agreement["requests"] == 200
    # against v1 (x1) the shadow (x1.001) is 0.002 off at most; against v2 (x2) it is 1.998 off
    assert agreement["max_abs_diff"] == pytest.approx(1.998, abs=1e-5)
    assert agreement["cosine"] == pytest.approx(1.0)
    assert stats[("1", "live")]["requests"] + stats[("2", "live")]["requests"] == 200


def test_a_shadow_that_fails_never_fails_the_live_answer(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    STATS.clear()
    svc = service(root, "failing-shadow")
    with caplog.at_level(logging.WARNING, "modelfn"):
        answers = [predict(svc, "failing-shadow") for _ in range(20)]
    assert {answered_by(a) for a in answers} == {"1"}
    shadow = next(s for s in STATS.of("failing-shadow") if s["role"] == "shadow")
    assert (shadow["version"], shadow["requests"], shadow["errors"]) == ("other", 20, 20)
    assert "shadow version other of failing-shadow failed (422)" in caplog.text


def test_only_the_sampled_share_is_copied_to_the_shadow(root: Path) -> None:
    STATS.clear()
    svc = service(root, "sampled")
    for _ in range(2000):
        predict(svc, "sampled")
    shadow = next(s for s in STATS.of("sampled") if s["role"] == "shadow")
    assert 0.22 <= shadow["requests"] / 2000 <= 0.28


def test_a_request_for_a_named_version_gets_no_shadow_copy(root: Path) -> None:
    STATS.clear()
    svc = service(root, "ab")
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    response = svc.handle(HttpRequest("POST", "/v2/models/ab/versions/2/infer", {}, json.dumps(request).encode()))
    assert json.loads(response.body)["outputs"][0]["data"] == [2.0, 4.0]
    assert [(s["version"], s["role"]) for s in STATS.of("ab")] == [("2", "live")]


def test_agreement_measures_labels_probabilities_and_embeddings() -> None:
    live = {
        "label": np.array([0, 1, 1, 0]),
        "probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]]),
    }
    shadow = {
        "label": np.array([0, 1, 0, 0]),
        "probabilities": np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3]]),
    }
    measured = compare(live, shadow)
    assert measured["label"]["label_agreement"] == 0.75 and measured["label"]["max_abs_diff"] == 1.0
    assert measured["probabilities"]["label_agreement"] == 0.75
    assert measured["probabilities"]["max_abs_diff"] == pytest.approx(0.2)
    embeddings = compare({"e": np.array([[0.5, 2.0, -1.0]])}, {"e": np.array([[0.5, 2.0, 1.0]])})
    assert embeddings["e"]["cosine"] == pytest.approx(3.25 / 5.25)
    with pytest.raises(ValueError, match="shape"):
        compare({"e": np.zeros((2, 3))}, {"e": np.zeros((2, 4))})


# -- events ---------------------------------------------------------------------------------------


def test_events_follow_the_split_sticky_by_their_key_with_a_shadow_copy(root: Path) -> None:
    STATS.clear()
    svc = service(root, "ab")
    results = {}
    for i in range(2000):
        result = svc.predict("ab", payload={"x": ROW}, key=f"object-{i}.json")
        results[i] = "2" if result["y"][0][0] == 2.0 else "1"
        assert result["y"][0][0] in (1.0, 2.0)  # never the shadow's 1.001
    assert abs(list(results.values()).count("2") / 2000 - 0.10) <= 0.03
    again = svc.predict("ab", payload={"x": ROW}, key="object-7.json")
    assert ("2" if again["y"][0][0] == 2.0 else "1") == results[7]
    shadow = next(s for s in STATS.of("ab") if s["role"] == "shadow")
    assert shadow["requests"] == 2001


def test_an_sqs_message_attribute_keeps_messages_on_one_version(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aws_lambda_powertools")
    from handlers import aws_lambda
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(root))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setenv("MODELFN_OUTPUT_QUEUE", "")
    app.reset()
    records = [
        {
            "messageId": f"m{i}",
            "receiptHandle": "r",
            "body": json.dumps({"x": ROW}),
            "attributes": {},
            "messageAttributes": {"modelfn-key": {"stringValue": "tenant-42", "dataType": "String"}},
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:requests",
            "awsRegion": "us-east-1",
        }
        for i in range(20)
    ]
    STATS.clear()
    response = aws_lambda.handler({"Records": records}, LocalContext("traffic"))
    assert response == {"batchItemFailures": []}
    live = [s for s in STATS.of("ab") if s["role"] == "live"]
    assert len(live) == 1 and live[0]["requests"] == 20  # all twenty on the one version tenant-42 hashes to


# -- every provider's HTTP path -------------------------------------------------------------------


def lambda_call(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    from handlers import aws_lambda

    response = aws_lambda.handler(lambda_http_event(method, path, body, headers), LocalContext("traffic"))
    return response["statusCode"], json.loads(response["body"]), response["headers"]


def gcp_call(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    import flask

    from handlers import gcp_functions

    sent = {"content-type": "application/json", **headers}
    with flask.Flask(__name__).test_request_context(path, method=method, headers=sent, data=body):
        response = gcp_functions.serve_http(flask.request)
    return response.status_code, json.loads(response.get_data()), {k.lower(): v for k, v in response.headers.items()}


def azure_call(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:

    from handlers.az.http import serve
    from handlers.azure_functions import ServedFunction, resolve_spec

    response = serve(ServedFunction(resolve_spec("ab")), azure_request(method, path, body, headers))
    return response.status_code, json.loads(response.get_body()), {k.lower(): v for k, v in response.headers.items()}


@pytest.fixture
def local_server(root: Path) -> Iterator[Any]:
    """One server per test: its shadow copies run after the answers and count into the global
    STATS, so they must all have run (the server's shutdown waits for them) before the next
    test clears STATS and counts its own."""
    from live_server import LiveServer

    from modelfn.asgi import create_app

    with LiveServer(create_app(Registry([load_spec(root / "ab")]))) as live:
        yield live


@pytest.fixture(params=["local", "aws", "gcp", "azure"])
def call(request: pytest.FixtureRequest, root: Path, monkeypatch: pytest.MonkeyPatch) -> Call:
    from handlers.aws import app
    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(root))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setattr(instance, "_services", {})
    app.reset()
    if request.param == "local":
        request.applymarker(pytest.mark.slow)
        url = request.getfixturevalue("local_server").url

        def local_call(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            sent = {"content-type": "application/json", **headers}
            response = httpx.request(method, url + path, content=body, headers=sent)
            return response.status_code, response.json(), dict(response.headers)

        return local_call
    return {"aws": lambda_call, "gcp": gcp_call, "azure": azure_call}[request.param]


INFER = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def test_each_version_answers_on_its_own_routes(call: Call) -> None:
    for version, factor in FACTORS.items():
        status, answer, headers = call(
            "POST", f"/v2/models/ab/versions/{version}/infer", json.dumps(INFER).encode(), {}
        )
        assert (status, answer["model_version"], headers["x-modelfn-version"]) == (200, version, version)
        assert answer["outputs"][0]["data"] == pytest.approx([1.0 * factor, 2.0 * factor])
        status, ready, _ = call("GET", f"/v2/models/ab/versions/{version}/ready", b"", {})
        assert (status, ready) == (200, {"name": "ab", "ready": True})
    status, metadata, _ = call("GET", "/v2/models/ab/versions/other", b"", {})
    assert status == 200 and metadata["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 2]}]
    assert metadata["versions"] == ["1", "2", "3", "other"]


def test_the_unversioned_routes_follow_the_split_and_say_who_answered(call: Call) -> None:
    for key in ("alice", "bob", "carol", "dave"):
        status, answer, headers = call(
            "POST", "/v2/models/ab/infer", json.dumps(INFER).encode(), {"x-modelfn-key": key}
        )
        version = headers["x-modelfn-version"]
        assert status == 200 and answer["model_version"] == version and version in ("1", "2")
        assert answer["outputs"][0]["data"] == pytest.approx([FACTORS[version], 2 * FACTORS[version]])
        status, simple, simple_headers = call(
            "POST", "/functions/ab", json.dumps({"x": ROW}).encode(), {"x-modelfn-key": key}
        )
        assert status == 200 and simple_headers["x-modelfn-version"] == version  # the same key, the same version
        assert np.allclose(simple["y"], np.multiply(ROW, FACTORS[version]))


def test_an_unknown_version_is_404_on_every_route(call: Call) -> None:
    expected = "function 'ab' has no version '9'; it has ['1', '2', '3', 'other']"
    for method, path, body in [
        ("POST", "/v2/models/ab/versions/9/infer", json.dumps(INFER).encode()),
        ("GET", "/v2/models/ab/versions/9", b""),
        ("GET", "/v2/models/ab/versions/9/ready", b""),
    ]:
        status, answer, _ = call(method, path, body, {})
        assert (status, answer["code"], answer["error"]) == (404, "not_found", expected)


def test_lambda_writes_emf_per_version_and_for_the_shadow(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(root))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    app.reset()
    written = io.StringIO()
    with redirect_stderr(written):
        lambda_call("POST", "/functions/ab", json.dumps({"x": ROW}).encode(), {"x-modelfn-key": "k"})
    documents = [json.loads(line) for line in written.getvalue().splitlines() if '"_aws"' in line]
    by_metric = {d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: d for d in documents}
    live, shadow = by_metric["VersionRequests"], by_metric["ShadowRequests"]
    assert live["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "function", "version"]]
    assert (live["function"], live["VersionRequests"], live["VersionErrors"]) == ("ab", 1.0, 0.0)
    assert live["VersionLatency"] > 0 and live["version"] in ("1", "2")
    assert (shadow["version"], shadow["ShadowErrors"]) == ("3", 0.0)
    agreement = by_metric["ShadowMaxAbsDiff"]
    assert agreement["output"] == "y" and agreement["ShadowMaxAbsDiff"] >= 0.002 - 1e-6


def test_google_and_azure_log_a_structured_line_per_version(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(root))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setattr(instance, "_services", {})
    with caplog.at_level(logging.INFO, "modelfn.versions"):
        gcp_call("POST", "/functions/ab", json.dumps({"x": ROW}).encode(), {"x-modelfn-key": "k"})
    lines = [record.fields for record in caplog.records if record.name == "modelfn.versions"]  # type: ignore[attr-defined]
    roles = {line["role"]: line for line in lines}
    assert roles["live"]["metric"] == "modelfn.version" and roles["live"]["status"] == 200
    assert roles["shadow"]["version"] == "3" and set(roles["shadow"]["agreement"]["y"]) >= {"max_abs_diff", "cosine"}
    assert json.loads(caplog.records[-1].getMessage())["function"] == "ab"


@pytest.mark.slow
def test_the_server_runs_the_shadow_after_the_answer_and_exports_it(root: Path) -> None:
    from live_server import LiveServer, wait_until

    from modelfn.asgi import create_app

    STATS.clear()
    app = create_app(Registry([load_spec(root / "ab")]))
    with LiveServer(app) as live, httpx.Client(base_url=live.url) as client:
        answers = [client.post("/functions/ab", json={"x": ROW}, headers={"x-modelfn-key": f"u{i}"}) for i in range(50)]
        assert {a.headers["x-modelfn-version"] for a in answers} <= {"1", "2"}
        assert all(a.json()["y"][0][0] in (1.0, 2.0) for a in answers)
        # the copies run after the answers, one at a time: wait for them (a loaded machine is slow)
        wait_until(lambda: sum(s["requests"] for s in STATS.of("ab") if s["role"] == "shadow") >= 50, 30, 0.05)
        metrics = client.get("/metrics").text if getattr(app.service, "metrics", None) is not None else ""
    shadow = next(s for s in STATS.of("ab") if s["role"] == "shadow")
    assert shadow["requests"] == 50 and shadow["errors"] == 0 and shadow["dropped"] == 0
    if metrics:
        assert 'modelfn_version_requests_total{function="ab",role="shadow",status="200",version="3"} 50.0' in metrics


def test_the_server_shadow_waits_while_live_requests_are_in_flight_and_drops_beyond_its_backlog(root: Path) -> None:
    import asyncio

    from modelfn.service import SHADOW_BACKLOG

    STATS.clear()
    svc = service(root, "ab")
    body = json.dumps({"x": ROW}).encode()

    async def burst() -> tuple[list[HttpResponse], dict[str, Any]]:
        async def one(i: int) -> HttpResponse:
            headers = {"content-type": "application/json", "x-modelfn-key": f"b{i}"}
            return await svc.handle_async(HttpRequest("POST", "/functions/ab", headers, body))

        # 200 requests at once: while any is in flight no shadow copy runs, so they queue up to the backlog
        answers = await asyncio.gather(*(one(i) for i in range(200)))
        during = next(s for s in STATS.of("ab") if s["role"] == "shadow")
        await svc.close()  # idle now: the queued copies run
        return answers, dict(during)

    answers, during = asyncio.run(burst())
    assert all(answered_by(a) in ("1", "2") for a in answers)
    # none ran while live requests were in flight; beyond the backlog, copies were dropped and counted
    assert (during["requests"], during["dropped"]) == (0, 200 - SHADOW_BACKLOG)
    shadow = next(s for s in STATS.of("ab") if s["role"] == "shadow")
    assert (shadow["requests"], shadow["errors"], shadow["dropped"]) == (SHADOW_BACKLOG, 0, 200 - SHADOW_BACKLOG)
    assert shadow["agreement"]["y"]["requests"] == SHADOW_BACKLOG


def test_bundles_ship_every_versions_model(root: Path) -> None:
    from modelfn.deploy.plan import left_behind

    spec = load_spec(root / "ab")
    assert {p.name for p in left_behind(spec)} == set()
    (root / "ab" / "old.onnx").write_bytes(b"")
    try:
        assert {p.name for p in left_behind(spec)} == {"old.onnx"}
    finally:
        (root / "ab" / "old.onnx").unlink()
