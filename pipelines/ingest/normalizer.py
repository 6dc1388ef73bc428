"""Normalization of a window's records into JOBS_SCHEMA: the fast path, else the rules.

The rules (:mod:`pipelines.ingest.rules`) define the result; the fast path
(:mod:`pipelines.ingest.arrow`) gives the same table for records that follow the documented
shapes and declines every other window, which the rules then take whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipelines.contract import WireJob, full_record
from pipelines.ingest.arrow import normalize_fast
from pipelines.ingest.finish import check_arguments
from pipelines.ingest.rules import normalize_by_rules
from pipelines.ingest.schema import Normalized
from pipelines.ingest.wire import normalize_wire


def normalize(records: Sequence[Any], project_id: str, synced_at: datetime, *,
              personal_data: str = "mask") -> Normalized:
    """Raw `TrainingJobInfo` records of one project as JOBS_SCHEMA rows plus the records
    quarantined (see :mod:`pipelines.ingest.rules` for every rule). Never raises on bad data."""
    check_arguments(project_id, synced_at, personal_data)
    if type(records) is list and records and all(type(r) is WireJob for r in records):
        fast = normalize_wire(records, project_id, synced_at, personal_data)
        if fast is not None:
            return fast
    records = _decoded(records)
    fast = normalize_fast(records, project_id, synced_at, personal_data) if type(records) is list else None
    if fast is not None:
        return fast
    return normalize_by_rules(records, project_id, synced_at, personal_data=personal_data)


def normalize_windows(windows: Sequence[Sequence[Any]], project_id: str, synced_at: datetime, *,
                      personal_data: str = "mask") -> list[Normalized]:
    """``normalize`` of each window's records, converted in one pass where the fast path takes
    them all: a window's fixed cost (a few milliseconds of Arrow calls) is paid once for many
    small windows. Duplicates are resolved within each window, as ``normalize`` does, never
    across windows. Identical to calling ``normalize`` on each window."""
    check_arguments(project_id, synced_at, personal_data)
    sizes = [len(records) for records in windows]
    records = [r for window in windows for r in window]
    listed = [type(r) is WireJob for r in records]  # jobs as a sync's paging leaves them: bytes
    together = normalize_wire(records, project_id, synced_at, personal_data) if records and all(listed) else None
    if together is None or together.duplicates:  # decoded records decide, as for any caller
        if any(listed):
            windows = [_decoded(window) for window in windows]
            records = [r for window in windows for r in window]
        together = normalize_fast(records, project_id, synced_at, personal_data) if len(windows) > 1 else None
    if together is None or together.duplicates:  # some window needs the rules, or has duplicates
        return [normalize(list(window), project_id, synced_at, personal_data=personal_data) for window in windows]
    out, offset = [], 0
    for size in sizes:
        out.append(Normalized(table=together.table.slice(offset, size), slice_of=together.table))
        offset += size
    return out


def _decoded(records: Sequence[Any]) -> Sequence[Any]:
    """The records with every WireJob decoded whole (the dicts the rules read)."""
    if not any(type(r) is WireJob for r in records):
        return records
    return [full_record(r) for r in records]
