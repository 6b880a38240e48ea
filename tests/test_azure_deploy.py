"""`modelfn plan --provider azure --out DIR`: the app folder `func azure functionapp publish`
takes. The Functions host (Core Tools) cannot run on this machine (its npm package downloads
the host binary from a host that is not reachable), so the folder is checked the way the
Python worker uses it: `function_app.py` imported in a fresh interpreter with only the folder
on the path, the app it builds indexed and called."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfn.cli import main
from modelfn.deploy.azure import requirements, write
from modelfn.deploy.plan import place
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"

WORKER = """
import json, os, sys
baseline = set(sys.modules)
sys.path.insert(0, ".")
import function_app
import azure.functions as func
from handlers.local.azure import invoke
import modelfn

request = json.loads(sys.argv[1])
indexed = function_app.app.get_functions()  # once per app object, as the worker does
(http,) = [f for f in indexed if json.loads(f.get_function_json())["bindings"][0]["type"] == "httpTrigger"]
body = bytes.fromhex(request["body"])
headers = {"content-type": request["type"]}
url = "http://localhost:7071/" + request["path"]
params = {"path": request["path"]}
response, _ = invoke(http, func.HttpRequest("POST", url, headers=headers, route_params=params, body=body))
here = os.path.realpath(".")
imported = [getattr(sys.modules[m], "__file__", None) for m in set(sys.modules) - baseline]
print(json.dumps({
    "modelfn": modelfn.__file__,
    "functions": [json.loads(f.get_function_json()) for f in indexed],
    "status": response.status_code,
    "body": json.loads(response.get_body()),
    "files": sorted({os.path.realpath(f) for f in imported if f and not os.path.realpath(f).startswith(here + os.sep)}),
}))
"""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(names: list[str]) -> set[str]:
    """The distributions `names` pull in when pip installs them (in this environment)."""
    seen: set[str] = set()
    todo = [_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            required = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in required if "extra ==" not in r]
    return seen


def distributions(files: list[str]) -> set[str]:
    """The installed distributions these module files belong to (stdlib files belong to none)."""
    wanted, found = set(files), set()
    for dist in metadata.distributions():
        for file in dist.files or []:
            if file.suffix in (".py", ".so") and str(Path(str(dist.locate_file(file))).resolve()) in wanted:
                found.add(_name(dist.metadata["Name"]))
                break
    return found


def run_worker(app: Path, path: str, body: bytes, content_type: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODELFN_FUNCTIONS_DIR", "PYTHONPATH", "MODELFN_FUNCTION")}
    request = json.dumps({"path": path, "body": body.hex(), "type": content_type})
    done = subprocess.run(
        [sys.executable, "-c", WORKER, request], cwd=app, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("azure-apps")
    assert (
        main(
            [
                "--functions-dir",
                str(FUNCTIONS),
                "plan",
                "breast-cancer",
                "digits",
                "--provider",
                "azure",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_plan_writes_an_app_folder_per_function(out: Path) -> None:
    for name in ("breast-cancer", "digits"):
        app = out / name
        assert (app / "function_app.py").read_text().splitlines()[-3:] == [
            "from handlers.azure_functions import build_app",
            "",
            f'app = build_app("{name}")',
        ]
        assert (app / "handlers" / "azure_functions.py").is_file() and (app / "modelfn" / "http.py").is_file()
        assert (app / "functions" / name / "function.toml").is_file() and (
            app / "functions" / name / "model.onnx"
        ).is_file()
        assert load_spec(app / "functions" / name).name == name  # read from function.toml.json
        assert (app / "functions" / name / "function.toml.json").is_file()
        assert not list(app.rglob("__pycache__"))
        assert "local.settings.json" in (app / ".funcignore").read_text().split()


def test_host_json_has_the_extension_bundle_the_triggers_need(out: Path) -> None:
    host = json.loads((out / "breast-cancer" / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["http"]["routePrefix"] == ""
    assert host["extensions"]["queues"] == {"maxDequeueCount": 5, "messageEncoding": "base64"}
    assert host["functionTimeout"] == "00:00:30"


def test_local_settings_example_names_the_worker_and_storage(out: Path) -> None:
    values = json.loads((out / "digits" / "local.settings.json.example").read_text())["Values"]
    assert values == {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "MODELFN_FUNCTION": "digits",
    }


def test_function_app_builds_and_serves_from_the_folder_alone(out: Path, cancer_rows: np.ndarray) -> None:
    app = out / "breast-cancer"
    ran = run_worker(
        app, "functions/breast-cancer", json.dumps({"X": cancer_rows[19].tolist()}).encode(), "application/json"
    )
    assert Path(ran["modelfn"]).resolve().is_relative_to(app.resolve())
    assert [f["bindings"][0]["route"] for f in ran["functions"]] == ["{*path}"]
    assert ran["status"] == 200 and ran["body"]["label"] == 1
    listed = (app / "requirements.txt").read_text().split()
    assert listed == ["azure-functions>=1.18", "numpy>=1.26", "onnxruntime>=1.18"]
    # azure-functions imports orjson when it is installed (here it comes with the server extra); optional
    imported = distributions(ran["files"]) - {"orjson"}
    assert {"azure-functions", "numpy", "onnxruntime"} <= imported <= closure(listed), imported - closure(listed)


def test_requirements_cover_what_an_image_function_imports(out: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    buffer = io.BytesIO()
    Image.fromarray((255 - digits.images[7] * 255 / 16).round().astype(np.uint8), "L").save(buffer, "PNG")
    app = out / "digits"
    ran = run_worker(app, "functions/digits", buffer.getvalue(), "image/png")
    assert ran["status"] == 200 and ran["body"]["label"] == int(digits.target[7])
    listed = (app / "requirements.txt").read_text().split()
    assert "pillow>=10" in listed
    # azure-functions imports orjson when it is installed (here it comes with the server extra); optional
    imported = distributions(ran["files"]) - {"orjson"}
    assert "pillow" in imported and imported <= closure(listed), imported - closure(listed)


def test_requirements_add_what_hooks_import(tmp_path: Path) -> None:
    folder = tmp_path / "hooked"
    folder.mkdir()
    (folder / "function.toml").write_text(
        'name = "hooked"\n[model]\nsource = "https://example.invalid/m.onnx"\n'
        '[hooks]\npreprocess = "hooks:prepare"\npostprocess = "shared.post:render"\n'
    )
    (folder / "hooks.py").write_text("import json\nimport numpy as np\nfrom PIL import Image\nimport helpers\n")
    (folder / "helpers.py").write_text("")
    (folder / "shared").mkdir()
    (folder / "shared" / "post.py").write_text("import tokenizers.models\nfrom modelfn.errors import BadRequest\n")
    assert requirements(load_spec(folder)) == [
        "azure-functions>=1.18",
        "numpy>=1.26",
        "onnxruntime>=1.18",
        "pillow",
        "tokenizers",
    ]


def test_rewriting_drops_stale_vendored_files(tmp_path: Path) -> None:
    spec = load_spec(FUNCTIONS / "breast-cancer")
    stale = tmp_path / "breast-cancer" / "modelfn" / "removed_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    written = write(spec, place(spec, "azure"), tmp_path)
    assert not stale.exists() and (tmp_path / "breast-cancer" / "modelfn" / "spec.py").is_file()
    assert {p.name for p in written} >= {
        "function_app.py",
        "host.json",
        "requirements.txt",
        "local.settings.json.example",
    }


def test_a_blob_output_under_the_trigger_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "functions" / "loop"
    folder.mkdir(parents=True)
    (folder / "function.toml").write_text(
        'name = "loop"\n[model]\nsource = "model.onnx"\n'
        '[triggers]\nblob = { path = "data/{name}", output_path = "data/predictions/{name}.json" }\n'
    )
    args = [
        "--functions-dir",
        str(tmp_path / "functions"),
        "plan",
        "--provider",
        "azure",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    assert "overlaps path 'data/{name}', so results would re-trigger the function" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("http.json", {"status": 200, "label": 1}),
        ("blob.json", {"output": "predictions/patient-0001.json.json", "label": [0, 1]}),
        ("queue.json", {"output": "modelfn-results", "label": 0}),
    ],
)
def test_cli_invokes_the_sample_events(
    event: str, expected: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["invoke", "breast-cancer", "--provider", "azure", "--event", str(ROOT / "events" / "azure" / event)]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    answer = printed.get("body") or printed.get("document") or printed.get("message")
    label = (answer.get("result") or answer)["label"]
    assert {k: printed[k] for k in expected if k != "label"} | {"label": label} == expected
