"""`modelfn profile NAME --data FILE`: run known-good requests through the served function
and write its reference profile (`profile.json`, format in `modelfn.profile`) beside the
model, for drift monitoring at serving time.

The data file is one of:
- JSON Lines: one request per line, the function's own payload (`{"X": [...]}`, `{"text": ...}`)
  or an Open Inference Protocol request (`{"inputs": [...]}`);
- CSV with a header: each row one record; the records codec reads the columns by name, any
  other function takes the row as one row of its single input;
- an event file (`events/aws/sqs.json`, `sns.json`, an API Gateway or Pub/Sub push event): the
  payload of each record, message or body in it."""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelfn import protocol
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction
from modelfn.profile import PROFILE_FILE, Feature, Profile, Source, extract, feature_names, summaries_for

CSV_CHUNK = 256


class ProfileError(ModelfnError):
    """The data cannot make a profile: an unreadable file, requests the function refuses."""


def payloads(path: Path) -> Iterator[Any]:
    """Every request in a data file, as the payload the function's codec takes."""
    if not path.is_file():
        raise ProfileError(f"--data {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        yield from _csv_payloads(text)
        return
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or (stripped.startswith("{") and "\n{" not in stripped.rstrip()):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path}: not JSON: {exc}") from None
        yield from _event_payloads(document)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProfileError(f"{path}:{number}: not JSON: {exc}") from None


def _csv_payloads(text: str) -> Iterator[Any]:
    rows = list(csv.DictReader(text.splitlines()))
    for start in range(0, len(rows), CSV_CHUNK):
        yield [{k: _number(v) for k, v in row.items()} for row in rows[start : start + CSV_CHUNK]]


def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def _event_payloads(document: Any) -> Iterator[Any]:
    if isinstance(document, list):
        for item in document:
            yield from _event_payloads(item)
        return
    if not isinstance(document, dict):
        yield document
        return
    if isinstance(document.get("Records"), list):
        for record in document["Records"]:
            if "body" in record:  # SQS
                yield json.loads(record["body"])
            elif "Sns" in record:
                yield json.loads(record["Sns"]["Message"])
        return
    if isinstance(document.get("message"), dict) and "data" in document["message"]:  # Pub/Sub push
        yield json.loads(base64.b64decode(document["message"]["data"]))
        return
    if isinstance(document.get("body"), str):  # API Gateway, ALB, Function URL
        body = document["body"]
        yield json.loads(base64.b64decode(body) if document.get("isBase64Encoded") else body)
        return
    yield document.get("payload", document) if "payload" in document else document


def _feeds(fn: ModelFunction, payload: Any) -> dict[str, np.ndarray]:
    if isinstance(payload, list) and fn.spec.io.codec == "tensor" and len(fn.inputs) == 1:
        if payload and isinstance(payload[0], dict):  # CSV rows for a tensor function: the values in order
            payload = [list(row.values()) for row in payload]
        return fn.decode(payload={fn.inputs[0].name: payload}).feeds
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), list):
        return protocol.decode_request(payload, fn.inputs, fn.spec.io.nan_policy, outputs=fn.outputs)[0]
    return fn.decode(payload=payload).feeds


def build(fn: ModelFunction, path: Path) -> Profile:
    """Run every request of the data file and bin what went in and came out."""
    inputs: dict[str, list[np.ndarray]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    rows = 0
    for number, payload in enumerate(payloads(path), 1):
        try:
            feeds = _feeds(fn, payload)
            result = fn.run(feeds)
        except ModelfnError as exc:
            raise ProfileError(f"{path}: request {number} is not one {fn.name} accepts: {exc.message}") from None
        for store, arrays in ((inputs, feeds), (outputs, result)):
            for name, value in arrays.items():
                store.setdefault(name, []).append(value)
        rows += next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
    if not rows:
        raise ProfileError(f"{path}: no requests in it")
    text = fn.spec.io.codec == "text"
    columns = fn.spec.io.columns if fn.spec.io.codec == "records" else None
    sources = []
    for role, store in (("input", inputs), ("output", outputs)):
        for tensor, parts in store.items():
            for summary in summaries_for(role, parts[0], text):
                try:
                    matrix = np.concatenate([extract(summary, p) for p in parts], axis=0)
                except ValueError:  # rows of unequal width (unpadded token ids): summarise per request
                    continue
                names = feature_names(tensor, summary, matrix.shape[1], columns if role == "input" else None)
                categorical = summary in ("argmax", "value")
                features = [Feature.from_reference(n, role, categorical, matrix[:, j]) for j, n in enumerate(names)]
                sources.append(Source(role, tensor, summary, features, _row_shape(parts)))
    meta = {
        "model_sha256": _sha256(fn.model_path),
        "data": path.name,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return Profile(fn.name, sources, rows, meta)


def _row_shape(parts: list[np.ndarray]) -> list[int | None]:
    """The shape of one row, None on each axis whose size differed between requests."""
    shapes = {p.shape[1:] for p in parts}
    first = next(iter(shapes))
    if any(len(s) != len(first) for s in shapes):
        return [None] * len(first)
    return [first[i] if len({s[i] for s in shapes}) == 1 else None for i in range(len(first))]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(fn: ModelFunction, data: Path, out: Path | None = None) -> Path:
    profile = build(fn, data)
    target = out or fn.spec.folder / (fn.spec.drift.profile or PROFILE_FILE)
    profile.save(target)
    features = profile.features
    print(
        f"{fn.name}: profile of {profile.rows} rows, {sum(f.role == 'input' for f in features)} input and "
        f"{sum(f.role == 'output' for f in features)} output features -> {target}"
    )
    return target
