"""Score a Spark DataFrame with a modelfn function, through `mapInPandas`: each Python worker
loads the function once and scores its partitions in merged `session.run` batches, with the
same codec, answers and per-row errors as `modelfn batch` and the HTTP route.

    from modelfn.batch.spark import score
    scored = score(df, "breast-cancer", keep=["id"])   # id, label, probabilities, error

The function's folder must be readable on the executors: the same path, or shipped with
`--archives functions.zip#functions` and `functions_dir="functions"`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from modelfn.batch.formats import ERROR_COLUMN, PREDICTION, row_payload
from modelfn.batch.scoring import Outcome, Request, Scorer
from modelfn.http import json_text

_SCORERS: dict[tuple[str, str], Scorer] = {}
SPARK_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "float",
    "int64": "bigint",
    "int32": "int",
    "int16": "smallint",
    "int8": "tinyint",
    "uint8": "smallint",
    "bool": "boolean",
}


def scorer(name: str, functions_dir: str | Path | None = None) -> Scorer:
    """The function, loaded once per Python process (a Spark Python worker is reused across tasks)."""
    key = (name, str(functions_dir or ""))
    if key not in _SCORERS:
        from modelfn.registry import Registry

        root = Path(functions_dir) if functions_dir else None
        _SCORERS[key] = Scorer(Registry.from_dir(root, [name]).load(name))
    return _SCORERS[key]


def output_schema(name: str, functions_dir: str | Path | None = None, keep: Sequence[str] = ()) -> str:
    """The DDL of what `predict_udf` yields: the kept columns as strings are not known here, so
    they are typed by `score`; one column per graph output for one row (its batch axis dropped),
    or a JSON `prediction` string when a postprocess hook shapes the answer; then `error`."""
    fn = scorer(name, functions_dir).fn
    if fn.postprocess is not None:
        columns = [f"`{PREDICTION}` string"]
    else:
        columns = [f"`{t.name}` {_spark_type(t.dtype.name, len(t.shape or ()) - 1)}" for t in fn.outputs]
    return ", ".join([*keep, *columns, f"`{ERROR_COLUMN}` string"])


def _spark_type(dtype: str, rank: int) -> str:
    kind = SPARK_TYPES.get(dtype, "string")
    for _ in range(max(rank, 0)):
        kind = f"array<{kind}>"
    return kind


def predict_udf(
    name: str, functions_dir: str | Path | None = None, keep: Sequence[str] = ()
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The function `DataFrame.mapInPandas` takes: pandas frames in, scored frames out, row for row.
    Columns in `keep` are copied through (an id to join on) and left out of the payload."""
    kept = list(keep)

    def predict(frames: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        active = scorer(name, functions_dir)
        raw = active.fn.postprocess is not None
        for frame in frames:
            records = frame.to_dict("records")
            requests = [
                Request(payload=row_payload(active.fn, {k: _plain(v) for k, v in r.items() if k not in kept}))
                for r in records
            ]
            columns = _columns(active, raw)
            rows = [_row(outcome, columns[:-1]) for outcome in active.score(requests)]
            out = pd.DataFrame(rows, columns=columns)
            for column in reversed(kept):
                out.insert(0, column, frame[column].to_numpy())
            yield out

    return predict


def score(df: Any, name: str, functions_dir: str | Path | None = None, keep: Sequence[str] = ()) -> Any:
    """`df` scored by the function: the kept columns, one column per output, and `error`."""
    kept = [f"`{c}` {df.schema[c].dataType.simpleString()}" for c in keep]
    schema = ", ".join([*kept, output_schema(name, functions_dir)])
    return df.mapInPandas(predict_udf(name, functions_dir, keep), schema)


def _columns(active: Scorer, raw: bool) -> list[str]:
    return [PREDICTION, ERROR_COLUMN] if raw else [*active.fn.output_names, ERROR_COLUMN]


def _row(outcome: Outcome, names: list[str]) -> list[Any]:
    """A scored row: each output's value (or the answer as JSON, for a hook's answer), then the error."""
    if outcome.failure is not None:
        return [None] * len(names) + [f"{outcome.failure.code}: {outcome.failure.message}"]
    if names == [PREDICTION]:
        return [json_text(outcome.answer), None]
    answer = outcome.answer if isinstance(outcome.answer, dict) else {}
    return [answer.get(n) for n in names] + [None]


def _plain(value: Any) -> Any:
    """pandas/NumPy cell values as the JSON types the codecs take (arrays as lists, NaN as null)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value
