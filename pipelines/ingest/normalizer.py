"""Normalization of a window's records into JOBS_SCHEMA: the fast path, else the rules.

The rules (:mod:`pipelines.ingest.rules`) define the result; the fast path
(:mod:`pipelines.ingest.arrow`) gives the same table for records that follow the documented
shapes and declines every other window, which the rules then take whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipelines.ingest.arrow import normalize_fast
from pipelines.ingest.finish import check_arguments
from pipelines.ingest.rules import normalize_by_rules
from pipelines.ingest.schema import Normalized


def normalize(records: Sequence[Any], project_id: str, synced_at: datetime, *,
              personal_data: str = "mask") -> Normalized:
    """Raw `TrainingJobInfo` records of one project as JOBS_SCHEMA rows plus the records
    quarantined (see :mod:`pipelines.ingest.rules` for every rule). Never raises on bad data."""
    check_arguments(project_id, synced_at, personal_data)
    fast = normalize_fast(records, project_id, synced_at, personal_data) if type(records) is list else None
    if fast is not None:
        return fast
    return normalize_by_rules(records, project_id, synced_at, personal_data=personal_data)
