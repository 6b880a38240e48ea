"""The accuracy guard of `modelfn optimize`: sample requests, decoded by the function's own
codec, run through the original and a candidate model; per output the absolute differences,
label agreement for classifiers and cosine similarity for embeddings, against the spec's
`[optimize]` thresholds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelfn.codecs import Feeds
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction, Outputs
from modelfn.spec import FunctionSpec, OptimizeSpec

SAMPLES_FILE = "samples.jsonl"


class OptimizeError(ModelfnError):
    """`modelfn optimize` cannot go on: no usable samples, a model it cannot rewrite."""


def sample_file(spec: FunctionSpec, data: Path | None = None) -> Path | None:
    """`--data`, else `samples.jsonl` in the function's folder, else `events/samples/NAME.jsonl`
    beside the functions folder (the repository's sample requests, which do not ship)."""
    if data is not None:
        if not data.is_file():
            raise OptimizeError(f"--data {data}: no such file")
        return data
    for path in (spec.folder / SAMPLES_FILE, spec.folder.parent.parent / "events" / "samples" / f"{spec.name}.jsonl"):
        if path.is_file():
            return path
    return None


def load_requests(fn: ModelFunction, path: Path) -> list[Feeds]:
    """Graph feeds for each JSON payload of a JSONL file, as the served function decodes them."""
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            requests.append(fn.decode(payload=json.loads(line)).feeds)
        except (json.JSONDecodeError, ModelfnError) as exc:
            reason = exc.message if isinstance(exc, ModelfnError) else str(exc)
            raise OptimizeError(f"{path}:{number}: not a request {fn.name} accepts: {reason}") from None
    if not requests:
        raise OptimizeError(f"{path}: no requests in it")
    return requests


def run_all(session: Any, names: list[str], requests: list[Feeds]) -> list[Outputs]:
    return [dict(zip(names, session.run(names, feeds), strict=True)) for feeds in requests]


@dataclass
class OutputDiff:
    """How one output moved: `kind` is label, probabilities, embedding or values."""

    name: str
    kind: str
    max_abs: float
    mean_abs: float
    agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None

    def describe(self) -> str:
        text = f"{self.name} ({self.kind}): max |diff| {self.max_abs:.3g}, mean {self.mean_abs:.3g}"
        if self.agreement is not None:
            text += f", label agreement {self.agreement:.2%}"
        if self.cosine_mean is not None:
            text += f", cosine mean {self.cosine_mean:.4f} (min {self.cosine_min:.4f})"
        return text


@dataclass
class Comparison:
    requests: int
    outputs: list[OutputDiff] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def headline(self) -> str:
        """The figure the guard decides on, per output, in a few words."""
        parts = []
        for o in self.outputs:
            if o.cosine_mean is not None:
                parts.append(f"cos {o.cosine_mean:.4f}")
            elif o.agreement is not None:
                parts.append(f"{o.name} {o.agreement:.1%}")
            else:
                parts.append(f"max {o.max_abs:.2g}")
        return ", ".join(parts)


def output_kind(values: list[np.ndarray]) -> str:
    first = values[0]
    if np.issubdtype(first.dtype, np.integer) or first.dtype == np.bool_:
        return "label"
    if not np.issubdtype(first.dtype, np.floating) or first.ndim < 2 or first.shape[-1] < 2:
        return "values"
    rows = np.concatenate([v.reshape(-1, v.shape[-1]) for v in values]).astype(np.float64)
    if rows.min() >= 0 and rows.max() <= 1 and np.allclose(rows.sum(axis=-1), 1, atol=1e-3):
        return "probabilities"
    return "embedding"


def compare(reference: list[Outputs], candidate: list[Outputs], limits: OptimizeSpec) -> Comparison:
    """Each output of the candidate against the original's, request by request."""
    result = Comparison(len(reference))
    for name in reference[0]:
        ref = [r[name] for r in reference]
        new = [c[name] for c in candidate]
        kind = output_kind(ref)
        diff = OutputDiff(name, kind, *_abs_diff(ref, new))
        if not all(np.isfinite(n).all() for n, r in zip(new, ref, strict=True) if np.isfinite(r).all()):
            result.failures.append(f"{name}: the candidate gives NaN or infinity where the original does not")
        if kind == "label":
            diff.agreement = _share_equal([r.reshape(-1) for r in ref], [n.reshape(-1) for n in new])
        elif kind == "probabilities":
            diff.agreement = _share_equal(
                [r.argmax(-1).reshape(-1) for r in ref], [n.argmax(-1).reshape(-1) for n in new]
            )
        elif kind == "embedding":
            cosines = np.concatenate([_cosines(r, n) for r, n in zip(ref, new, strict=True)])
            diff.cosine_mean, diff.cosine_min = float(cosines.mean()), float(cosines.min())
        if diff.agreement is not None and diff.agreement < limits.min_label_agreement:
            result.failures.append(
                f"{name}: label agreement {diff.agreement:.2%} is below optimize.min_label_agreement "
                f"{limits.min_label_agreement:.2%}"
            )
        if diff.cosine_mean is not None and diff.cosine_mean < limits.min_cosine:
            result.failures.append(
                f"{name}: mean cosine similarity {diff.cosine_mean:.4f} is below optimize.min_cosine "
                f"{limits.min_cosine}"
            )
        if kind == "values" and limits.max_abs_diff is not None and diff.max_abs > limits.max_abs_diff:
            result.failures.append(
                f"{name}: max |diff| {diff.max_abs:.3g} is above optimize.max_abs_diff {limits.max_abs_diff}"
            )
        result.outputs.append(diff)
    return result


def _abs_diff(ref: list[np.ndarray], new: list[np.ndarray]) -> tuple[float, float]:
    if not np.issubdtype(ref[0].dtype, np.number):
        return 0.0, 0.0
    gaps = np.concatenate(
        [np.abs(r.astype(np.float64) - n.astype(np.float64)).reshape(-1) for r, n in zip(ref, new, strict=True)]
    )
    gaps = gaps[np.isfinite(gaps)]
    return (float(gaps.max()), float(gaps.mean())) if gaps.size else (0.0, 0.0)


def _share_equal(ref: list[np.ndarray], new: list[np.ndarray]) -> float:
    a, b = np.concatenate(ref), np.concatenate(new)
    return float((a == b).mean()) if a.size else 1.0


def _cosines(ref: np.ndarray, new: np.ndarray) -> np.ndarray:
    a = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    b = new.reshape(-1, new.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
