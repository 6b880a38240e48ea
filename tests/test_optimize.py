"""`modelfn optimize`: the guard refuses a damaged model, an optimised model serves the same
answers through the Service and the Lambda handler, the spec switches (or not) as documented,
and `plan` and the bundles count and ship only the model the spec serves."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import function_folder

from modelfn.deploy import optimize as opt
from modelfn.deploy import quantize
from modelfn.deploy.guard import compare, load_requests
from modelfn.deploy.plan import function_files, left_behind, model_bytes
from modelfn.function import ModelFunction
from modelfn.http import HttpRequest
from modelfn.registry import Registry
from modelfn.sources import sha256_of
from modelfn.spec import OptimizeSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "events" / "samples"


def copy_function(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / "functions" / name
    shutil.copytree(ROOT / "functions" / name, folder)
    return folder


def quiet(_: str) -> None:
    pass


def embedder(weights: np.ndarray) -> onnx.ModelProto:
    """vector = x @ W: an 'embedding' output the guard compares by cosine similarity."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])
    y = helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["batch", weights.shape[1]])
    w = numpy_helper.from_array(weights.astype(np.float32), "W")
    node = helper.make_node("MatMul", ["x", "W"], ["vector"], name="dense")
    model = helper.make_model(
        helper.make_graph([node], "embedder", [x], [y], initializer=[w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


@pytest.fixture
def embed_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = function_folder(tmp_path / "functions", "embedder", embedder(rng.normal(size=(256, 256))))
    rows = rng.normal(size=(40, 256)).round(4)
    (folder / "samples.jsonl").write_text("".join(json.dumps({"x": [list(r)]}) + "\n" for r in rows))
    return folder


def test_guard_refuses_a_candidate_with_scaled_weights(embed_folder: Path) -> None:
    spec = load_spec(embed_folder)
    fn = ModelFunction(spec)
    bench = opt.Workbench(fn, load_requests(fn, embed_folder / "samples.jsonl"), rounds=1)
    weights = numpy_helper.to_array(onnx.load(str(embed_folder / "model.onnx")).graph.initializer[0])
    noise = np.random.default_rng(1).normal(1.0, 1.0, size=weights.shape)
    damaged = embed_folder / "damaged.onnx"
    onnx.save(embedder(weights * noise), str(damaged))

    comparison = bench.check(damaged)

    assert not comparison.passed
    [diff] = comparison.outputs
    assert diff.kind == "embedding" and diff.cosine_mean is not None and diff.cosine_mean < 0.9
    assert "below optimize.min_cosine 0.99" in comparison.failures[0]


def test_optimize_refuses_a_damaged_candidate_and_leaves_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_function("digits", tmp_path)
    before = (folder / "function.toml").read_text()

    def damaged(step: str, model: Path, work: Path, bench: Any, log: Any) -> Iterator[opt.Candidate]:
        proto = onnx.load(str(model))
        [classifier] = [n for n in proto.graph.node if n.op_type == "LinearClassifier"]
        [coefficients] = [a for a in classifier.attribute if a.name == "coefficients"]
        rng = np.random.default_rng(0)
        scaled = np.array(coefficients.floats) * rng.normal(1.0, 3.0, size=len(coefficients.floats))
        del coefficients.floats[:]
        coefficients.floats.extend(scaled.tolist())
        onnx.save(proto, str(work / "damaged.onnx"))
        yield opt.Candidate(step, "weights scaled at random", work / "damaged.onnx")

    monkeypatch.setattr(quantize, "candidates", damaged)
    outcome = opt.optimize(load_spec(folder), data=SAMPLES / "digits.jsonl", steps=["graph"], rounds=1, log=quiet)

    assert outcome.result is None and not outcome.switched
    [tried] = outcome.tried
    assert tried.verdict.startswith("refused: label: label agreement")
    assert "below optimize.min_label_agreement 99.50%" in tried.verdict
    assert (folder / "function.toml").read_text() == before
    assert not list(folder.glob("*.opt.*"))
    assert "refused" in opt.report(outcome)


def test_int8_passes_the_guard_and_switches_the_spec(embed_folder: Path) -> None:
    outcome = opt.optimize(load_spec(embed_folder), steps=["int8"], rounds=1, log=quiet)

    assert outcome.result is not None and outcome.result.name.startswith("dynamic int8 per-channel")
    assert outcome.result.comparison is not None and outcome.result.comparison.passed
    assert outcome.after is not None and outcome.before is not None
    assert outcome.after.size < outcome.before.size / 2
    text = (embed_folder / "function.toml").read_text()
    assert 'source = "model.opt.onnx"' in text
    assert '# modelfn optimize (int8) from "model.onnx"; set source back to it to undo' in text
    assert (embed_folder / "model.onnx").is_file()
    served = ModelFunction(load_spec(embed_folder))
    assert served.model_path.name == "model.opt.onnx"
    ops = {n.op_type for n in onnx.load(str(served.model_path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops


def test_dry_run_writes_nothing(embed_folder: Path) -> None:
    before = (embed_folder / "function.toml").read_text()
    outcome = opt.optimize(load_spec(embed_folder), steps=["int8"], dry_run=True, rounds=1, log=quiet)
    assert outcome.result is not None and outcome.written is None
    assert (embed_folder / "function.toml").read_text() == before
    assert sorted(p.name for p in embed_folder.iterdir()) == ["function.toml", "model.onnx", "samples.jsonl"]
    assert any("--dry-run" in note for note in outcome.notes)


def test_without_samples_optimize_says_where_to_put_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = function_folder(tmp_path / "functions", "lonely", embedder(rng.normal(size=(4, 4))))
    with pytest.raises(opt.OptimizeError, match="give --data FILE"):
        opt.optimize(load_spec(folder), log=quiet)


def test_switch_source_replaces_an_earlier_comment() -> None:
    text = 'name = "a"\n\n[model]\n# modelfn optimize (graph) from "m.onnx"; undo\nsource = "x.onnx"\n\n[io]\n'
    changed = opt.switch_source(text, "m.opt.onnx", "m.onnx", "int8")
    assert changed == (
        'name = "a"\n\n[model]\n# modelfn optimize (int8) from "m.onnx"; set source back to it to undo\n'
        'source = "m.opt.onnx"\n\n[io]\n'
    )
    assert opt.switch_source('name = "a"\nmodel = { source = "m.onnx" }\n', "m.opt.onnx", "m.onnx", "int8") is None


def test_guard_kinds_labels_probabilities_embeddings_values() -> None:
    ref = [{"label": np.array([1]), "p": np.array([[0.2, 0.8]]), "e": np.array([[3.0, 4.0]]), "v": np.array([2.0])}]
    new = [{"label": np.array([0]), "p": np.array([[0.6, 0.4]]), "e": np.array([[4.0, 3.0]]), "v": np.array([2.5])}]
    result = compare(ref, new, OptimizeSpec(max_abs_diff=0.1))
    kinds = {o.name: o.kind for o in result.outputs}
    assert kinds == {"label": "label", "p": "probabilities", "e": "embedding", "v": "values"}
    assert [o.agreement for o in result.outputs[:2]] == [0.0, 0.0]
    assert result.outputs[2].cosine_mean == pytest.approx(24 / 25)
    assert len(result.failures) == 4


def served_answers(functions: Path, name: str, payloads: list[Any]) -> list[Any]:
    try:
        from modelfn.service import Service
    except ImportError:  # the core Service before it moved out of modelfn.http
        from modelfn.http import Service  # type: ignore[attr-defined,no-redef]
    service = Service(Registry.from_dir(functions, [name]))
    answers = []
    for payload in payloads:
        body = json.dumps(payload).encode()
        response = service.handle(HttpRequest("POST", f"/functions/{name}", {"content-type": "application/json"}, body))
        assert response.status == 200, response.body
        answers.append(response.body)
    return answers


@pytest.mark.parametrize("name", ["breast-cancer", "digits"])
def test_optimised_model_serves_answers_within_tolerance(name: str, tmp_path: Path) -> None:
    folder = copy_function(name, tmp_path)
    spec_file = folder / "function.toml"
    # a pinned model: the pin must follow the switch, or the optimised model would not load
    pin = f'sha256 = "{sha256_of(folder / "model.onnx")}"'
    spec_file.write_text(spec_file.read_text().replace('source = "model.onnx"', f'source = "model.onnx"\n{pin}'))
    payloads = [json.loads(line) for line in (SAMPLES / f"{name}.jsonl").read_text().splitlines()[:40]]
    original = served_answers(tmp_path / "functions", name, payloads)

    # these models have no MatMul and are tiny: no step pays here, so keep what passes the guard
    outcome = opt.optimize(load_spec(folder), data=SAMPLES / f"{name}.jsonl", require_gain=False, rounds=1, log=quiet)

    assert outcome.switched and outcome.written is not None
    # the ORT format is kept unless it makes the file larger past the 64 kB that counts
    assert [c.step for c in outcome.tried if c.kept] in (["graph"], ["graph", "ort"])
    assert load_spec(folder).model.source == outcome.written.name
    assert sha256_of(outcome.written) in spec_file.read_text()
    optimised = served_answers(tmp_path / "functions", name, payloads)
    assert [a["label"] for a in optimised] == [a["label"] for a in original]
    np.testing.assert_allclose(
        [a["probabilities"] for a in optimised], [a["probabilities"] for a in original], atol=1e-5
    )


def test_optimised_model_answers_through_the_lambda_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = pytest.importorskip("handlers.local.aws")
    from handlers import aws_lambda
    from handlers.aws import app

    folder = copy_function("breast-cancer", tmp_path)
    opt.optimize(load_spec(folder), data=SAMPLES / "breast-cancer.jsonl", require_gain=False, rounds=1, log=quiet)
    assert load_spec(folder).model.source.startswith("model.opt.")
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(tmp_path / "functions"))
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    app.reset()
    event = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    payload = json.loads((SAMPLES / "breast-cancer.jsonl").read_text().splitlines()[0])
    event["body"], event["isBase64Encoded"] = json.dumps(payload), False
    try:
        response = aws_lambda.handler(event, local.LocalContext("modelfn-test"))
    finally:
        app.reset()
    expected = ModelFunction(load_spec(ROOT / "functions" / "breast-cancer")).predict(payload=payload)
    assert response["statusCode"] == 200
    body = json.loads(base64.b64decode(response["body"]) if response.get("isBase64Encoded") else response["body"])
    assert body["label"] == expected["label"]
    np.testing.assert_allclose(body["probabilities"], expected["probabilities"], atol=1e-5)


def test_plan_and_bundles_leave_the_original_behind(embed_folder: Path) -> None:
    opt.optimize(load_spec(embed_folder), steps=["int8"], rounds=1, log=quiet)
    spec = load_spec(embed_folder)

    assert left_behind(spec) == {embed_folder / "model.onnx"}
    shipped = sum(p.stat().st_size for p in embed_folder.iterdir() if p.name != "model.onnx")
    assert model_bytes(spec) == shipped
    copy = embed_folder.parent.parent / "bundle"
    shutil.copytree(embed_folder, copy, ignore=function_files(spec))
    assert sorted(p.name for p in copy.iterdir()) == ["function.toml", "model.opt.onnx", "samples.jsonl"]


def test_fp16_for_a_gpu_function_keeps_float32_inputs_and_outputs(embed_folder: Path) -> None:
    spec_file = embed_folder / "function.toml"
    spec_file.write_text(spec_file.read_text() + '\n[runtime]\naccelerator = "gpu"\ngpu_fallback = true\n')

    outcome = opt.optimize(load_spec(embed_folder), rounds=1, log=quiet)

    assert [c.step for c in outcome.tried if c.kept] == ["fp16"]
    assert outcome.after is not None and outcome.before is not None
    assert outcome.after.size < outcome.before.size * 0.6
    served = ModelFunction(load_spec(embed_folder))
    assert served.model_path.name == "model.opt.onnx"
    assert [(t.name, t.type) for t in (*served.inputs, *served.outputs)] == [
        ("x", "tensor(float)"),
        ("vector", "tensor(float)"),
    ]
