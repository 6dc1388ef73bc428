"""Writing the lake partitions marked dirty: grouped reads, whole encodes and splices.

lake.py decides when the lake is written and keeps its marks honest; this module writes what is
marked. Partitions are read a group at a time (one query for up to EXPORT_PARTITIONS partitions
and about EXPORT_ROWS rows), sorted and sliced per partition in Arrow, and written by a thread
while the next group is read. A partition whose jobs changed in place has those columns spliced
into its old file (lake_splice.py); the rest are encoded whole, a burst day in pieces. The
partitions whose rows the run appended and its spool holds exactly (spool.py) are read from the
spool instead of the table, two groups at a time. The marks of the files written are cleared in
one transaction when the export ends, or stops early.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext, suppress
from datetime import date, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.arrowpool import arrow_on_malloc
from pipelines.crashpoints import crashpoint
from pipelines.warehouse.db import Connections
from pipelines.warehouse.lake_splice import STAMPS, spliced_file
from pipelines.warehouse.lakestore import LakeStore, Rows
from pipelines.warehouse.marks import IN_PLACE_COLUMNS
from pipelines.warehouse.spool import LakeSpool
from pipelines.warehouse.tables import (
    _COLS,
    JOBS_TABLE,
    STORED_JOBS_SCHEMA,
    day_runs,
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
# Groups of spooled partitions are read, sorted and written this many at a time, each half the
# rows of a group read from the table: a read from the spool costs little, and the sort of one
# group and the encoding of another each leave a core to the other.
SPOOL_WRITERS = 2
LAKE_FILE = "data.parquet"
# A partition that could not be written: (project_id, day), where its file is, the error.
_Failure = tuple[tuple[str, date], Path | str, OSError]
T = TypeVar("T")
# What writing one group of partitions gave: per partition (project_id, day), None or its error.
_Written = list[tuple[tuple[str, date], OSError | None]]


def _sorted_partitions(handed: list[pa.Table]) -> tuple[pa.Table, dict[date, tuple[int, int]]]:
    """The rows handed over (taken out of the list, so they are freed once sorted) in the lake's
    order, by creation day and then job_id, and where each day's rows are (_partition_slices)."""
    rows = handed.pop()
    table = rows.take(pc.sort_indices(rows, [("_day", "ascending"), ("job_id", "ascending")]))
    del rows
    return table, _partition_slices(table)


def _batches(pieces: Iterator[pa.Table]) -> pa.RecordBatchReader:
    """Pieces of one partition's rows as a stream of its file's row groups, each piece one (as
    _partition_pieces reads them from the table)."""
    def batches() -> Iterator[pa.RecordBatch]:
        for piece in pieces:
            yield from piece.cast(STORED_JOBS_SCHEMA).combine_chunks().to_batches()

    return pa.RecordBatchReader.from_batches(STORED_JOBS_SCHEMA, batches())


def _spooled_groups(sizes: list[tuple[str, date, int]]) -> list[tuple[str, list[date], list[date]]]:
    """Spooled partitions (project, day, rows) gathered as _groups gathers them, each partition
    bigger than one read (a burst day) joined to a group of its project, so that its file is
    encoded beside that group's: (project, days, burst days)."""
    bursts = [(project_id, day) for project_id, day, rows in sizes if rows > EXPORT_ROWS]
    groups: list[tuple[str, list[date], list[date]]] = [
        (project_id, days, []) for project_id, days, _ in
        _groups([size for size in sizes if size[2] <= EXPORT_ROWS], EXPORT_ROWS // SPOOL_WRITERS)]
    for i, (project_id, day) in enumerate(bursts):
        # Spread over the project's groups, so that no two are held in consecutive groups.
        mine = [group for group in groups if group[0] == project_id]
        if mine:
            mine[i * len(mine) // len(bursts)][2].append(day)
        else:
            groups.append((project_id, [], [day]))
    return groups


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




class LakeExport(Connections):
    """Writing marked partitions: where each file goes, the grouped reads, the writes, the marks cleared."""

    lake: LakeStore
    #: run_id -> the rows that live run appended (spool.py), for its export.
    _spools: dict[str, LakeSpool]

    def _taint_spools(self, partitions: Iterable[tuple[str, date]]) -> None:
        """Partitions a statement changed otherwise than by appending jobs never seen (spool.py)."""
        partitions = list(partitions)
        for spool in self._spools.values():
            spool.taint(partitions)

    @staticmethod
    def partition_key(project_id: str, day: date) -> str:
        """The key of one creation day of one project under the lake's root (ids percent-encoded)."""
        return f"create_day={day.isoformat()}/project_id={quote(project_id, safe='')}/{LAKE_FILE}"

    def partition_path(self, project_id: str, day: date) -> Path | str:
        """Where the lake keeps one creation day of one project: a Path, or an s3:// URI."""
        return self.lake.location(self.partition_key(project_id, day))

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
            whole = [(project_id, day, count) for project_id, day, count, columns in marked
                     if columns is None or not count]
            # Partitions whose rows the run appended and a spool holds exactly are written from
            # there (see _write_spooled); the rest are read from the table.
            spooled: dict[int, tuple[LakeSpool, list[tuple[str, date, int]]]] = {}
            sizes = []
            for size in whole:
                spool = self._spool_holding(*size)
                if spool is None:
                    sizes.append(size)
                else:
                    spooled.setdefault(id(spool), (spool, []))[1].append(size)
            # An export of more than one read's rows runs under DuckDB's lean cap (see
            # Connections._lean); a small one is not worth the checkpoint that needs. (An export
            # from a spool reads little from DuckDB, but the cap gives back what the models and
            # the run's writes left in DuckDB's memory while the export holds its own rows.)
            big = sum(count for *_, count in whole) > EXPORT_ROWS
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
                with (self._lean(con) if lean else nullcontext(), arrow_on_malloc(), self.lake.writing_threads(),
                      ThreadPoolExecutor(1, thread_name_prefix="lake-export") as writer,
                      ThreadPoolExecutor(SPOOL_WRITERS, thread_name_prefix="lake-spooled") as spooled_writer):
                    refused = self._splice_marked(con, spliced, writer, written, failures)
                    sizes = sorted([*sizes, *refused])
                    groups = itertools.chain(
                        (spooled_writer.submit(self._write_spooled, spool, project_id, days, bursts)
                         for spool, held in spooled.values() for project_id, days, bursts in _spooled_groups(held)),
                        (self._export_partitions(con, project_id, days, rows, writer)
                         for project_id, days, rows in _groups(sizes)))
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

    def _spool_holding(self, project_id: str, day: date, rows: int) -> LakeSpool | None:
        """The spool of a live run that holds exactly the table's ``rows`` rows of the partition."""
        return next((spool for spool in self._spools.values() if spool.holds(project_id, day, rows)), None)

    def _write_spooled(self, spool: LakeSpool, project_id: str, days: list[date], bursts: list[date]) -> _Written:
        """_write_partitions for rows read from ``spool``, with each of ``bursts`` (a partition
        bigger than one read) written as _write_streamed writes it, a row group per
        EXPORT_BATCH_ROWS rows by job_id: the same bytes. Read in the writer's thread: the reads
        are cheap, and the rows' buffers come from the same malloc arena as their sorted copy.
        The files are encoded two at a time (LakeStore.write_all), so a burst day's file is
        encoded beside the group's others. Partitions the spool cannot give (it is then turned
        off) are read from the table."""
        items: list[tuple[tuple[str, date], Rows]] = []
        written: _Written = []
        if days:
            try:
                rows = spool.rows(project_id, days)
            except (OSError, pa.ArrowException) as exc:
                spool.turn_off(f"reading it failed: {exc}")
                with self._cursor() as cursor:
                    rows = self._dirty_rows(cursor, project_id, days)
            table, slices = _sorted_partitions([rows])
            del rows
            table = table.drop_columns(["_day"]).cast(STORED_JOBS_SCHEMA)
            items += [((project_id, day), table.slice(*slices.get(day, (0, 0)))) for day in days]
        for day in bursts:
            try:
                items.append(((project_id, day), _batches(spool.pieces(project_id, day, EXPORT_BATCH_ROWS))))
            except (OSError, pa.ArrowException) as exc:
                spool.turn_off(f"reading it failed: {exc}")
                written += self._write_streamed((project_id, day))
        errors = self.lake.write_all([(self.partition_key(*key), rows) for key, rows in items])
        return [*written, *((key, error) for (key, _), error in zip(items, errors, strict=True))]

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
