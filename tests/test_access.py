"""Access: with MODELFN_API_KEY set, every route but the two health probes needs the key, on
the local server and on each provider's HTTP path alike, compared in constant time; the
OpenAPI document and its docs page stay public and name no function. Deployments default to
authenticated endpoints: IAM on the HTTP API and the Function URL (one small CDK stack
synthesised here), IAM-only invocation on Cloud Run and Cloud Functions."""

from __future__ import annotations

import base64
import hmac
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import LiveServer
from support.providers import azure_request

from handlers.local.aws import LocalContext
from modelfn import http as modelfn_http
from modelfn.asgi import create_app
from modelfn.registry import Registry
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
CANCER_MODEL = FUNCTIONS / "breast-cancer" / "model.onnx"
KEY = "k3y-Zq8w9-Xr2p"
ROW = [0.5] * 30
OIP = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}

# Every route of the service, and routes that do not exist: without the key none says more than 401.
GUARDED = [
    ("POST", "/functions/breast-cancer", {"X": ROW}),
    ("POST", "/v2/models/breast-cancer/infer", OIP),
    ("POST", "/v2/models/breast-cancer/versions/1/infer", OIP),
    ("GET", "/v2/models/breast-cancer", None),
    ("GET", "/v2/models/breast-cancer/versions/1", None),
    ("GET", "/v2/models/breast-cancer/ready", None),
    ("GET", "/v2", None),
    ("GET", "/functions", None),
    ("GET", "/", None),
    ("POST", "/functions/no-such-function", {"X": ROW}),
    ("GET", "/no/such/route", None),
    ("DELETE", "/functions/breast-cancer", None),
    # trailing slashes, the documentation and paths no route has: 401 too, never a redirect or a 404
    ("POST", "/functions/breast-cancer/", {"X": ROW}),
    ("POST", "/v2/models/breast-cancer/infer/", OIP),
    ("POST", "/v2/models/breast-cancer/versions/1/infer/", OIP),
    ("GET", "/v2/models/breast-cancer/", None),
    ("GET", "/v2/models/breast-cancer/ready/", None),
    ("GET", "/v2/", None),
    ("GET", "/functions/", None),
    ("GET", "//", None),
    ("GET", "/docs", None),
    ("GET", "/docs/", None),
    ("GET", "/docs/oauth2-redirect/", None),
    ("GET", "/docs/swagger-ui.css", None),
    ("GET", "/openapi.json", None),
    ("GET", "/openapi.json/", None),
    ("GET", "/no/such/route/", None),
    ("GET", "/v2/health", None),
    ("GET", "/favicon.ico", None),
    ("OPTIONS", "/functions/breast-cancer", None),
]
PUBLIC = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/health/live/"),
    ("GET", "/v2/health/ready/"),
]


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[LiveServer]:
    with LiveServer(create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]), key=KEY)) as live:
        yield live


def _send(url: str, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_every_route_but_health_needs_the_key_on_the_local_server(
    keyed_server: LiveServer, method: str, path: str, body: Any
) -> None:
    for headers in (None, {"x-api-key": "wrong"}, {"x-api-key": KEY[:-1]}, {"authorization": "Bearer wrong"}):
        refused = _send(keyed_server.url, method, path, body, headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json() == {
            "error": "missing or wrong API key: send it as the x-api-key header",
            "code": "unauthorized",
        }
    for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
        assert _send(keyed_server.url, method, path, body, headers).status_code != 401


def test_with_the_key_the_answers_are_the_usual_ones(keyed_server: LiveServer) -> None:
    keyed = {"x-api-key": KEY}
    assert _send(keyed_server.url, "GET", "/functions", None, keyed).json() == {"functions": ["breast-cancer"]}
    predicted = _send(keyed_server.url, "POST", "/functions/breast-cancer", {"X": ROW}, keyed).json()
    assert set(predicted) == {"label", "probabilities"}
    assert _send(keyed_server.url, "GET", "/no/such/route", None, keyed).status_code == 404


@pytest.mark.parametrize(("method", "path"), PUBLIC)
def test_health_probes_stay_open_for_the_platform(keyed_server: LiveServer, method: str, path: str) -> None:
    answer = httpx.request(method, f"{keyed_server.url}{path}")
    assert answer.status_code == 200 and answer.json() in ({"live": True}, {"ready": True})


@pytest.mark.parametrize("path", ["/openapi.json", "/openapi.json/", "/docs", "/docs/", "/docs/oauth2-redirect"])
def test_openapi_document_and_docs_need_the_key_when_one_is_set(keyed_server: LiveServer, path: str) -> None:
    """A documented choice: the document names the functions served, which GET /functions
    keeps behind the key, so it is behind the key too; without a key configured it is open."""
    refused = httpx.get(f"{keyed_server.url}{path}")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert "breast-cancer" not in refused.text
    assert httpx.get(f"{keyed_server.url}{path}", headers={"x-api-key": KEY}).status_code == 200


def test_openapi_document_is_open_when_no_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFN_API_KEY", raising=False)
    with LiveServer(create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]))) as live:
        assert live.app.service.key is None
        assert "breast-cancer" in httpx.get(f"{live.url}/openapi.json").text
        assert httpx.get(f"{live.url}/docs").status_code == 200


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with pytest.raises(modelfn_http.Unauthorized):
        modelfn_http.check_api_key({"x-api-key": "guess"}, KEY)
    modelfn_http.check_api_key({"authorization": f"Bearer {KEY}"}, KEY)
    assert compared == [(b"guess", KEY.encode()), (KEY.encode(), KEY.encode())]


# The same rule on every provider's HTTP path


def _lambda_event(method: str, path: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    sample = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    raw = b"" if body is None else json.dumps(body).encode()
    sample.update(rawPath=path, body=base64.b64encode(raw).decode(), isBase64Encoded=True)
    sample["requestContext"]["http"].update(method=method, path=path)
    sample["headers"] = {"content-type": "application/json", **headers}
    return sample


def lambda_call(method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    from handlers import aws_lambda

    response = aws_lambda.handler(_lambda_event(method, path, body, headers), LocalContext("t"))
    return int(response["statusCode"])


def gcp_call(method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    import flask

    from handlers import gcp_functions

    data = b"" if body is None else json.dumps(body).encode()
    with flask.Flask(__name__).test_request_context(
        path, method=method, headers={"content-type": "application/json", **headers}, data=data
    ):
        return int(gcp_functions.serve_http(flask.request).status_code)


_azure: dict[str, Any] = {}


def azure_call(method: str, path: str, body: Any, headers: dict[str, str]) -> int:

    from handlers.az.http import serve
    from handlers.azure_functions import ServedFunction

    if "served" not in _azure:  # one per worker process, as the host keeps it; loaded as at start
        _azure["served"] = ServedFunction(load_spec(FUNCTIONS / "breast-cancer"))
        _azure["served"].registry.load_all()
    request = azure_request(method, path, b"" if body is None else json.dumps(body).encode(), headers)
    return int(serve(_azure["served"], request).status_code)


PROVIDERS = {"aws": lambda_call, "gcp": gcp_call, "azure": azure_call}


@pytest.fixture
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MODELFN_API_KEY set before each adapter builds its service (their caches emptied)."""
    from handlers.aws import app
    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_API_KEY", KEY)
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    monkeypatch.setattr(instance, "_services", {})
    _azure.clear()
    app.reset()
    yield
    app.reset()
    _azure.clear()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_provider_applies_the_key_like_the_local_server(keyed_env: None, provider: str) -> None:
    call = PROVIDERS[provider]
    for method, path, body in GUARDED:
        assert call(method, path, body, {}) == 401, (provider, method, path)
        assert call(method, path, body, {"x-api-key": "wrong"}) == 401, (provider, method, path)
        assert call(method, path, body, {"x-api-key": KEY}) != 401, (provider, method, path)
    for method, path in PUBLIC:
        assert call(method, path, None, {}) == 200, (provider, path)
    assert call("POST", "/functions/breast-cancer", {"X": ROW}, {"authorization": f"Bearer {KEY}"}) == 200


# Deployments: authenticated unless the spec says otherwise


def test_cloud_run_and_cloud_functions_require_iam_unless_auth_is_none(tmp_path: Path) -> None:
    from modelfn.deploy.gcp import write
    from modelfn.deploy.plan import place

    written: dict[str, str] = {}
    for name, toml in {
        "run-default": "",
        "functions-default": "[batching]\nenabled = false\n",
        "run-open": "[triggers]\nhttp = { auth = 'none' }\n",
        "functions-open": "[batching]\nenabled = false\n[triggers]\nhttp = { auth = 'none' }\n",
    }.items():
        folder = tmp_path / "functions" / name
        folder.mkdir(parents=True)
        shutil.copy(CANCER_MODEL, folder / "model.onnx")
        (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "model.onnx"\n{toml}')
        spec = load_spec(folder)
        placement = place(spec, "gcp")
        assert placement.target == ("cloud-run" if name.startswith("run") else "cloud-functions"), placement
        paths = write(spec, placement, tmp_path / "out")
        written[name] = "\n".join(p.read_text() for p in paths if p.suffix in (".yaml", ".sh"))

    for name in ("run-default", "functions-default"):
        assert "allUsers" not in written[name] and "--allow-unauthenticated" not in written[name]
    assert "Invocation needs IAM (roles/run.invoker)" in written["run-default"]
    assert "--trigger-http --no-allow-unauthenticated" in written["functions-default"]
    assert "allowUnauthenticated: false" in written["functions-default"]
    # opening them is one setting, and it shows in what is deployed
    assert "--member=allUsers --role=roles/run.invoker" in written["run-open"]
    assert "--trigger-http --allow-unauthenticated" in written["functions-open"]


@pytest.mark.slow  # CDK synthesis
def test_cdk_stack_defaults_to_iam_on_the_http_api_and_the_function_url(tmp_path: Path) -> None:
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    pytest.importorskip("aws_cdk", reason="the CDK app needs aws-cdk-lib (pip install 'modelfn[cdk]')")
    from aws_cdk import App

    sys.path.insert(0, str(ROOT / "cdk"))
    from modelfn_cdk.assets import dependency_layer, runtime_layer
    from modelfn_cdk.build import build
    from modelfn_cdk.settings import DeployRefused, Settings

    from modelfn.deploy.dependencies import requirements

    try:
        runtime_layer("3.12", "x86_64", ROOT / "build" / "layers", None)
        tensor_codec = requirements(load_spec(ROOT / "functions" / "breast-cancer"), "aws")
        dependency_layer(tensor_codec, "3.12", "x86_64", ROOT / "build" / "layers")
    except (RuntimeError, DeployRefused) as exc:
        pytest.skip(f"the Lambda layers could not be built here (PyPI unreachable?): {exc}")
    folder = tmp_path / "functions" / "guarded"
    folder.mkdir(parents=True)
    shutil.copy(CANCER_MODEL, folder / "model.onnx")
    (folder / "function.toml").write_text(
        'name = "guarded"\n[model]\nsource = "model.onnx"\n[triggers]\nhttp = { api = true, function_url = true }\n'
    )
    context = json.loads((ROOT / "cdk" / "cdk.json").read_text())["context"]
    context.update(
        {
            "modelfn:functionsDir": str(tmp_path / "functions"),
            "modelfn:stagingDir": str(tmp_path / "staging"),
            "modelfn:nag": False,
        }
    )
    app = App(context=context, outdir=str(tmp_path / "cdk.out"))
    built = build(app, Settings.from_context(app.node))
    app.synth()
    template = json.loads((tmp_path / "cdk.out" / f"{built.stacks['guarded'].stack_name}.template.json").read_text())
    resources = [r for r in template["Resources"].values()]
    routes = [r["Properties"] for r in resources if r["Type"] == "AWS::ApiGatewayV2::Route"]
    from modelfn.routes import function_routes

    assert len(routes) == len(function_routes("guarded")) == 9
    assert {r["AuthorizationType"] for r in routes} == {"AWS_IAM"}
    urls = [r["Properties"] for r in resources if r["Type"] == "AWS::Lambda::Url"]
    assert [u["AuthType"] for u in urls] == ["AWS_IAM"]
    permissions = [r["Properties"] for r in resources if r["Type"] == "AWS::Lambda::Permission"]
    assert all(p.get("Principal") != "*" for p in permissions), "something lets anyone invoke the function"
