"""Turning JSON values into arrays a graph input accepts, and arrays back into JSON, with
an error that names the input and what was expected whenever they do not fit."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from modelfn.errors import InvalidInput
from modelfn.session import TensorInfo

# An overflowing float cast is refused with a 422 below; NumPy's warning about it is noise.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)
# `all_finite`: a sum meeting inf - inf is NaN, as it should be; NumPy's warning about it is noise.
warnings.filterwarnings("ignore", "invalid value encountered in reduce", RuntimeWarning, __name__)


def _expected(info: TensorInfo) -> str:
    shape = ["?" if d is None else d for d in info.shape or ()]
    return f"{info.type.removeprefix('tensor(').rstrip(')')} of shape {shape}"


def coerce(value: Any, info: TensorInfo, nan_policy: str = "reject") -> np.ndarray:
    """`value` (nested lists, a number or an array) as an array of `info`'s dtype and shape."""
    return _shaped(_typed(value, info, nan_policy), info)


def coerce_item(value: Any, info: TensorInfo, nan_policy: str = "reject") -> tuple[np.ndarray, bool]:
    """As `coerce`, and a single item sent to a batched input (one axis short) gets a batch
    axis of 1; the flag says so, so the answer can drop it again."""
    array = _typed(value, info, nan_policy)
    single = info.batched and info.shape is not None and array.ndim == len(info.shape) - 1
    return _shaped(array[None] if single else array, info), single


def _typed(value: Any, info: TensorInfo, nan_policy: str) -> np.ndarray:
    want = info.dtype
    if want.kind == "f" and nan_policy == "reject" and type(value) is list and value and type(value[0]) is not list:
        row = _finite_row(value, want)
        if row is not None:
            return row
    if want.kind in "iu" and not isinstance(value, np.ndarray):
        exact = _exact_integers(value, info, want)
        if exact is not None:
            return exact
    # JSON for a string input stays as it is: a NumPy unicode array would drop trailing NULs
    # and read a number among strings as its text
    strings = want.kind == "O"  # np.object_, without a dtype comparison per request
    as_sent = strings and not isinstance(value, np.ndarray)
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object if as_sent else None)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"input {info.name!r}: ragged or mixed nested lists; expected {_expected(info)}", input=info.name
        ) from None

    if strings:
        odd = [type(v).__name__ for v in array.flat if not isinstance(v, str)] if array.dtype.kind == "O" else []
        if array.dtype.kind not in "USO" or odd:
            got = odd[0] if odd else array.dtype
            raise InvalidInput(f"input {info.name!r}: expected strings, got {got}", input=info.name)
        return array.astype(object)
    return _numeric(array, info, want, nan_policy)


_FLOAT_LIMITS = {
    np.dtype(np.float16): float(np.finfo(np.float16).max),
    np.dtype(np.float32): 2.0**53,
    np.dtype(np.float64): 2.0**53,
}
"""The largest magnitude `_finite_row` takes: float16's own largest; 2**53 for the others, so any
integer in the row is exact as a float and is rounded once, as the general path rounds it (an
integer past int64 even makes it refuse the row): larger values go the general way."""


def _finite_row(values: list[Any], want: np.dtype) -> np.ndarray | None:
    """One flat list of finite numbers inside `want`'s range, made into an array in one cast:
    the usual single-row request, checked on the parsed values themselves (C loops over them,
    no NumPy reduction, no second copy). None for anything else (a string, None, NaN, a value
    too large): the general path decides and words it."""
    limit = _FLOAT_LIMITS.get(want)
    try:
        if limit is None or not (math.isfinite(sum(values)) and -limit <= min(values) and max(values) <= limit):
            return None
    except (TypeError, OverflowError):  # not all numbers; an integer past any float
        return None
    return np.asarray(values, dtype=want)


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
    if kind in "USOV":
        got = "strings" if kind in "US" else "non-numeric values"
        raise InvalidInput(f"input {info.name!r}: expected numbers ({_expected(info)}), got {got}", input=info.name)
    if want.kind == "f":
        return _floats(array, info, want, nan_policy)
    if array.size and kind in "fc" and nan_policy == "reject" and not np.isfinite(array).all():
        raise InvalidInput(f"input {info.name!r}: NaN and Infinity are not accepted", input=info.name)
    if want.kind == "b":
        if kind not in "bui" or (kind in "ui" and array.size and not np.isin(array, (0, 1)).all()):
            raise InvalidInput(f"input {info.name!r}: expected booleans (true/false or 0/1)", input=info.name)
        return array.astype(np.bool_)
    if want.kind in "iu":
        if array.dtype == want:  # already the graph's integers (a hook's, a binary tensor): in range by type
            return array
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
    return array.astype(want)


def _floats(array: np.ndarray, info: TensorInfo, want: np.dtype, nan_policy: str) -> np.ndarray:
    """The hot path for most models: one cast and one finiteness check of the result."""
    cast = array if array.dtype == want else array.astype(want)
    if nan_policy == "reject" and array.dtype.kind == "f" and array.size and not all_finite(cast):
        if np.isfinite(array).all():
            raise InvalidInput(f"input {info.name!r}: values overflow {want.name}", input=info.name)
        raise InvalidInput(f"input {info.name!r}: NaN and Infinity are not accepted", input=info.name)
    return cast


_add = np.add.reduce
_SMALL = 64
"""Up to this many values, Python's own sum of a float16/float32 array's values beats a NumPy
reduction (about 0.15-0.6 us against 1.1 us: a ufunc call costs more than the adding)."""


def all_finite(array: np.ndarray | np.generic) -> bool:
    """Whether a float array holds no NaN or Infinity. For float16 and float32 a finite sum says
    so at the cost of one reduction (a NaN or an Infinity makes any sum non-finite, and their
    sum in float64 cannot overflow); float64 is checked element by element."""
    if array.dtype.itemsize < 8:
        if array.size <= _SMALL:
            return math.isfinite(sum(array.ravel().tolist()))
        return math.isfinite(_add(array, axis=None, dtype=np.float64))
    return bool(np.isfinite(array).all())


def _shaped(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.shape is None:
        return array
    if array.ndim == len(info.shape):
        shape = array.shape
        for axis, dim in info.fixed_axes:  # a loop, not all() of a generator: ~0.2 us a request
            if shape[axis] != dim:
                break
        else:
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


def to_json(array: np.ndarray | np.generic, first: bool = False) -> Any:
    """An output as JSON values of the same shape; with `first`, its first item along the batch
    axis (the answer to one item sent without that axis), taken from the values rather than as
    a NumPy view. JSON has no NaN: a non-finite float becomes null rather than an invalid
    document; bytes become text."""
    values = array.tolist()
    ndim = array.ndim
    if first and ndim:
        values, ndim = values[0], ndim - 1
    kind = array.dtype.kind
    if kind == "f" and array.size and not _finite_sum(values, ndim, array):
        return _finite(values)
    if kind in "OS":
        return _text(values)
    return values


def _finite_sum(values: Any, ndim: int, array: np.ndarray | np.generic) -> bool:
    """Whether an output's values are all finite, told from the Python values `to_json` has
    already made when they have at most one axis. A float64 sum can overflow to Infinity though
    every value is finite: `_finite` then just returns the same values, a little later."""
    if ndim == 0:
        return math.isfinite(values)
    if ndim == 1:
        return math.isfinite(sum(values))
    return all_finite(array)


def _finite(values: Any) -> Any:
    if isinstance(values, list):
        return [_finite(v) for v in values]
    return values if math.isfinite(values) else None


def _text(values: Any) -> Any:
    if isinstance(values, list):
        return [_text(v) for v in values]
    return values.decode() if isinstance(values, bytes) else values
