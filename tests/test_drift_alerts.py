"""Drift alerts on Google Cloud and Azure, from `modelfn plan --out`: the files are checked
against each API's field names (on Google Cloud by the gcloud CLI's own parser where it is
installed), and their filter and query are applied to the log lines a real drift window
writes on each provider: a shifted sample's window matches, a held-out one does not."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support.providers import azure_request, example_copy
from test_drift import shifted, split  # noqa: F401  (split: a fixture, the reference and held-out rows)
from test_gcp_deploy import dry_run, gcloud_verdict, unknown_fields

from modelfn.cli import main as cli
from modelfn.deploy import azure, drift_alerts, gcp
from modelfn.deploy.plan import place
from modelfn.spec import FunctionSpec, load_spec

ALARM = 0.3
WINDOW = 280
DRIFT_TOML = f"""[drift]
window_requests = {WINDOW}
min_rows = {WINDOW}
alarm_psi = {ALARM}
"""
# Field names of LogMetric (Cloud Logging API v2) and AlertPolicy (Cloud Monitoring API v3) the
# plan may write; "*" is a map with free keys.
LOG_METRIC_FIELDS: dict[str, Any] = {
    "description": None,
    "filter": None,
    "metricDescriptor": {"metricKind": None, "valueType": None, "unit": None, "labels": None},
    "valueExtractor": None,
    "labelExtractors": "*",
    "bucketOptions": None,
    "disabled": None,
}
ALERT_POLICY_FIELDS: dict[str, Any] = {
    "displayName": None,
    "documentation": {"content": None, "mimeType": None, "subject": None},
    "userLabels": "*",
    "combiner": None,
    "enabled": None,
    "notificationChannels": [None],
    "alertStrategy": {"autoClose": None, "notificationRateLimit": None},
    "severity": None,
    "conditions": [
        {
            "displayName": None,
            "conditionThreshold": {
                "filter": None,
                "aggregations": [
                    {
                        "alignmentPeriod": None,
                        "perSeriesAligner": None,
                        "crossSeriesReducer": None,
                        "groupByFields": None,
                    }
                ],
                "comparison": None,
                "thresholdValue": None,
                "duration": None,
                "trigger": {"count": None, "percent": None},
                "evaluationMissingData": None,
            },
        }
    ],
}
# Microsoft.Insights/scheduledQueryRules 2021-08-01 (ARM template reference), and the template's top level.
SCHEDULED_QUERY_RULE_FIELDS: dict[str, Any] = {
    "type": None,
    "apiVersion": None,
    "name": None,
    "location": None,
    "tags": "*",
    "kind": None,
    "properties": {
        "actions": {"actionGroups": None, "customProperties": "*"},
        "autoMitigate": None,
        "checkWorkspaceAlertsStorageConfigured": None,
        "criteria": {
            "allOf": [
                {
                    "dimensions": [{"name": None, "operator": None, "values": [None]}],
                    "failingPeriods": {"minFailingPeriodsToAlert": None, "numberOfEvaluationPeriods": None},
                    "metricMeasureColumn": None,
                    "metricName": None,
                    "operator": None,
                    "query": None,
                    "resourceIdColumn": None,
                    "threshold": None,
                    "timeAggregation": None,
                }
            ]
        },
        "description": None,
        "displayName": None,
        "enabled": None,
        "evaluationFrequency": None,
        "muteActionsDuration": None,
        "overrideQueryTimeRange": None,
        "scopes": [None],
        "severity": None,
        "skipQueryValidation": None,
        "targetResourceTypes": [None],
        "windowSize": None,
    },
}
ARM_FIELDS: dict[str, Any] = {
    "$schema": None,
    "contentVersion": None,
    "parameters": "*",
    "variables": "*",
    "resources": [SCHEDULED_QUERY_RULE_FIELDS],
    "outputs": "*",
}
GCLOUD_PYTHON = Path("/usr/lib/google-cloud-sdk/platform/bundledpythonunix/bin/python3")
# gcloud's own reading of the two files: the code `gcloud logging metrics create --config-from-file`
# and `gcloud alpha monitoring policies create --policy-from-file` run, into the APIs' message
# classes; a misspelt field or enum value ends up unrecognised.
GCLOUD_PARSE = """
import json, sys
from apitools.base.protorpclite import messages
from googlecloudsdk.api_lib.logging import util as logging_util
from googlecloudsdk.api_lib.util import apis
from googlecloudsdk.command_lib.monitoring import util as monitoring_util

def unknown(message, where=""):
    found = [where + "." + name for name in message.all_unrecognized_fields()]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        if isinstance(field, messages.MessageField) and value is not None:
            for item in value if field.repeated else [value]:
                found += unknown(item, where + "." + field.name)
    return found

metric = logging_util.CreateLogMetric("m", data=open(sys.argv[1]).read())
policy_class = apis.GetMessagesModule("monitoring", "v3").AlertPolicy
policy = monitoring_util.MessageFromString(open(sys.argv[2]).read(), policy_class, "AlertPolicy")
print(json.dumps({"metric": unknown(metric), "policy": unknown(policy)}))
"""


@pytest.fixture(scope="module")
def functions(
    tmp_path_factory: pytest.TempPathFactory,
    split: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> Path:
    """breast-cancer with HTTP and Pub/Sub triggers, a drift window of WINDOW rows and a profile."""
    root = tmp_path_factory.mktemp("functions")
    example_copy(root, extra_toml=DRIFT_TOML)
    toml = root / "breast-cancer" / "function.toml"
    toml.write_text(toml.read_text().replace("sqs = true\n", "sqs = true\npubsub = true\n"))
    data = root / "reference.jsonl"
    data.write_text("".join(json.dumps({"X": row.tolist()}) + "\n" for row in split[0]))
    assert cli(["profile", "breast-cancer", "--data", str(data), "--functions-dir", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def spec(functions: Path) -> FunctionSpec:
    return load_spec(functions / "breast-cancer")


@pytest.fixture(scope="module")
def gcp_plan(spec: FunctionSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gcp")
    gcp.write(spec, place(spec, "gcp"), out)
    return out / spec.name


@pytest.fixture(scope="module")
def azure_plan(spec: FunctionSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("azure")
    azure.write(spec, place(spec, "azure"), out)
    return out / spec.name


def _windows(functions: Path, rows: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    """The drift log records of one window of `rows`, served through the Azure HTTP adapter."""
    from handlers.az.http import serve
    from handlers.azure_functions import ServedFunction, resolve_spec

    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("modelfn.metrics")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        served = ServedFunction(resolve_spec("breast-cancer"))
        for row in rows[:WINDOW]:
            body = json.dumps({"X": row.tolist()}).encode()
            assert serve(served, azure_request("POST", "functions/breast-cancer", body)).status_code == 200
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    drift = [r for r in records if r.getMessage().startswith("drift ")]
    assert len(drift) == 1
    return drift


@pytest.fixture(scope="module")
def records(
    functions: Path,
    split: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> dict[str, logging.LogRecord]:
    """The drift window record of held-out rows ("steady") and of the same rows 25% larger ("shifted")."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        steady = _windows(functions, split[1], monkeypatch)[0]
        moved = _windows(functions, shifted(split[1]), monkeypatch)[0]
    assert json.loads(moved.getMessage()[6:])["drift_psi_max"] >= ALARM
    assert json.loads(steady.getMessage()[6:])["drift_psi_max"] < ALARM
    return {"steady": steady, "shifted": moved}


# -- Google Cloud ----------------------------------------------------------------------------


def _services(folder: Path) -> list[str]:
    """The Cloud Run services and 2nd gen functions the plan deploys."""
    names = []
    for file in ("service.yaml", "events-service.yaml"):
        if (folder / file).is_file():
            names.append(yaml.safe_load((folder / file).read_text())["metadata"]["name"])
    if (folder / "cloud-functions.yaml").is_file():
        names += [f["name"] for f in yaml.safe_load((folder / "cloud-functions.yaml").read_text())["functions"]]
    return names


def test_gcp_plan_writes_a_counter_of_drifted_windows_and_an_alert_policy_on_it(gcp_plan: Path) -> None:
    metric = yaml.safe_load((gcp_plan / "drift-metric.yaml").read_text())
    assert unknown_fields(metric, LOG_METRIC_FIELDS) == []
    assert metric["metricDescriptor"] == {"metricKind": "DELTA", "valueType": "INT64", "unit": "1"}
    services = _services(gcp_plan)
    assert len(services) >= 2  # the HTTP and the Pub/Sub paths, each its own Cloud Run service
    quoted = " OR ".join(f'"{s}"' for s in services)
    assert f"resource.labels.service_name=({quoted})" in metric["filter"]
    assert str(ALARM) in metric["description"]

    policy = yaml.safe_load((gcp_plan / "drift-policy.yaml").read_text())
    assert unknown_fields(policy, ALERT_POLICY_FIELDS) == []
    [condition] = policy["conditions"]
    threshold = condition["conditionThreshold"]
    assert threshold["filter"].startswith(
        'metric.type="logging.googleapis.com/user/modelfn-breast-cancer-drifted-windows"'
    )
    assert threshold["aggregations"] == [
        {"alignmentPeriod": "900s", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}
    ]
    # more than one drifted window in 15 minutes: CloudWatch's two of three five-minute periods
    assert (threshold["comparison"], threshold["thresholdValue"], threshold["duration"]) == ("COMPARISON_GT", 1, "0s")
    assert str(ALARM) in policy["documentation"]["content"]


def _matches(log_filter: str, entry: dict[str, Any]) -> bool:
    """The filter's two alternatives applied to a LogEntry: its jsonPayload comparisons all
    equal, or its textPayload literals all contained (`:`, case-insensitive)."""
    json_part, text_part = log_filter.split(" OR (textPayload:", 1)
    payload = entry.get("jsonPayload")
    if payload is not None:
        for field, value in re.findall(r"jsonPayload\.(\w+)=(\"[^\"]*\"|true|false)", json_part):
            if payload.get(field) != json.loads(value):
                return False
        return True
    literals = [json.loads(s) for s in re.findall(r'textPayload:("(?:[^"\\]|\\.)*")', "textPayload:" + text_part)]
    assert len(literals) == 2
    return all(literal.lower() in entry["textPayload"].lower() for literal in literals)


def test_gcp_filter_matches_the_drifted_window_lines_functions_and_cloud_run_write(
    gcp_plan: Path, records: dict[str, logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers import gcp_functions

    log_filter = yaml.safe_load((gcp_plan / "drift-metric.yaml").read_text())["filter"]
    # Cloud Functions: functions-framework's JSON line, its fields top-level in jsonPayload
    stream = io.StringIO()
    monkeypatch.setattr(gcp_functions.sys, "stdout", stream)
    core = logging.getLogger("modelfn")
    before, propagate = list(core.handlers), core.propagate
    gcp_functions._json_logging()
    try:
        formatter = core.handlers[-1].formatter
        assert formatter is not None
        structured = {k: json.loads(formatter.format(r)) for k, r in records.items()}
    finally:
        core.handlers, core.propagate = before, propagate
    # Cloud Run: `modelfn serve` logs text through the CLI's basicConfig format
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    plain = {k: text.format(r) for k, r in records.items()}
    for kind, drifted in (("shifted", True), ("steady", False)):
        assert _matches(log_filter, {"jsonPayload": structured[kind]}) is drifted, kind
        assert _matches(log_filter, {"textPayload": plain[kind]}) is drifted, kind
    other = structured["shifted"] | {"function": "other"}
    assert not _matches(log_filter, {"jsonPayload": other})
    assert not _matches(log_filter, {"textPayload": plain["shifted"].replace("breast-cancer", "other")})


@pytest.mark.slow
def test_gcp_deploy_script_creates_the_metric_then_the_policy(gcp_plan: Path) -> None:
    commands = dry_run(gcp_plan / "deploy.sh", NOTIFICATION_CHANNELS="projects/demo-project/notificationChannels/42")
    metric = (
        "gcloud logging metrics create modelfn-breast-cancer-drifted-windows "
        f"--config-from-file={gcp_plan}/drift-metric.yaml --project=demo-project"
    )
    policy = (
        f"gcloud alpha monitoring policies create --policy-from-file={gcp_plan}/drift-policy.yaml "
        "--project=demo-project --notification-channels=projects/demo-project/notificationChannels/42"
    )
    assert metric in commands and policy in commands
    assert commands.index(metric) < commands.index(policy)
    quiet = dry_run(gcp_plan / "deploy.sh")
    assert policy.split(" --notification-channels")[0] in quiet


@pytest.mark.slow
@pytest.mark.skipif(not GCLOUD_PYTHON.is_file(), reason="the gcloud CLI is not installed here")
def test_real_gcloud_reads_the_metric_and_the_policy_without_unknown_fields(gcp_plan: Path, tmp_path: Path) -> None:
    sdk = GCLOUD_PYTHON.parents[3] / "lib"
    env = {"PYTHONPATH": f"{sdk}:{sdk / 'third_party'}", "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}

    def parse(metric: Path, policy: Path) -> dict[str, list[str]]:
        run = subprocess.run(
            [str(GCLOUD_PYTHON), "-c", GCLOUD_PARSE, str(metric), str(policy)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    assert parse(gcp_plan / "drift-metric.yaml", gcp_plan / "drift-policy.yaml") == {"metric": [], "policy": []}
    # the same reading catches a misspelt field and a wrong enum value
    metric, policy = tmp_path / "metric.yaml", tmp_path / "policy.yaml"
    metric.write_text((gcp_plan / "drift-metric.yaml").read_text().replace("DELTA", "DELTAS"))
    policy.write_text((gcp_plan / "drift-policy.yaml").read_text().replace("thresholdValue", "threshold"))
    assert parse(metric, policy) == {
        "metric": [".metricDescriptor.metricKind"],
        "policy": [".conditions.conditionThreshold.threshold"],
    }
    if shutil.which("gcloud"):  # the commands themselves get as far as asking for an account
        for command in dry_run(gcp_plan / "deploy.sh"):
            if command.startswith(("gcloud logging metrics", "gcloud alpha monitoring")):
                verdict = gcloud_verdict(command.split(), tmp_path / "gcloud")
                assert "active account" in verdict or "credential" in verdict.lower(), (command, verdict)


def test_no_profile_no_drift_alert(tmp_path: Path, functions: Path) -> None:
    folder = tmp_path / "functions" / "breast-cancer"
    shutil.copytree(functions / "breast-cancer", folder)
    (folder / "profile.json").unlink()
    spec = load_spec(folder)
    assert spec.drift_profile() is None
    gcp.write(spec, place(spec, "gcp"), tmp_path / "gcp")
    assert not (tmp_path / "gcp" / "breast-cancer" / "drift-metric.yaml").exists()
    assert "monitoring policies" not in (tmp_path / "gcp" / "breast-cancer" / "deploy.sh").read_text()
    azure.write(spec, place(spec, "azure"), tmp_path / "azure")
    assert not (tmp_path / "azure" / "breast-cancer" / "drift-alert.json").exists()
    assert "az deployment group create" not in (tmp_path / "azure" / "breast-cancer" / "README.md").read_text()


# -- Azure -----------------------------------------------------------------------------------


def test_azure_plan_writes_an_arm_template_of_a_log_alert_on_the_drift_traces(azure_plan: Path) -> None:
    template = json.loads((azure_plan / "drift-alert.json").read_text())
    assert unknown_fields(template, ARM_FIELDS) == []
    assert template["parameters"]["appInsightsId"]["type"] == "string"
    [rule] = template["resources"]
    assert (rule["type"], rule["apiVersion"], rule["kind"]) == (
        "Microsoft.Insights/scheduledQueryRules",
        "2021-08-01",
        "LogAlert",
    )
    properties = rule["properties"]
    assert properties["scopes"] == ["[parameters('appInsightsId')]"]
    assert (properties["evaluationFrequency"], properties["windowSize"]) == ("PT5M", "PT5M")
    [criterion] = properties["criteria"]["allOf"]
    assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == (
        "GreaterThanOrEqual",
        ALARM,
        "Maximum",
    )
    assert criterion["failingPeriods"] == {"numberOfEvaluationPeriods": 3, "minFailingPeriodsToAlert": 2}
    assert 'tostring(d.function) == "breast-cancer"' in criterion["query"]
    assert f"{criterion['metricMeasureColumn']} = todouble(d.drift_psi_max)" in criterion["query"]
    # the template is not part of the app, and its README says how to deploy it
    assert "drift-alert.json" in (azure_plan / ".funcignore").read_text().splitlines()
    readme = (azure_plan / "README.md").read_text()
    assert "az deployment group create --resource-group <group> --template-file drift-alert.json" in readme


def _kusto(query: str, messages: list[str]) -> list[dict[str, Any]]:
    """The query's where/extend/project steps, read from its text, applied to trace messages."""
    prefix = json.loads(re.search(r'message startswith ("[^"]*")', query).group(1))  # type: ignore[union-attr]
    start = int(re.search(r"substring\(message, (\d+)\)", query).group(1))  # type: ignore[union-attr]
    wanted = dict(re.findall(r'tostring\(d\.(\w+)\) == "([^"]*)"', query))
    column, field = re.search(r"project timestamp, (\w+) = todouble\(d\.(\w+)\)", query).groups()  # type: ignore[union-attr]
    rows = []
    for message in messages:
        if not message.lower().startswith(prefix.lower()):
            continue
        d = json.loads(message[start:])
        if all(str(d.get(key)) == value for key, value in wanted.items()):
            rows.append({column: float(d[field])})
    return rows


def test_azure_query_reads_the_trace_line_the_function_writes(
    azure_plan: Path, records: dict[str, logging.LogRecord]
) -> None:
    [criterion] = json.loads((azure_plan / "drift-alert.json").read_text())["resources"][0]["properties"]["criteria"][
        "allOf"
    ]
    query, column = criterion["query"], criterion["metricMeasureColumn"]
    # the Functions worker sends each record's message as the trace's `message`
    messages = {k: r.getMessage() for k, r in records.items()}
    noise = [
        "Executing 'Functions.breast_cancer_http'",
        'drift {"metric":"drift","function":"other","drift_psi_max":9}',
    ]
    for kind, fires in (("shifted", True), ("steady", False)):
        rows = _kusto(query, [*noise, messages[kind]])
        assert len(rows) == 1, kind
        assert (rows[0][column] >= criterion["threshold"]) is fires, (kind, rows)
        assert rows[0][column] == pytest.approx(json.loads(messages[kind].split(" ", 1)[1])["drift_psi_max"])


def test_the_metric_counts_the_live_services_not_the_shadow_function(spec: FunctionSpec) -> None:
    functions = [{"name": "breast-cancer-http"}, {"name": "breast-cancer-pubsub"}, {"name": "breast-cancer-shadow"}]
    assert drift_alerts.services(spec, True, True, functions) == [
        "breast-cancer",
        "breast-cancer-events",
        "breast-cancer-http",
        "breast-cancer-pubsub",
    ]
