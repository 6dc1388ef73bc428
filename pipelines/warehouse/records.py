"""What a batch records besides the jobs: the windows it listed, the records it quarantined,
and the watermarks change capture starts from. Written inside the batch's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from pipelines.ingest.schema import Quarantined
from pipelines.warehouse.tables import _aware

#: Window bounds are kept to the microsecond (an owner range ends 1 us before the next one).
_TS_US = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class WindowRecord:
    """One fetched listing window: what the API counted and what the sync got."""

    project_id: str
    kind: str
    since: datetime
    until: datetime
    api_count: int
    fetched: int
    pages: int
    listed_at: datetime | None = None  # the source's clock when the window was listed


class Records:
    """The batch's bookkeeping rows (a mixin of the warehouse)."""

    @staticmethod
    def _insert_windows(
        con: duckdb.DuckDBPyConnection, run_id: str, windows: Sequence[WindowRecord], now: datetime
    ) -> None:
        n = len(windows)
        con.register("_windows_in", pa.table({
            "run_id": pa.array([run_id] * n, pa.string()),
            "project_id": pa.array([w.project_id for w in windows], pa.string()),
            "kind": pa.array([w.kind for w in windows], pa.string()),
            "since": pa.array([_aware(w.since, "since") for w in windows], _TS_US),
            "until": pa.array([_aware(w.until, "until") for w in windows], _TS_US),
            "api_count": pa.array([w.api_count for w in windows], pa.int64()),
            "fetched": pa.array([w.fetched for w in windows], pa.int64()),
            "pages": pa.array([w.pages for w in windows], pa.int64()),
            "listed_at": pa.array([w.listed_at for w in windows], _TS_US),
        }))
        con.execute(
            "INSERT INTO sync_windows (run_id, project_id, kind, since, until, api_count, fetched, pages,"
            " synced_at, listed_at) SELECT run_id, project_id, kind, since, until, api_count, fetched, pages,"
            " ?, listed_at FROM _windows_in",
            [now],
        )

    @staticmethod
    def _insert_quarantine(
        con: duckdb.DuckDBPyConnection, run_id: str, quarantine: Sequence[Quarantined], now: datetime
    ) -> None:
        table = pa.table(
            {
                "run_id": pa.array([run_id] * len(quarantine), pa.string()),
                "project_id": pa.array([q.project_id for q in quarantine], pa.string()),
                "job_id": pa.array([q.job_id for q in quarantine], pa.string()),
                "reason": pa.array([q.reason for q in quarantine], pa.string()),
                "raw_record": pa.array([q.raw_record for q in quarantine], pa.string()),
            }
        )
        con.register("_quarantine_in", table)
        try:
            con.execute("INSERT INTO quarantine SELECT *, ? FROM _quarantine_in", [now])
        finally:
            con.unregister("_quarantine_in")

    @staticmethod
    def _advance_watermarks(
        con: duckdb.DuckDBPyConnection, watermarks: Mapping[str, datetime], now: datetime
    ) -> None:
        for project_id, mark in watermarks.items():
            mark = _aware(mark, "watermark")
            updated = con.execute(
                "UPDATE sync_state SET watermark = greatest(watermark, ?), updated_at = ?"
                " WHERE project_id = ? RETURNING project_id",
                [mark, now, project_id],
            ).fetchall()
            if not updated:
                con.execute("INSERT INTO sync_state VALUES (?, ?, ?)", [project_id, mark, now])
