"""The Parquet lake: one file per creation day (UTC) and project, derived from the jobs table.

Layout under the lake root (``<data-dir>/lake`` or VOICEJOBS_LAKE_URI, a local directory or
``s3://bucket/prefix``): ``voice_training_jobs/create_day=YYYY-MM-DD/project_id=<id>/data.parquet``,
holding STORED_JOBS_SCHEMA (JOBS_SCHEMA + deleted_at), rewritten whole. Where and how files are
stored is lakestore.py's business; this module decides what each file holds.

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
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext, suppress
from datetime import date, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.arrowpool import arrow_on_malloc
from pipelines.crashpoints import crashpoint
from pipelines.redact import redact
from pipelines.warehouse import db
from pipelines.warehouse.db import Connections
from pipelines.warehouse.lake_splice import STAMPS, spliced_file
from pipelines.warehouse.lakestore import TEMPORARY, LakeStore
from pipelines.warehouse.marks import IN_PLACE_COLUMNS, mark_lake
from pipelines.warehouse.tables import (
    _COLS,
    JOBS_TABLE,
    STORED_JOBS_SCHEMA,
    WarehouseError,
    day_runs,
    meta_value,
    put_meta,
    utc_day,
    utc_days,
)

EXPORT_PARTITIONS = 64  # lake partitions read per query at most ...
# ... and about this many rows (a partition bigger than that is read alone). Each query scans
# the row groups its days lie in: at 1,000,000 jobs, 10,000-row reads rescanned them 5-10
# times (a full export 16.8 s); 25,000 took 12.1 s for 10 MB more. With a group written while
# the next is read, three groups' rows can be held at once: 16,000 rows per read keep the
# peak within 10 MB of one 25,000-row group (9.2 s for the full export, 11.0 s unpipelined).
EXPORT_ROWS = 16_000
# A splice reads a few narrow columns of a row (job_id, the stamps, any changed in place), not
# the 62 of a whole one: its reads take this many rows. A million-job change capture spliced 97 partitions (409,474 rows)
# in 23 reads of EXPORT_ROWS rows, 0.24 s of DuckDB; in 7 of these, 0.10-0.13 s.
SPLICE_ROWS = 4 * EXPORT_ROWS
# A partition bigger than EXPORT_ROWS (a burst day) is read and written in pieces of about
# this many rows, each a row group of its file: at a million jobs, the 41,000-row day held 29 MB
# of rows and as much again sorted while it was written.
EXPORT_BATCH_ROWS = 8_192
LAKE_FILE = "data.parquet"
#: warehouse_meta's key for the place of the lake this warehouse last wrote (LakeStore.place).
LAKE_META_KEY = "lake"
_FIRST_EXPORT = "this warehouse has no record of writing the lake"
_PARTITION_KEY = re.compile(rf"create_day=(?P<day>[^/]+)/project_id=(?P<project>[^/]+)/{re.escape(LAKE_FILE)}")
# A partition that could not be written: (project_id, day), where its file is, the error.
_Failure = tuple[tuple[str, date], Path | str, OSError]
T = TypeVar("T")
log = logging.getLogger("voicejobs.warehouse")
# What writing one group of partitions gave: per partition (project_id, day), None or its error.
_Written = list[tuple[tuple[str, date], OSError | None]]


def _sorted_partitions(handed: list[pa.Table]) -> tuple[pa.Table, dict[date, tuple[int, int]]]:
    """The rows handed over (taken out of the list, so they are freed once sorted) in the lake's
    order, by creation day and then job_id, and where each day's rows are (_partition_slices)."""
    rows = handed.pop()
    table = rows.take(pc.sort_indices(rows, [("_day", "ascending"), ("job_id", "ascending")]))
    del rows
    return table, _partition_slices(table)


def _partition_slices(table: pa.Table) -> dict[date, tuple[int, int]]:
    """day -> (offset, length) of its run in a table of one project sorted by ``_day``."""
    if table.num_rows == 0:
        return {}
    days = table["_day"].cast(pa.int32()).to_numpy(zero_copy_only=False)
    values, starts, counts = np.unique(days, return_index=True, return_counts=True)
    epoch = date(1970, 1, 1)
    return {epoch + timedelta(days=int(v)): (int(i), int(n)) for v, i, n in zip(values, starts, counts, strict=True)}


def _partition_table(partitions: Sequence[tuple[str, date]]) -> pa.Table:
    """Partitions (project_id, day) as a table of lake_dirty's columns, to register and join."""
    return pa.table({
        "project_id": pa.array([project for project, _ in partitions], pa.string()),
        "create_day": pa.array([day for _, day in partitions], pa.date32()),
    })


def _one_ahead(items: Iterator[T]) -> Iterator[T]:
    """Each of ``items``, handed out once the next one has been made (the last at the end), so
    the work that makes an item overlaps the caller's use of the one before."""
    previous: list[T] = []
    for item in items:
        if previous:
            yield previous.pop()
        previous.append(item)
    yield from previous


def _spliced_columns(stamps_only: bool, in_place: Sequence[str] | None) -> tuple[str, ...] | None:
    """The columns a mark's partition gets spliced, in the lake's order: the stamps and the columns
    changed in place; None for a whole mark (or one naming what is no content column of a lake
    file, as only a hand could have written it)."""
    if not stamps_only:
        return None
    changed = set(in_place or ())
    if not changed <= IN_PLACE_COLUMNS:
        return None
    return tuple(name for name in STORED_JOBS_SCHEMA.names if name in changed or name in STAMPS)


def _groups(sizes: list[tuple[str, date, int]], rows: int | None = None) -> list[tuple[str, list[date], int]]:
    """Dirty partitions (project, day, rows) in order, gathered into reads of one project of about
    ``rows`` rows (EXPORT_ROWS by default) and at most EXPORT_PARTITIONS partitions each:
    (project, days, rows)."""
    rows = rows or EXPORT_ROWS
    groups: list[tuple[str, list[date], int]] = []
    for project_id, day, count in sizes:
        current = groups[-1] if groups else None
        if (current is None or current[0] != project_id or current[2] + count > rows
                or len(current[1]) >= EXPORT_PARTITIONS):
            groups.append((project_id, [day], count))
        else:
            groups[-1] = (project_id, [*current[1], day], current[2] + count)
    return groups


class _OutOfLeanMemory(Exception):
    """DuckDB ran out of memory during an export under the lean cap (the cause)."""


class _NeedsLeanCap(Exception):
    """An export asked to run beside other work would need DuckDB's lean cap: declined."""


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


class Lake(Connections):
    """Writing the lake: partition keys, the export after a batch, the export of dirty partitions."""

    lake: LakeStore

    @staticmethod
    def partition_key(project_id: str, day: date) -> str:
        """The key of one creation day of one project under the lake's root (ids percent-encoded)."""
        return f"create_day={day.isoformat()}/project_id={quote(project_id, safe='')}/{LAKE_FILE}"

    def partition_path(self, project_id: str, day: date) -> Path | str:
        """Where the lake keeps one creation day of one project: a Path, or an s3:// URI."""
        return self.lake.location(self.partition_key(project_id, day))

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

    def _export_marked(self, skip: Collection[tuple[str, date]], done: list[int], failures: list[_Failure],
                       *, lean: bool, beside: bool = False) -> None:
        """Write the marked partitions but ``skip``, under DuckDB's lean cap when ``lean`` and the
        export is bigger than one read. The number of files written goes to ``done`` (their marks
        cleared), failures to ``failures`` as they settle, also when the export stops early.
        With ``beside``, an export bigger than one read raises _NeedsLeanCap before it starts."""
        with self._cursor() as con:
            # A change capture can dirty every day of the history: partitions are read a few
            # thousand rows at a time, so what is held stays bounded.
            ((first, last, whole),) = con.execute(
                "SELECT min(create_day), max(create_day), count(*) FILTER (NOT stamps_only) FROM lake_dirty").fetchall()
            if first is None:
                return
            if beside and whole > EXPORT_PARTITIONS:
                # More partitions to encode whole than one read takes (a backfill's): declined
                # before counting their rows, which reads the whole table.
                raise _NeedsLeanCap
            # Counted over the dirty days' range only: DuckDB skips the row groups outside it, so
            # a one-day sync counts its day, not the whole table (0.10 s at 1,000,000 jobs).
            marked = [
                (project_id, day, count, _spliced_columns(stamps_only, in_place))
                for project_id, day, stamps_only, in_place, count in con.execute(
                    f"""SELECT d.project_id, d.create_day, d.stamps_only, d.in_place, count(j.job_id) FROM lake_dirty d
                    LEFT JOIN (SELECT project_id, job_id, {utc_day('create_time')} AS create_day
                               FROM {JOBS_TABLE} WHERE create_time >= ? AND create_time < ?) j
                      ON j.project_id = d.project_id AND j.create_day = d.create_day
                    GROUP BY ALL ORDER BY 1, 2""",
                    list(utc_days(first, last)),
                ).fetchall()
                if (project_id, day) not in skip
            ]  # fmt: skip
            # A partition whose jobs changed in place (and not emptied) has the columns they
            # changed spliced into its file (lake_splice.py); the rest, and any that cannot be
            # spliced, are encoded whole.
            spliced = [(project_id, day, count, columns) for project_id, day, count, columns in marked
                       if columns is not None and count]
            sizes = [(project_id, day, count) for project_id, day, count, columns in marked
                     if columns is None or not count]
            # An export of more than one read's rows runs under DuckDB's lean cap (see
            # Connections._lean); a small one is not worth the checkpoint that needs.
            big = sum(count for *_, count in sizes) > EXPORT_ROWS
            if beside and big:
                raise _NeedsLeanCap
            lean = lean and big
            # Reading a group's rows (DuckDB) and writing its files (Arrow, Parquet) each leave
            # a core idle on a 2-core machine: a group's files are sorted and written in a
            # thread while the next group is read. The marks of the files written are cleared
            # here, on this connection, in one transaction at the end (or when the export
            # stops early): a commit per group cost a change capture 0.25 s for 33 groups.
            written: list[tuple[str, date]] = []
            try:
                with (self._lean(con) if lean else nullcontext(), arrow_on_malloc(),
                      ThreadPoolExecutor(1, thread_name_prefix="lake-export") as writer):
                    refused = self._splice_marked(con, spliced, writer, written, failures)
                    sizes = sorted([*sizes, *refused])
                    groups = (self._export_partitions(con, project_id, days, rows, writer)
                              for project_id, days, rows in _groups(sizes))
                    for pending in _one_ahead(groups):
                        failures += self._settle(pending.result(), written)
            except BaseException as exc:
                # What was written is done: its marks go, unless that fails too (the files are
                # then written again by the next export), and the export's own error is raised.
                with suppress(duckdb.Error):
                    self._clear_dirty(con, written)
                done.append(len(written))
                if lean and isinstance(exc, duckdb.OutOfMemoryException):
                    raise _OutOfLeanMemory from exc
                raise
            self._clear_dirty(con, written)
            done.append(len(written))

    def _splice_marked(self, con: duckdb.DuckDBPyConnection, marked: list[tuple[str, date, int, tuple[str, ...]]],
                       writer: Executor, written: list[tuple[str, date]], failures: list[_Failure]
                       ) -> list[tuple[str, date, int]]:
        """Rewrite the files of partitions whose jobs changed in place (``marked``: project, day,
        rows, the columns to splice) by splicing those columns (lake_splice.py), a group (of
        partitions splicing the same columns) read while the one before is written. Partitions
        written go to ``written``, failures to ``failures``; returns the partitions that must
        be encoded whole instead."""
        sizes = {(project_id, day): count for project_id, day, count, _ in marked}
        by_columns: dict[tuple[str, ...], list[tuple[str, date, int]]] = {}
        for project_id, day, count, columns in marked:
            by_columns.setdefault(columns, []).append((project_id, day, count))
        refused: list[tuple[str, date, int]] = []
        groups = (writer.submit(self._splice_partitions, project_id, days,
                                [self._dirty_rows(con, project_id, days, columns=", ".join(["job_id", *columns]),
                                                  ordered=True)],
                                columns)
                  for columns, partitions in sorted(by_columns.items())
                  for project_id, days, _ in _groups(partitions, SPLICE_ROWS))
        for pending in _one_ahead(groups):
            outcome, whole = pending.result()
            failures += self._settle(outcome, written)
            refused += [(*key, sizes[key]) for key in whole]
        return refused

    def _splice_partitions(self, project_id: str, days: list[date], handed: list[pa.Table], columns: tuple[str, ...]
                           ) -> tuple[_Written, list[tuple[str, date]]]:
        """Splice ``columns`` of each of ``days`` from the rows ``handed`` over into its file.
        Returns what _write_partitions does for the files written, and the partitions refused."""
        table = handed.pop()  # read in the lake's order
        slices = _partition_slices(table)
        files: list[tuple[tuple[str, date], pa.Buffer]] = []
        refused: list[tuple[str, date]] = []
        for day in days:
            key = (project_id, day)
            data = spliced_file(self.lake, self.partition_key(*key), table.slice(*slices.get(day, (0, 0))), columns)
            if data is None:
                refused.append(key)
            else:
                files.append((key, data))
        errors = self.lake.write_all([(self.partition_key(*key), data) for key, data in files])
        return [(key, error) for (key, _), error in zip(files, errors, strict=True)], refused

    @staticmethod
    def _clear_dirty(con: duckdb.DuckDBPyConnection, partitions: Sequence[tuple[str, date]]) -> None:
        """Drop the export marks of partitions just written, in one statement."""
        if not partitions:
            return
        con.register("_exported", _partition_table(partitions))
        try:
            con.execute(
                "DELETE FROM lake_dirty d USING _exported e"
                " WHERE d.project_id = e.project_id AND d.create_day = e.create_day"
            )
        finally:
            con.unregister("_exported")

    @staticmethod
    def _dirty_rows(con: duckdb.DuckDBPyConnection, project_id: str, days: list[date],
                    columns: str = f"{_COLS}, deleted_at", *, ordered: bool = False) -> pa.Table:
        """The rows (``columns`` of them) of ``days`` (dirty partitions) of one project, with
        their creation day as ``_day``, in the table's order (sorted in Arrow by
        _write_partitions: DuckDB sorting whole rows cost more)."""
        known = [day for day in days if day is not None]
        if not known:
            return con.sql(
                f"SELECT {columns}, CAST(NULL AS DATE) AS _day FROM {JOBS_TABLE} LIMIT 0"
            ).to_arrow_table()
        # Ranges of create_time let DuckDB skip row groups by their min/max (a backfill inserts
        # roughly in creation order), so an export reads the days it rewrites, not the whole
        # history; NULL days are never exported, so the ranges lose nothing. Each run of
        # consecutive days is one range, and the ranges are OR-ed inside the outer one: a list
        # of days tested per row made DuckDB scan every row group between the first and the
        # last day (six days spread over 60 at a million jobs: 115 ms, as ranges 48 ms), and a
        # semi join with lake_dirty per read cost more still.
        ranges = [utc_days(first, last) for first, last in day_runs(known)]
        within = " OR ".join(["(j.create_time >= ? AND j.create_time < ?)"] * len(ranges))
        return con.sql(
            f"SELECT {columns}, {utc_day('create_time')} AS _day"
            f" FROM {JOBS_TABLE} j"
            f" WHERE j.project_id = ? AND j.create_time >= ? AND j.create_time < ? AND ({within})"
            + (" ORDER BY _day, job_id" if ordered else ""),
            params=[project_id, ranges[0][0], ranges[-1][1], *(bound for pair in ranges for bound in pair)],
        ).to_arrow_table()

    def _export_partitions(
        self, con: duckdb.DuckDBPyConnection, project_id: str, days: list[date], rows: int, writer: Executor
    ) -> Future[_Written]:
        """Read the rows of ``days`` of one project in one query and hand them to ``writer``,
        which rewrites their lake files (see _settle for what comes back). A partition of more
        than EXPORT_ROWS rows (always read alone) is read by the writer in pieces instead: see
        _write_streamed."""
        if rows > EXPORT_ROWS and len(days) == 1:
            return writer.submit(self._write_streamed, (project_id, days[0]))
        # Handed over in a list the writer empties, so the rows are freed once sorted (the
        # executor holds its arguments until the call returns).
        return writer.submit(self._write_partitions, project_id, days, [self._dirty_rows(con, project_id, days)])

    def _write_streamed(self, key: tuple[str, date]) -> _Written:
        """Rewrite the file of one partition too big for one read (a burst day) a piece at a
        time, each piece a row group: its rows are never held whole, nor copied whole to sort
        them. Read on a cursor of its own, so the next group is read meanwhile. Returns what
        _write_partitions does."""
        with self._cursor() as cursor:
            (error,) = self.lake.write_all([(self.partition_key(*key), self._partition_pieces(cursor, *key))])
        return [(key, error)]

    @staticmethod
    def _partition_pieces(cursor: duckdb.DuckDBPyConnection, project_id: str, day: date) -> pa.RecordBatchReader:
        """One partition's rows as its file holds them (STORED_JOBS_SCHEMA, by job_id), read in
        job_id ranges of EXPORT_BATCH_ROWS rows, each sorted in Arrow. (DuckDB sorting the whole
        partition ran out of the export's lean memory cap at a million jobs.)"""
        where = f"FROM {JOBS_TABLE} WHERE project_id = ? AND create_time >= ? AND create_time < ?"
        params = [project_id, *utc_days(day, day)]
        ids = cursor.sql(f"SELECT job_id {where} ORDER BY job_id", params=params).to_arrow_table()["job_id"]
        starts = [ids[i].as_py() for i in range(0, len(ids), EXPORT_BATCH_ROWS)]

        def pieces() -> Iterator[pa.RecordBatch]:
            for first, after in zip(starts, [*starts[1:], None], strict=True):
                bound = " AND job_id >= ?" + ("" if after is None else " AND job_id < ?")
                piece = cursor.sql(
                    f"SELECT {_COLS}, deleted_at {where}{bound}",
                    params=[*params, first, *([] if after is None else [after])],
                ).to_arrow_table()
                piece = piece.take(pc.sort_indices(piece, [("job_id", "ascending")])).cast(STORED_JOBS_SCHEMA)
                yield from piece.combine_chunks().to_batches()

        return pa.RecordBatchReader.from_batches(STORED_JOBS_SCHEMA, pieces())

    def _write_partitions(self, project_id: str, days: list[date], handed: list[pa.Table]) -> _Written:
        """Rewrite the lake file of each of ``days`` from the rows ``handed`` over (taken out of
        the list). Returns each partition's key with None, or the OSError that left its old file."""
        table, slices = _sorted_partitions(handed)
        table = table.drop_columns(["_day"]).cast(STORED_JOBS_SCHEMA)
        keys = [(project_id, day) for day in days]
        parts = [table.slice(*slices.get(day, (0, 0))) for day in days]
        errors = self.lake.write_all([(self.partition_key(*key), part) for key, part in zip(keys, parts, strict=True)])
        return list(zip(keys, errors, strict=True))

    def _settle(self, outcome: _Written, written: list[tuple[str, date]]) -> list[_Failure]:
        """One group's files: the partitions written go to ``written`` (their marks are cleared
        when the export ends). Returns (key, path, error) of those that failed: they keep their
        marks; the others go on."""
        failed: list[_Failure] = []
        for key, exc in outcome:
            if exc is None:
                crashpoint("lake_replaced")
                written.append(key)
            else:
                failed.append((key, self.partition_path(*key), exc))
        return failed
