"""`modelfn plan --provider gcp`: the routing, the Cloud Run service YAML (checked against the
Cloud Run v1 / Knative field names and the GPU rules, and parsed by the real gcloud CLI where
it is installed), the Cloud Functions configuration, its source folder and deploy.sh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelfn.deploy.gcp import resources, write
from modelfn.deploy.plan import place
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
EVENTS = ROOT / "events" / "gcp"

# Field names of the Cloud Run Admin API v1 Service (Knative serving.knative.dev/v1) that the
# plan may write; "*" is a map with free keys. From the Cloud Run YAML reference.
SERVICE_FIELDS: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": {"name": None, "namespace": None, "labels": "*", "annotations": "*"},
    "spec": {
        "template": {
            "metadata": {"name": None, "labels": "*", "annotations": "*"},
            "spec": {
                "containerConcurrency": None,
                "timeoutSeconds": None,
                "serviceAccountName": None,
                "nodeSelector": "*",
                "containers": [
                    {
                        "name": None,
                        "image": None,
                        "command": [None],
                        "args": [None],
                        "ports": [{"name": None, "containerPort": None}],
                        "env": [{"name": None, "value": None}],
                        "resources": {"limits": "*"},
                        "startupProbe": "probe",
                        "livenessProbe": "probe",
                    }
                ],
            },
        },
        "traffic": [{"percent": None, "latestRevision": None, "revisionName": None, "tag": None}],
    },
}
PROBE_FIELDS = {
    "initialDelaySeconds": None,
    "timeoutSeconds": None,
    "periodSeconds": None,
    "failureThreshold": None,
    "httpGet": {"path": None, "port": None, "httpHeaders": [{"name": None, "value": None}]},
    "tcpSocket": {"port": None},
    "grpc": {"port": None, "service": None},
}
KNOWN_TEMPLATE_ANNOTATIONS = {
    "autoscaling.knative.dev/minScale",
    "autoscaling.knative.dev/maxScale",
    "run.googleapis.com/startup-cpu-boost",
    "run.googleapis.com/cpu-throttling",
    "run.googleapis.com/execution-environment",
    "run.googleapis.com/gpu-zonal-redundancy-disabled",
}


def unknown_fields(value: Any, schema: Any, where: str = "") -> list[str]:
    if schema == "*":
        return [] if isinstance(value, dict) else [f"{where}: expected a map"]
    if schema == "probe":
        schema = PROBE_FIELDS
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        found = []
        for key, item in value.items():
            if key not in schema:
                found.append(f"{where}.{key}")
            elif schema[key] is not None:
                found += unknown_fields(item, schema[key], f"{where}.{key}")
        return found
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [f for i, item in enumerate(value) for f in unknown_fields(item, schema[0], f"{where}[{i}]")]
    return []


def function_dir(root: Path, name: str, toml: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "model.onnx"\n{toml}')
    shutil.copy(MODEL, folder / "model.onnx")
    return folder


GPU_TOML = """[runtime]
accelerator = "gpu"
[deploy]
min_instances = 1
max_instances = 3
[triggers]
http = true
pubsub = { topic = "embed-requests", output_topic = "embed-results" }
gcs = { bucket = "embed-inbox" }
"""
EVENTS_TOML = """[deploy]
memory_mb = 2048
timeout_s = 900
min_instances = 2
[triggers]
http = false
pubsub = { output_topic = "events-results" }
gcs = true
"""


def plan(root: Path, name: str, toml: str, out: Path) -> tuple[Any, list[Path]]:
    spec = load_spec(function_dir(root, name, toml))
    placement = place(spec, "gcp")
    return placement, write(spec, placement, out)


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_plan_prints_the_routing_for_every_example_function() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelfn.cli", "plan", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    placements = json.loads(result.stdout)
    gcp = {p["function"]: p for p in placements if p["provider"] == "gcp"}
    assert {"breast-cancer", "digits"} <= set(gcp)
    assert gcp["breast-cancer"]["target"] == "cloud-run"
    assert gcp["breast-cancer"]["reason"].startswith("HTTP with micro-batching")
    assert {p["provider"] for p in placements} == {"aws", "gcp", "azure"}


@pytest.mark.parametrize(
    ("toml", "target", "why"),
    [
        (GPU_TOML, "cloud-run-gpu", "accelerator = 'gpu': Cloud Run with one nvidia-l4 GPU"),
        ("[deploy]\npackage = 'container'\n", "cloud-run", "deploy.package = 'container'"),
        ("", "cloud-run", "HTTP with micro-batching"),
        ("[batching]\nenabled = false\n", "cloud-functions", "CPU model"),
        (EVENTS_TOML, "cloud-functions", "CPU model"),
    ],
)
def test_gcp_routing_table(tmp_path: Path, toml: str, target: str, why: str) -> None:
    placement = place(load_spec(function_dir(tmp_path, "f", toml)), "gcp")
    assert placement.target == target
    assert placement.reason.startswith(why)


def test_gpu_functions_never_land_on_lambda_or_cloud_functions(tmp_path: Path) -> None:
    spec = load_spec(function_dir(tmp_path, "g", GPU_TOML))
    assert place(spec, "aws").target == "unsupported"
    assert place(spec, "gcp").target == "cloud-run-gpu"
    assert "pubsub and gcs events reach it through Eventarc" in place(spec, "gcp").reason


def test_a_model_over_the_cloud_functions_source_limit_goes_to_cloud_run(tmp_path: Path) -> None:
    folder = function_dir(tmp_path, "big", "[batching]\nenabled = false\n")
    with (folder / "weights.bin").open("wb") as f:  # sparse: counts in the size, not on disk
        f.truncate(501 * 1024 * 1024)
    placement = place(load_spec(folder), "gcp")
    assert placement.target == "cloud-run"
    assert "over Cloud Functions' 500 MB source limit" in placement.reason


def test_gpu_service_requests_an_l4_with_the_minimums_it_needs(tmp_path: Path) -> None:
    _, written = plan(tmp_path, "embed-gpu", GPU_TOML, tmp_path / "out")
    assert [p.name for p in written if p.parent.name == "embed-gpu"] == [
        "service.yaml",
        "events-service.yaml",
        "deploy.sh",
    ]
    for path in written[:2]:
        service = load(path)
        assert unknown_fields(service, SERVICE_FIELDS) == []
        template = service["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert set(annotations) <= KNOWN_TEMPLATE_ANNOTATIONS
        assert all(isinstance(v, str) for v in annotations.values())  # Knative annotations are strings
        assert template["spec"]["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
        limits = template["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
        assert int(limits["cpu"]) >= 4
        assert limits["memory"].endswith("Gi") and int(limits["memory"][:-2]) >= 16
        assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # a GPU needs CPU always allocated
        assert annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"] == "true"
        assert annotations["autoscaling.knative.dev/minScale"] == "1"
        assert annotations["autoscaling.knative.dev/maxScale"] == "3"
    served = load(written[0])["spec"]["template"]["spec"]["containers"][0]
    # one server process per CPU feeds the GPU
    assert {"name": "MODELFN_WORKERS", "value": served["resources"]["limits"]["cpu"]} in served["env"]
    events = load(written[1])
    container = events["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["functions-framework"]
    assert "--target=modelfn_event" in container["args"]
    assert events["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"


def test_cpu_service_has_probes_scaling_and_no_gpu(tmp_path: Path) -> None:
    plan(tmp_path, "tabular", "[deploy]\nmin_instances = 2\ncpu = 3\nmemory_mb = 512\n", tmp_path)
    service = load(tmp_path / "tabular" / "service.yaml")
    assert unknown_fields(service, SERVICE_FIELDS) == []
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "2"  # the cold-start lever
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # micro-batching
    assert "nodeSelector" not in template["spec"]
    container = template["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "2Gi"}  # 3 CPU -> 4, which needs 2 GiB
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert template["spec"]["containerConcurrency"] == 80
    # Authenticated by default: nothing grants allUsers the invoker role.
    assert "allUsers" not in (tmp_path / "tabular" / "deploy.sh").read_text()


def test_cloud_run_sizes_follow_the_allowed_cpu_and_memory_pairs(tmp_path: Path) -> None:
    def size(toml: str, gpu: bool = False) -> tuple[int, str]:
        name = f"s{len(list(tmp_path.iterdir()))}"
        found = resources(load_spec(function_dir(tmp_path, name, toml)), gpu)
        return found.cpu, found.memory

    assert size("") == (1, "1Gi")
    assert size("[deploy]\ncpu = 0.5\nmemory_mb = 256\n") == (1, "512Mi")
    assert size("[deploy]\nmemory_mb = 6144\n") == (2, "6Gi")
    assert size("[deploy]\nmemory_mb = 10240\n") == (4, "10Gi")
    assert size("", gpu=True) == (4, "16Gi")


def test_event_functions_get_a_cloud_functions_config_source_and_commands(tmp_path: Path) -> None:
    plan(tmp_path, "scorer", EVENTS_TOML, tmp_path / "out")
    folder = tmp_path / "out" / "scorer"
    assert not (folder / "service.yaml").exists()
    config = load(folder / "cloud-functions.yaml")["functions"]
    by_name = {f["name"]: f for f in config}
    assert set(by_name) == {"scorer-pubsub", "scorer-gcs"}
    pubsub, gcs = by_name["scorer-pubsub"], by_name["scorer-gcs"]
    assert pubsub["entryPoint"] == gcs["entryPoint"] == "modelfn_event"
    assert pubsub["trigger"] == {
        "eventType": "google.cloud.pubsub.topic.v1.messagePublished",
        "pubsubTopic": "projects/PROJECT_ID/topics/scorer-requests",
        "retryPolicy": "RETRY_POLICY_RETRY",
    }
    assert gcs["trigger"]["eventType"] == "google.cloud.storage.object.v1.finalized"
    assert pubsub["availableMemory"] == "2Gi"
    assert pubsub["timeoutSeconds"] == 540  # event functions stop at 9 minutes
    assert pubsub["minInstanceCount"] == 2
    assert pubsub["environmentVariables"] == {"MODELFN_FUNCTION": "scorer"}

    requirements = (folder / "source" / "requirements.txt").read_text().split()
    assert any(r.startswith("functions-framework") for r in requirements)
    assert any(r.startswith("onnxruntime") for r in requirements)
    assert (folder / "source" / "functions" / "scorer" / "model.onnx").is_file()

    commands = dry_run(folder / "deploy.sh")
    deploys = [c for c in commands if c.startswith("gcloud functions deploy")]
    assert len(deploys) == 2
    assert "--entry-point=modelfn_event" in deploys[0] and "--trigger-topic=scorer-requests" in deploys[0]
    assert "--retry" in deploys[0] and "--min-instances=2" in deploys[0] and "--timeout=540s" in deploys[0]
    assert "--trigger-bucket=demo-project-scorer" in deploys[1]
    assert f"--source={folder}/source" in deploys[0]


def dry_run(script: Path, **variables: str) -> list[str]:
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    env = {**os.environ, "DRY_RUN": "1", "PROJECT": "demo-project", "REGION": "us-central1", **variables}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_deploy_script_builds_pushes_and_replaces_the_service(tmp_path: Path) -> None:
    plan(tmp_path, "embed-gpu", GPU_TOML, tmp_path / "out")
    folder = tmp_path / "out" / "embed-gpu"
    image = "us-central1-docker.pkg.dev/demo-project/modelfn/embed-gpu:latest"
    commands = dry_run(folder / "deploy.sh")
    assert commands[0] == (
        f"gcloud builds submit --tag={image} --region=us-central1 --project=demo-project {folder}/source"
    )
    local = dry_run(folder / "deploy.sh", BUILDER="podman")
    assert local[:2] == [f"podman build -t {image} {folder}/source", f"podman push {image}"]
    # The build context: the GPU Dockerfile, building this function with no build arguments.
    dockerfile = (folder / "source" / "Dockerfile").read_text()
    assert "onnxruntime-gpu" in dockerfile and "ARG FUNCTION=embed-gpu\n" in dockerfile
    assert (folder / "source" / "functions" / "embed-gpu" / "function.toml").is_file()
    assert (folder / "source" / "functions" / "embed-gpu" / "function.toml.json").is_file()  # read at cold start
    assert any(c.startswith("gcloud run services replace ") and ".service.yaml" in c for c in commands)
    triggers = [c for c in commands if c.startswith("gcloud eventarc triggers create")]
    assert len(triggers) == 2
    assert "--transport-topic=projects/demo-project/topics/embed-requests" in triggers[0]
    assert "--event-filters=bucket=embed-inbox" in triggers[1]
    rendered = load(folder / ".service.yaml")
    assert rendered["spec"]["template"]["spec"]["containers"][0]["image"] == image


def gcloud_verdict(args: list[str], config: Path) -> str:
    """What the real gcloud says to a command with no account: it parses flags and the service
    YAML (against the Cloud Run API's own schema) before it asks for credentials."""
    env = {**os.environ, "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    return result.stderr


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed here")
def test_real_gcloud_accepts_the_generated_yaml_and_flags(tmp_path: Path) -> None:
    plan(tmp_path, "embed-gpu", GPU_TOML, tmp_path / "out")
    plan(tmp_path, "scorer", EVENTS_TOML, tmp_path / "out")
    commands = dry_run(tmp_path / "out" / "embed-gpu" / "deploy.sh")
    commands += dry_run(tmp_path / "out" / "scorer" / "deploy.sh")
    config = tmp_path / "gcloud"
    gcloud = [command for command in commands if command.startswith("gcloud ")]
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda command: gcloud_verdict(command.split(), config), gcloud))
    for command, verdict in zip(gcloud, verdicts, strict=True):
        assert "active account" in verdict or "credential" in verdict.lower(), (command, verdict)
    assert len(gcloud) == 7  # builds submit, 2 services replace, 2 eventarc triggers, 2 functions deploy

    # The same check catches a misspelt field: it is a real schema check.
    broken = tmp_path / "broken.yaml"
    text = (tmp_path / "out" / "embed-gpu" / ".service.yaml").read_text()
    broken.write_text(text.replace("containerConcurrency", "containerConcurency"))
    verdict = gcloud_verdict(["gcloud", "run", "services", "replace", str(broken), "--region=us-central1"], config)
    assert "Failed to parse" in verdict and "containerConcurency" in verdict


def test_generated_source_folder_runs_under_functions_framework(tmp_path: Path) -> None:
    """The folder `gcloud functions deploy --source` uploads works on its own: `main.py` at its root."""
    plan(
        tmp_path,
        "scorer",
        EVENTS_TOML.replace('pubsub = { output_topic = "events-results" }', "pubsub = true"),
        tmp_path,
    )
    source = tmp_path / "scorer" / "source"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MODELFN_FUNCTIONS_DIR"} | {"MODELFN_FUNCTION": "scorer"}
    env["PYTHONPATH"] = str(source)  # what Cloud Functions does: the source root first on the path
    log = tmp_path / "log"
    command = [str(Path(sys.executable).parent / "functions-framework"), "--target=modelfn_event"]
    command += ["--source=main.py", "--signature-type=cloudevent", "--host=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(
        command, cwd=source, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        event = json.loads((EVENTS / "pubsub-message-published.json").read_text())
        response = httpx.post(
            f"http://127.0.0.1:{port}/", json=event, headers={"content-type": "application/cloudevents+json"}
        )
        assert response.status_code == 200
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        results = [line["message"] for line in lines if line["message"].startswith("result of Pub/Sub message")]
        assert results and '"label":0' in results[0] and "for scorer" in results[0]
        loaded = [line["message"] for line in lines if line["message"].startswith("loaded scorer")]
        assert loaded  # loaded at instance start, from the vendored function folder
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
