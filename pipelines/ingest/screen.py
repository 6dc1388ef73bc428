"""Screening of a fetched window's normalized rows: which it owns, and which no table should hold.

Every record the API returns is stored or quarantined with a reason; nothing is dropped
silently. After normalization, a creation window's rows fall in three groups:

- owned: ``create_time`` in the window's owner range (half-open ``[since, until)``): kept;
- a neighbour's: inside the listed (closed) window but outside the owner range, i.e. on
  the instant two adjacent windows share: left to the neighbour, which lists it too;
- outside the listed window altogether: the server listed a job whose ``create_time`` the
  filter excludes (a server bug or a corrupt value): quarantined, since no window owns it.

A record larger than :data:`MAX_RECORD_BYTES` of text is quarantined too, with its large
values cut from the raw record: a legal but huge field must not run the warehouse out of
memory, and a real job is a few kilobytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contract import TIMESTAMP, full_record
from pipelines.ingest.mask import raw_json
from pipelines.ingest.schema import Quarantined

#: Bytes of text one record may hold; a real job holds a few kilobytes.
MAX_RECORD_BYTES = 1 << 20
#: In a quarantined raw record, text values longer than this are replaced by a note.
KEPT_VALUE_CHARS = 4096


def _ts(value: datetime) -> pa.Scalar:
    return pa.scalar(value, TIMESTAMP)


def split_owned(table: pa.Table, listed: tuple[datetime, datetime], owner: tuple[datetime, datetime]
                ) -> tuple[pa.Table, pa.Table]:
    """(rows the owner range holds, rows outside the listed window); a neighbour's rows are neither."""
    created = table["create_time"]
    outside = pc.or_(pc.less(created, _ts(listed[0])), pc.greater(created, _ts(listed[1])))
    # A window cut short (at the source's now) lists less than its owner range: what lies
    # between was not asked for, so it is outside, not owned.
    in_range = pc.and_(pc.greater_equal(created, _ts(owner[0])), pc.less(created, _ts(owner[1])))
    owned = pc.and_(in_range, pc.invert(outside))
    # The usual window owns every row it lists: the table as it is, not two filtered copies of
    # its columns (a row without a creation time is neither, so a null leaves this path).
    if pc.all(owned, skip_nulls=False).as_py() is True:
        return table, table.slice(0, 0)
    return table.filter(owned), table.filter(outside)


def oversized(table: pa.Table, limit: int = MAX_RECORD_BYTES) -> pa.Array | None:
    """A boolean mask of rows holding more than ``limit`` bytes of text, or None when no row can."""
    if table.num_rows == 0 or table.nbytes <= limit:
        return None
    sizes = None
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            length = pc.fill_null(pc.binary_length(column), 0)
            sizes = length if sizes is None else pc.add(sizes, length)
    if sizes is None:
        return None
    mask = pc.greater(sizes, limit)
    return mask if pc.any(mask).as_py() else None


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > KEPT_VALUE_CHARS:
        return f"<{len(value):,} characters, not kept>"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


def quarantine_rows(rows: pa.Table, raw_by_id: Mapping[str, Any], project_id: str, reason: str,
                    personal_data: str) -> list[Quarantined]:
    """Quarantine records of ``rows`` (by job_id), keeping their raw form with huge values cut."""
    return [
        Quarantined(project_id, job_id, reason, raw_json(_cut(raw_by_id.get(job_id)), personal_data))
        for job_id in rows["job_id"].to_pylist()
    ]


def raw_index(records: Iterable[Any]) -> dict[str, Any]:
    """job_id -> raw record, for the few records a screen quarantines."""
    return {r["job_id"]: full_record(r) for r in records if isinstance(r, dict) and isinstance(r.get("job_id"), str)}
