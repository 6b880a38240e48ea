"""`modelfn.batch.spark` on a real local PySpark (`local[2]`, two Python workers): a DataFrame
scored through `mapInPandas` gives ONNX Runtime's own answers row for row, an error per bad
row, and the kept id column beside them."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark", reason="pip install 'modelfn[spark]'")
ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("PySpark needs Java 17 (apt-get install openjdk-17-jre-headless)")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers import modelfn from this venv
    session = (
        SparkSession.builder.master("local[2]")
        .appName("modelfn-batch-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_a_dataframe_is_scored_like_onnxruntime_with_ids_kept(spark: Any, cancer_rows: np.ndarray) -> None:
    from modelfn.batch.spark import output_schema, score

    columns = [f"f{i}" for i in range(30)]
    rows = [(i, *map(float, cancer_rows[i])) for i in range(200)]
    rows[7] = (7, *([float("nan")] * 30))  # refused by the codec: that row alone gets an error
    df = spark.createDataFrame(rows, ["id", *columns]).repartition(2)

    scored = score(df, "breast-cancer", str(FUNCTIONS), keep=["id"])
    assert scored.schema.simpleString() == ("struct<id:bigint,label:bigint,probabilities:array<float>,error:string>")
    got = {r["id"]: r for r in scored.collect()}
    assert sorted(got) == list(range(200))  # never a lost row

    labels, probabilities = ort.InferenceSession(
        str(FUNCTIONS / "breast-cancer" / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"X": cancer_rows[:200]})
    good = [i for i in range(200) if i != 7]
    assert [got[i]["label"] for i in good] == labels[good].tolist()
    np.testing.assert_allclose([got[i]["probabilities"] for i in good], probabilities[good], atol=1e-6)
    assert all(got[i]["error"] is None for i in good)
    assert got[7]["label"] is None and got[7]["error"].startswith("invalid_input: ")
    assert output_schema("breast-cancer", str(FUNCTIONS)).endswith("`error` string")


def test_records_columns_come_from_the_dataframe_header(spark: Any, tmp_path: Path, cancer_rows: np.ndarray) -> None:
    """A `records` function: each row's columns are the record's fields, by name."""
    from modelfn.batch.spark import score

    folder = tmp_path / "cancer-records"
    folder.mkdir()
    shutil.copy(FUNCTIONS / "breast-cancer" / "model.onnx", folder / "model.onnx")
    names = [f"c{i}" for i in range(30)]
    listed = ", ".join(f'"{n}"' for n in names)
    (folder / "function.toml").write_text(
        f'name = "cancer-records"\n[model]\nsource = "model.onnx"\n[io]\ncodec = "records"\ncolumns = [{listed}]\n'
    )
    df = spark.createDataFrame([tuple(map(float, r)) for r in cancer_rows[:20]], names)
    got = score(df.select(*reversed(names)), "cancer-records", str(tmp_path)).collect()
    labels = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"X": cancer_rows[:20]}
    )[0]
    assert [r["label"] for r in got] == labels.tolist() and all(r["error"] is None for r in got)
