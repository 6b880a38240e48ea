"""The reference profile (`profile.json`): what a function's inputs and outputs looked like
on known-good traffic, as fixed bins per feature. `modelfn profile` writes it; drift
monitoring (`modelfn.drift`) counts live traffic into the same bins.

A *source* is one graph input or output and how each of its rows becomes features:

- `columns`: every value of a row is a feature (tabular inputs, small outputs such as class
  probabilities), binned at the reference's quantiles;
- `length`: the count of non-zero values (token ids of a text input);
- `mean`: the row's mean (an image, any wide float input);
- `norm`: the row's L2 norm (an embedding, any wide float output);
- `argmax`: the position of the row's largest value (the predicted class, an embedding's
  dominant dimension), counted as a category;
- `value`: the row's single value as a category (an integer label).

Quantile bins are `(-inf, e0], (e0, e1], ..., (e_last, inf)`; category bins are the
reference's categories plus one bin for any other value. Each feature keeps the reference's
share of rows per bin (`expected`), so a live window's shares compare with it directly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "modelfn.profile/1"
PROFILE_FILE = "profile.json"
QUANTILES = 10
"""Bins per quantile feature: deciles of the reference."""
MAX_COLUMNS = 64
"""Wider rows are summarised (length, mean, norm, argmax) rather than binned per value."""
MAX_CATEGORIES = 64
CATEGORICAL = frozenset({"argmax", "value"})
_NUMBER_LIST = re.compile(r"\[\s*([-0-9.eE+,\s]*?)\s*\]")


def summaries_for(role: str, values: np.ndarray, text: bool) -> list[str]:
    """How rows of one input or output become features, chosen from a reference batch."""
    width = int(np.prod(values.shape[1:], dtype=np.int64)) if values.ndim > 1 else 1
    integer = values.dtype.kind in "iub"
    if values.dtype.kind not in "iubf":
        return []
    if role == "input":
        if integer and (text or width > MAX_COLUMNS):
            return ["length"]
        return ["columns"] if width <= MAX_COLUMNS else ["mean"]
    if integer and width == 1:
        return ["value"]
    found = ["columns"] if width <= MAX_COLUMNS else ["norm"]
    if width > 1 and not integer:
        found.append("argmax")
    return found


def extract(summary: str, values: np.ndarray) -> np.ndarray:
    """The features of a batch, rows by features (float64)."""
    rows = values.reshape(values.shape[0] if values.ndim else 1, -1)
    if summary == "columns" or summary == "value":
        return rows
    if summary == "length":
        return np.count_nonzero(rows, axis=1)[:, None]
    if summary == "mean":
        return rows.mean(axis=1, dtype=np.float64)[:, None]
    if summary == "norm":
        return np.linalg.norm(rows.astype(np.float64, copy=False), axis=1)[:, None]
    if summary == "argmax":
        return rows.argmax(axis=1)[:, None]
    raise ValueError(f"unknown summary {summary!r}")


def feature_names(tensor: str, summary: str, width: int, columns: list[str] | None = None) -> list[str]:
    if summary == "value":
        return [tensor]
    if summary == "columns":
        if columns and len(columns) == width:
            return list(columns)
        return [tensor] if width == 1 else [f"{tensor}[{i}]" for i in range(width)]
    return [f"{tensor}.{summary}"]


def bin_index(values: np.ndarray, edges: np.ndarray, categorical: bool) -> np.ndarray:
    """The bin of each value: quantile bins by their upper edge, categories by equality
    (anything else in the last bin)."""
    if not categorical:
        return np.searchsorted(edges, values, side="left")
    found = np.minimum(np.searchsorted(edges, values), edges.size - 1)
    return np.where(edges[found] == values, found, edges.size)


class Feature:
    """One feature's bins and the reference's share of rows in each."""

    __slots__ = ("categorical", "edges", "expected", "name", "role")

    def __init__(self, name: str, role: str, categorical: bool, edges: list[float], expected: list[float]) -> None:
        self.name = name
        self.role = role
        self.categorical = categorical
        self.edges = np.asarray(edges, dtype=np.float64)
        self.expected = np.asarray(expected, dtype=np.float64)

    @property
    def bins(self) -> int:
        return int(self.edges.size + 1)

    @classmethod
    def from_reference(cls, name: str, role: str, categorical: bool, values: np.ndarray) -> Feature:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if categorical:
            kinds, counts = np.unique(values, return_counts=True)
            edges = np.sort(kinds[np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]])
        elif values.size:
            quantiles = np.quantile(values, np.arange(1, QUANTILES) / QUANTILES)
            edges = np.unique([float(f"{q:.7g}") for q in quantiles])  # short in the file; shares use these edges
        else:
            edges = np.zeros(0)
        feature = cls(name, role, categorical, edges.tolist(), [])
        counts = np.bincount(bin_index(values, feature.edges, categorical), minlength=feature.bins)
        feature.expected = counts / max(1, values.size)
        return feature

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "category" if self.categorical else "quantile",
            "edges": [float(e) for e in self.edges],
            "expected": [round(float(p), 6) for p in self.expected],
        }


class Source:
    """One graph input or output, one summary of its rows, and the features that gives."""

    __slots__ = ("features", "role", "shape", "summary", "tensor")

    def __init__(
        self, role: str, tensor: str, summary: str, features: list[Feature], shape: list[int | None] | None = None
    ) -> None:
        self.role = role
        self.tensor = tensor
        self.summary = summary
        self.features = features
        self.shape = shape
        """A row's shape in the reference (None where it varied: token ids of unequal length)."""

    @property
    def categorical(self) -> bool:
        return self.summary in CATEGORICAL


class Profile:
    """Every source of one function, with where the reference came from."""

    def __init__(self, function: str, sources: list[Source], rows: int, meta: dict[str, Any] | None = None) -> None:
        self.function = function
        self.sources = sources
        self.rows = rows
        self.meta = meta or {}

    @property
    def features(self) -> list[Feature]:
        return [f for s in self.sources for f in s.features]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "function": self.function,
            "rows": self.rows,
            **self.meta,
            "sources": [
                {
                    "role": s.role,
                    "tensor": s.tensor,
                    "summary": s.summary,
                    "shape": s.shape,
                    "features": [f.to_json() for f in s.features],
                }
                for s in self.sources
            ],
        }

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_json(), indent=1)
        # one line per list of numbers: a feature reads as name, kind, edges, expected
        text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)
        path.write_text(text + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Profile:
        if document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document (format {document.get('format')!r})")
        sources = []
        for s in document["sources"]:
            categorical = s["summary"] in CATEGORICAL
            features = [Feature(f["name"], s["role"], categorical, f["edges"], f["expected"]) for f in s["features"]]
            sources.append(Source(s["role"], s["tensor"], s["summary"], features, s.get("shape")))
        meta = {k: v for k, v in document.items() if k not in ("format", "function", "rows", "sources")}
        return cls(document["function"], sources, int(document["rows"]), meta)

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def psi(expected: np.ndarray, observed: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of observed counts against the expected shares: the sum of
    (o - e) * ln(o / e) over the bins, each share floored so an empty bin stays finite.
    Read as: < 0.1 stable, 0.1-0.25 a moderate shift, >= 0.25 a significant one."""
    total = observed.sum()
    if total <= 0:
        return 0.0
    o = np.maximum(observed / total, floor)
    e = np.maximum(expected, floor)
    return float(np.sum((o - e) * np.log(o / e)))
