"""Drift against a reference profile: `modelfn profile` writes it from real requests; every
provider counts live traffic into its bins and reports PSI per window (EMF on Lambda, a
structured log line on Google Cloud and Azure). A shifted sample of real breast-cancer rows
crosses the alarm threshold, held-out unshifted rows stay below it."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.providers import azure_request, example_copy, lambda_http_event

from modelfn.cli import main as cli
from modelfn.drift import DriftMonitor, DriftReport
from modelfn.profile import FORMAT, Profile, psi
from modelfn.registry import Registry
from modelfn.service import Service
from modelfn.spec import DriftSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
ALARM = DriftSpec().alarm_psi
WINDOW = 280


@pytest.fixture(scope="module")
def split(cancer_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and held-out rows, shuffled the same way every run."""
    order = np.random.default_rng(7).permutation(len(cancer_rows))
    half = len(order) // 2
    return cancer_rows[order[:half]], cancer_rows[order[half:]]


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory, split: tuple[np.ndarray, np.ndarray]) -> Path:
    """breast-cancer with a drift window of WINDOW requests and a profile made by the CLI."""
    root = tmp_path_factory.mktemp("functions")
    example_copy(root, extra_toml=f"[drift]\nwindow_requests = {WINDOW}\nmin_rows = {WINDOW}\n")
    data = root / "reference.jsonl"
    data.write_text("".join(json.dumps({"X": row.tolist()}) + "\n" for row in split[0]))
    assert cli(["profile", "breast-cancer", "--data", str(data), "--functions-dir", str(root)]) == 0
    return root


def shifted(rows: np.ndarray) -> np.ndarray:
    """The same patients measured 25% larger: what a recalibrated instrument would send."""
    return rows * 1.25


class Reports:
    def __init__(self) -> None:
        self.drift: list[DriftReport] = []

    def __call__(self, report: DriftReport) -> None:
        self.drift.append(report)


def test_profile_json_is_versioned_with_quantile_bins_and_output_distributions(
    functions: Path, split: tuple[np.ndarray, np.ndarray]
) -> None:
    document = json.loads((functions / "breast-cancer" / "profile.json").read_text())
    assert document["format"] == FORMAT and document["function"] == "breast-cancer"
    assert document["rows"] == len(split[0]) and len(document["model_sha256"]) == 64
    by_role = {(s["role"], s["tensor"], s["summary"]): s["features"] for s in document["sources"]}
    columns = by_role[("input", "X", "columns")]
    assert len(columns) == 30 and columns[0]["name"] == "X[0]"
    first = columns[0]
    assert first["kind"] == "quantile" and len(first["edges"]) == 9
    assert first["edges"] == sorted(first["edges"])
    assert np.median(split[0][:, 0]) == pytest.approx(first["edges"][4], rel=1e-3)
    assert sum(first["expected"]) == pytest.approx(1.0, abs=1e-5)
    label = by_role[("output", "label", "value")][0]
    assert label["kind"] == "category" and label["edges"] == [0.0, 1.0]
    assert 0.5 < label["expected"][1] < 0.75  # the share of benign tumours in the reference
    assert ("output", "probabilities", "argmax") in by_role


def test_psi_is_zero_on_the_reference_and_grows_with_the_shift() -> None:
    expected = np.full(10, 0.1)
    assert psi(expected, np.full(10, 30)) == 0.0
    moved = np.array([0, 0, 0, 10, 10, 20, 30, 40, 50, 40])
    assert psi(expected, moved) > 0.5


def _service_reports(functions: Path, rows: np.ndarray) -> list[DriftReport]:
    service = Service(Registry.from_dir(functions))
    reports = Reports()
    service.monitor.reporter.drift = reports  # type: ignore[method-assign]
    for row in rows[:WINDOW]:
        service.predict("breast-cancer", payload={"X": row.tolist()})
    return reports.drift


def test_shifted_sample_crosses_the_alarm_threshold_and_held_out_rows_stay_below(
    functions: Path, split: tuple[np.ndarray, np.ndarray]
) -> None:
    unshifted = _service_reports(functions, split[1])
    assert len(unshifted) == 1 and unshifted[0].rows == WINDOW and unshifted[0].requests == WINDOW
    assert unshifted[0].max_psi < ALARM and not unshifted[0].drifted
    moved = _service_reports(functions, shifted(split[1]))
    assert moved[0].max_psi >= ALARM and moved[0].drifted
    # every size feature moved; the model's answers moved with them (more rows called malignant)
    assert moved[0].psi["X[0]"] > unshifted[0].psi["X[0]"] + 0.25
    assert moved[0].shift["label"] > unshifted[0].shift["label"]
    print(f"held-out max PSI {unshifted[0].max_psi:.3f}, shifted max PSI {moved[0].max_psi:.3f}")


def test_a_window_with_too_few_rows_carries_over_and_memory_stays_constant(functions: Path) -> None:
    spec = DriftSpec(window_requests=10, min_rows=40)
    profile = Profile.load(functions / "breast-cancer" / "profile.json")
    reports = Reports()
    monitor = DriftMonitor(profile, spec, reports)
    counts = monitor.counts.nbytes
    rows = np.random.default_rng(1).normal(15, 3, size=(1000, 30)).astype(np.float32)
    outputs = {"label": np.zeros(1, np.int64), "probabilities": np.array([[0.3, 0.7]], np.float32)}
    for i in range(30):
        monitor.observe({"X": rows[i : i + 1]}, outputs)
    assert reports.drift == []  # 30 rows < min_rows: no window yet
    monitor.observe({"X": rows[30:630]}, {"label": np.zeros(600, np.int64), "probabilities": np.zeros((600, 2))})
    assert [r.rows for r in reports.drift] == [630]
    assert monitor.counts.nbytes == counts and monitor.rows == 0 and monitor.pending_rows == 0
    monitor.observe({"X": rows[:1, :5]}, outputs)  # a shape the profile does not describe
    assert monitor.close_window() is None  # checked when the waiting requests are binned: nothing to report
    assert monitor.skipped == 1 and monitor.rows == 0


# -- every provider reports its windows -----------------------------------------------------


@pytest.fixture
def provider_functions(functions: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    yield functions


def _bodies(rows: np.ndarray) -> list[bytes]:
    return [json.dumps({"X": row.tolist()}).encode() for row in rows[:WINDOW]]


def test_lambda_sends_drift_as_emf_documents(
    provider_functions: Path, split: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.aws import capture_telemetry

    from handlers import aws_lambda
    from handlers.aws import app
    from handlers.local.aws import LocalContext

    lines = capture_telemetry(monkeypatch)
    app.reset()
    try:
        for body in _bodies(shifted(split[1])):
            event = lambda_http_event("POST", "/", body)
            assert aws_lambda.handler(event, LocalContext("drift"))["statusCode"] == 200
    finally:
        app.reset()
    documents = [d for d in lines() if "_aws" in d]
    window = [d for d in documents if "DriftPSIMax" in d]
    assert len(window) == 1
    directive = window[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["service", "function"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"DriftPSIMax", "OutputShiftMax", "DriftRows"}
    assert window[0]["DriftPSIMax"] >= ALARM and window[0]["DriftRows"] == WINDOW
    per_feature = {d["feature"]: d["DriftPSI"] for d in documents if "DriftPSI" in d}
    assert len(per_feature) == 30 and max(per_feature.values()) == pytest.approx(window[0]["DriftPSIMax"])
    assert {d["feature"] for d in documents if "OutputShift" in d} >= {"label", "probabilities[1]"}


def _drift_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    return [r.fields for r in records if r.name == "modelfn.metrics" and hasattr(r, "fields")]


def test_cloud_functions_log_drift_as_structured_json(
    provider_functions: Path, split: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flask

    from handlers import gcp_functions
    from handlers.gcp import instance

    monkeypatch.setattr(instance, "_services", {})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(gcp_functions.sys, "stdout", stream)
    core = logging.getLogger("modelfn")
    before = list(core.handlers)
    gcp_functions._json_logging()
    try:
        for body in _bodies(split[1]):
            with flask.Flask(__name__).test_request_context(
                "/functions/breast-cancer", method="POST", headers={"content-type": "application/json"}, data=body
            ):
                assert gcp_functions.serve_http(flask.request).status_code == 200
    finally:
        core.handlers = before
        core.propagate = True
        handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    drift = [line for line in lines if line.get("metric") == "drift"]
    assert len(drift) == 1
    line = drift[0]
    assert line["severity"] == "INFO" and line["function"] == "breast-cancer" and line["rows"] == WINDOW
    assert line["drift_psi_max"] < ALARM and line["drifted"] is False
    assert set(line["psi"]) == {f"X[{i}]" for i in range(30)}
    assert "label" in line["output_shift"]


def test_azure_logs_drift_windows_from_http_and_blob_alike(
    provider_functions: Path, split: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:

    from handlers.az.http import serve
    from handlers.azure_functions import ServedFunction, resolve_spec

    served = ServedFunction(resolve_spec("breast-cancer"))
    assert served.objects.monitor is served.service.monitor
    caplog.set_level(logging.INFO, logger="modelfn.metrics")
    for body in _bodies(shifted(split[1])):
        assert serve(served, azure_request("POST", "functions/breast-cancer", body)).status_code == 200
    drift = _drift_lines(caplog.records)
    assert len(drift) == 1 and drift[0]["drifted"] is True and drift[0]["drift_psi_max"] >= ALARM


def test_drift_is_off_without_a_profile(functions: Path, tmp_path: Path) -> None:
    folder = tmp_path / "breast-cancer"
    shutil.copytree(functions / "breast-cancer", folder)
    (folder / "profile.json").unlink()
    service = Service(Registry([load_spec(folder)]))
    service.predict("breast-cancer", payload={"X": [[1.0] * 30]})
    assert service.monitor.monitors == []
