"""How far a shadow version's answer is from the live one, per output: label agreement for
classes (integer outputs, argmax of probabilities), mean cosine for embeddings, and the
largest and mean absolute difference for every numeric output. The same measures as
`modelfn optimize`'s accuracy guard, for one request at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

NUMBERS = "iufc"
"""NumPy dtype kinds that are numbers (bool is not); kinds, not `np.issubdtype`: a shadow copy
compares every request, and on small outputs NumPy's type checks cost more than the arithmetic."""


def output_kind(value: np.ndarray) -> str:
    """label, probabilities, embedding or values."""
    kind = value.dtype.kind
    if kind in "iub":
        return "label"
    if kind != "f" or value.ndim < 2 or value.shape[-1] < 2:
        return "values"
    rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
    # np.allclose(sums, 1, atol=1e-3), without its overhead
    if rows.size and rows.min() >= 0 and rows.max() <= 1 and (np.abs(rows.sum(axis=-1) - 1) <= 1e-3 + 1e-5).all():
        return "probabilities"
    return "embedding"


def compare(live: dict[str, Any], shadow: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per output both versions have: `rows` compared and the measures that apply to its kind.
    Outputs of another shape are refused (ValueError): there is nothing to compare them by."""
    measured: dict[str, dict[str, float]] = {}
    for name in live.keys() & shadow.keys():
        ref, new = np.asarray(live[name]), np.asarray(shadow[name])
        if ref.shape != new.shape:
            raise ValueError(f"output {name!r} has shape {list(new.shape)} in the shadow, {list(ref.shape)} live")
        rows = int(ref.shape[0]) if ref.ndim else 1
        result: dict[str, float] = {"rows": rows}
        measured[name] = result
        if ref.size == 0:
            continue
        kind = output_kind(ref)
        if ref.dtype.kind in NUMBERS and new.dtype.kind in NUMBERS:
            gaps = np.abs(ref.astype(np.float64) - new.astype(np.float64)).reshape(-1)
            gaps = gaps[np.isfinite(gaps)]
            result["max_abs_diff"] = float(gaps.max()) if gaps.size else 0.0
            result["mean_abs_diff"] = float(gaps.sum()) / gaps.size if gaps.size else 0.0
        if kind == "label":
            result["label_agreement"] = _share_equal(ref.reshape(rows, -1), new.reshape(rows, -1))
        elif kind == "probabilities":
            result["label_agreement"] = _share_equal(ref.argmax(-1).reshape(rows, -1), new.argmax(-1).reshape(rows, -1))
        elif kind == "embedding":
            result["cosine"] = float(_cosines(ref, new).mean())
        elif ref.dtype.kind not in NUMBERS:
            result["label_agreement"] = _share_equal(ref.reshape(rows, -1), new.reshape(rows, -1))
    return measured


def _share_equal(ref: np.ndarray, new: np.ndarray) -> float:
    """The share of rows whose values are all equal."""
    if not ref.size:
        return 1.0
    equal = (ref == new).all(axis=-1)
    return np.count_nonzero(equal) / equal.size


def _cosines(ref: np.ndarray, new: np.ndarray) -> np.ndarray:
    a = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    b = new.reshape(-1, new.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
