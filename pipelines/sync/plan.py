"""Planning a sync: its mode, and the windows (tasks) each mode reads.

Intervals, stated once: a listing window is closed, ``[since, until]``, as the API's
``create_since``/``create_until`` filters are; the rows a window keeps (its owner range) are
half-open, ``[owner_since, owner_until)``, so adjacent creation days, which share their
midnight, each own it once (see :mod:`pipelines.ingest.screen`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from pipelines.contract import PAGE_LIMIT
from pipelines.metastudio.paging import Window, day_window
from pipelines.warehouse.tables import day_runs

if TYPE_CHECKING:
    from pipelines.sync.buffer import Run

log = logging.getLogger("voicejobs.sync")

MS = timedelta(milliseconds=1)
#: An update window is split into parts of no fewer pages than this (see update_task).
UPDATE_SPLIT_PAGES = 4


class Mode(enum.StrEnum):
    """What a sync reads. ``reconcile`` reads like ``days``; it is named apart because it is
    run for its deletions (``voicejobs reconcile``, the weekly Dagster job)."""

    DAYS = "days"
    INCREMENTAL = "incremental"
    RECONCILE = "reconcile"

    @property
    def by_creation_day(self) -> bool:
        return self is not Mode.INCREMENTAL


def days_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--until {last} is before --since {first}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class Task:
    project_id: str
    window: Window
    kind: str  # "create" or "update"
    owner_since: datetime | None = None  # rows kept: create_time in [owner_since, owner_until)
    owner_until: datetime | None = None
    reconcile: bool = False  # mark stored jobs missing from a complete window as deleted
    #: Listed with more jobs than this, the window is split (None: the run's split threshold).
    split_threshold: int | None = None


def update_task(project_id: str, window: Window, split_threshold: int, max_in_flight: int) -> Task:
    """Change capture's window of jobs updated in ``window``, listed alone: split at the share
    of the run's threshold that each request slot would page (at least a few pages), so its
    pages run side by side. Keyset paging reads one window's pages one after another, and at
    20 ms a million-job change capture's 141 pages took 2.2 s as the two halves of one split."""
    return Task(project_id, window, "update",
                split_threshold=max(UPDATE_SPLIT_PAGES * PAGE_LIMIT, split_threshold // max_in_flight))


def range_tasks(project_id: str, windows: Sequence[Window]) -> list[Task]:
    """Reconciling tasks owning each closed range (to the millisecond) completely."""
    return [Task(project_id, w, "create", w.since, w.until + MS, True) for w in windows]


def day_tasks(project_ids: Sequence[str], days: Sequence[date], reconcile: bool) -> list[Task]:
    tasks = []
    for project_id in project_ids:
        for day in days:
            window = day_window(day)
            tasks.append(Task(project_id, window, "create", window.since, window.until, reconcile))
    return tasks


def gap_days(run: Run, project_id: str, not_after: datetime) -> tuple[list[date], datetime | None]:
    """Creation days change capture must backfill, and when the days already listed were listed.

    Change capture reads every change since ``reference - lookback``: the watermark, or
    before the first one, the oldest time a listed day was listed. Jobs created since then
    are in that update window; the days before it that no run listed whole are gaps."""
    settings = run.settings
    listed = run.warehouse.listed_days(project_id, settings.first_day, not_after.date())
    reference = run.warehouse.watermark(project_id) or (min(listed.values()) if listed else None)
    if reference is None:
        return days_between(settings.first_day, not_after.date()), None
    last = (reference - timedelta(seconds=settings.lookback_seconds)).date() - timedelta(days=1)
    gaps = [day for day in days_between(settings.first_day, last) if day not in listed] \
        if last >= settings.first_day else []
    return gaps, reference


def describe_days(days: Sequence[date], most: int = 3) -> str:
    """Days as runs of consecutive days: "2025-01-01..2025-11-27 and 2026-11-02"."""
    runs = day_runs(days)
    parts = [f"{a}..{b}" if a != b else str(a) for a, b in runs[:most]]
    if len(runs) > most:
        parts.append(f"{len(runs) - most} more ranges")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
