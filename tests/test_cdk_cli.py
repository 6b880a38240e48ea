"""The real CDK CLI (aws-cdk@2 from the repo's package.json) runs `cdk synth` on the example
functions from cdk/, as a user does, with fake credentials, no Docker and every outbound
connection pointed at a closed port; cfn-lint then checks what it wrote."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aws_cdk", reason="the CDK app needs aws-cdk-lib (pip install 'modelfn[cdk]')")
pytest.importorskip("cdk_nag", reason="the CDK app's checks need cdk-nag (pip install 'modelfn[cdk]')")

ROOT = Path(__file__).resolve().parent.parent
CDK_DIR = ROOT / "cdk"
CDK_CLI = ROOT / "node_modules" / ".bin" / "cdk"
sys.path.insert(0, str(CDK_DIR))

from modelfn_cdk.assets import dependency_layer, runtime_layer  # noqa: E402

from modelfn.deploy.dependencies import requirements  # noqa: E402
from modelfn.deploy.plan import place  # noqa: E402
from modelfn.spec import discover, load_spec  # noqa: E402

CLOSED_PORT_PROXY = "http://127.0.0.1:9"


def offline_env() -> dict[str, str]:
    """Fake credentials, and a proxy on a closed port so any network use fails fast and loudly."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTPS_PROXY": CLOSED_PORT_PROXY,
        "HTTP_PROXY": CLOSED_PORT_PROXY,
        "https_proxy": CLOSED_PORT_PROXY,
        "http_proxy": CLOSED_PORT_PROXY,
        "NO_PROXY": "",
        "no_proxy": "",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    env.pop("MODELFN_FUNCTIONS_DIR", None)
    return env


def cdk(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CDK_CLI.exists():
        pytest.skip("the CDK CLI is not installed: run `npm install` at the repository root")
    command = [str(CDK_CLI), *args, "--no-notices", "--no-version-reporting", "--no-lookups"]
    return subprocess.run(command, cwd=CDK_DIR, env=offline_env(), capture_output=True, text=True, timeout=300)


def deployable_examples() -> list[str]:
    """Example functions whose model is present (sentence-embed's is built by a script)."""
    names = []
    for name, path in discover(ROOT / "functions").items():
        spec = load_spec(path)
        if (spec.folder / spec.model.source).is_file():
            names.append(name)
    return names


@pytest.fixture(scope="module")
def layers() -> None:
    """Build the layers once, beforehand: the CLI run itself must not need PyPI."""
    try:
        runtime_layer("3.12", "x86_64", ROOT / "build" / "layers", None)
        for name in deployable_examples():
            needs = requirements(load_spec(ROOT / "functions" / name), "aws")
            dependency_layer(needs, "3.12", "x86_64", ROOT / "build" / "layers")
    except Exception as exc:  # pip without PyPI
        pytest.skip(f"the Lambda layers could not be built here: {exc}")


@pytest.fixture(scope="module")
def cli_synth(tmp_path_factory: pytest.TempPathFactory, layers: None) -> tuple[Path, list[str], str]:
    tmp_path = tmp_path_factory.mktemp("cdk-cli")
    names = deployable_examples()
    assert "breast-cancer" in names and "digits" in names
    result = cdk(
        tmp_path,
        "synth",
        "--quiet",
        "--output",
        str(tmp_path / "cdk.out"),
        "-c",
        f"modelfn:stagingDir={tmp_path / 'staging'}",
        "-c",
        f"modelfn:functions={','.join(names)}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    on_lambda = [n for n in names if place(load_spec(ROOT / "functions" / n), "aws").deployable]
    return tmp_path / "cdk.out", on_lambda, result.stderr


def test_cdk_cli_synthesises_one_stack_per_example_function_offline(cli_synth: tuple[Path, list[str], str]) -> None:
    outdir, names, stderr = cli_synth
    manifest = json.loads((outdir / "manifest.json").read_text())
    stacks = {k for k, v in manifest["artifacts"].items() if v["type"] == "aws:cloudformation:stack"}
    assert stacks == {f"Modelfn-{name}" for name in names}
    # a GPU example is left out of AWS with the pointer to Cloud Run GPU
    assert "breast-cancer-gpu" not in names and "breast-cancer-gpu" in stderr and "Cloud Run GPU" in stderr
    report = json.loads((outdir / "validation-report.json").read_text())
    assert [p["conclusion"] for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"] == ["success"]


def test_examples_get_their_triggers_and_codec_layers(cli_synth: tuple[Path, list[str], str]) -> None:
    outdir, _, _ = cli_synth
    cancer = json.loads((outdir / "Modelfn-breast-cancer.template.json").read_text())
    kinds = [r["Type"] for r in cancer["Resources"].values()]
    assert kinds.count("AWS::Lambda::LayerVersion") == 2
    assert "AWS::ApiGatewayV2::Api" in kinds and "Custom::S3BucketNotifications" in kinds
    assert "AWS::Lambda::EventSourceMapping" in kinds
    assert {"ApiUrl", "AliasArn", "QueueUrl", "InputBucketName"} <= set(cancer["Outputs"])
    digits = json.loads((outdir / "Modelfn-digits.template.json").read_text())
    layers = [r["Properties"] for r in digits["Resources"].values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    assert sorted(layer["Description"].split(" for ")[0] for layer in layers) == [
        "ONNX Runtime + NumPy",
        "aws-lambda-powertools, orjson, pillow",
    ]


def test_cfn_lint_passes_on_the_cli_templates(cli_synth: tuple[Path, list[str], str]) -> None:
    outdir, names, _ = cli_synth
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    templates = sorted(str(p) for p in outdir.glob("*.template.json"))
    assert len(templates) == len(names)
    result = subprocess.run([cfn_lint, "--ignore-checks", "W3005", "--", *templates], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cdk_cli_reports_a_refused_function_with_the_field_to_change(tmp_path: Path, layers: None) -> None:
    folder = tmp_path / "functions" / "wide"
    folder.mkdir(parents=True)
    shutil.copyfile(ROOT / "functions" / "breast-cancer" / "model.onnx", folder / "model.onnx")
    (folder / "function.toml").write_text('name = "wide"\n[model]\nsource = "model.onnx"\n[deploy]\npython = "3.11"\n')
    result = cdk(
        tmp_path,
        "synth",
        "--quiet",
        "--output",
        str(tmp_path / "cdk.out"),
        "-c",
        f"modelfn:functionsDir={folder.parent}",
    )
    assert result.returncode != 0
    assert "modelfn cdk: wide: deploy.python = '3.11'" in result.stderr


def lambda_filesystem(outdir: Path, function: str, root: Path) -> tuple[Path, Path, dict[str, str]]:
    """What Lambda would mount for `function` from the synthesised assets: the code asset as
    /var/task, every layer zip unpacked into one /opt; and the function's environment."""
    template = json.loads((outdir / f"Modelfn-{function}.template.json").read_text())
    files = json.loads((outdir / f"Modelfn-{function}.assets.json").read_text())["files"]
    resources = template["Resources"]

    def asset(s3_key: str) -> Path:
        return outdir / files[s3_key.removesuffix(".zip")]["source"]["path"]

    [props] = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == "handlers.aws_lambda.handler"
    ]
    opt = root / "opt"
    for layer in props["Layers"]:
        with zipfile.ZipFile(asset(resources[layer["Ref"]]["Properties"]["Content"]["S3Key"])) as archive:
            archive.extractall(opt)
    return asset(props["Code"]["S3Key"]), opt / "python", props["Environment"]["Variables"]


def invoke_in_lambda_layout(outdir: Path, function: str, root: Path, events: list[dict[str, Any]]) -> list[Any]:
    """Run `handlers.aws_lambda.handler` on `events` under the Lambda runtime's Python, with
    only the code asset and the layers on its path (no site-packages: nothing from this venv)."""
    from modelfn.deploy.layer import find_interpreter

    python = find_interpreter("3.12")
    if python is None:
        pytest.skip("no Python 3.12 interpreter here to play the Lambda runtime")
    task, opt_python, variables = lambda_filesystem(outdir, function, root)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{task}{os.pathsep}{opt_python}",
        "AWS_LAMBDA_FUNCTION_NAME": f"Modelfn-{function}",
        "AWS_REGION": "us-east-1",
        **variables,
        # Lambda's /var/task and /tmp, here
        "MODELFN_FUNCTIONS_DIR": str(task / "functions"),
        "MODELFN_CACHE_DIR": str(root / "tmp" / "modelfn"),
        "HOME": str(root / "tmp"),
    }
    script = (
        "import json, sys\n"
        "from handlers.aws_lambda import handler\n"
        "for event in json.loads(sys.stdin.read()):\n"
        "    print('RESULT ' + json.dumps(handler(event, None)))\n"
    )
    result = subprocess.run(
        [python, "-S", "-c", script], input=json.dumps(events), env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")]


def test_synthesised_bundle_and_layers_serve_sqs_and_http_under_python_312(
    cli_synth: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    outdir, _, _ = cli_synth
    sqs = json.loads((ROOT / "events" / "aws" / "sqs.json").read_text())
    http = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    batch, response = invoke_in_lambda_layout(outdir, "breast-cancer", tmp_path, [sqs, http])
    assert batch == {"batchItemFailures": []}  # Powertools' batch utility came from the dependency layer
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["label"] in (0, 1)


def test_synthesised_image_bundle_decodes_png_with_the_layers_pillow(
    cli_synth: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = (255 - digits.images[0] * 16).clip(0, 255).astype("uint8")  # dark ink on a light background
    png = io.BytesIO()
    Image.fromarray(ink, mode="L").save(png, format="PNG")
    event = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    event.update(
        rawPath="/functions/digits",
        body=base64.b64encode(png.getvalue()).decode(),
        isBase64Encoded=True,
        headers={**event.get("headers", {}), "content-type": "image/png"},
    )
    event["requestContext"]["http"]["path"] = "/functions/digits"
    [response] = invoke_in_lambda_layout(cli_synth[0], "digits", tmp_path, [event])
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"])["label"] == int(digits.target[0])
