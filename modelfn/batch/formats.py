"""Input files and what each holds: rows (JSON Lines, CSV, Parquet: one request per row) or
one request per file (a picture, a text, a JSON document); and the output written for each,
in the same layout: one output file per input file, rows in input order, an error per failed row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelfn.batch.scoring import Failure, Outcome, Request
from modelfn.codecs import parse_json
from modelfn.errors import BadRequest
from modelfn.events import RESULT_SUFFIX, content_type
from modelfn.function import ModelFunction
from modelfn.http import json_text

ROW_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
FILE_SUFFIXES = (".json", ".txt", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
ERROR_COLUMN = "error"
PREDICTION = "prediction"


def kind_of(name: str) -> str | None:
    """`jsonl`, `csv` or `parquet` for a file of rows, `file` for one request per file, None otherwise."""
    suffix = Path(name).suffix.lower()
    if suffix in ROW_FORMATS:
        return ROW_FORMATS[suffix]
    return "file" if suffix in FILE_SUFFIXES else None


def output_name(name: str, kind: str) -> str:
    """Rows keep the input's name and format; a file's answer is `<name>.json` as the storage triggers name it."""
    return name if kind != "file" else name + RESULT_SUFFIX


@dataclass
class Rows:
    """The requests of one input file, and how many there are (known before scoring, for the ETA)."""

    count: int
    requests: Iterator[Request | Outcome]


def file_request(name: str, data: bytes) -> Request:
    return Request(body=data, content_type=content_type(name, None, data))


def read_rows(kind: str, data: bytes, fn: ModelFunction) -> Rows:
    return {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[kind](data, fn)


def row_payload(fn: ModelFunction, row: dict[str, Any]) -> Any:
    """A table row as the payload the HTTP route takes: a record for `records`, `{"text": ...}`
    for `text`, inputs by column name for `tensor` (or, for a one-input model whose columns are
    not input names, the row's values as that input's vector)."""
    codec = fn.spec.io.codec
    if codec == "tensor":
        names = {t.name for t in fn.inputs}
        if set(row) != names and len(names) == 1:
            return list(row.values())
    if codec == "text" and "text" not in row and len(row) == 1:
        return {"text": next(iter(row.values()))}
    if codec == "image" and "image" not in row and len(row) == 1:
        return {"image": next(iter(row.values()))}
    return row


def _jsonl(data: bytes, fn: ModelFunction) -> Rows:
    lines = [line for line in data.splitlines() if line.strip()]  # blank lines are not rows
    return Rows(len(lines), (_parsed(line) for line in lines))


def _parsed(line: bytes) -> Request | Outcome:
    try:
        return Request(payload=parse_json(line))
    except Exception as exc:
        return Outcome(failure=Failure.of(exc))


def _csv(data: bytes, fn: ModelFunction) -> Rows:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"not UTF-8 text (byte {exc.start})") from None
    table = list(csv.reader(io.StringIO(text, newline="")))
    if not table:
        return Rows(0, iter(()))
    header, body = table[0], [r for r in table[1:] if r]
    numbers = fn.spec.io.codec in ("records", "tensor")

    def requests() -> Iterator[Request | Outcome]:
        for index, cells in enumerate(body, start=2):
            if len(cells) != len(header):
                message = f"line {index} has {len(cells)} fields; the header has {len(header)}"
                yield Outcome(failure=Failure("bad_request", message))
                continue
            row = {c: _cell(v) if numbers else v for c, v in zip(header, cells, strict=True)}
            yield Request(payload=row_payload(fn, row))

    return Rows(len(body), requests())


def _cell(value: str) -> Any:
    """A CSV cell as JSON would have sent it: empty is null, numbers are numbers, `[...]` is a list."""
    text = value.strip()
    if not text:
        return None
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            return value
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return value


def _parquet(data: bytes, fn: ModelFunction) -> Rows:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:
        raise BadRequest(f"not a Parquet file: {exc}") from None

    def requests() -> Iterator[Request]:
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield Request(payload=row_payload(fn, row))

    return Rows(parquet.metadata.num_rows, requests())


def envelope(outcome: Outcome) -> dict[str, Any]:
    """A JSON line's or a file's output: `{"prediction": answer}` or `{"error": {code, message}}`."""
    if outcome.failure is not None:
        return {ERROR_COLUMN: outcome.failure.to_json()}
    return {PREDICTION: outcome.answer}


def encoded(outcome: Outcome) -> tuple[bytes, bool]:
    """The envelope as JSON text, and whether it holds an answer (an answer JSON refuses becomes an error)."""
    try:
        return json_text(envelope(outcome)).encode(), outcome.ok
    except Exception as exc:
        return json_text(envelope(Outcome(failure=Failure.of(exc)))).encode(), False


class Sink:
    """Outputs of one rows file, written in order to a local file that is published whole."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, outcome: Outcome) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    def write(self, outcome: Outcome) -> bool:
        line, ok = encoded(outcome)
        self.out.write(line + b"\n")
        return ok


class TableSink(Sink):
    """CSV or Parquet: a column per answer field plus `error`; the columns come from the first
    answer, so rows wait until one arrives (or the file ends with none)."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.columns: list[str] | None = None
        self.pending: list[Outcome] = []

    def write(self, outcome: Outcome) -> bool:
        try:
            if outcome.ok:
                json_text(outcome.answer)  # refuses what JSON cannot hold (NaN), as the HTTP answer would
        except Exception as exc:
            outcome = Outcome(failure=Failure.of(exc))
        if self.columns is None and outcome.ok:
            answer = outcome.answer
            self.columns = [*(answer if isinstance(answer, dict) else [PREDICTION]), ERROR_COLUMN]
            self.columns = list(dict.fromkeys(self.columns))
        self.pending.append(outcome)
        if self.columns is not None and len(self.pending) >= 1024:
            self._flush()
        return outcome.ok

    def close(self) -> None:
        if self.columns is None:
            self.columns = [ERROR_COLUMN]
        self._flush()
        self._finish()

    def _record(self, outcome: Outcome) -> dict[str, Any]:
        assert self.columns is not None
        fields = [c for c in self.columns if c != ERROR_COLUMN]
        if outcome.failure is not None:
            record: dict[str, Any] = dict.fromkeys(fields)
            record[ERROR_COLUMN] = f"{outcome.failure.code}: {outcome.failure.message}"
            return record
        answer = outcome.answer if isinstance(outcome.answer, dict) else {PREDICTION: outcome.answer}
        record = {c: answer.get(c) for c in fields}
        record[ERROR_COLUMN] = None
        return record

    def _flush(self) -> None:
        if self.pending:
            self._rows([self._record(o) for o in self.pending])
            self.pending = []

    def _rows(self, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass


class CsvSink(TableSink):
    """Scalars as they are, lists and objects as JSON text, an empty `error` on answered rows."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        self.writer: Any = None

    def _rows(self, records: list[dict[str, Any]]) -> None:
        if self.writer is None:
            self.writer = csv.writer(self.text)
            self.writer.writerow(self.columns or [ERROR_COLUMN])
        for record in records:
            self.writer.writerow([_csv_value(v) for v in record.values()])

    def _finish(self) -> None:
        if self.writer is None:
            csv.writer(self.text).writerow(self.columns or [ERROR_COLUMN])
        self.text.flush()
        self.text.detach()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json_text(value) if isinstance(value, list | dict) else value


class ParquetSink(TableSink):
    """Lists as Parquet lists; the schema is the first rows' (with `error` always a string)."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.writer: Any = None
        self.schema: Any = None

    def _rows(self, records: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.schema is None:
            inferred = pa.Table.from_pylist(records).schema
            fields = [f if f.name != ERROR_COLUMN else pa.field(ERROR_COLUMN, pa.string()) for f in inferred]
            self.schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in fields])
            self.writer = pq.ParquetWriter(self.out, self.schema)
        self.writer.write_table(pa.Table.from_pylist(records, schema=self.schema))

    def _finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:  # no rows at all: the columns, as strings
            self.schema = pa.schema([(c, pa.string()) for c in self.columns or [ERROR_COLUMN]])
            self.writer = pq.ParquetWriter(self.out, self.schema)
        self.writer.close()


SINKS: dict[str, type[Sink]] = {"jsonl": JsonlSink, "csv": CsvSink, "parquet": ParquetSink}
