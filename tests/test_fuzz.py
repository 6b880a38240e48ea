"""Schemathesis against the local server's own OpenAPI document, served by uvicorn on loopback
with breast-cancer and digits: whatever it generates from the document (valid requests and
deliberately invalid ones), the server answers without a 5xx, with a status the document lists
for that operation, and with a body that matches the schema documented for that status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="API fuzzing needs schemathesis (pip install schemathesis)")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from live_server import LiveServer  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from modelfn.asgi import App  # noqa: E402
from modelfn.openapi import document  # noqa: E402

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Per operation; the GET operations run out of distinct cases well before this.
MAX_EXAMPLES = 200
cases_run: dict[str, int] = {}


def local_app() -> App:
    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    return create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer", "digits"]), max_body_mb=1)


# The document is written when the module is collected (schemathesis' fixture-based loader does not
# run under pytest 9); the test below checks the live server serves this very document.
DOCUMENT = document(["breast-cancer", "digits"])
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(local_app()) as live:
        yield live


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request: pytest.FixtureRequest, record_testsuite_property: object) -> Iterator[None]:
    """The number of cases sent: printed at the end and kept as a junit property (`fuzz_cases`)."""
    yield
    total = sum(cases_run.values())
    record_testsuite_property("fuzz_cases", total)  # type: ignore[operator]
    lines = [f"schemathesis {schemathesis.SCHEMATHESIS_VERSION}: {total} fuzz cases, no 5xx, every response conforms"]
    lines += [f"  {label}: {count}" for label, count in sorted(cases_run.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown without -s too: the lead reads the figure
        print("\n" + "\n".join(lines))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(server: LiveServer, case: schemathesis.Case) -> None:
    cases_run[case.operation.label] = cases_run.get(case.operation.label, 0) + 1
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)


def test_the_fuzzed_document_is_the_one_the_server_serves(server: LiveServer) -> None:
    import httpx

    served = httpx.get(f"{server.url}/openapi.json")
    assert served.status_code == 200 and served.json() == DOCUMENT


def _digit_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    buffer = io.BytesIO()
    Image.fromarray((255 - load_digits().images[3] * 255 / 16).round().astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_successful_answers_match_their_documented_schemas(server: LiveServer, cancer_rows: np.ndarray) -> None:
    """Random requests rarely fit a model: real ones check the documented success bodies."""
    rows = cancer_rows[:2]
    calls = [
        ("/functions/{name}", "POST", "breast-cancer", {"X": rows[0].tolist()}, "application/json"),
        ("/functions/{name}", "POST", "digits", _digit_png(), "image/png"),
        (
            "/v2/models/{name}/infer",
            "POST",
            "breast-cancer",
            {"id": "1", "inputs": [{"name": "X", "shape": [2, 30], "datatype": "FP32", "data": rows.ravel().tolist()}]},
            "application/json",
        ),
        ("/v2/models/{name}", "GET", "digits", None, None),
        ("/v2/models/{name}/ready", "GET", "breast-cancer", None, None),
    ]
    for path, method, name, body, media_type in calls:
        options = {} if body is None else {"body": body, "media_type": media_type}
        case = schema[path][method].Case(path_parameters={"name": name}, **options)
        response = case.call_and_validate(base_url=server.url, checks=CHECKS[:4], timeout=30)
        assert response.status_code == 200, (path, name, response.text)
    prediction = schema["/functions/{name}"]["POST"].Case(
        path_parameters={"name": "breast-cancer"}, body={"X": rows[0].tolist()}, media_type="application/json"
    )
    assert prediction.call(base_url=server.url).json()["label"] in (0, 1)
