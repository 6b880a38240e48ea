"""`GET /metrics` on the server (a real uvicorn), read back with prometheus_client's own
parser, behind the API key; the same numbers over OTLP/HTTP to a loopback receiver; and
none of it imported by the Lambda handler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from live_server import LiveServer
from support.providers import example_copy

from modelfn.asgi import create_app
from modelfn.deploy.profile import build
from modelfn.registry import Registry

pytestmark = pytest.mark.slow
pytest.importorskip("prometheus_client", reason="/metrics comes with the server extra")

ROOT = Path(__file__).resolve().parent.parent
KEY = "metrics-key"


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast-cancer with a profile from the sample requests and a drift window of 50 requests."""
    root = tmp_path_factory.mktemp("functions")
    folder = example_copy(root, extra_toml="[drift]\nwindow_requests = 50\nmin_rows = 50\n")
    fn = Registry.from_dir(root).load("breast-cancer")
    build(fn, ROOT / "events" / "samples" / "breast-cancer.jsonl").save(folder / "profile.json")
    return root


def samples() -> list[dict[str, Any]]:
    lines = (ROOT / "events" / "samples" / "breast-cancer.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the exposition, by name then labels, as prometheus_client parses it."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics", headers={"x-api-key": KEY})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture(scope="module")
def server(functions: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(Registry.from_dir(functions), key=KEY)) as live:
        yield live


def test_metrics_need_the_api_key(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"x-api-key": "wrong"}).status_code == 401


def counted(before: dict[str, dict[tuple[tuple[str, str], ...], float]], after: dict[str, Any]) -> dict[str, Any]:
    """What each counter (and histogram count and sum) grew by between two scrapes of the
    module's shared server: a test's own traffic, whichever tests ran on it before."""
    grown: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for name, samples_ in after.items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")):
            old = before.get(name, {})
            grown[name] = {labels: value - old.get(labels, 0.0) for labels, value in samples_.items()}
    return grown


def test_requests_errors_latency_batches_and_drift_are_scraped(server: LiveServer) -> None:
    headers = {"x-api-key": KEY}
    rows = samples()
    before = scrape(server.url)
    with httpx.Client(base_url=server.url, headers=headers) as client:
        for payload in rows[:50]:
            assert client.post("/functions/breast-cancer", json=payload).status_code == 200
        assert client.post("/functions/breast-cancer", json={"X": [[1.0] * 3]}).status_code == 422
        broken = client.post("/functions/breast-cancer", content=b"{", headers={"content-type": "application/json"})
        assert broken.status_code == 400
        assert client.post("/functions/nobody", json=rows[0]).status_code == 404
    scraped = scrape(server.url)
    found = {**scraped, **counted(before, scraped)}
    route = (("function", "breast-cancer"), ("route", "/functions/{name}"))
    assert found["modelfn_requests_total"][(*route, ("status", "200"))] == 50
    assert found["modelfn_requests_total"][(*route, ("status", "422"))] == 1
    errors = found["modelfn_errors_total"]
    assert errors[(("code", "invalid_input"), ("function", "breast-cancer"), ("status", "422"))] == 1
    assert errors[(("code", "bad_request"), ("function", "breast-cancer"), ("status", "400"))] == 1
    # an unknown function name is not a label value: clients cannot grow the series
    assert errors[(("code", "not_found"), ("function", ""), ("status", "404"))] == 1
    assert found["modelfn_request_duration_seconds_count"][route] == 52
    assert found["modelfn_request_duration_seconds_bucket"][tuple(sorted((*route, ("le", "+Inf"))))] == 52
    assert found["modelfn_batch_rows_count"][(("function", "breast-cancer"),)] >= 1
    assert found["modelfn_batch_rows_sum"][(("function", "breast-cancer"),)] == 50
    assert found["modelfn_queue_depth"][(("function", "breast-cancer"),)] == 0
    # 50 of the profile's own reference requests: one window; PSI over so few rows is noise, well under a shift
    assert found["modelfn_drift_windows_total"][(("function", "breast-cancer"),)] == 1
    assert found["modelfn_drift_rows_total"][(("function", "breast-cancer"),)] == 50
    psi_max = found["modelfn_drift_psi_max"][(("function", "breast-cancer"),)]
    assert 0 < psi_max < 1
    per_feature = found["modelfn_drift_psi"]
    assert len(per_feature) == 30 and max(per_feature.values()) == pytest.approx(psi_max)
    assert (("feature", "label"), ("function", "breast-cancer")) in found["modelfn_output_shift"]


def test_a_shifted_window_shows_in_the_drift_gauge(server: LiveServer) -> None:
    before = scrape(server.url)
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY}) as client:
        for payload in samples()[50:100]:
            shifted = (np.asarray(payload["X"]) * 1.5).tolist()
            assert client.post("/functions/breast-cancer", json={"X": shifted}).status_code == 200
    scraped = scrape(server.url)
    found = {**scraped, **counted(before, scraped)}
    print("shifted window PSI", found["modelfn_drift_psi_max"][(("function", "breast-cancer"),)])
    assert found["modelfn_drift_psi_max"][(("function", "breast-cancer"),)] > 2
    assert found["modelfn_drift_windows_total"][(("function", "breast-cancer"),)] == 1


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint on loopback: keeps every body posted to /v1/metrics."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/metrics":
            Receiver.bodies.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_export_reaches_a_loopback_receiver(functions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="OTLP export needs the otel extra")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.bodies = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")  # only the export at shutdown
    try:
        with LiveServer(create_app(Registry.from_dir(functions))) as live:
            for payload in samples()[:5]:
                assert httpx.post(f"{live.url}/functions/breast-cancer", json=payload).status_code == 200
            assert httpx.post(f"{live.url}/functions/breast-cancer", json={"X": [[0.0]]}).status_code == 422
    finally:
        receiver.shutdown()
    assert Receiver.bodies, "nothing was exported"
    points: dict[str, list[Any]] = {}
    for body in Receiver.bodies:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            assert service == "modelfn"
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    points.setdefault(metric.name, []).extend(getattr(metric, kind).data_points)

    def attributes(point: Any) -> dict[str, str]:
        return {a.key: a.value.string_value for a in point.attributes}

    requests = {attributes(p)["status"]: p.as_int for p in points["modelfn.requests"]}
    assert requests == {"200": 5, "422": 1}
    assert sum(p.count for p in points["modelfn.request.duration"]) == 6
    assert [attributes(p)["code"] for p in points["modelfn.errors"]] == ["invalid_input"]


def test_the_lambda_handler_imports_no_metrics_library() -> None:
    code = (
        "import sys, handlers.aws_lambda; "
        "print([m for m in ('prometheus_client', 'opentelemetry', 'redis', 'modelfn.metrics', 'modelfn.drift',"
        " 'modelfn.cache') if m in sys.modules])"
    )
    env = {**os.environ, "MODELFN_FUNCTION": "breast-cancer"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
