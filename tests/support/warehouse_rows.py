"""Job batches for Warehouse tests, and reading back what the warehouse and its lake hold.

``rec()`` builds one API record, ``jobs()`` normalizes records into the batch ``Warehouse.apply``
takes; ``sql()``, ``states()`` and ``lake_rows()`` read the result back (the lake through
:mod:`tests.support.lake`, so local and S3 lakes read alike). For a local lake, ``dirty()``,
``table_partitions()`` and ``assert_exported_except()`` say which partitions are exported, and
``block_with_a_directory()`` makes one impossible to write, for root too.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.ingest import normalize
from pipelines.warehouse import STORED_JOBS_SCHEMA, Warehouse, spool
from pipelines.warehouse.tables import JOBS_TABLE
from tests.support.lake import lake_dataset

DAY1 = datetime(2025, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
SYNC1 = datetime(2025, 3, 5, 10, tzinfo=UTC)
SYNC2 = SYNC1 + timedelta(hours=1)


def rec(
    job_id: str, state: str = "CREATING", *, created: datetime = DAY1, updated_min: int | None = 0, **kw
) -> dict:
    r = {"job_id": job_id, "state": state, "create_time": int(created.timestamp())}
    if updated_min is not None:
        r["lastupdate_time"] = int((created + timedelta(minutes=updated_min)).timestamp() * 1000)
    return r | kw


def jobs(records: list[dict], project_id: str = "p1", synced_at: datetime = SYNC1) -> pa.Table:
    out = normalize(records, project_id, synced_at)
    assert not out.quarantine
    return out.table


def exports_from_the_table(monkeypatch) -> None:
    """Make every lake export read its partitions from the table, as it does for a partition the
    run's spool does not hold (pipelines/warehouse/spool.py)."""
    monkeypatch.setattr(spool.LakeSpool, "holds", lambda self, project_id, day, rows: False)


def sql(wh: Warehouse, query: str, params: list | None = None) -> list[tuple]:
    with wh.connect() as con:
        return con.execute(query, params or []).fetchall()


def live_job_ids(wh: Warehouse, project_id: str, since: datetime, until: datetime) -> set[str]:
    """job_ids of the not-deleted jobs of ``project_id`` created in [since, until)."""
    rows = sql(wh, f"SELECT job_id FROM {JOBS_TABLE} WHERE project_id = ? AND deleted_at IS NULL"
                   " AND create_time >= ? AND create_time < ?", [project_id, since, until])
    return {job_id for (job_id,) in rows}


def states(wh: Warehouse) -> dict[str, str]:
    return {r["job_id"]: r["state"] for r in wh.jobs_table().to_pylist()}


def lake_rows(wh: Warehouse) -> list[dict]:
    lake = lake_dataset(wh).to_table()
    rows = lake.drop_columns(["create_day"]).cast(STORED_JOBS_SCHEMA).to_pylist()
    return sorted(rows, key=lambda r: (r["project_id"], r["job_id"]))


def dirty(wh: Warehouse) -> list[tuple[str, date]]:
    with wh.connect() as con:
        return con.execute("SELECT project_id, create_day FROM lake_dirty ORDER BY 1, 2").fetchall()


def table_partitions(wh: Warehouse) -> dict[tuple[str, date], list[dict]]:
    """The jobs table cut into lake partitions: (project_id, UTC creation day) -> rows by job_id."""
    parts: dict[tuple[str, date], list[dict]] = {}
    for row in wh.jobs_table().to_pylist():
        parts.setdefault((row["project_id"], row["create_time"].astimezone(UTC).date()), []).append(row)
    return {key: sorted(rows, key=lambda r: r["job_id"]) for key, rows in parts.items()}


def assert_exported_except(wh: Warehouse, stuck: set[tuple[str, date]]) -> None:
    """Every partition but ``stuck`` has a file holding exactly its table rows."""
    parts = table_partitions(wh)
    assert stuck <= parts.keys()
    for key, rows in parts.items():
        if key in stuck:
            continue
        path = wh.partition_path(*key)
        assert path.is_file(), f"{key} was not exported"
        assert pq.read_table(path).cast(STORED_JOBS_SCHEMA).to_pylist() == rows, f"{key} differs from the table"


def block_with_a_directory(path: Path) -> None:
    """Put a directory where the partition's file belongs: replacing it fails with EISDIR, root or not."""
    if path.exists():
        path.unlink()
    path.mkdir(parents=True)
    (path / "in-the-way").write_text("x")


def lock_probe(path: Path) -> str:
    """Try to open ``path`` read-only from another process: 'opened' or 'locked'."""
    code = (
        "import duckdb, sys\n"
        "try:\n"
        f"    duckdb.connect({str(path)!r}, read_only=True).close(); print('opened')\n"
        "except duckdb.IOException:\n"
        "    print('locked')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
