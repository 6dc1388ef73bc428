"""Coercion: a value of the wire into its column's type, by the documented rules.

Per value (``_coerce_*``: what a lenient source may send, or ``_Invalid`` naming the value's
type), and per column (``_convert``: one Arrow conversion when every value already has its
type, the value-by-value walk only for a column where that fails, recording the rows at
fault).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contract import EPOCH_MS_THRESHOLD
from pipelines.ingest.schema import _INT32_MAX, _INT32_MIN, _MAX_EPOCH_MS, _TS


class _Invalid(Exception):
    """A value that cannot be coerced; the message is the value's type description."""


#: How a reason names a value's JSON type (bool before int: a bool is an int in Python).
_TYPE_NAMES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return next((name for kind, name in _TYPE_NAMES if isinstance(v, kind)), type(v).__name__)


def _number_from_string(s: str) -> int | float:
    t = s.strip()
    try:
        return int(t)
    except ValueError:
        pass
    f = float(t)  # ValueError propagates
    if not math.isfinite(f):
        raise ValueError(s)
    return f


def _coerce_int32(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise _Invalid("boolean")
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise _Invalid("number with a fraction")
        n = int(v)
    elif isinstance(v, str):
        try:
            x = _number_from_string(v)
        except ValueError:
            raise _Invalid("non-numeric string") from None
        if isinstance(x, float):
            if x != int(x):
                raise _Invalid("string with a fraction")
            x = int(x)
        n = x
    else:
        raise _Invalid(_type_name(v))
    if not _INT32_MIN <= n <= _INT32_MAX:
        raise _Invalid(f"{_type_name(v)} out of int32 range")
    return n


_BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


def _coerce_bool(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        b = _BOOL_STRINGS.get(v.strip().lower())
        if b is not None:
            return b
        raise _Invalid("string that is not a boolean")
    raise _Invalid(_type_name(v))


def _epoch_to_ms(x: int | float) -> int:
    ms = x if x >= EPOCH_MS_THRESHOLD else x * 1000
    if isinstance(ms, float):
        ms = round(ms)
    if not 0 <= ms <= _MAX_EPOCH_MS:
        raise _Invalid("number out of the epoch range")
    return ms


def _iso_to_ms(s: str) -> int:
    t = s.strip()
    dt = datetime.fromisoformat(t)  # ValueError propagates
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _coerce_epoch_ms(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise _Invalid("boolean")
    if isinstance(v, int):
        return _epoch_to_ms(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _Invalid("non-finite number")
        return _epoch_to_ms(v)
    if isinstance(v, str):
        try:
            return _epoch_to_ms(_number_from_string(v))
        except ValueError:
            pass
        try:
            ms = _iso_to_ms(v)
        except (ValueError, OverflowError):
            raise _Invalid("string that is neither an epoch nor RFC 3339") from None
        if not 0 <= ms <= _MAX_EPOCH_MS:
            raise _Invalid("string out of the epoch range")
        return ms
    raise _Invalid(_type_name(v))


def _coerce_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise _Invalid(_type_name(v))


# --------------------------------------------------------------------------- column conversion

_Bad = dict[int, list[str]]


_EXPECTED = {pa.string(): "string", pa.int32(): "int32", pa.bool_(): "boolean", _TS: "epoch timestamp"}


def _slow(values: list[Any], fn: Callable[[Any], Any], typ: pa.DataType, name: str, bad: _Bad) -> pa.Array:
    expected = _EXPECTED[typ]
    out: list[Any] = []
    append = out.append
    for i, v in enumerate(values):
        try:
            append(fn(v))
        except _Invalid as e:
            bad.setdefault(i, []).append(f"{name}: invalid {e} (expected {expected})")
            append(None)
    return pa.array(out, type=typ)


def _fast_string(values: list[Any]) -> pa.Array | None:
    try:
        # bytes would pass pa.array(type=string); JSON never yields bytes.
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _infer(values: list[Any]) -> pa.Array | None:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


def _fast_int32(values: list[Any]) -> pa.Array | None:
    arr = _infer(values)
    if arr is None:
        return None
    t = arr.type
    try:
        if pa.types.is_null(t):
            return pa.nulls(len(values), pa.int32())
        if pa.types.is_integer(t):
            return arr.cast(pa.int32())  # safe cast: raises on overflow
        if pa.types.is_floating(t) and pc.all(pc.equal(pc.trunc(arr), arr)).as_py() is not False:
            return arr.cast(pa.int32())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return None


def _fast_bool(values: list[Any]) -> pa.Array | None:
    arr = _infer(values)
    if arr is None:
        return None
    if pa.types.is_null(arr.type):
        return pa.nulls(len(values), pa.bool_())
    return arr if pa.types.is_boolean(arr.type) else None


def _fast_epoch(values: list[Any]) -> pa.Array | None:
    arr = _infer(values)
    if arr is None:
        return None
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(values), _TS)
    try:
        if pa.types.is_integer(t):
            is_ms = pc.greater_equal(arr, EPOCH_MS_THRESHOLD)
            ms = pc.if_else(is_ms, arr, pc.multiply_checked(arr, 1000))
        elif (
            pa.types.is_floating(t)
            and not pc.any(pc.is_nan(arr)).as_py()
            and not pc.any(pc.is_inf(arr)).as_py()
        ):
            is_ms = pc.greater_equal(arr, EPOCH_MS_THRESHOLD)
            ms = pc.round(pc.if_else(is_ms, arr, pc.multiply(arr, 1000.0)))
        else:
            return None
        in_range = pc.and_(pc.greater_equal(ms, 0), pc.less_equal(ms, _MAX_EPOCH_MS))
        if pc.all(in_range).as_py() is not False:
            return ms.cast(pa.int64()).cast(_TS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass  # overflow: the slow path names the rows
    return None


_COMBINE_MAX_ROWS = 2048

_KINDS: dict[pa.DataType, tuple[Callable[[list[Any]], pa.Array | None], Callable[[Any], Any]]] = {
    pa.string(): (_fast_string, _coerce_str),
    pa.int32(): (_fast_int32, _coerce_int32),
    pa.bool_(): (_fast_bool, _coerce_bool),
    _TS: (_fast_epoch, _coerce_epoch_ms),
}


def _convert(
    typ: pa.DataType, columns: dict[str, tuple[str, list[Any]]], n: int, bad: _Bad
) -> dict[str, pa.Array]:
    """Convert columns of one type: {column: (field path, values)} -> {column: array}.

    In small batches all columns go through one pa.array call first (then zero-copy
    slices): there the fixed cost per call, not per value, dominates; in large ones the extra
    pass to concatenate costs more than it saves. When that fails each column is tried
    alone, and only a failing column is walked value by value.
    """
    fast, coerce = _KINDS[typ]
    if 0 < n <= _COMBINE_MAX_ROWS:
        combined = fast(list(chain.from_iterable(values for _, values in columns.values())))
        if combined is not None:
            return {name: combined.slice(i * n, n) for i, name in enumerate(columns)}
    out: dict[str, pa.Array] = {}
    for name, (path, values) in columns.items():
        arr = fast(values)
        out[name] = arr if arr is not None else _slow(values, coerce, typ, path, bad)
    return out


def _rfc3339_column(values: list[Any], extras: list[dict[str, Any] | None], name: str) -> pa.Array:
    """Unparseable values become NULL and land in that row's extra under allocated_resource."""
    try:
        arr = pa.array(values, type=pa.string())
        return arr.cast(_TS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    out: list[int | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            if isinstance(v, str):
                ms = _iso_to_ms(v)
                if not 0 <= ms <= _MAX_EPOCH_MS:
                    raise _Invalid("out of range")
            else:
                ms = _coerce_epoch_ms(v)
            out.append(ms)
        except (_Invalid, ValueError, OverflowError):
            out.append(None)
            ex = extras[i]
            if ex is None:
                ex = extras[i] = {}
            ex.setdefault("allocated_resource", {})[name] = v
    return pa.array(out, type=pa.int64()).cast(_TS)


def _objects(values: list[Any], name: str, bad: _Bad) -> list[dict[str, Any]]:
    """Nested objects; a non-object, non-null value marks its row bad and reads as {}."""
    out = [v if type(v) is dict else _EMPTY for v in values]
    if any(v is not None and type(v) is not dict for v in values):
        for i, v in enumerate(values):
            if v is not None and type(v) is not dict:
                bad.setdefault(i, []).append(f"{name}: invalid {_type_name(v)} (expected object)")
    return out


_EMPTY: dict[str, Any] = {}


def _unknown(d: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}
