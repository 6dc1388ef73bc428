"""The Parquet lake: one file per creation day (UTC) and project, derived from the jobs table.

Layout under the lake root (``<data-dir>/lake`` or VOICEJOBS_LAKE_URI, a local directory or
``s3://bucket/prefix``): ``voice_training_jobs/create_day=YYYY-MM-DD/project_id=<id>/data.parquet``,
holding STORED_JOBS_SCHEMA (JOBS_SCHEMA + deleted_at), rewritten whole. Where and how files are
stored is lakestore.py's business, how the marked ones are read and written lake_export.py's;
this module decides what each file holds and when it is written.

The lake is derived data: partitions touched by a committed batch are marked in ``lake_dirty``
inside that transaction. A sync exports them once, when its run finishes (a standalone
``apply()`` right after its commit): each is replaced whole from the table (a temporary file
renamed into place, or one object upload) by ``export_dirty_partitions()``, which is safe to
re-run; only then is its mark cleared. A partition whose mark says its jobs are still the
jobs of its file, changed in place (``stamps_only``: in their stamps, synced_at and deleted_at,
as a job listed again unchanged or marked deleted changes them; and in the columns
``in_place`` names, as new versions of its jobs change them) gets a file made of its old one
with those columns spliced in (lake_splice.py), the same bytes an encoding from the table
gives, at a fraction of the cost; one whose old file cannot be trusted for that, or that gained
or lost a job, is encoded like the others. A crash between the
commit and the export leaves the marks, and the next export writes those partitions from the
table. A partition without a mark therefore always equals its file. A partition that cannot
be written (a full disk, a path in the way, a name too long) keeps its mark and its old file
without holding up the others; the run that left it so fails at its end with a
LakeExportError naming it (see RunLog.finish_run).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from contextlib import suppress
from datetime import date
from pathlib import Path
from urllib.parse import unquote

import duckdb

from pipelines.redact import redact
from pipelines.warehouse import db
from pipelines.warehouse.lake_export import (
    LAKE_FILE,
    LakeExport,
    _Failure,
    _NeedsLeanCap,
    _OutOfLeanMemory,
    _partition_table,
)
from pipelines.warehouse.lakestore import TEMPORARY, LakeStore
from pipelines.warehouse.marks import mark_lake
from pipelines.warehouse.tables import (
    JOBS_TABLE,
    WarehouseError,
    meta_value,
    put_meta,
    utc_day,
)

#: warehouse_meta's key for the place of the lake this warehouse last wrote (LakeStore.place).
LAKE_META_KEY = "lake"
_FIRST_EXPORT = "this warehouse has no record of writing the lake"
_PARTITION_KEY = re.compile(rf"create_day=(?P<day>[^/]+)/project_id=(?P<project>[^/]+)/{re.escape(LAKE_FILE)}")
log = logging.getLogger("voicejobs.warehouse")


class LakeExportError(WarehouseError):
    """Lake partitions that could not be written, every other one having been written.

    The warehouse keeps their rows and their dirty marks, so the next export writes them.
    ``failures`` holds (partition file, OSError) pairs, the file a Path or an s3:// URI; the message names the first one, its
    cause and the fix."""

    def __init__(self, failures: Sequence[tuple[Path | str, OSError]], store: LakeStore) -> None:
        self.failures = list(failures)
        path, exc = self.failures[0]
        more = len(self.failures) - 1
        others = f", as are {more} more partition{'s' if more != 1 else ''} that failed" if more else ""
        cause = " ".join(str(exc.strerror or exc).split())
        super().__init__(
            f"writing the lake file {path} failed ({cause}); {store.fix(exc, path)}, "
            f"then run the sync again (the warehouse keeps its data; the partition stays marked for export{others})"
        )


class Lake(LakeExport):
    """The lake kept right: the export after a batch, the export of dirty partitions, the lake
    marked whole when it moved or was lost."""

    def rebuild_lake(self) -> int:
        """Mark every partition (of the table, and of files already in the lake) dirty and export.

        For recovery after the lake was damaged or deleted; returns what export_dirty_partitions
        does. Temporary files that interrupted writes left behind are removed. (Every export
        does this itself when the lake is not where this warehouse last wrote it, or when a
        partition it left clean has no file: see _lake_lost.)"""
        self.mark_every_partition()
        return self.export_dirty_partitions()

    def mark_every_partition(self) -> int:
        """Mark dirty every partition the table holds and every one with a file in the lake
        (temporary files of interrupted writes removed), and record the lake's place as this
        warehouse's, in one transaction: the marks keep the work until it is done. Returns how
        many partitions are marked."""
        present = []
        for key in self.lake.files():
            if TEMPORARY.search(key):
                with suppress(OSError):
                    self.lake.remove(key)
                continue
            match = _PARTITION_KEY.fullmatch(key)
            if match:
                with suppress(ValueError):
                    present.append((unquote(match["project"]), date.fromisoformat(match["day"])))
        with self._cursor() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM lake_dirty")
                # Once each (a partition marked twice was counted twice by an export), no day no
                # partition: mark_lake's rules, as a batch marks.
                mark_lake(con, f"SELECT project_id, {utc_day('create_time')} FROM {JOBS_TABLE}")
                if present:
                    con.register("_present", _partition_table(present))
                    mark_lake(con, "SELECT project_id, create_day FROM _present")
                put_meta(con, LAKE_META_KEY, self.lake.place)
                ((marked,),) = con.execute("SELECT count(*) FROM lake_dirty").fetchall()
                con.execute("COMMIT")
            except BaseException:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        return marked

    def _mark_all_if_lost(self) -> None:
        """Before an export: every partition marked when the lake moved or was lost (_lake_lost)."""
        try:
            with self._cursor() as con:
                lost = self._lake_lost(con)
            if lost:
                marked = self.mark_every_partition()
                # A warehouse's first export (or its first since it began recording) is not news.
                level = logging.INFO if lost.startswith(_FIRST_EXPORT) else logging.WARNING
                log.log(level, "The lake: %s; writing all %d partition%s.", lost, marked, "s" if marked != 1 else "")
        except OSError as exc:  # the store did not answer the look: what is marked is written all the same
            log.warning("The lake at %s could not be checked (%s); writing the partitions marked, and the next "
                        "export checks again.", self.lake.root, redact(" ".join(str(exc.strerror or exc).split())))

    def _lake_lost(self, con: duckdb.DuckDBPyConnection) -> str | None:
        """Why the lake must be written whole before an export, or None. Two cheap checks: the
        lake is where this warehouse last wrote it (``warehouse_meta``; a warehouse that never
        recorded it writes it whole once), and the partition of the table's first row, unless
        marked, has its file (a lake removed by hand). A single file removed by hand elsewhere
        goes unnoticed: rebuild_lake() writes everything."""
        recorded = meta_value(con, LAKE_META_KEY)
        if recorded is None:
            return f"{_FIRST_EXPORT} at {self.lake.place}"
        if recorded != self.lake.place:
            return f"it was written at {recorded}, and is now at {self.lake.place}"
        first = con.execute(
            f"SELECT j.project_id, {utc_day('j.create_time')} FROM (SELECT project_id, create_time FROM {JOBS_TABLE}"
            " WHERE create_time IS NOT NULL LIMIT 1) j WHERE NOT EXISTS (SELECT 1 FROM lake_dirty d"
            f" WHERE d.project_id = j.project_id AND d.create_day = {utc_day('j.create_time')})"
        ).fetchall()
        if first and not self.lake.exists(self.partition_key(*first[0])):
            return f"the file of a partition written before is missing ({self.partition_path(*first[0])})"
        return None

    def export_dirty_partitions(self) -> int:
        """Rewrite every lake partition marked dirty; returns how many files were written or removed.

        One query reads the rows of up to ``EXPORT_PARTITIONS`` dirty partitions and about
        ``EXPORT_ROWS`` rows (a query per partition costs far more than the files themselves);
        the result is sorted and sliced per partition in Arrow. A partition that cannot be written keeps its mark and does not stop the
        others: once every other one is written, LakeExportError names it and its cause.
        """
        done, failures = self._export_dirty()
        self._raise_failures(failures)
        return done

    def export_small_dirty_partitions(self) -> int | None:
        """export_dirty_partitions() if the export needs no lean memory cap (the cap is the
        database's, so a big export must be the only work on it): a small one may run in a
        thread beside other work on the warehouse, such as the SQL models' refresh. None, and
        nothing written, for a big one (export_dirty_partitions() then, alone)."""
        try:
            done, failures = self._export_dirty(beside=True)
        except _NeedsLeanCap:
            return None
        except duckdb.OutOfMemoryException as exc:
            # What was written is done (its marks cleared); the rest is left to the export alone.
            log.info("The lake export beside other work ran out of DuckDB's memory (%s); the rest is exported "
                     "alone.", " ".join(str(exc).split())[:160])
            return None
        self._raise_failures(failures)
        return done

    def _raise_failures(self, failures: list[_Failure]) -> None:
        if failures:
            raise LakeExportError([(path, exc) for _, path, exc in failures], self.lake)

    def _export_dirty(self, skip: Collection[tuple[str, date]] = (), *, beside: bool = False
                      ) -> tuple[int, list[_Failure]]:
        """export_dirty_partitions() without raising, leaving out ``skip``: (files written, failures).
        With ``beside``, _NeedsLeanCap (nothing written) for an export that needs the lean cap."""
        self._mark_all_if_lost()
        done: list[int] = []
        failures: list[_Failure] = []
        try:
            self._export_marked(skip, done, failures, lean=True, beside=beside)
        except _OutOfLeanMemory as exc:
            # Rows far wider than usual can need more than the lean cap for one read. What was
            # written is done (its marks cleared); the rest goes again under the usual cap, but
            # for the partitions that already failed.
            log.info("The lake export needed more memory than DuckDB's lean cap of %s (%s); exporting the rest "
                     "under %s.", db.DUCKDB_LEAN_MEMORY_LIMIT, " ".join(str(exc.__cause__).split())[:160],
                     db.DUCKDB_MEMORY_LIMIT)
            self._export_marked({*skip, *(key for key, _, _ in failures)}, done, failures, lean=False)
        return sum(done), failures
