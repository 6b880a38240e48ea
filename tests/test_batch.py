"""`modelfn batch` over a local folder: rows of JSON Lines, CSV and Parquet and files of one
request each, scored in merged runs and compared with ONNX Runtime run directly on the model
file; an error per failed row, nothing lost, resumable, exit 1 when rows failed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from modelfn import cli
from modelfn.batch import job
from modelfn.batch.scoring import Request, Scorer
from modelfn.batch.stores import LocalStore
from modelfn.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
pq = pytest.importorskip("pyarrow.parquet", reason="pip install pyarrow (modelfn[batch])")


def direct(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What ONNX Runtime answers for these feeds, with no modelfn in between."""
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cancer_fn() -> Any:
    return Registry.from_dir(FUNCTIONS, ["breast-cancer"]).load("breast-cancer")


@pytest.fixture
def inputs(tmp_path: Path, cancer_rows: np.ndarray) -> Path:
    """70 good rows and 2 bad ones in JSON Lines, 6 rows in CSV (one short), 5 in Parquet, a JSON file."""
    folder = tmp_path / "in"
    (folder / "day-1").mkdir(parents=True)
    good = [json.dumps({"X": row.tolist()}) for row in cancer_rows[:70]]
    bad = ["not json", json.dumps({"X": [1.0, 2.0]})]
    (folder / "day-1" / "part-0.jsonl").write_text("\n".join(good[:40] + bad + good[40:]) + "\n\n")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([f"f{i}" for i in range(30)])
    writer.writerows(row.tolist() for row in cancer_rows[100:103])
    writer.writerow([1, 2])
    writer.writerows(row.tolist() for row in cancer_rows[103:105])
    (folder / "day-1" / "part-1.csv").write_text(text.getvalue())
    import pyarrow as pa

    pq.write_table(pa.table({"X": [row.tolist() for row in cancer_rows[200:205]]}), folder / "part-2.parquet")
    (folder / "one.json").write_text(json.dumps({"X": cancer_rows[300].tolist()}))
    (folder / "notes.md").write_text("not an input")
    return folder


def test_rows_and_files_are_scored_like_onnxruntime_with_an_error_per_bad_row(
    inputs: Path, tmp_path: Path, cancer_rows: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = cli.main(["batch", "breast-cancer", "--input", str(inputs), "--output", str(out)])
    assert code == 1  # rows failed

    model = FUNCTIONS / "breast-cancer" / "model.onnx"
    labels, probabilities = direct(model, {"X": cancer_rows[:70]})
    jsonl = lines(out / "day-1" / "part-0.jsonl")
    assert len(jsonl) == 72  # every row, blank lines are not rows
    answered = jsonl[:40] + jsonl[42:]
    assert [r["prediction"]["label"] for r in answered] == labels.tolist()
    np.testing.assert_allclose([r["prediction"]["probabilities"] for r in answered], probabilities, rtol=1e-6)
    assert jsonl[40] == {"error": {"code": "bad_request", "message": jsonl[40]["error"]["message"]}}
    assert "malformed JSON" in jsonl[40]["error"]["message"]
    assert jsonl[41]["error"]["code"] == "invalid_input" and "axis 1 must be 30" in jsonl[41]["error"]["message"]

    table = list(csv.DictReader((out / "day-1" / "part-1.csv").open()))
    assert list(table[0]) == ["label", "probabilities", "error"]
    labels, probabilities = direct(model, {"X": cancer_rows[[100, 101, 102, 103, 104]]})
    good = [table[i] for i in (0, 1, 2, 4, 5)]
    assert [int(r["label"]) for r in good] == labels.tolist()
    np.testing.assert_allclose([json.loads(r["probabilities"]) for r in good], probabilities, rtol=1e-6)
    assert all(r["error"] == "" for r in good)
    assert table[3]["label"] == "" and table[3]["error"] == "bad_request: line 5 has 2 fields; the header has 30"

    parquet = pq.read_table(out / "part-2.parquet").to_pylist()
    labels, probabilities = direct(model, {"X": cancer_rows[200:205]})
    assert [r["label"] for r in parquet] == labels.tolist() and all(r["error"] is None for r in parquet)
    np.testing.assert_allclose([r["probabilities"] for r in parquet], probabilities, rtol=1e-6)

    one = json.loads((out / "one.json.json").read_text())
    assert one["prediction"]["label"] == int(direct(model, {"X": cancer_rows[300:301]})[0][0])
    assert not (out / "notes.md").exists() and not list(out.rglob(".*"))

    report = capsys.readouterr().err
    assert "84 row(s) in 4 file(s), 3 failed" in report
    assert "day-1/part-0.jsonl row 41: malformed JSON" in report
    assert "1 file(s) not read" in report and "notes.md" in report
    assert "rows/s" in report


def test_rows_are_merged_into_runs_of_max_batch_size(cancer_fn: Any, tmp_path: Path, cancer_rows: np.ndarray) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_text("".join(json.dumps(r.tolist()) + "\n" for r in cancer_rows[:100]))
    scorer = Scorer(cancer_fn)
    report = job.run(scorer, LocalStore(tmp_path / "in"), LocalStore(tmp_path / "out"), progress=False)
    assert report.ok and report.rows == 100
    assert scorer.runs == 4  # 32 + 32 + 32 + 4 rows, never one run per row
    labels, _ = direct(FUNCTIONS / "breast-cancer" / "model.onnx", {"X": cancer_rows[:100]})
    assert [r["prediction"]["label"] for r in lines(tmp_path / "out" / "rows.jsonl")] == labels.tolist()


def test_a_rerun_skips_inputs_whose_output_is_complete(
    inputs: Path, tmp_path: Path, cancer_fn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    source, target = LocalStore(inputs), LocalStore(out)
    first = job.run(Scorer(cancer_fn), source, target, progress=False)
    assert first.files == 4 and not first.skipped
    written = (out / "part-2.parquet").stat().st_mtime_ns
    (out / "day-1" / "part-1.csv").unlink()  # as if the job had stopped before publishing it

    again = job.run(Scorer(cancer_fn), source, target, progress=False)
    assert again.files == 1 and again.rows == 6
    assert sorted(again.skipped) == ["day-1/part-0.jsonl", "one.json", "part-2.parquet"]
    assert (out / "part-2.parquet").stat().st_mtime_ns == written
    assert (out / "day-1" / "part-1.csv").exists()

    code = cli.main(["batch", "breast-cancer", "--input", str(inputs), "--output", str(out), "--quiet"])
    assert code == 0  # nothing left to do, nothing failed this time
    assert "4 file(s) skipped: their output is complete" in capsys.readouterr().err


def test_an_output_folder_inside_the_input_is_not_read_as_input(inputs: Path, cancer_fn: Any) -> None:
    first = job.run(Scorer(cancer_fn), LocalStore(inputs), LocalStore(inputs / "predictions"), progress=False)
    again = job.run(Scorer(cancer_fn), LocalStore(inputs), LocalStore(inputs / "predictions"), progress=False)
    assert first.files == 4 and again.files == 0 and len(again.skipped) == 4


def test_a_failing_merged_run_is_rerun_row_by_row(tmp_path: Path) -> None:
    """Indices a Gather cannot take pass the codec (right dtype and shape) and fail in ONNX
    Runtime: the merged run fails, and only the bad rows get an error."""
    from onnx import TensorProto, helper
    from onnx_models import _model, function_folder

    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 2], [0, 0, 1, 1, 2, 2, 3, 3])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[table],
    )
    function_folder(tmp_path / "functions", "lookup", _model(graph), "[batching]\nmax_batch_size = 8\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ids.jsonl").write_text("".join(f"[{i}]\n" for i in (1, 3, 9, 0, 2, 7, 1)))
    scorer = Scorer(Registry.from_dir(tmp_path / "functions", ["lookup"]).load("lookup"))
    report = job.run(scorer, LocalStore(tmp_path / "in"), LocalStore(tmp_path / "out"), progress=False)

    assert report.rows == 7 and report.failed_rows == 2
    rows = lines(tmp_path / "out" / "ids.jsonl")
    assert [r.get("prediction", {}).get("y") for r in rows] == [
        [[1, 1]], [[3, 3]], None, [[0, 0]], [[2, 2]], None, [[1, 1]]
    ]  # fmt: skip
    assert rows[2]["error"]["code"] == "invalid_input" and "the model rejected the input" in rows[2]["error"]["message"]


def test_image_files_are_one_request_each(tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (tmp_path / "in" / "scans").mkdir(parents=True)
    for i in range(5):
        ink = (255 - digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(ink, mode="L").save(tmp_path / "in" / "scans" / f"{i}.png")
    (tmp_path / "in" / "scans" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    fn = Registry.from_dir(FUNCTIONS, ["digits"]).load("digits")
    scorer = Scorer(fn)
    report = job.run(scorer, LocalStore(tmp_path / "in"), LocalStore(tmp_path / "out"), progress=False)
    assert report.rows == 6 and report.failed_rows == 1 and scorer.runs == 1
    feeds = np.stack([fn.decode(payload={"image": (tmp_path / "in" / "scans" / f"{i}.png").read_bytes()}).feeds[
        fn.inputs[0].name
    ][0] for i in range(5)])  # fmt: skip
    expected = direct(FUNCTIONS / "digits" / "model.onnx", {fn.inputs[0].name: feeds})[0]
    got = [json.loads((tmp_path / "out" / "scans" / f"{i}.png.json").read_text())["prediction"] for i in range(5)]
    assert [g["label"] for g in got] == expected.tolist()
    assert json.loads((tmp_path / "out" / "scans" / "broken.png.json").read_text())["error"]["code"] == "bad_request"


def test_an_unreadable_file_is_named_and_gets_no_output(inputs: Path, tmp_path: Path, cancer_fn: Any) -> None:
    (inputs / "broken.parquet").write_bytes(b"PAR1 but not really")
    report = job.run(Scorer(cancer_fn), LocalStore(inputs), LocalStore(tmp_path / "out"), progress=False)
    assert [name for name, _ in report.failed_files] == ["broken.parquet"]
    assert "not a Parquet file" in report.failed_files[0][1] and not report.ok
    assert not (tmp_path / "out" / "broken.parquet").exists()  # a rerun tries it again


def test_progress_line_shows_rows_rate_and_eta() -> None:
    stream = io.StringIO()
    line = job.ProgressLine(1000, stream, every_s=0)
    line.update(250, 3, 500.0)
    line.update(500, 3, 1000.0, final=True)
    shown = stream.getvalue()
    assert "250 rows (3 failed)" in shown and "rows/s" in shown and "50.0%" in shown and "ETA 0:00:00" in shown
    assert shown.splitlines()[-1].endswith("100.0%  done")  # not a terminal: one line per update


@pytest.mark.skipif(not (FUNCTIONS / "sentence-embed" / "model.onnx").is_file(), reason="sentence-embed not built")
def test_sentences_in_length_buckets_get_the_embeddings_they_get_alone(tmp_path: Path) -> None:
    fn = Registry.from_dir(FUNCTIONS, ["sentence-embed"]).load("sentence-embed")
    texts = ["short one.", "a much longer sentence with many more words in it than the first", "mid length text here"]
    texts = texts * 12
    scorer = Scorer(fn)
    outcomes = list(scorer.score(Request(payload={"text": t}) for t in texts))
    assert scorer.runs == 2  # 36 rows, 32 per run
    for text, outcome in zip(texts[:3], outcomes[:3], strict=True):
        alone = direct(FUNCTIONS / "sentence-embed" / "model.onnx", fn.decode(payload={"text": text}).feeds)[0][0]
        np.testing.assert_allclose(outcome.answer[fn.output_names[0]], alone, atol=1e-5)
