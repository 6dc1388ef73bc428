"""The fast path of normalization: records converted to Arrow in C, then checked as columns.

``pa.array(records, type=WIRE_TYPE)`` turns a window's decoded records into one struct
array without a Python loop per value. It is strict where the rules are strict (a number
where a string belongs, a string where a number belongs, a list where an object belongs all
fail the conversion) and the columns it yields are then held to every other rule at once:
epoch numbers read as seconds or milliseconds, integers whole and inside int32, a job_id and
a create_time on every record. Keys the schema does not know go to ``extra`` as by the rules
(:func:`pipelines.ingest.finish.unknown_keys`).

Whatever this path cannot prove exact it declines (``None``), and the window goes through the
rules of :mod:`pipelines.ingest.rules`, which name the offending fields and quarantine their
records. Both give identical tables (a test holds them together over every quirk the
simulator can produce), so the fast path is an optimisation, never a second set of rules.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contract import EPOCH_MS_THRESHOLD, TIMESTAMP
from pipelines.ingest.finish import finish, unknown_keys
from pipelines.ingest.schema import (
    _MAX_EPOCH_MS,
    ASSESS_DETAIL_FIELDS,
    ASSESS_PROPERTIES,
    JOBS_SCHEMA,
    KNOWN_FIELDS,
    Normalized,
)

# Numbers convert as int64, which refuses booleans and numeric strings but truncates a float
# (3.5 becomes 3). The same numbers converted as float64 (NUMBERS_TYPE, only those fields)
# must then agree with them: where one does not, a fraction was cut and the rules decide.
_NUMBER = pa.int64()
_S = pa.string()
_INT_FIELDS = frozenset({"reject_times", "status"})
_EPOCH_FIELDS = frozenset({"create_time", "lastupdate_time"})
_BOOL_FIELDS = frozenset({"is_remake", "is_ondemand_resource"})


def _wire_type(name: str) -> pa.DataType:
    if name in _INT_FIELDS or name in _EPOCH_FIELDS:
        return _NUMBER
    if name in _BOOL_FIELDS:
        return pa.bool_()
    return _S


_DETAIL = pa.struct([pa.field(n, _wire_type(n)) for n in ASSESS_DETAIL_FIELDS])
_NESTED = {
    "allocated_resource": pa.struct([pa.field(n, _S) for n in ("resource_id", "charge_mode", "expire_time")]),
    "assess_result": pa.struct([*(pa.field(p, _DETAIL) for p in ASSESS_PROPERTIES), pa.field("suggestion", _S)]),
}
#: The record as the wire carries it, every level typed: what pa.array converts records to.
WIRE_TYPE = pa.struct([pa.field(name, _NESTED.get(name) or _wire_type(name)) for name in sorted(KNOWN_FIELDS)])
#: Only the numbers of a record, as float64.
NUMBERS_TYPE = pa.struct([
    *(pa.field(name, pa.float64()) for name in sorted(_EPOCH_FIELDS | {"reject_times"})),
    pa.field("assess_result", pa.struct([
        pa.field(p, pa.struct([pa.field("status", pa.float64())])) for p in ASSESS_PROPERTIES])),
])


def _epoch(values: pa.Array) -> pa.Array | None:
    """Epoch integers as the rules read them (>= 1e11 milliseconds, else seconds), or None."""
    try:
        ms = pc.if_else(pc.greater_equal(values, EPOCH_MS_THRESHOLD), values, pc.multiply_checked(values, 1000))
    except pa.ArrowInvalid:  # overflow
        return None
    if pc.any(pc.or_(pc.less(ms, 0), pc.greater(ms, _MAX_EPOCH_MS))).as_py():
        return None
    return ms.cast(TIMESTAMP)


def _int32(values: pa.Array) -> pa.Array | None:
    try:
        return values.cast(pa.int32())  # a safe cast: out of range raises
    except pa.ArrowInvalid:
        return None


def _numbers_whole(records: list[Any], numbers: dict[str, pa.Array]) -> bool:
    """The int64 conversion cut no fraction: every number equals its float64 conversion
    (compared as one column, a window's fixed cost being what matters at a few hundred rows)."""
    *top, assess = pa.array(records, type=NUMBERS_TYPE).flatten()
    floats = [*top, *(detail.flatten()[0] for detail in assess.flatten())]
    ints = [numbers[name] for name in NUMBERS_TYPE.names[:-1]] + [numbers[prop] for prop in ASSESS_PROPERTIES]
    same = pc.equal(pa.concat_arrays(floats), pa.concat_arrays(ints).cast(pa.float64()))
    return pc.all(same).as_py() is not False


def normalize_fast(records: list[Any], project_id: str, synced_at: datetime, personal_data: str) -> Normalized | None:
    """The window as JOBS_SCHEMA when every record follows the documented shapes; else None."""
    if not records:
        return Normalized(table=JOBS_SCHEMA.empty_table())
    try:
        wire = pa.array(records, type=WIRE_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return None  # a record that is not an object, or a value of another type
    return from_wire(wire, project_id, synced_at, personal_data, records=records)


def from_wire(wire: pa.StructArray, project_id: str, synced_at: datetime, personal_data: str, *,
              records: list[Any] | None = None, extras: list[dict[str, Any] | None] | None = None) -> Normalized | None:
    """The records as WIRE_TYPE (``wire``) held to every rule of the fast path, as JOBS_SCHEMA.

    With ``records`` (what ``wire`` was converted from) their numbers are checked whole and their
    unknown keys go to ``extra``; without, ``wire`` holds integers only (a parser that refuses a
    fraction where an integer belongs) and ``extras`` says what goes to ``extra``."""
    # flatten() gives each child with its parent's nulls applied: a null object's fields are null.
    fields = dict(zip(WIRE_TYPE.names, wire.flatten(), strict=True))
    job_id = fields["job_id"]
    if job_id.null_count or fields["create_time"].null_count or pc.any(pc.equal(job_id, "")).as_py():
        return None
    cols: dict[str, pa.Array] = {}
    *details, suggestion = fields.pop("assess_result").flatten()
    details = {prop: dict(zip(ASSESS_DETAIL_FIELDS, d.flatten(), strict=True))
               for prop, d in zip(ASSESS_PROPERTIES, details, strict=True)}
    numbers = {name: fields[name] for name in ("create_time", "lastupdate_time", "reject_times")}
    numbers.update({prop: details[prop]["status"] for prop in ASSESS_PROPERTIES})
    if records is not None and not _numbers_whole(records, numbers):
        return None
    for name in ("create_time", "lastupdate_time"):
        if (arr := _epoch(fields.pop(name))) is None:
            return None
        cols[name] = arr
    if (reject := _int32(fields.pop("reject_times"))) is None:
        return None
    cols["reject_times"] = reject
    resource_id, charge_mode, expire_time = fields.pop("allocated_resource").flatten()
    cols["allocated_resource_resource_id"], cols["allocated_resource_charge_mode"] = resource_id, charge_mode
    try:
        cols["allocated_resource_expire_time"] = expire_time.cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # an expiry the cast cannot read goes to extra, by the rules
    cols["assess_result_suggestion"] = suggestion
    for prop, detail in details.items():
        for name, values in detail.items():
            if name == "status" and (values := _int32(values)) is None:
                return None
            cols[f"assess_result_{prop}_{name}"] = values
    cols.update(fields)  # the remaining top-level strings and booleans, as converted
    if records is not None:
        extras = [unknown_keys(r) for r in records]
    table, duplicates = finish(cols, extras, project_id, synced_at, personal_data)
    return Normalized(table=table, duplicates=duplicates)


def skip_pandas_probe() -> None:
    """Let pyarrow convert Python lists without importing pandas first.

    pyarrow imports pandas on its first conversion of a Python list, only to ask whether the
    list is a pandas object (it never is here); the import costs a sync about 0.2-0.5 s and
    35 MB. With the import refused once, pyarrow remembers that pandas is absent for that
    question, and still imports it when a caller asks for pandas itself (``to_pandas()``,
    ``pipelines.query.read``). Nothing is changed when pandas is already imported."""
    if "pandas" in sys.modules:
        return
    refusal = _RefusePandas()
    sys.meta_path.insert(0, refusal)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(refusal)


class _RefusePandas:
    """An import finder that refuses pandas, for the one conversion of skip_pandas_probe."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not needed to convert lists")
