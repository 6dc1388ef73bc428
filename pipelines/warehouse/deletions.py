"""Deletion evidence inside a batch's transaction: the ranges a source listed completely, the
stored jobs those listings lacked, and the marks set on them (never a row removed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.warehouse.marks import mark_lake, mark_model_jobs
from pipelines.warehouse.tables import _TS, JOBS_TABLE, _aware, utc_day


@dataclass(frozen=True)
class ReconciledRange:
    """Creation times [since, until) of one project that the source listed completely, and
    every job_id that listing held (quarantined records too: they are not deleted)."""

    project_id: str
    since: datetime
    until: datetime
    seen: Sequence[str]


class Deletions:
    """Marking jobs deleted (a mixin of the warehouse)."""

    @staticmethod
    def _mark_deleted(
        con: duckdb.DuckDBPyConnection,
        deleted: Sequence[tuple[str, str]],
        deleted_at: datetime,
    ) -> list[tuple[str, date, str]]:
        """Mark ``deleted`` keys; returns (project_id, create day, job_id) of the rows marked."""
        keys = pa.table(
            {
                "project_id": pa.array([k[0] for k in deleted], pa.string()),
                "job_id": pa.array([k[1] for k in deleted], pa.string()),
            }
        )
        con.register("_deleted", keys)
        # The rows are found first and then updated by rowid: an UPDATE ... RETURNING over the
        # jobs table took 0.65-0.8 s at a million jobs whatever it returned, the same UPDATE
        # without RETURNING 0.06 s, and this lookup and update 0.06 s together.
        marked = con.execute(
            f"""SELECT j.rowid, j.project_id, {utc_day('j.create_time')} AS day, j.job_id FROM {JOBS_TABLE} j
            SEMI JOIN _deleted d ON j.project_id = d.project_id AND j.job_id = d.job_id
            WHERE j.deleted_at IS NULL"""
        ).fetchall()
        if marked:
            con.register("_deleted_days", pa.table({
                "row": pa.array([r for r, _, _, _ in marked], pa.int64()),
                "project_id": pa.array([p for _, p, _, _ in marked], pa.string()),
                "create_day": pa.array([d for _, _, d, _ in marked], pa.date32()),
                "job_id": pa.array([j for _, _, _, j in marked], pa.string()),
            }))
            con.execute(f"UPDATE {JOBS_TABLE} j SET deleted_at = ? FROM _deleted_days d WHERE j.rowid = d.row",
                        [deleted_at])
            mark_lake(con, "SELECT project_id, create_day FROM _deleted_days", stamps_only=True)
            mark_model_jobs(con, "SELECT project_id, job_id FROM _deleted_days")
        return [(p, d, j) for _, p, d, j in marked]

    @staticmethod
    def _unlisted(con: duckdb.DuckDBPyConnection, reconciled: Sequence[ReconciledRange]) -> list[tuple[str, str]]:
        """Live stored jobs inside ranges listed completely that the listing did not hold.

        Runs after the upsert of the same transaction, so it sees every earlier batch."""
        con.register("_recon", pa.table({
            "idx": pa.array(range(len(reconciled)), pa.int32()),
            "project_id": pa.array([r.project_id for r in reconciled], pa.string()),
            "since": pa.array([_aware(r.since, "since") for r in reconciled], _TS),
            "until": pa.array([_aware(r.until, "until") for r in reconciled], _TS),
        }))
        lengths = [len(r.seen) for r in reconciled]
        con.register("_seen", pa.table({
            "idx": pa.array(np.repeat(np.arange(len(reconciled), dtype=np.int32), lengths)),
            "job_id": pa.array([job_id for r in reconciled for job_id in r.seen], pa.string()),
        }))
        # Each range is joined by the creation days it spans, then by its times: joined on the
        # project alone, every stored job was held against every range (116 ranges at a
        # million jobs: 0.19-0.25 s, by days 0.03-0.05 s).
        return [tuple(r) for r in con.execute(
            f"""WITH r AS (
                SELECT idx, project_id, since, until, unnest(generate_series(
                    {utc_day('since')}, {utc_day('until')}, INTERVAL 1 DAY))::DATE AS day
                FROM _recon)
            SELECT j.project_id, j.job_id FROM {JOBS_TABLE} j JOIN r
                ON j.project_id = r.project_id AND {utc_day('j.create_time')} = r.day
               AND j.create_time >= r.since AND j.create_time < r.until
            WHERE j.deleted_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM _seen s WHERE s.idx = r.idx AND s.job_id = j.job_id)
            ORDER BY 1, 2"""
        ).fetchall()]
