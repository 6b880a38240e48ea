"""Drift at serving time, with no payloads kept: each instance counts its decoded inputs and
its outputs into the reference profile's bins and, once per window (N requests or T
seconds), reports each feature's population stability index (PSI) against the profile.

The per-request cost is one list append: where every tensor the profile reads is narrow (a
table's rows), the request's decoded feeds and outputs wait by reference until `BLOCK_ROWS`
rows have come or the window closes; then they are checked, summarised and binned at once
(`searchsorted` + `bincount`) and let go. Wide or ragged tensors are summarised per request. Memory is those rows
plus one counter per bin, bounded and constant per function; values never leave the process
and are held only until the next binning."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from modelfn.profile import MAX_COLUMNS, Profile, bin_index, extract, psi
from modelfn.spec import DriftSpec

BLOCK_ROWS = 1024


class DriftReport:
    """One window's numbers: rows counted, PSI per input feature, shift (PSI) per output feature."""

    __slots__ = ("alarm_psi", "function", "psi", "requests", "rows", "seconds", "shift", "skipped")

    def __init__(
        self,
        function: str,
        rows: int,
        requests: int,
        seconds: float,
        psi: dict[str, float],
        shift: dict[str, float],
        skipped: int,
        alarm_psi: float,
    ) -> None:
        self.function = function
        self.rows = rows
        self.requests = requests
        self.seconds = seconds
        self.psi = psi
        self.shift = shift
        self.skipped = skipped
        self.alarm_psi = alarm_psi

    @property
    def max_psi(self) -> float:
        return max(self.psi.values(), default=0.0)

    @property
    def max_shift(self) -> float:
        return max(self.shift.values(), default=0.0)

    @property
    def drifted(self) -> bool:
        return self.max_psi >= self.alarm_psi

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "rows": self.rows,
            "requests": self.requests,
            "window_s": round(self.seconds, 3),
            "drift_psi_max": round(self.max_psi, 6),
            "output_shift_max": round(self.max_shift, 6),
            "drifted": self.drifted,
            "psi": {k: round(v, 6) for k, v in self.psi.items()},
            "output_shift": {k: round(v, 6) for k, v in self.shift.items()},
            "skipped_requests": self.skipped,
        }


class _Tensor:
    """One input or output the profile reads, and the rows waiting to be binned."""

    __slots__ = ("fixed", "outputs", "pending", "shape", "sources", "tensor")

    def __init__(self, role: str, tensor: str, shape: list[int | None] | None) -> None:
        self.outputs = role == "output"
        self.tensor = tensor
        self.shape = tuple(shape) if shape is not None else None
        # narrow rows wait by reference and are summarised together; wide ones (an image, an
        # embedding) are summarised at once, so what waits stays under BLOCK_ROWS x MAX_COLUMNS values
        self.fixed = self.shape is not None and None not in self.shape and math.prod(self.shape) <= MAX_COLUMNS  # type: ignore[arg-type]
        self.sources: list[tuple[Any, int]] = []  # (Source, first feature index)
        self.pending: list[Any] = []


class DriftMonitor:
    """Counts for one function over the current window; `emit` gets each closed window.

    Per request it only keeps references to the decoded feeds and outputs it reads (a
    tensor whose rows vary in shape, token ids, is summarised at once); the summaries and
    the binning run once `BLOCK_ROWS` rows wait, or when the window closes."""

    def __init__(self, profile: Profile, spec: DriftSpec, emit: Callable[[DriftReport], None]) -> None:
        self.profile = profile
        self.spec = spec
        self.emit = emit
        self.features = profile.features
        tensors: dict[tuple[str, str], _Tensor] = {}
        first = 0
        for source in profile.sources:
            key = (source.role, source.tensor)
            if key not in tensors:
                tensors[key] = _Tensor(source.role, source.tensor, source.shape)
            tensors[key].sources.append((source, first))
            first += len(source.features)
        self._tensors = list(tensors.values())
        self._defer = all(tensor.fixed for tensor in self._tensors)
        """Every tensor is narrow: requests wait whole and are checked when binned."""
        self._waiting: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        bins = np.array([f.bins for f in self.features], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(bins)[:-1]]).astype(np.int64)
        self._total_bins = int(bins.sum())
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.counts = np.zeros(self._total_bins, dtype=np.int64)
        self.pending_rows = 0
        self.rows = 0
        self.requests = 0
        self.skipped = 0
        self.started = time.monotonic()

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Count one request's rows; closes the window when it is due."""
        report = None
        with self._lock:
            if self._defer:
                self._waiting.append((feeds, outputs))
                first = next(iter(feeds.values()), None)  # rows, for the block size; checked when binned
                self.pending_rows += 1 if first is None or first.ndim == 0 else len(first)
                if self.pending_rows >= BLOCK_ROWS:
                    self._bin()
            else:
                self._take(feeds, outputs)
            self.requests += 1
            if (
                self.requests >= self.spec.window_requests
                or time.monotonic() - self.started >= self.spec.window_seconds
            ):
                report = self._close()
        if report is not None:
            self.emit(report)

    def close_window(self) -> DriftReport | None:
        """Report what was counted so far, whatever the window's size (shutdown, tests)."""
        with self._lock:
            report = self._close(force=True)
        if report is not None:
            self.emit(report)
        return report

    def _take(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        rows = self._collect(feeds, outputs)
        self.pending_rows += rows
        if self.pending_rows >= BLOCK_ROWS:
            self._bin()

    def _drain(self) -> None:
        """Move the requests waiting whole into the tensors' pending rows."""
        waiting, self._waiting = self._waiting, []
        for feeds, outputs in waiting:
            self._collect(feeds, outputs)

    def _collect(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> int:
        """One request's rows into each tensor's pending list; 0 (and counted as skipped) when
        its shapes are not the ones the profile describes."""
        rows = -1
        for taken, tensor in enumerate(self._tensors):
            values = (outputs if tensor.outputs else feeds).get(tensor.tensor)
            if values is not None and values.ndim == 0:
                values = values.reshape(1)
            if (
                values is None
                or (rows >= 0 and values.shape[0] != rows)
                or (tensor.fixed and values.shape[1:] != tensor.shape)
            ):
                for undo in self._tensors[:taken]:  # a shape the profile does not describe: not counted
                    undo.pending.pop()
                self.skipped += 1
                return 0
            rows = values.shape[0]
            if tensor.fixed:
                tensor.pending.append(values)
            else:  # rows of varying shape, or wide ones: summarised now
                tensor.pending.append([extract(source.summary, values) for source, _ in tensor.sources])
        self.rows += rows
        return rows

    def _bin(self) -> None:
        """Summarise the waiting rows and add them to the counters (one bincount for every feature)."""
        self._drain()
        self.pending_rows = 0
        if not self._tensors or not self._tensors[0].pending:
            return
        indices = []
        for tensor in self._tensors:
            if tensor.fixed:
                stacked = np.concatenate(tensor.pending, axis=0).astype(np.float64, copy=False)
                matrices = [extract(source.summary, stacked) for source, _ in tensor.sources]
            else:
                matrices = [np.concatenate(parts, axis=0) for parts in zip(*tensor.pending, strict=True)]
            tensor.pending = []
            for (source, first), matrix in zip(tensor.sources, matrices, strict=True):
                for j, feature in enumerate(source.features):
                    found = bin_index(matrix[:, j], feature.edges, feature.categorical)
                    indices.append(found + self._offsets[first + j])
        self.counts += np.bincount(np.concatenate(indices), minlength=self._total_bins)

    def _close(self, force: bool = False) -> DriftReport | None:
        self._drain()
        if self.rows < self.spec.min_rows and not (force and self.rows):
            return None  # too few rows to say anything: carried into the next window
        self._bin()
        psi_in: dict[str, float] = {}
        shift: dict[str, float] = {}
        for j, feature in enumerate(self.features):
            start = self._offsets[j]
            value = psi(feature.expected, self.counts[start : start + feature.bins])
            (psi_in if feature.role == "input" else shift)[feature.name] = value
        report = DriftReport(
            self.profile.function,
            self.rows,
            self.requests,
            time.monotonic() - self.started,
            psi_in,
            shift,
            self.skipped,
            self.spec.alarm_psi,
        )
        self._reset()
        return report
