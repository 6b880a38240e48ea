"""`[batch]` on Google Cloud: `modelfn plan --provider gcp --out` writes a Cloud Run Job (checked
against the Cloud Run Admin API v1 Job's field names, and parsed by the real gcloud CLI where it
is installed) whose tasks run `modelfn batch` on their shard, and the Cloud Scheduler job and
commands that run it on the schedule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_gcp_deploy import dry_run, function_dir, gcloud_verdict, unknown_fields

from modelfn import cli
from modelfn.deploy.gcp import write
from modelfn.deploy.plan import place
from modelfn.spec import load_spec

pytestmark = pytest.mark.slow

# Field names of the Cloud Run Admin API v1 Job (run.googleapis.com/v1) the plan may write;
# "*" is a map with free keys. From the Cloud Run YAML reference (jobs).
JOB_FIELDS: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": {"name": None, "namespace": None, "labels": "*", "annotations": "*"},
    "spec": {
        "template": {
            "metadata": {"labels": "*", "annotations": "*"},
            "spec": {
                "parallelism": None,
                "taskCount": None,
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": None,
                                "image": None,
                                "command": [None],
                                "args": [None],
                                "env": [{"name": None, "value": None}],
                                "resources": {"limits": "*"},
                            }
                        ],
                        "maxRetries": None,
                        "timeoutSeconds": None,
                        "serviceAccountName": None,
                        "nodeSelector": "*",
                    }
                },
            },
        }
    },
}
BATCH_TOML = """[triggers]
http = true
[batch]
input = "gs://acme-scans/incoming/"
output = "gs://acme-scans/labels/"
tasks = 8
max_concurrency = 3
task_timeout_s = 7200
schedule = "0 3 * * 1-5"
timezone = "Europe/Berlin"
"""


@pytest.fixture
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "europe-west4")
    spec = load_spec(function_dir(tmp_path / "functions", "nightly", BATCH_TOML))
    write(spec, place(spec, "gcp"), tmp_path / "out")
    return tmp_path / "out" / "nightly"


def test_the_job_runs_modelfn_batch_in_parallel_tasks_of_the_function_image(planned: Path) -> None:
    job = yaml.safe_load((planned / "job.yaml").read_text())
    assert unknown_fields(job, JOB_FIELDS) == []
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == (
        "run.googleapis.com/v1",
        "Job",
        "nightly-batch",
    )
    execution = job["spec"]["template"]["spec"]
    assert (execution["taskCount"], execution["parallelism"]) == (8, 3)
    task = execution["template"]["spec"]
    assert task["maxRetries"] == 3 and task["timeoutSeconds"] == "7200"
    [container] = task["containers"]
    assert container["image"] == "europe-west4-docker.pkg.dev/demo-project/modelfn/nightly:latest"  # the service's
    assert container["command"] == ["python", "-m", "modelfn.cli"]
    assert container["args"] == [
        "batch",
        "nightly",
        "--input",
        "gs://acme-scans/incoming/",
        "--output",
        "gs://acme-scans/labels/",
        "--quiet",
    ]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    # the image the job runs can read and write Parquet
    assert "ARG EXTRAS=server,image,text,gcp,batch\n" in (planned / "source" / "Dockerfile").read_text()


def test_the_scheduler_job_runs_the_job_on_the_schedule_in_its_time_zone(planned: Path) -> None:
    scheduler = yaml.safe_load((planned / "scheduler.yaml").read_text())
    assert scheduler["name"] == "projects/demo-project/locations/europe-west4/jobs/nightly-batch"
    assert (scheduler["schedule"], scheduler["timeZone"]) == ("0 3 * * 1-5", "Europe/Berlin")
    target = scheduler["httpTarget"]
    assert (
        target["uri"]
        == "https://run.googleapis.com/v2/projects/demo-project/locations/europe-west4/jobs/nightly-batch:run"
    )
    assert target["httpMethod"] == "POST"
    assert target["oauthToken"]["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_deploy_script_replaces_the_job_and_creates_its_schedule(planned: Path) -> None:
    commands = dry_run(
        planned / "deploy.sh", REGION="europe-west4", SCHEDULER_SA="runner@demo-project.iam.gserviceaccount.com"
    )
    assert commands[0].startswith("gcloud builds submit --tag=europe-west4-docker.pkg.dev/demo-project/")
    replace = [c for c in commands if c.startswith("gcloud run jobs replace ")]
    assert replace == [f"gcloud run jobs replace {planned}/.job.yaml --region=europe-west4 --project=demo-project"]
    [create] = [c for c in commands if c.startswith("gcloud scheduler jobs create http ")]
    assert "--schedule=0 3 * * 1-5" in create and "--time-zone=Europe/Berlin" in create
    assert "--oauth-service-account-email=runner@demo-project.iam.gserviceaccount.com" in create
    assert any(c.startswith("gcloud run jobs add-iam-policy-binding nightly-batch") for c in commands)
    rendered = yaml.safe_load((planned / ".job.yaml").read_text())
    image = rendered["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "europe-west4-docker.pkg.dev/demo-project/modelfn/nightly:latest"


def test_no_batch_table_no_job(tmp_path: Path) -> None:
    spec = load_spec(function_dir(tmp_path / "functions", "plain", ""))
    written = write(spec, place(spec, "gcp"), tmp_path / "out")
    assert not any(p.name in ("job.yaml", "scheduler.yaml") for p in written)
    assert "gcloud run jobs" not in (tmp_path / "out" / "plain" / "deploy.sh").read_text()


def test_each_task_of_the_job_scores_its_own_shard(
    planned: Path, tmp_path: Path, cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's own args, with the buckets swapped for folders, run as its 8 tasks would."""
    job = yaml.safe_load((planned / "job.yaml").read_text())
    args = job["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["args"]
    inputs, outputs = tmp_path / "incoming", tmp_path / "labels"
    inputs.mkdir()
    for i in range(20):
        (inputs / f"{i:02d}.json").write_text(json.dumps({"X": cancer_rows[i].tolist()}))
    args = [
        str(inputs) if a == "gs://acme-scans/incoming/" else str(outputs) if a == "gs://acme-scans/labels/" else a
        for a in args
    ]
    args[1] = "breast-cancer"
    for index in range(8):
        monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", str(index))
        monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "8")
        assert cli.main(args) == 0
    assert sorted(p.name for p in outputs.iterdir()) == [f"{i:02d}.json.json" for i in range(20)]


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed here")
def test_real_gcloud_parses_the_job_and_the_scheduler_flags(planned: Path, tmp_path: Path) -> None:
    commands = dry_run(
        planned / "deploy.sh", REGION="europe-west4", SCHEDULER_SA="runner@demo-project.iam.gserviceaccount.com"
    )
    config = tmp_path / "gcloud"
    for command in commands:
        if command.startswith(("gcloud run jobs replace", "gcloud scheduler jobs create")):
            verdict = gcloud_verdict(split(command), config)
            assert "active account" in verdict or "credential" in verdict.lower(), (command, verdict)
    broken = tmp_path / "broken.yaml"
    broken.write_text((planned / ".job.yaml").read_text().replace("taskCount", "taskCont"))
    verdict = gcloud_verdict(["gcloud", "run", "jobs", "replace", str(broken), "--region=europe-west4"], config)
    assert "taskCont" in verdict, verdict


def split(command: str) -> list[str]:
    """The argv of a command deploy.sh echoed (DRY_RUN prints "$*", which drops the quotes around
    the schedule's spaces): words after `--schedule=` up to the next flag are one argument."""
    argv: list[str] = []
    for word in command.split():
        if argv and argv[-1].startswith("--schedule=") and not word.startswith("--"):
            argv[-1] += " " + word
        else:
            argv.append(word)
    return argv
