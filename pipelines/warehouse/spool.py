"""The rows a sync run appended, kept beside the warehouse for the run's lake export.

A backfill appends most of its jobs to a table that never held them, and the lake export at
the run's end read every one of them back out of DuckDB: at a million jobs those reads were
about 2 us of CPU a row, with DuckDB's buffer manager trimming the heap under the export's lean
memory cap, most of a second CPU core for the export's length. Instead, the transaction that
appends jobs never seen (and does nothing else) hands its rows, once committed, to the run's
spool: an Arrow IPC file under ``<data_dir>/.lake-spool-<run_id>/``, one record batch per run
of consecutive rows of one partition (project_id, creation day). Writing them costs the
transactions thread about 1.3 us a row; reading a partition back reads its record batches only.

The export takes a partition's rows from the spool only when the spool holds exactly the
table's rows of it (``holds``): no statement of the run other than such an append touched the
partition (every upsert of a stored job and every deletion mark taints the partitions it
reaches, ``taint``), and the spool holds as many of its rows as the table does. Rows never
leave the jobs table and a spooled row was committed, so equal counts mean the same rows, with
the same values: the spool holds the batch as it was inserted. Anything else, or a spool that
could not be written or read, is exported from the table as before. The spool is a cache: it
goes when its run finishes (Warehouse.finish_run), a run's start removes what a crashed
process left, and it is not written at all when the disk would keep less than
SPOOL_FREE_RESERVE free.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest.schema import JOBS_SCHEMA
from pipelines.warehouse.tables import STORED_JOBS_SCHEMA

log = logging.getLogger("voicejobs.warehouse")

#: The spool directory of a run under the data directory: SPOOL_PREFIX + run_id.
SPOOL_PREFIX = ".lake-spool-"
#: Free space the disk holding the data directory keeps besides a spool file, or nothing is
#: spooled (the warehouse's own writes come first).
SPOOL_FREE_RESERVE = 2 << 30
_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_NO_DAY = np.iinfo(np.int64).min
_DELETED_AT = STORED_JOBS_SCHEMA.field("deleted_at")

Partition = tuple[str, date]


class LakeSpool:
    """One run's appended rows in Arrow IPC files, indexed by partition (see the module)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: partition -> (file number, record batch number, rows) of each of its pieces
        self._pieces: dict[Partition, list[tuple[int, int, int]]] = {}
        self._rows: dict[Partition, int] = {}
        self._tainted: set[Partition] = set()
        self._files = 0
        self.off = False

    def add(self, jobs: pa.Table) -> None:
        """Spool ``jobs`` (JOBS_SCHEMA), rows a committed transaction appended as jobs never seen.
        A failure to write turns the spool off for the run, with an INFO line; it never raises."""
        if self.off or jobs.num_rows == 0:
            return
        try:
            if shutil.disk_usage(self.directory.parent).free - jobs.nbytes < SPOOL_FREE_RESERVE:
                self.turn_off("the disk is nearly full")
                return
            self.directory.mkdir(exist_ok=True)
            number = self._files
            pieces = self._write(self.directory / f"{number:06d}.arrow", jobs, number)
        except (OSError, pa.ArrowException) as exc:
            self.turn_off(str(exc))
            return
        self._files += 1
        for key, piece in pieces:
            self._pieces.setdefault(key, []).append(piece)
            self._rows[key] = self._rows.get(key, 0) + piece[2]

    @staticmethod
    def _write(path: Path, jobs: pa.Table, number: int) -> list[tuple[Partition, tuple[int, int, int]]]:
        """Write ``jobs`` to ``path``, a record batch per run of one partition; those pieces."""
        pieces: list[tuple[Partition, tuple[int, int, int]]] = []
        batch = 0
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, JOBS_SCHEMA) as writer:
            for project_id, day, first, rows in _partition_runs(jobs):
                for part in jobs.slice(first, rows).to_batches():
                    writer.write_batch(part)
                    pieces.append(((project_id, day), (number, batch, part.num_rows)))
                    batch += 1
        return pieces

    def taint(self, partitions: Iterable[Partition]) -> None:
        """Partitions a statement other than an append of jobs never seen changed: never from here."""
        self._tainted.update(partitions)

    def holds(self, project_id: str, day: date, rows: int) -> bool:
        """Whether the spool holds exactly the table's ``rows`` rows of the partition."""
        key = (project_id, day)
        return not self.off and rows > 0 and key not in self._tainted and self._rows.get(key) == rows

    def rows(self, project_id: str, days: list[date]) -> pa.Table:
        """The spooled rows of ``days`` of one project as the export reads them from the table:
        JOBS_SCHEMA, deleted_at (NULL) and the creation day as ``_day``, in no particular order."""
        wanted = [(day, piece) for day in days for piece in self._pieces[(project_id, day)]]
        with _Files(self.directory) as files:
            table = pa.Table.from_batches([files.batch(number, batch) for _, (number, batch, _) in wanted],
                                          schema=JOBS_SCHEMA)
        if table.num_rows != sum(rows for _, (_, _, rows) in wanted):
            raise pa.ArrowInvalid(f"the spool in {self.directory} holds other rows than it recorded")
        day_numbers = np.repeat([(day - _EPOCH).days for day, _ in wanted], [rows for _, (_, _, rows) in wanted])
        return (table.append_column(_DELETED_AT, pa.nulls(table.num_rows, _DELETED_AT.type))
                .append_column("_day", pa.array(day_numbers.astype(np.int32), pa.int32()).cast(pa.date32())))

    def pieces(self, project_id: str, day: date, rows: int) -> Iterator[pa.Table]:
        """The spooled rows of one partition (STORED_JOBS_SCHEMA) by job_id, ``rows`` at a time:
        a piece is gathered from every record batch of the partition, read again for each
        piece, so that no more than one of them and the piece are held at once. The job_ids are
        read (and checked against what was recorded) before this returns."""
        pieces = self._pieces[(project_id, day)]
        with _Files(self.directory) as files:
            ids = pa.chunked_array([files.batch(number, batch, only="job_id").column(0) for number, batch, _ in pieces],
                                   pa.string())
        if len(ids) != self._rows[(project_id, day)]:
            raise pa.ArrowInvalid(f"the spool in {self.directory} holds other rows than it recorded")
        ordered = ids.take(pc.sort_indices(ids))
        starts = [ordered[i] for i in range(0, len(ordered), rows)]
        return self._ranges(pieces, starts)

    def _ranges(self, pieces: list[tuple[int, int, int]], starts: list[pa.Scalar]) -> Iterator[pa.Table]:
        """The rows of ``pieces`` from each of ``starts`` to the next (the last to the end), by job_id."""
        with _Files(self.directory) as files:
            for first, after in zip(starts, [*starts[1:], None], strict=True):
                parts = []
                for number, batch, _ in pieces:
                    part = pa.Table.from_batches([files.batch(number, batch)])
                    keep = pc.greater_equal(part["job_id"], first)
                    if after is not None:
                        keep = pc.and_(keep, pc.less(part["job_id"], after))
                    parts.append(part.filter(keep))
                piece = pa.concat_tables(parts)
                del parts
                piece = piece.take(pc.sort_indices(piece, [("job_id", "ascending")]))
                yield piece.append_column(_DELETED_AT, pa.nulls(piece.num_rows, _DELETED_AT.type))

    def discard(self) -> None:
        """Remove the spool's files (a run's end). What it recorded stays, so that a read another
        thread makes meanwhile fails as a missing file does."""
        self.off = True
        shutil.rmtree(self.directory, ignore_errors=True)

    def turn_off(self, why: str) -> None:
        """Stop spooling for the run and remove the files, saying why in an INFO line."""
        log.info("The lake spool in %s is off for this run (%s); the export reads the table instead.",
                 self.directory, why)
        self.discard()


class _Files:
    """The spool's files opened for reading, each once, closed together."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open: dict[int, tuple[pa.OSFile, pa.ipc.RecordBatchFileReader]] = {}
        self.projected: dict[int, pa.ipc.RecordBatchFileReader] = {}

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc: object) -> None:
        for source, _ in self.open.values():
            source.close()

    def batch(self, number: int, batch: int, only: str | None = None) -> pa.RecordBatch:
        """Record batch ``batch`` of file ``number``; with ``only``, that column alone (only its
        buffers are read)."""
        if number not in self.open:
            source = pa.OSFile(str(self.directory / f"{number:06d}.arrow"))
            self.open[number] = (source, pa.ipc.open_file(source))
        source, reader = self.open[number]
        if only is None:
            return reader.get_batch(batch)
        if number not in self.projected:
            options = pa.ipc.IpcReadOptions(included_fields=[JOBS_SCHEMA.get_field_index(only)])
            self.projected[number] = pa.ipc.open_file(source, options=options)
        return self.projected[number].get_batch(batch)


def _partition_runs(jobs: pa.Table) -> list[tuple[str, date, int, int]]:
    """(project_id, creation day, first row, rows) of each run of consecutive rows of one
    partition; rows without a create_time have none and are left out (no lake file holds them)."""
    millis = pc.fill_null(jobs["create_time"].cast(pa.int64()), _NO_DAY).to_numpy()
    days = np.where(millis == _NO_DAY, _NO_DAY, np.floor_divide(millis, _DAY_MS))
    projects = jobs["project_id"]
    names = pc.unique(projects).to_pylist()
    codes = (np.zeros(jobs.num_rows, dtype=np.int64) if len(names) == 1
             else pc.index_in(projects, value_set=pa.array(names, pa.string())).to_numpy())
    cuts = np.flatnonzero((days[1:] != days[:-1]) | (codes[1:] != codes[:-1])) + 1
    starts = np.concatenate([[0], cuts]).tolist()
    ends = [*starts[1:], jobs.num_rows]
    return [(names[int(codes[first])], _EPOCH + timedelta(days=int(days[first])), first, end - first)
            for first, end in zip(starts, ends, strict=True) if days[first] != _NO_DAY]


def remove_stale_spools(data_dir: Path, live_runs: Iterable[str]) -> None:
    """Remove the spool directories of runs that are not live (a crashed process left them)."""
    keep = {f"{SPOOL_PREFIX}{run_id}" for run_id in live_runs}
    for stale in data_dir.glob(f"{SPOOL_PREFIX}*"):
        if stale.name not in keep:
            shutil.rmtree(stale, ignore_errors=True)
