"""The Lambda handler on every sample event in events/aws/ and on the HTTP shapes' corners:
same JSON and status codes as the local server, partial batch failures, limits, logs and
metrics. In-process: the runtime loop itself is exercised in test_aws_runtime.py."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handlers.local import aws as local_aws
from handlers.local.aws import LocalContext, use_folders
from modelfn.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events" / "aws"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.fixture
def aws_lambda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The handler module serving breast-cancer, with the sample bucket copied to a scratch folder."""
    from handlers import aws_lambda as module
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    # a local invoke may have left results next to the sample: they are not part of it
    shutil.copytree(EVENTS / "s3", tmp_path / "s3", ignore=shutil.ignore_patterns("predictions"))
    use_folders(tmp_path / "s3")
    app.reset()
    return module


def context(aws_lambda: Any) -> Any:
    return LocalContext("modelfn-test")


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


@pytest.mark.parametrize("name", ["apigw-v1", "apigw-v2", "alb", "function-url"])
def test_http_sample_events_return_the_prediction(aws_lambda: Any, cancer: Any, name: str) -> None:
    sample = event(name)
    raw = base64.b64decode(sample["body"]) if sample["isBase64Encoded"] else sample["body"].encode()
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 200
    assert body_of(response) == cancer.predict(raw, "application/json")
    assert body_of(response)["label"] in (0, 1)


def test_direct_invoke_returns_the_prediction(aws_lambda: Any, cancer: Any) -> None:
    result = aws_lambda.handler(event("direct"), context(aws_lambda))
    assert result == cancer.predict(payload=event("direct"))
    assert set(result) == {"label", "probabilities"} and len(result["probabilities"]) == 2


def test_eventbridge_detail_is_the_payload(aws_lambda: Any, cancer: Any, logs: Callable[[], list[Any]]) -> None:
    sample = event("eventbridge")
    result = aws_lambda.handler(sample, context(aws_lambda))
    assert result == cancer.predict(payload=sample["detail"])
    logged = [line for line in logs() if line.get("message") == "prediction"]
    assert logged[0]["source_id"] == sample["id"] and logged[0]["result"] == result


def test_sns_message_predicted_and_logged(aws_lambda: Any, cancer: Any, logs: Callable[[], list[Any]]) -> None:
    sample = event("sns")
    result = aws_lambda.handler(sample, context(aws_lambda))
    message = sample["Records"][0]["Sns"]
    assert result == {"processed": [{"message_id": message["MessageId"], "output": "log"}]}
    logged = [line for line in logs() if line.get("message") == "prediction"]
    assert logged[0]["result"] == cancer.predict(message["Message"].encode())


def test_sqs_batch_of_good_messages_reports_no_failures(
    aws_lambda: Any, cancer: Any, logs: Callable[[], list[Any]]
) -> None:
    sample = event("sqs")
    assert aws_lambda.handler(sample, context(aws_lambda)) == {"batchItemFailures": []}
    logged = {line["source_id"]: line["result"] for line in logs() if line.get("message") == "prediction"}
    assert logged == {r["messageId"]: cancer.predict(r["body"].encode()) for r in sample["Records"]}


def test_sqs_batch_reports_only_failed_messages(aws_lambda: Any, logs: Callable[[], list[Any]]) -> None:
    sample = event("sqs")
    poisoned = copy.deepcopy(sample["Records"][1])
    poisoned["messageId"] = "poisoned-0001"
    poisoned["body"] = '{"X": [1, 2, 3]}'
    truncated = copy.deepcopy(sample["Records"][2])
    truncated["messageId"] = "truncated-0002"
    truncated["body"] = '{"X": [1, 2'
    sample["Records"][1:1] = [poisoned, truncated]
    result = aws_lambda.handler(sample, context(aws_lambda))
    assert result == {"batchItemFailures": [{"itemIdentifier": "poisoned-0001"}, {"itemIdentifier": "truncated-0002"}]}
    failures = {line["message_id"]: line["error"] for line in logs() if line.get("message") == "message failed"}
    assert set(failures) == {"poisoned-0001", "truncated-0002"}
    assert "malformed JSON" in failures["truncated-0002"]
    metrics = [line for line in logs() if "_aws" in line][-1]
    assert metrics["BatchSize"] == 5 and metrics["Errors"] == 2


def test_sqs_batch_where_every_message_fails_lists_them_all(aws_lambda: Any) -> None:
    sample = event("sqs")
    for record in sample["Records"]:
        record["body"] = "not json"
    result = aws_lambda.handler(sample, context(aws_lambda))
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == [r["messageId"] for r in sample["Records"]]


def test_sqs_fifo_batch_stops_at_the_first_failure(aws_lambda: Any) -> None:
    sample = event("sqs")
    for record in sample["Records"]:
        record["eventSourceARN"] += ".fifo"
        record["attributes"]["MessageGroupId"] = "patients"
    sample["Records"][1]["body"] = "{}"
    result = aws_lambda.handler(sample, context(aws_lambda))
    # order matters on FIFO queues: the failed message and every one after it go back
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == [r["messageId"] for r in sample["Records"][1:]]


@pytest.mark.parametrize("name", ["s3-put", "s3-eventbridge"])
def test_s3_sample_events_write_the_result_under_the_output_prefix(
    aws_lambda: Any, cancer: Any, tmp_path: Path, name: str
) -> None:
    result = aws_lambda.handler(event(name), context(aws_lambda))
    assert result == {
        "processed": [
            {
                "source": "s3://modelfn-examples/incoming/sample row.json",
                "output": "s3://modelfn-examples/predictions/sample row.json.json",
            }
        ],
        "skipped": [],
    }
    written = tmp_path / "s3" / "modelfn-examples" / "predictions" / "sample row.json.json"
    source = tmp_path / "s3" / "modelfn-examples" / "incoming" / "sample row.json"
    assert json.loads(written.read_text()) == cancer.predict(source.read_bytes())


def test_s3_event_for_an_output_object_is_skipped(aws_lambda: Any, tmp_path: Path) -> None:
    sample = event("s3-put")
    sample["Records"][0]["s3"]["object"]["key"] = "predictions/sample+row.json.json"
    assert aws_lambda.handler(sample, context(aws_lambda)) == {
        "processed": [],
        "skipped": ["s3://modelfn-examples/predictions/sample row.json.json"],
    }
    assert not (tmp_path / "s3" / "modelfn-examples" / "predictions").exists()


def test_all_sample_events_are_recognised_as_their_own_kind(aws_lambda: Any) -> None:
    kinds = {name: aws_lambda.kind_of(event(name)).name for name in sorted(p.stem for p in EVENTS.glob("*.json"))}
    assert kinds == {
        "alb": "alb",
        "apigw-v1": "apigw-rest",
        "apigw-v2": "apigw-http",
        "direct": "direct",
        "eventbridge": "eventbridge",
        "function-url": "function-url",
        "s3-eventbridge": "s3-eventbridge",
        "s3-put": "s3",
        "sns": "sns",
        "sqs": "sqs",
    }


@pytest.mark.slow
def test_an_http_invocation_imports_no_other_triggers_kinds() -> None:
    # the S3, SQS, SNS, EventBridge, shadow and bulk kinds are off an HTTP function's cold start
    code = (
        "import json, sys; from handlers import aws_lambda; "
        f"print(aws_lambda.handler(json.load(open({str(EVENTS / 'apigw-v2.json')!r})), None)['statusCode']); "
        "kinds = [f'handlers.aws.{m}' for m in ('s3', 'sqs', 'messages', 'shadow', 'bulk', 'objects')]; "
        "print([m for m in kinds if m in sys.modules]); "
        f"print(aws_lambda.kind_of(json.load(open({str(EVENTS / 'sqs.json')!r}))).name)"
    )
    env = {**os.environ, "MODELFN_FUNCTION": "breast-cancer", "MODELFN_FUNCTIONS_DIR": str(ROOT / "functions")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split("\n")[-4:] == ["200", "[]", "sqs", ""]


# HTTP shapes


def v2_request(method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> dict[str, Any]:
    sample = event("apigw-v2")
    sample["rawPath"] = path
    sample["requestContext"]["http"].update(method=method, path=path)
    sample["headers"]["content-type"] = content_type
    sample["headers"].pop("content-length", None)
    sample["body"] = base64.b64encode(body).decode()
    sample["isBase64Encoded"] = True
    return sample


REQUESTS = [
    ("POST", "/functions/breast-cancer", "sample"),
    ("POST", "/functions/breast-cancer", '{"X": [1, 2, 3]}'),
    ("POST", "/functions/breast-cancer", '{"X": [1, 2'),
    ("POST", "/functions/breast-cancer", '{"X": [NaN]}'),
    ("POST", "/functions/nope", "sample"),
    ("GET", "/functions/breast-cancer", ""),
    ("GET", "/functions", ""),
    ("GET", "/v2/health/live", ""),
    ("GET", "/v2/health/ready", ""),
    ("GET", "/v2/models/breast-cancer", ""),
    ("GET", "/v2/models/breast-cancer/ready", ""),
    ("POST", "/v2/models/breast-cancer/infer", "oip"),
    (
        "POST",
        "/v2/models/breast-cancer/infer",
        '{"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}',
    ),
]


def _body(kind: str, cancer_rows: Any) -> bytes:
    if kind == "sample":
        return json.dumps({"X": cancer_rows[0].tolist()}).encode()
    if kind == "oip":
        request = {
            "inputs": [{"name": "X", "shape": [2, 30], "datatype": "FP32", "data": cancer_rows[:2].ravel().tolist()}]
        }
        return json.dumps(request).encode()
    return kind.encode()


def test_http_routes_answer_exactly_as_the_local_server(aws_lambda: Any, cancer_rows: Any) -> None:
    from fastapi.testclient import TestClient

    from modelfn.asgi import create_app

    with TestClient(create_app(Registry.from_dir(names=["breast-cancer"]))) as local:
        for method, path, kind in REQUESTS:
            body = _body(kind, cancer_rows)
            expected = local.request(method, path, content=body, headers={"content-type": "application/json"})
            got = aws_lambda.handler(v2_request(method, path, body), context(aws_lambda))
            assert got["statusCode"] == expected.status_code, (method, path, kind)
            if expected.status_code != 405:  # FastAPI's router answers 405 itself, with its own body
                assert body_of(got) == expected.json(), (method, path, kind)
    statuses = [aws_lambda.handler(v2_request(m, p, _body(k, cancer_rows)), None)["statusCode"] for m, p, k in REQUESTS]
    assert statuses == [200, 422, 400, 422, 404, 405, 200, 200, 200, 200, 200, 200, 422]


def test_rest_api_multi_value_headers_and_base64_body(aws_lambda: Any, cancer: Any) -> None:
    sample = event("apigw-v1")
    raw = sample["body"].encode()
    sample["headers"] = {"Content-Type": "text/plain"}  # multiValueHeaders win when both are present
    sample["multiValueHeaders"]["Content-Type"] = ["application/json"]
    sample["body"], sample["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 200 and body_of(response) == cancer.predict(raw)


def test_rest_api_body_marked_base64_that_is_not_gives_400(aws_lambda: Any) -> None:
    sample = event("apigw-v1")
    sample["isBase64Encoded"] = True
    sample["body"] = "{not base64}"
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 400 and "base64" in body_of(response)["error"]


def test_alb_answers_in_the_header_style_it_was_asked_in(aws_lambda: Any, cancer: Any) -> None:
    single = event("alb")
    multi = copy.deepcopy(single)
    multi["multiValueHeaders"] = {name: [value] for name, value in multi.pop("headers").items()}
    first, second = (aws_lambda.handler(e, context(aws_lambda)) for e in (single, multi))
    assert first["headers"] == {"content-type": "application/json"} and "multiValueHeaders" not in first
    assert second["multiValueHeaders"] == {"content-type": ["application/json"]} and "headers" not in second
    assert first["statusDescription"] == second["statusDescription"] == "200 OK"
    assert body_of(first) == body_of(second) == cancer.predict(single["body"].encode())
    multi["multiValueHeaders"]["content-type"] = ["text/csv"]
    refused = aws_lambda.handler(multi, context(aws_lambda))
    assert (refused["statusCode"], refused["statusDescription"]) == (415, "415 Unsupported Media Type")


def test_function_url_root_post_goes_to_the_served_function(aws_lambda: Any, cancer_rows: Any) -> None:
    import onnxruntime as ort

    sample = event("function-url")
    sample["rawPath"] = "/"
    sample["body"] = json.dumps({"X": cancer_rows[3].tolist()})
    sample["isBase64Encoded"] = False
    sample["requestContext"]["http"]["method"] = "POST"
    answer = body_of(aws_lambda.handler(sample, context(aws_lambda)))
    session = ort.InferenceSession(str(ROOT / "functions" / "breast-cancer" / "model.onnx"))
    assert answer["label"] == int(session.run(None, {"X": cancer_rows[3:4]})[0][0])
    sample["requestContext"]["http"]["method"] = "GET"
    assert body_of(aws_lambda.handler(sample, context(aws_lambda))) == {"functions": ["breast-cancer"]}


def test_http_api_named_stage_is_not_part_of_the_route(aws_lambda: Any, cancer: Any) -> None:
    sample = event("apigw-v2")
    sample["requestContext"]["stage"] = "prod"
    sample["rawPath"] = "/prod/functions/breast-cancer"
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 200 and body_of(response) == cancer.predict(sample["body"].encode())


def test_body_over_lambdas_6_mb_limit_gives_413(aws_lambda: Any) -> None:
    sample = event("apigw-v2")
    sample["body"] = '{"X": [' + "0.5, " * (6 * 1024 * 1024 // 5) + "0.5]}"
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 413
    assert body_of(response)["code"] == "payload_too_large" and "6.0 MB" in body_of(response)["error"]


def test_response_over_lambdas_6_mb_limit_gives_413(aws_lambda: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.aws import http

    monkeypatch.setattr(http, "LAMBDA_PAYLOAD_LIMIT", 100)  # the breast-cancer answer is ~70 bytes a row
    sample = event("apigw-v2")
    sample["body"] = json.dumps({"X": [json.loads(sample["body"])["X"]] * 3})
    response = aws_lambda.handler(sample, context(aws_lambda))
    assert response["statusCode"] == 413 and "fewer rows" in body_of(response)["error"]


def test_unknown_function_in_env_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import aws_lambda
    from handlers.aws import app
    from modelfn.errors import NotFound

    monkeypatch.setenv("MODELFN_FUNCTION", "no-such-function")
    app.reset()
    with pytest.raises(NotFound, match="no-such-function"):
        aws_lambda.handler(event("direct"), None)


@pytest.mark.slow
@pytest.mark.parametrize(("function", "on_lambda"), [("breast-cancer", True), ("breast-cancer", False), ("nope", True)])
def test_init_leaves_the_collector_running_and_on_lambda_frozen(function: str, on_lambda: bool) -> None:
    # the collector waits during the imports and the model load (cold start), never longer
    code = (
        "import gc\n"
        "try:\n    import handlers.aws_lambda\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
        "else:\n    print('loaded')\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)"
    )
    env = {**os.environ, "MODELFN_FUNCTION": function, "MODELFN_FUNCTIONS_DIR": str(ROOT / "functions")}
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    if on_lambda:
        env["AWS_LAMBDA_FUNCTION_NAME"] = "modelfn-test"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    expected = "loaded" if function == "breast-cancer" else "NotFound"
    assert out.stdout.splitlines()[-2:] == [expected, f"True {on_lambda}"]  # after the log lines on Lambda


# direct invocation


def test_direct_invoke_with_bad_payload_raises_the_typed_error(aws_lambda: Any) -> None:
    from modelfn.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown input") as raised:
        aws_lambda.handler({"features": [1, 2, 3]}, context(aws_lambda))
    # the report names the error and its message; no frames from inside the core
    assert raised.traceback[-1].name == "handler"


def test_direct_invoke_with_an_open_inference_request(aws_lambda: Any, cancer_rows: Any) -> None:
    request = json.loads(_body("oip", cancer_rows))
    request["id"] = "req-7"
    result = aws_lambda.handler(request, context(aws_lambda))
    assert result["model_name"] == "breast-cancer" and result["id"] == "req-7"
    assert {o["name"] for o in result["outputs"]} == {"label", "probabilities"}


def test_asgi_handler_and_handler_return_the_same_body(aws_lambda: Any, cancer_rows: Any) -> None:
    for method, path, kind in [REQUESTS[0], REQUESTS[1], REQUESTS[9], REQUESTS[11]]:
        request = v2_request(method, path, _body(kind, cancer_rows))
        plain = aws_lambda.handler(copy.deepcopy(request), context(aws_lambda))
        through_mangum = aws_lambda.asgi_handler(copy.deepcopy(request), context(aws_lambda))
        assert through_mangum["statusCode"] == plain["statusCode"]
        assert json.loads(through_mangum["body"]) == body_of(plain), (method, path, kind)


def test_local_invoke_serves_the_named_function(monkeypatch: pytest.MonkeyPatch, cancer: Any) -> None:
    from handlers import aws_lambda
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTION", "")  # recorded, so what local_invoke sets is undone after the test
    monkeypatch.delenv("MODELFN_FUNCTION")
    app.reset()
    response = local_aws.local_invoke("breast-cancer", event("apigw-v2"))
    assert body_of(response) == cancer.predict(event("apigw-v2")["body"].encode())
    assert aws_lambda.current().served == "breast-cancer"


def test_local_invoke_keeps_s3_events_inside_the_bucket_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cancer: Any
) -> None:
    """Buckets that are paths (absolute, or with `..`) and keys climbing out of the bucket are
    objects that failed: nothing outside MODELFN_LOCAL_S3 is read or written."""
    from handlers.aws.s3 import ObjectsFailed

    monkeypatch.setenv("MODELFN_FUNCTION", "")  # recorded, so what local_invoke sets is undone after the test
    monkeypatch.setenv("MODELFN_LOCAL_S3", str(tmp_path / "s3"))
    shutil.copytree(EVENTS / "s3", tmp_path / "s3", ignore=shutil.ignore_patterns("predictions"))
    sample = EVENTS / "s3" / "modelfn-examples" / "incoming" / "sample row.json"
    (tmp_path / "outside" / "incoming").mkdir(parents=True)
    shutil.copy(sample, tmp_path / "outside" / "incoming" / "sample row.json")  # a valid row, were it read
    outside = {p: p.stat().st_mtime_ns for p in (tmp_path / "outside").rglob("*")}
    template = event("s3-put")["Records"][0]

    def record(bucket: str, key: str) -> dict[str, Any]:
        one = copy.deepcopy(template)
        one["s3"]["bucket"]["name"] = bucket
        one["s3"]["object"]["key"] = key
        return one

    hostile = [
        ("/etc", "hostname", "'/etc' is not a valid bucket name"),
        (str(tmp_path / "outside"), "incoming/sample+row.json", "is not a valid bucket name"),
        ("../outside", "incoming/sample+row.json", "'../outside' is not a valid bucket name"),
        ("modelfn-examples", "..%2F..%2Foutside%2Fincoming%2Fsample+row.json", "does not exist"),
    ]
    records = [record(bucket, key) for bucket, key, _ in hostile] + [template]
    with pytest.raises(ObjectsFailed) as raised:
        local_aws.local_invoke("breast-cancer", {"Records": records})
    failure = str(raised.value)
    assert failure.startswith("4 of 5 object(s) failed: ")
    for bucket, key, why in hostile:
        source = f"s3://{bucket}/{key.replace('%2F', '/').replace('+', ' ')}"
        assert f"{source} (ObjectMissing: " in failure, source
        assert why in failure.split(f"{source} (ObjectMissing: ")[1].split(")")[0], (source, failure)
    # the valid record was predicted, inside the folder; nothing appeared or changed outside it
    written = tmp_path / "s3" / "modelfn-examples" / "predictions" / "sample row.json.json"
    assert json.loads(written.read_text()) == cancer.predict(sample.read_bytes())
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "outside").rglob("*")} == outside
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "outside/incoming/sample row.json",
        "s3/modelfn-examples/incoming/sample row.json",
        "s3/modelfn-examples/predictions/sample row.json.json",
    ]


# telemetry


def test_logs_and_metrics_carry_the_invocation_context(aws_lambda: Any, logs: Callable[[], list[Any]]) -> None:
    ctx = context(aws_lambda)
    aws_lambda.handler(event("apigw-v2"), ctx)
    bad = event("apigw-v2")
    bad["body"] = '{"X": "no"}'
    aws_lambda.handler(bad, ctx)
    lines = logs()
    metrics = [line for line in lines if "_aws" in line]
    assert len(metrics) == 2
    first, second = metrics
    directive = first["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "modelfn" and directive["Dimensions"] == [["service", "function"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"Invocations", "Errors", "Latency", "ModelLoadTime"}
    assert first["function"] == "breast-cancer" and first["Invocations"] == 1 and first["Latency"] > 0
    assert first["function_request_id"] == ctx.aws_request_id and first["trigger"] == "apigw-http"
    assert "ModelLoadTime" not in second  # reported once per loaded model
    warning = next(line for line in lines if line.get("message") == "request failed")
    assert warning["level"] == "WARNING" and warning["status"] == 422 and warning["cold_start"] is False
    assert warning["function_name"] == "modelfn-test" and warning["model_function"] == "breast-cancer"


def test_cold_start_flag_is_true_only_for_the_first_invocation(aws_lambda: Any, logs: Callable[[], list[Any]]) -> None:
    sample = event("eventbridge")
    aws_lambda.handler(sample, context(aws_lambda))
    aws_lambda.handler(sample, context(aws_lambda))
    flags = [line["cold_start"] for line in logs() if line.get("message") == "prediction"]
    assert flags == [True, False]


def test_telemetry_writes_whole_json_lines_to_the_stdout_descriptor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # on Lambda the lines go to stdout's descriptor in one write each, past the text layer
    from handlers.aws.telemetry import Telemetry

    out = (tmp_path / "stdout").open("w")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "modelfn-test")
    telemetry, ctx = Telemetry(), LocalContext("modelfn-test")
    for latency in (2.5, float("nan")):
        telemetry.begin(ctx, "apigw-http", "breast-cancer")
        telemetry.metric("Invocations", 1)
        telemetry.metric("BatchSize", 2)
        telemetry.metric("BatchSize", 3)
        telemetry.metric("Latency", latency, "Milliseconds")
        telemetry.warning("request failed", status=422)
        telemetry.end()
    lines = [json.loads(line) for line in (tmp_path / "stdout").read_text().splitlines()]
    assert [line.get("message") for line in lines] == ["request failed", None, "request failed", None]
    first, second = lines[1], lines[3]
    assert (first["Invocations"], first["BatchSize"], first["Latency"]) == (1, [2, 3], 2.5)
    assert second["Latency"] is None  # NaN is not JSON
    assert first["function_request_id"] == second["function_request_id"] == ctx.aws_request_id
    assert [m["Name"] for m in first["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == [
        "Invocations",
        "BatchSize",
        "Latency",
    ]


def test_telemetry_off_lambda_lets_text_already_in_the_stream_out_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from handlers.aws.telemetry import Telemetry

    err = (tmp_path / "stderr").open("w")
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    telemetry = Telemetry()
    err.write("printed before\n")  # still in the text layer's buffer
    telemetry.info("model loaded", model_function="breast-cancer")
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[0] == "printed before"
    assert json.loads(lines[1])["message"] == "model loaded"
