"""`[batch]` on Google Cloud: a Cloud Run Job from the function's image whose tasks each run
`modelfn batch` on their shard of the prefix (the task's CLOUD_RUN_TASK_INDEX and
CLOUD_RUN_TASK_COUNT, read by `modelfn.batch.shards`), and, with a schedule, the Cloud Scheduler
job that runs it. Written by `modelfn plan --provider gcp --out DIR` beside the service:

- `job.yaml`: the Job (Cloud Run Admin API v1, for `gcloud run jobs replace`);
- `scheduler.yaml`: the Cloud Scheduler job (its REST form) calling the Job's `:run`, when
  `[batch].schedule` is set; `deploy.sh` creates it with the same values.

A task that fails is retried alone (`maxRetries`): outputs already written are skipped, and the
shard of an input never changes, so no input is scored twice or lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfn.deploy.plan import GPU_TYPE, Placement
from modelfn.spec import BatchSpec, FunctionSpec

TASK_RETRIES = 3
GPU_TASK_MAX_TIMEOUT_S = 3600  # Cloud Run caps a GPU task at an hour
SCHEDULER_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def job_name(spec: FunctionSpec) -> str:
    return f"{spec.name}-batch"


def command(spec: FunctionSpec, batch: BatchSpec) -> list[str]:
    """What each task runs: the whole prefix, narrowed to the task's shard by its environment."""
    return ["batch", spec.name, "--input", batch.input, "--output", batch.output, "--quiet"]


def cloud_run_job(spec: FunctionSpec, placement: Placement, project: str, region: str) -> dict[str, Any]:
    from modelfn.deploy.gcp import image, resources  # gcp imports this module when it writes

    batch = spec.batch
    assert batch is not None
    gpu = placement.target == "cloud-run-gpu"
    size = resources(spec, gpu)
    limits = {"cpu": str(size.cpu), "memory": size.memory}
    container: dict[str, Any] = {
        "name": "modelfn-batch",
        "image": image(spec, project, region),
        "command": ["python", "-m", "modelfn.cli"],
        "args": command(spec, batch),
        "env": [{"name": "MODELFN_FUNCTION", "value": spec.name}],
        "resources": {"limits": limits},
    }
    task: dict[str, Any] = {
        "containers": [container],
        "maxRetries": TASK_RETRIES,
        # int64 fields are strings in the v1 API's JSON
        "timeoutSeconds": str(min(batch.task_timeout_s, GPU_TASK_MAX_TIMEOUT_S) if gpu else batch.task_timeout_s),
    }
    annotations = {"run.googleapis.com/execution-environment": "gen2"}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
        task["nodeSelector"] = {"run.googleapis.com/accelerator": GPU_TYPE}
        annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"] = "true"
    return {
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec),
            "labels": {"modelfn-function": spec.name, "cloud.googleapis.com/location": region},
            "annotations": {"run.googleapis.com/description": f"modelfn batch {spec.name}: {batch.input}"[:512]},
        },
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "taskCount": batch.tasks,
                    "parallelism": min(batch.max_concurrency, batch.tasks),
                    "template": {"spec": task},
                },
            }
        },
    }


def run_uri(spec: FunctionSpec, project: str, region: str) -> str:
    return f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{job_name(spec)}:run"


def scheduler_job(spec: FunctionSpec, project: str, region: str, service_account: str) -> dict[str, Any]:
    """The Cloud Scheduler job (REST v1 form) that runs the Job on `[batch].schedule`."""
    batch = spec.batch
    assert batch is not None and batch.schedule is not None
    return {
        "name": f"projects/{project}/locations/{region}/jobs/{job_name(spec)}",
        "description": f"modelfn batch {spec.name}: {batch.input} -> {batch.output}",
        "schedule": batch.schedule,
        "timeZone": batch.timezone,
        "httpTarget": {
            "uri": run_uri(spec, project, region),
            "httpMethod": "POST",
            "oauthToken": {"serviceAccountEmail": service_account, "scope": SCHEDULER_SCOPE},
        },
    }


def deploy_lines(spec: FunctionSpec) -> list[str]:
    """deploy.sh's lines for the Job and its schedule (the script defines PROJECT, REGION, run and render)."""
    batch = spec.batch
    assert batch is not None
    name = job_name(spec)
    lines = [
        f"# Bulk predictions: {batch.tasks} task(s), each scoring its shard of {batch.input}.",
        "render job.yaml",
        'run gcloud run jobs replace "$HERE/.job.yaml" --region="$REGION" --project="$PROJECT"',
        f'# Run it now: gcloud run jobs execute {name} --region="$REGION" --project="$PROJECT"',
    ]
    if batch.schedule:
        lines += [
            "# Cloud Scheduler runs the job as SCHEDULER_SA (default: the Compute Engine default service",
            "# account), which needs roles/run.invoker on the job.",
            'if [ -z "${SCHEDULER_SA:-}" ] && [ -z "${DRY_RUN:-}" ]; then',
            '    NUMBER="$(gcloud projects describe "$PROJECT" --format="value(projectNumber)")"',
            '    SCHEDULER_SA="$NUMBER-compute@developer.gserviceaccount.com"',
            "fi",
            'SCHEDULER_SA="${SCHEDULER_SA:-PROJECT_NUMBER-compute@developer.gserviceaccount.com}"',
            f'run gcloud run jobs add-iam-policy-binding {name} --region="$REGION" --project="$PROJECT" '
            '--member="serviceAccount:$SCHEDULER_SA" --role=roles/run.invoker',
            " ".join(
                [
                    f"run gcloud scheduler jobs create http {name}",
                    '--location="$REGION" --project="$PROJECT"',
                    f"--schedule='{batch.schedule}' --time-zone='{batch.timezone}'",
                    f'--uri="https://run.googleapis.com/v2/projects/$PROJECT/locations/$REGION/jobs/{name}:run"',
                    "--http-method=POST",
                    '--oauth-service-account-email="$SCHEDULER_SA"',
                    f"--oauth-token-scope={SCHEDULER_SCOPE}",
                ]
            ),
        ]
    return lines


def write(spec: FunctionSpec, placement: Placement, folder: Path, project: str, region: str, header: str) -> list[Path]:
    from modelfn.deploy.gcp import to_yaml

    written = [folder / "job.yaml"]
    written[0].write_text(header + to_yaml(cloud_run_job(spec, placement, project, region)) + "\n")
    if spec.batch is not None and spec.batch.schedule:
        account = "PROJECT_NUMBER-compute@developer.gserviceaccount.com"
        path = folder / "scheduler.yaml"
        path.write_text(header + to_yaml(scheduler_job(spec, project, region, account)) + "\n")
        written.append(path)
    return written
