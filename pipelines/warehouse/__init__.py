"""Storage: the DuckDB warehouse, its SCD2 history, the Parquet lake and the serving snapshot.

Layout under `data_dir` (see the shared contract):

- `warehouse.duckdb`: read-write, written only by the sync. Tables `voice_training_jobs`
  (JOBS_SCHEMA + deleted_at + the current version's valid_from, observed_at, row_hash),
  `voice_training_job_past_versions` (the versions a newer one replaced), the views
  `voice_training_job_history` (SCD2: the past versions and the current ones) and
  `voice_training_job_transitions`, `sync_windows`, `sync_runs`, `sync_state`,
  `quarantine`, `lake_dirty`, `models_dirty`, `schema_migrations`; schema `analytics` for the SQL
  models.
- `lake/voice_training_jobs/create_day=YYYY-MM-DD/project_id=<id>/data.parquet`: one file
  per creation day (UTC) and project, holding JOBS_SCHEMA + deleted_at, rewritten whole.
  VOICEJOBS_LAKE_URI puts the lake elsewhere: another directory, or s3://bucket/prefix (the
  same layout under the prefix).
- `serving.duckdb`: a copy of the warehouse taken after a CHECKPOINT (of the file itself when it
  is in the serving storage format), without the sync's bookkeeping, swapped in with
  os.replace; BI tools open it read-only. `.serving-spare.duckdb`: the snapshot it replaced,
  which the next one is written into (see ``serving``).
- `.lake-spool-<run_id>/`: while a run lasts, the jobs it appended that the table never held,
  for its lake export (see ``spool``).

One module per concern, each a room of the one :class:`Warehouse`:

- ``tables``: table names, the stored jobs schema, the version hash, WarehouseError.
- ``db``: connections, DuckDB settings, migrations (the SQL files in ``migrations/``).
- ``apply``: the apply transaction: jobs never seen appended, known ones upserted (a
  replaced version kept as a past version), the lake partitions marked for export.
- ``deletions``: the ranges a source listed completely and the deletion marks they prove.
- ``marks``: what a batch marks for later: lake partitions to export, days the models rebuild.
- ``records``: what a batch records besides jobs: windows listed, quarantine, watermarks.
- ``lake``: when the lake is written (the export of dirty partitions, once per run), rebuild, a lost lake.
- ``lake_export``: how: partition keys, grouped reads, whole encodes and splices, marks cleared.
- ``lakestore``: where the lake's files live, a local directory or an S3-compatible store.
- ``spool``: a run's appended rows kept in Arrow IPC files, which its export writes from.
- ``serving``: the serving snapshot.
- ``runlog``: the run log and the readers the sync plans with (watermarks, listed days,
  live jobs, jobs_table).

Warehouse is composed from one mixin per room rather than a facade over room objects: the
rooms share one connection, lock and per-run state, call each other (an apply exports the lake,
closing a run retries the lake), and callers and tests address its methods on the class.
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch pipelines.warehouse.os.fsync and .replace)
import threading
from pathlib import Path

from pipelines.settings import ObjectStoreAccess, Settings
from pipelines.warehouse.apply import Apply, ApplyStats
from pipelines.warehouse.db import (
    DUCKDB_CHECKPOINT_THRESHOLD,
    DUCKDB_MEMORY_LIMIT,
    DUCKDB_THREADS,
    WAREHOUSE_VERSION,
    free_pinned,
)
from pipelines.warehouse.deletions import ReconciledRange
from pipelines.warehouse.lake import LakeExportError
from pipelines.warehouse.lake_export import EXPORT_PARTITIONS, EXPORT_ROWS, LAKE_FILE
from pipelines.warehouse.lakestore import LakeStore, LocalLakeStore, open_lake_store
from pipelines.warehouse.records import WindowRecord
from pipelines.warehouse.runlog import RunLog, count_in_ranges
from pipelines.warehouse.s3store import S3LakeStore
from pipelines.warehouse.serving import SERVING_FILE, SERVING_STORAGE_VERSION, SYNC_ONLY_TABLES, Serving
from pipelines.warehouse.tables import (
    HISTORY_TABLE,
    JOB_COLUMNS,
    JOBS_TABLE,
    PAST_VERSIONS_TABLE,
    ROW_HASH_ALGORITHM,
    STORED_JOBS_SCHEMA,
    TRANSITIONS_VIEW,
    WarehouseError,
    _is_disk_error,
    probe_writable,
)

__all__ = [
    "DUCKDB_CHECKPOINT_THRESHOLD",
    "DUCKDB_MEMORY_LIMIT",
    "DUCKDB_THREADS",
    "EXPORT_PARTITIONS",
    "EXPORT_ROWS",
    "HISTORY_TABLE",
    "JOB_COLUMNS",
    "JOBS_TABLE",
    "LAKE_FILE",
    "PAST_VERSIONS_TABLE",
    "ROW_HASH_ALGORITHM",
    "SERVING_FILE",
    "SERVING_STORAGE_VERSION",
    "STORED_JOBS_SCHEMA",
    "SYNC_ONLY_TABLES",
    "TRANSITIONS_VIEW",
    "WAREHOUSE_VERSION",
    "ApplyStats",
    "LakeExportError",
    "LakeStore",
    "LocalLakeStore",
    "ReconciledRange",
    "S3LakeStore",
    "Warehouse",
    "WarehouseError",
    "WindowRecord",
    "_is_disk_error",
    "free_pinned",
    "count_in_ranges",
]


class Warehouse(RunLog, Apply, Serving):
    """The storage of one data directory (and of its lake, wherever that is). See db.py for the
    connection model.

    ``lake_uri`` is where the lake goes: None for ``<data_dir>/lake``, a local directory, or
    ``s3://bucket/prefix`` reached with ``object_store``. Opening one checks that the data
    directory and the lake can be written, so a wrong path, endpoint or key is reported before
    any work is done."""

    def __init__(
        self, data_dir: str | Path, *, lake_uri: str | None = None, object_store: ObjectStoreAccess | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "warehouse.duckdb"
        self.serving_path = self.data_dir / SERVING_FILE
        self.lake = open_lake_store(lake_uri, self.data_dir, object_store)
        #: The lake's local directory; None when the lake is in object storage.
        self.lake_dir: Path | None = self.lake.root_dir if isinstance(self.lake, LocalLakeStore) else None
        self._con = None
        self._lock = threading.RLock()
        self._schema_ready = False
        # run_id -> lake partitions that failed to export during that run: later batches of
        # the run skip them, finish_run() tries them once more (see Apply.apply()).
        self._stuck = {}
        # run_id -> the rows that live run appended, for its lake export (see spool.py).
        self._spools = {}
        self._fd = None
        try:
            probe_writable(self.data_dir)
        except OSError as exc:
            raise WarehouseError(
                f"cannot create or write the data directory {self.data_dir} ({exc.strerror or exc}); "
                "choose a writable directory (VOICEJOBS_DATA_DIR or --data-dir) or fix its permissions"
            ) from None
        self.lake.check()

    @classmethod
    def for_settings(cls, settings: Settings) -> Warehouse:
        """The warehouse and lake that ``settings`` name."""
        return cls(settings.data_dir, lake_uri=settings.lake_uri, object_store=settings.object_store)
