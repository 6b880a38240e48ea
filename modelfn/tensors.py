"""Turning JSON values into arrays a graph input accepts, and arrays back into JSON, with
an error that names the input and what was expected whenever they do not fit."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfn.errors import InvalidInput
from modelfn.session import TensorInfo


def _expected(info: TensorInfo) -> str:
    shape = ["?" if d is None else d for d in info.shape or ()]
    return f"{info.type.removeprefix('tensor(').rstrip(')')} of shape {shape}"


def coerce(value: Any, info: TensorInfo, nan_policy: str = "reject") -> np.ndarray:
    """`value` (nested lists, a number or an array) as an array of `info`'s dtype and shape."""
    want = info.dtype
    if want.kind in "iu" and not isinstance(value, np.ndarray):
        exact = _exact_integers(value, info, want)
        if exact is not None:
            return _shaped(exact, info)
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"input {info.name!r}: ragged or mixed nested lists; expected {_expected(info)}", input=info.name
        ) from None

    if want == np.object_:
        if array.dtype.kind not in "USO" or (
            array.dtype.kind == "O" and not all(isinstance(v, str) for v in array.flat)
        ):
            raise InvalidInput(f"input {info.name!r}: expected strings, got {array.dtype}", input=info.name)
        array = array.astype(object)
    else:
        array = _numeric(array, info, want, nan_policy)
    return _shaped(array, info)


def _exact_integers(value: Any, info: TensorInfo, want: np.dtype) -> np.ndarray | None:
    """JSON integers checked as Python ints: NumPy would read [1, 2**64 - 1] as float64 and lose digits."""
    try:
        objects = np.asarray(value, dtype=object)
    except ValueError:
        return None
    if not objects.size or not all(isinstance(v, int) for v in objects.flat):
        return None
    limits = np.iinfo(want)
    if min(objects.flat) < limits.min or max(objects.flat) > limits.max:
        raise InvalidInput(
            f"input {info.name!r}: values out of range for {want.name} [{limits.min}, {limits.max}]", input=info.name
        )
    return objects.astype(want)


def _numeric(array: np.ndarray, info: TensorInfo, want: np.dtype, nan_policy: str) -> np.ndarray:
    kind = array.dtype.kind
    if kind in "USO" or kind == "V":
        got = "strings" if kind in "US" else "non-numeric values"
        raise InvalidInput(f"input {info.name!r}: expected numbers ({_expected(info)}), got {got}", input=info.name)
    if array.size and kind in "fc" and nan_policy == "reject" and not np.isfinite(array).all():
        raise InvalidInput(f"input {info.name!r}: NaN and Infinity are not accepted", input=info.name)
    if want.kind == "b":
        if kind not in "bui" or (kind in "ui" and array.size and not np.isin(array, (0, 1)).all()):
            raise InvalidInput(f"input {info.name!r}: expected booleans (true/false or 0/1)", input=info.name)
        return array.astype(np.bool_)
    if want.kind in "iu":
        if kind == "f":
            if array.size and not (np.isfinite(array).all() and (array == np.round(array)).all()):
                raise InvalidInput(
                    f"input {info.name!r}: expected integers ({_expected(info)}), got fractions", input=info.name
                )
        elif kind not in "biu":
            raise InvalidInput(f"input {info.name!r}: expected integers, got {array.dtype}", input=info.name)
        if array.size:
            limits = np.iinfo(want)
            low, high = array.min(), array.max()
            if low < limits.min or high > limits.max:
                raise InvalidInput(
                    f"input {info.name!r}: values out of range for {want.name} [{limits.min}, {limits.max}]",
                    input=info.name,
                )
        return array.astype(want)
    if array.size and want.kind == "f" and kind == "f" and want.itemsize < array.dtype.itemsize:
        with np.errstate(over="ignore"):
            cast = array.astype(want)
        if nan_policy == "reject" and not np.isfinite(cast).all():
            raise InvalidInput(f"input {info.name!r}: values overflow {want.name}", input=info.name)
        return cast
    return array.astype(want)


def _shaped(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.shape is None:
        return array
    if array.ndim != len(info.shape):
        raise InvalidInput(
            f"input {info.name!r}: expected rank {len(info.shape)} ({_expected(info)}), got shape {list(array.shape)}",
            input=info.name,
        )
    for axis, (got, want) in enumerate(zip(array.shape, info.shape, strict=True)):
        if want is not None and got != want:
            raise InvalidInput(
                f"input {info.name!r}: axis {axis} must be {want} ({_expected(info)}), got shape {list(array.shape)}",
                input=info.name,
            )
    return array


def wants_batch_axis(value: Any, info: TensorInfo) -> bool:
    """A single item sent to a batched input: one axis short, so give it a batch axis of 1."""
    if not info.batched or info.shape is None:
        return False
    try:
        return bool(np.ndim(value) == len(info.shape) - 1)
    except ValueError:  # ragged lists: coerce() reports them
        return False


def to_json(array: np.ndarray) -> Any:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1)] if array.ndim else array.item()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        # JSON has no NaN: a non-finite output becomes null rather than an invalid document
        if array.ndim == 0:
            return None
        return (
            [to_json(row) for row in array]
            if array.ndim > 1
            else [v if np.isfinite(v) else None for v in array.tolist()]
        )
    return array.tolist()


def to_json_shaped(array: np.ndarray) -> Any:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        flat = to_json(array)
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat
    return to_json(array)
