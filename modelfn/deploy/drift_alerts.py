"""Drift alerts on Google Cloud and Azure, the counterpart of the CDK stack's `DriftAlarm`: for a
function that ships a drift profile, `modelfn plan` writes them beside the deploy files.

- Google Cloud: `drift-metric.yaml`, a log-based counter of the drift windows at or above
  `[drift].alarm_psi` (`"drifted": true` in the window's log line), and `drift-policy.yaml`, a
  Cloud Monitoring alert policy on it; `deploy.sh` creates (or updates) both with gcloud.
- Azure: `drift-alert.json`, an ARM template of a log search alert
  (`Microsoft.Insights/scheduledQueryRules`) on the largest PSI of the `drift ` trace lines in
  the app's Application Insights, for `az deployment group create`.

Each reads the one log line `modelfn.monitor.Reporter` writes per window, no new metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfn.spec import FunctionSpec

# As the CDK's DriftAlarm: five-minute periods, two of the last three in breach.
PERIOD_S = 300
PERIODS, BREACHING = 3, 2
PREFIX = "drift "  # the trace message is PREFIX + the window's JSON (modelfn.monitor.Reporter)
ARM_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
SCHEDULED_QUERY_API = "2021-08-01"


def _description(spec: FunctionSpec) -> str:
    return f"{spec.name}: input drift, a feature's PSI at or above {spec.drift.alarm_psi}"


# -- Google Cloud ----------------------------------------------------------------------------


def metric_name(spec: FunctionSpec) -> str:
    return f"modelfn-{spec.name}-drifted-windows"


def display_name(spec: FunctionSpec) -> str:
    """The alert's name on both clouds; deploy.sh finds an existing Google policy by it."""
    return f"modelfn {spec.name}: input drift"


def services(spec: FunctionSpec, on_run: bool, eventarc: bool, functions: list[dict[str, Any]]) -> list[str]:
    """The Cloud Run services that serve the function's live traffic (a 2nd gen function runs as
    one of its name); not the shadow version's function, whose windows would count twice."""
    found = [spec.name] if on_run else []
    live = [f["name"] for f in functions if f["name"] != f"{spec.name}-shadow"]
    return found + ([f"{spec.name}-events"] if eventarc else []) + live


def log_filter(spec: FunctionSpec, services: list[str]) -> str:
    """The drift windows of this function's services that reached alarm_psi. Under
    functions-framework each window is a JSON line (its fields top-level in jsonPayload);
    `modelfn serve` on Cloud Run writes the same JSON after `drift ` as text (textPayload)."""
    names = " OR ".join(f'"{s}"' for s in services)
    head = f'{PREFIX}{{"metric":"drift","function":"{spec.name}",'
    drifted = _quoted('"drifted":true')
    text = f"textPayload:{_quoted(head)} AND textPayload:{drifted}"
    return (
        f'resource.type="cloud_run_revision" AND resource.labels.service_name=({names}) AND '
        f'((jsonPayload.metric="drift" AND jsonPayload.function="{spec.name}" AND jsonPayload.drifted=true) '
        f"OR ({text}))"
    )


def _quoted(text: str) -> str:
    """A string literal of the Logging query language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_metric(spec: FunctionSpec, services: list[str]) -> dict[str, Any]:
    """A counter, not a distribution of `drift_psi_max`: a threshold condition on a distribution
    only sees a percentile interpolated within buckets, never the largest value, while a count
    of windows at or above alarm_psi is exact, and needs no extractor for the text form."""
    return {
        "description": f"modelfn {spec.name}: drift windows with a feature's PSI >= {spec.drift.alarm_psi}",
        "filter": log_filter(spec, services),
        "metricDescriptor": {"metricKind": "DELTA", "valueType": "INT64", "unit": "1"},
    }


def alert_policy(spec: FunctionSpec) -> dict[str, Any]:
    """Two or more drifted windows within three periods (CloudWatch: two of three periods)."""
    window = f"{PERIOD_S * PERIODS}s"
    return {
        "displayName": display_name(spec),
        "documentation": {
            "content": (
                f"{_description(spec)} in at least {BREACHING} drift windows within {window}. "
                "Read the windows' per-feature PSI in Logs Explorer: "
                f'jsonPayload.metric="drift" AND jsonPayload.function="{spec.name}". See the README, Reading drift.'
            ),
            "mimeType": "text/markdown",
        },
        "combiner": "OR",
        "conditions": [
            {
                "displayName": f"drifted windows of {spec.name}",
                "conditionThreshold": {
                    "filter": (
                        f'metric.type="logging.googleapis.com/user/{metric_name(spec)}" '
                        'AND resource.type="cloud_run_revision"'
                    ),
                    "aggregations": [
                        {
                            "alignmentPeriod": window,
                            "perSeriesAligner": "ALIGN_SUM",
                            "crossSeriesReducer": "REDUCE_SUM",
                        }
                    ],
                    "comparison": "COMPARISON_GT",
                    "thresholdValue": BREACHING - 1,
                    "duration": "0s",
                    "trigger": {"count": 1},
                },
            }
        ],
        "alertStrategy": {"autoClose": "86400s"},
    }


def gcp_deploy_lines(spec: FunctionSpec) -> list[str]:
    """deploy.sh's lines (the script defines PROJECT, HERE and run): create, or update when the
    metric or a policy of the same name exists, so the script can run again."""
    metric, name = metric_name(spec), display_name(spec)
    return [
        f"# Drift alert: a log-based counter of windows with a feature's PSI >= {spec.drift.alarm_psi},",
        "# and an alert policy on it; NOTIFICATION_CHANNELS (comma-separated ids) receive its incidents.",
        'if [ -z "${DRY_RUN:-}" ] && gcloud logging metrics describe '
        f'{metric} --project="$PROJECT" >/dev/null 2>&1; then VERB=update; else VERB=create; fi',
        f'run gcloud logging metrics "$VERB" {metric} --config-from-file="$HERE/drift-metric.yaml" '
        '--project="$PROJECT"',
        'POLICY=""',
        'if [ -z "${DRY_RUN:-}" ]; then',
        '    POLICY="$(gcloud alpha monitoring policies list --project="$PROJECT" '
        f"--filter='displayName=\"{name}\"' --format='value(name)' --limit=1)\"",
        "fi",
        'CHANNELS="${NOTIFICATION_CHANNELS:+--notification-channels=$NOTIFICATION_CHANNELS}"',
        'if [ -n "$POLICY" ]; then',
        '    run gcloud alpha monitoring policies update "$POLICY" --policy-from-file="$HERE/drift-policy.yaml" '
        '--project="$PROJECT"',
        "else",
        '    run gcloud alpha monitoring policies create --policy-from-file="$HERE/drift-policy.yaml" '
        '--project="$PROJECT" $CHANNELS',
        "fi",
    ]


def write_gcp(spec: FunctionSpec, folder: Path, header: str, services: list[str]) -> list[Path]:
    from modelfn.deploy.gcp import to_yaml  # gcp imports this module when it writes

    files = {"drift-metric.yaml": log_metric(spec, services), "drift-policy.yaml": alert_policy(spec)}
    for name, document in files.items():
        (folder / name).write_text(header + to_yaml(document) + "\n")
    return [folder / name for name in files]


# -- Azure -----------------------------------------------------------------------------------


def kusto_query(spec: FunctionSpec) -> str:
    """One row per drift window of this function: the rule takes the largest per period."""
    return "\n".join(
        [
            "traces",
            f'| where message startswith "{PREFIX}"',
            f"| extend d = parse_json(substring(message, {len(PREFIX)}))",
            f'| where tostring(d.metric) == "drift" and tostring(d.function) == "{spec.name}"',
            "| project timestamp, drift_psi_max = todouble(d.drift_psi_max)",
        ]
    )


def arm_template(spec: FunctionSpec) -> dict[str, Any]:
    """A log search alert scoped to the app's Application Insights: the largest PSI of a
    five-minute period at or above alarm_psi, in two of the last three."""
    minutes = f"PT{PERIOD_S // 60}M"
    return {
        "$schema": ARM_SCHEMA,
        "contentVersion": "1.0.0.0",
        "parameters": {
            "appInsightsId": {
                "type": "string",
                "metadata": {"description": "Resource id of the function app's Application Insights component"},
            },
            "actionGroupId": {
                "type": "string",
                "defaultValue": "",
                "metadata": {"description": "Resource id of an action group to notify (empty: none)"},
            },
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        },
        "resources": [
            {
                "type": "Microsoft.Insights/scheduledQueryRules",
                "apiVersion": SCHEDULED_QUERY_API,
                "name": f"modelfn-{spec.name}-drift",
                "location": "[parameters('location')]",
                "kind": "LogAlert",
                "properties": {
                    "displayName": display_name(spec),
                    "description": _description(spec),
                    "severity": 3,
                    "enabled": True,
                    "scopes": ["[parameters('appInsightsId')]"],
                    "evaluationFrequency": minutes,
                    "windowSize": minutes,
                    "criteria": {
                        "allOf": [
                            {
                                "query": kusto_query(spec),
                                "timeAggregation": "Maximum",
                                "metricMeasureColumn": "drift_psi_max",
                                "operator": "GreaterThanOrEqual",
                                "threshold": spec.drift.alarm_psi,
                                "failingPeriods": {
                                    "numberOfEvaluationPeriods": PERIODS,
                                    "minFailingPeriodsToAlert": BREACHING,
                                },
                            }
                        ]
                    },
                    "autoMitigate": True,
                    "actions": {
                        "actionGroups": (
                            "[if(empty(parameters('actionGroupId')), createArray(), "
                            "createArray(parameters('actionGroupId')))]"
                        )
                    },
                },
            }
        ],
    }


def azure_readme(spec: FunctionSpec) -> str:
    """The app README's section on the alert."""
    return f"""
Drift alert (`drift-alert.json`, not part of the app): fires when a feature's PSI reaches
{spec.drift.alarm_psi} in two of three five-minute periods, from the `drift ` trace lines in the
app's Application Insights.

    az deployment group create --resource-group <group> --template-file drift-alert.json \\
        --parameters appInsightsId="$(az resource show --resource-group <group> --name <app> \\
            --resource-type microsoft.insights/components --query id --output tsv)" \\
        [actionGroupId=<action group resource id>]
"""
