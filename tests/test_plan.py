"""`modelfn plan`: a function whose model is not built yet is reported with the command that
builds it and gets no bundle, without failing the others; and plan decides batchability by
the same rule as `modelfn check`. CLI tests run the installed `modelfn` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from onnx_models import function_folder, identity, save

from modelfn.deploy import azure, gcp
from modelfn.deploy.plan import NOT_BUILT, batching, graph_tensors, place
from modelfn.errors import ModelUnavailable
from modelfn.function import ModelFunction
from modelfn.spec import load_spec

BUILD_HINT = "not built yet: run python functions/embed/build.py"


def modelfn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `modelfn` command installed beside this interpreter."""
    command = [str(Path(sys.executable).parent / "modelfn"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    """`built`, a model on disk, and `embed`, whose model a build script beside it makes."""
    root = tmp_path / "functions"
    function_folder(root, "built", identity(TensorProto.FLOAT, ["batch", 3]))
    embed = root / "embed"
    embed.mkdir()
    (embed / "function.toml").write_text('name = "embed"\n[model]\nsource = "model.onnx"\n')
    (embed / "build.py").write_text("raise SystemExit('builds model.onnx')\n")
    return root


def rows(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The plan table: (function, provider) -> (target, why)."""
    found = {}
    for line in stdout.splitlines()[1:]:
        function, provider, target, why = line.split(maxsplit=3)
        found[function, provider] = (target, why)
    return found


def test_plan_reports_an_unbuilt_function_with_the_command_that_builds_it(functions: Path) -> None:
    result = modelfn("--functions-dir", str(functions), "plan", cwd=functions.parent)

    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    for provider in ("aws", "gcp", "azure"):
        assert table["embed", provider] == (NOT_BUILT, BUILD_HINT)  # no size for a model that is not there
        assert table["built", provider][0] not in (NOT_BUILT, "unsupported")
    as_json = modelfn("--functions-dir", str(functions), "plan", "embed", "--json", cwd=functions.parent)
    assert {(p["target"], p["reason"], p["sizes"] == {}) for p in json.loads(as_json.stdout)} == {
        (NOT_BUILT, BUILD_HINT, True)
    }


@pytest.mark.parametrize("provider", ["gcp", "azure"])
def test_plan_out_refuses_the_unbuilt_bundle_and_writes_the_built_ones(
    functions: Path, tmp_path: Path, provider: str
) -> None:
    out = tmp_path / "out"
    result = modelfn("--functions-dir", str(functions), "plan", "--provider", provider, "--out", str(out), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"modelfn plan: embed: {BUILD_HINT}; no {provider} bundle written"]
    assert not (out / "embed").exists()
    assert f"wrote {out / 'built'}" in result.stdout
    assert list((out / "built").rglob("model.onnx"))


@pytest.mark.parametrize("provider", ["gcp", "azure"])
def test_plan_out_for_built_functions_is_not_held_up_by_an_unbuilt_one(
    functions: Path, tmp_path: Path, provider: str
) -> None:
    out = tmp_path / "out"
    command = ("--functions-dir", str(functions), "plan", "built", "--provider", provider, "--out", str(out))
    result = modelfn(*command, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and sorted(p.name for p in out.iterdir()) == ["built"]


@pytest.mark.parametrize("writer", [gcp, azure], ids=["gcp", "azure"])
def test_writers_refuse_a_function_without_its_model(functions: Path, tmp_path: Path, writer: object) -> None:
    spec = load_spec(functions / "embed")
    with pytest.raises(ModelUnavailable, match=r"embed: not built yet: run python .*build\.py; no bundle written"):
        writer.write(spec, place(load_spec(functions / "built"), "gcp"), tmp_path / "out")  # type: ignore[attr-defined]
    assert not (tmp_path / "out" / "embed").exists()


def test_a_missing_model_without_a_build_script_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "lost"
    folder.mkdir()
    (folder / "function.toml").write_text('name = "lost"\n[model]\nsource = "model.onnx"\n')
    placement = place(load_spec(folder), "aws")
    assert (placement.target, placement.deployable) == (NOT_BUILT, False)
    assert placement.reason == f"{folder / 'model.onnx'} does not exist; build or copy the model there"


def stateful(state_shape: list[int | str]) -> onnx.ModelProto:
    """A step of a recurrent model: x [batch, 3] and a state of `state_shape` in, both out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, state_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    new_state = helper.make_tensor_value_info("new_state", TensorProto.FLOAT, state_shape)
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["state"], ["new_state"])]
    model = helper.make_model(
        helper.make_graph(nodes, "stateful", [x, state], [y, new_state]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


MODELS = {
    "state-batch-second": stateful([2, "batch", 4]),
    "state-batch-first": stateful(["batch", 2, 4]),
    "fixed-batch": identity(TensorProto.FLOAT, [1, 3]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plan_and_check_agree_on_batchability(tmp_path: Path, name: str) -> None:
    root = tmp_path / "functions"
    function_folder(root, name, MODELS[name])

    checked = modelfn("--functions-dir", str(root), "check", name, cwd=tmp_path)
    planned = modelfn("--functions-dir", str(root), "plan", name, "--provider", "gcp", "--json", cwd=tmp_path)

    assert checked.returncode == 0 and planned.returncode == 0, checked.stdout + checked.stderr + planned.stderr
    batchable = re.search(r"batchable=(True|False)", checked.stdout)
    assert batchable is not None, checked.stdout
    [placement] = json.loads(planned.stdout)
    assert placement["reason"].startswith("HTTP with micro-batching") is (batchable.group(1) == "True")
    assert batchable.group(1) == str(name == "state-batch-first")


def test_plan_says_why_a_function_is_not_micro_batched(tmp_path: Path) -> None:
    spec = load_spec(function_folder(tmp_path, "rnn", MODELS["state-batch-second"]))

    assert batching(spec) == (False, "'state', 'new_state' without a dynamic first axis")
    placement = place(spec, "gcp")
    assert placement.target == "cloud-functions"
    assert placement.reason.endswith("(no micro-batching: 'state', 'new_state' without a dynamic first axis)")


def test_batching_off_in_the_spec_is_never_batched(tmp_path: Path) -> None:
    folder = function_folder(tmp_path, "off", MODELS["state-batch-first"], "[batching]\nenabled = false\n")
    assert batching(load_spec(folder)) == (False, "batching is off")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_read_without_a_session_match_the_sessions(tmp_path: Path, name: str) -> None:
    spec = load_spec(function_folder(tmp_path, name, MODELS[name]))
    served = ModelFunction(spec)

    assert [(t.name, t.shape) for t in graph_tensors(spec.folder / "model.onnx")] == [
        (t.name, t.shape) for t in (*served.inputs, *served.outputs)
    ]
    assert batching(spec)[0] == served.batchable


def test_without_onnx_installed_the_shapes_come_from_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(function_folder(tmp_path, "rnn", MODELS["state-batch-second"]))
    with_onnx = [(t.name, t.shape) for t in graph_tensors(spec.folder / "model.onnx")]
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError

    assert [(t.name, t.shape) for t in graph_tensors(spec.folder / "model.onnx")] == with_onnx
    assert batching(spec) == (False, "'state', 'new_state' without a dynamic first axis")


def test_an_output_without_a_declared_shape_is_read_from_onnx_runtime(tmp_path: Path) -> None:
    model = identity(TensorProto.FLOAT, ["batch", 3])
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = save(model, tmp_path / "model.onnx")

    shapes = {t.name: t.shape for t in graph_tensors(path)}
    assert shapes["x"] == (None, 3) and shapes["y"] is not None
