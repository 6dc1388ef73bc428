"""Where the lake's files live: a local directory or an S3-compatible object store.

:class:`LakeStore` is everything the lake asks of its storage, by key, a path relative to the
table's root (``create_day=YYYY-MM-DD/project_id=<id>/data.parquet``): read the old file of
a partition, replace it, remove an emptied one, list the files there are (for rebuild_lake),
and say where a key is and what to do when writing it failed.

Every write replaces a file whole or leaves the old one readable:

- :class:`LocalLakeStore` writes a temporary file beside the target, fsyncs it, renames it
  over the target with os.replace and fsyncs the directory (for many files, each step for all
  of them before the next: see write_all).
- :class:`~pipelines.warehouse.s3store.S3LakeStore` (s3store.py) sends each file as one
  object upload, applied by the store whole or not at all.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.crashpoints import crashpoint
from pipelines.ingest.schema import JOBS_SCHEMA, PHONE_FIELD, URL_FIELDS
from pipelines.settings import ObjectStoreAccess, parse_lake_uri
from pipelines.warehouse.tables import JOBS_TABLE, STORED_JOBS_SCHEMA, WarehouseError, probe_writable

T = TypeVar("T")
R = TypeVar("R")

#: Temporary files of interrupted writes: skipped by readers (the leading dot), removed by rebuild_lake.
TEMPORARY = re.compile(r"(^|/)\.data-[^/]*\.parquet\.tmp$")


#: A lake file's rows: a whole table, a stream of batches (a partition too big to hold at
#: once, each batch written as a row group of the file as it comes), or a file already encoded
#: (a Buffer: a file with its stamps spliced in, see lake_splice.py).
Rows = pa.Table | pa.RecordBatchReader | pa.Buffer

# Dictionary pages cost a quarter of the time of a small file and saved nothing after zstd on
# these columns.
_PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": False}
#: Columns of free text, written without min/max statistics: a reader cannot skip pages by the
#: bounds of a failure reason or a URL, and computing them was a sixth of the encoding (a
#: million-job export in 5.6-5.8 s without them against 6.2-6.5 s with them).
FREE_TEXT_COLUMNS = frozenset({
    "job_failed_reason", *URL_FIELDS, PHONE_FIELD, "extra",
    *(field.name for field in JOBS_SCHEMA if field.name.startswith("assess_result_") and pa.types.is_string(field.type)),
})


def _writer_options(schema: pa.Schema) -> dict:
    """The Parquet writer's options for lake columns ``schema``: statistics for all but FREE_TEXT_COLUMNS."""
    return {**_PARQUET_OPTIONS, "write_statistics": [name for name in schema.names if name not in FREE_TEXT_COLUMNS]}


def encode_parquet(rows: Rows, sink) -> None:
    """Write ``rows`` as one lake file to ``sink`` (a path, file object or Arrow stream), with
    statistics for every column but FREE_TEXT_COLUMNS; a Buffer is a file already encoded."""
    if isinstance(rows, pa.Buffer):
        sink.write(rows)
        return
    options = _writer_options(rows.schema)
    if isinstance(rows, pa.Table):
        pq.write_table(rows, sink, **options)
        return
    with pq.ParquetWriter(sink, rows.schema, **options) as writer:
        for batch in rows:
            writer.write_batch(batch)


def encode_columns(table: pa.Table, groups: Sequence[int]) -> pa.Buffer:
    """A Parquet file of some lake columns alone (``table``, in the lake's types), in row groups
    of ``groups`` rows, each column encoded as encode_parquet encodes it in a whole file: what
    splice.splice_columns takes."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **_writer_options(table.schema)) as writer:
        first = 0
        for rows in groups:
            writer.write_table(table.slice(first, rows), row_group_size=max(rows, 1))
            first += rows
    return sink.getvalue()


def _temporary_beside(path: Path) -> Path:
    """A new, empty temporary file in ``path``'s directory, named so readers skip it (TEMPORARY)."""
    fd, name = tempfile.mkstemp(prefix=".data-", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _encode_file(rows: Rows, path: Path) -> None:
    """Encode ``rows`` into the file at ``path`` through Arrow's own file output.

    A Python file object as the sink takes the GIL for each of the writer's writes, and the lake
    is written beside other threads: with a thread busy in Python, two writers took 277 ms a
    small file (55 rows) into file objects and 17 ms into Arrow's files, 2.5-2.9 ms either way
    when nothing else ran."""
    with pa.OSFile(str(path), "wb") as sink:
        encode_parquet(rows, sink)


def _no_rows(rows: Rows) -> bool:
    """A table without rows: its file is removed. A stream is always written (see Rows)."""
    return isinstance(rows, pa.Table) and rows.num_rows == 0


#: fsyncs in flight at once: the file system commits concurrent ones together.
_SYNCS = 16


def _side_by_side(fn: Callable[[T], R], items: Iterable[T], workers: int,
                  pool: ThreadPoolExecutor | None = None) -> list[R]:
    """``fn`` of every item, ``workers`` at a time (on ``pool`` when given: its threads); the
    results in the order of ``items``.

    Parquet encoding and compression release the GIL, fsyncs and uploads wait on the disk
    or the network."""
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return [fn(item) for item in items]
    if pool is not None:
        return list(pool.map(fn, items))
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="lake") as pool:
        return list(pool.map(fn, items))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LakeStore(ABC):
    """The storage of the lake's files, addressed by keys relative to the table's root."""

    #: The table's root as people write it: a directory, or s3://bucket/prefix/voice_training_jobs.
    root: str
    #: Where the files are, told apart from every other place: the directory resolved, or the
    #: root with the store's endpoint. A warehouse records the place it last wrote (see lake.py).
    place: str
    #: Partitions written at once: encoding is CPU-bound locally, uploads wait on the network.
    writers: int = 2
    #: The threads that write them while ``writing_threads()`` lasts; otherwise each write_all
    #: starts its own.
    _writing: ThreadPoolExecutor | None = None

    @contextmanager
    def writing_threads(self) -> Iterator[None]:
        """Keep ``writers`` threads for every write_all of the block (an export of many groups).

        Each thread's allocations come from its own malloc arena: with new threads for every
        group, a million-job export spread the encoders' buffers over up to 16 arenas, each
        keeping what was freed in it, and its peak rose by 40-60 MB."""
        with ThreadPoolExecutor(self.writers, thread_name_prefix="lake") as pool:
            self._writing = pool
            try:
                yield
            finally:
                self._writing = None

    @abstractmethod
    def location(self, key: str) -> Path | str:
        """Where ``key`` is: a Path for a local lake, an s3:// URI otherwise."""

    @abstractmethod
    def read(self, key: str) -> pa.Table | None:
        """The file at ``key`` as STORED_JOBS_SCHEMA; None when there is none. Raises when unreadable."""

    @abstractmethod
    def read_bytes(self, key: str) -> pa.Buffer | None:
        """The bytes of the file at ``key``; None when there is none. Raises OSError when unreadable."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether there is a file at ``key``."""

    @abstractmethod
    def write(self, key: str, table: Rows) -> None:
        """Replace the file at ``key`` with ``table``, whole; raises OSError leaving the old file as it was."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Remove the file at ``key`` if there is one (and, locally, the directories it leaves empty)."""

    def write_all(self, items: Sequence[tuple[str, Rows]]) -> list[OSError | None]:
        """Replace each key's file with its table (remove it for an empty table), ``writers`` at a
        time; per item None, or the OSError that left its old file as it was."""
        def one(item: tuple[str, Rows]) -> OSError | None:
            key, table = item
            try:
                if _no_rows(table):
                    self.remove(key)
                else:
                    self.write(key, table)
            except OSError as exc:
                return exc
            return None

        return _side_by_side(one, items, self.writers, self._writing)

    @abstractmethod
    def files(self) -> list[str]:
        """The keys of every file under the root, temporary files of interrupted writes included."""

    @abstractmethod
    def check(self) -> None:
        """Raise a WarehouseError naming the cause and the fix unless the lake can be written."""

    @abstractmethod
    def fix(self, exc: OSError, location: Path | str) -> str:
        """What to do about ``exc``, raised while writing ``location``."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class LocalLakeStore(LakeStore):
    """The lake in a local directory (by default ``<data-dir>/lake``)."""

    #: Files encoded at once: encoding is CPU-bound (fsyncs come after, all at once).
    writers = 2

    def __init__(self, root_dir: Path, *, home: Path, home_var: str) -> None:
        self.root_dir = root_dir
        self.root = str(root_dir)
        self.place = str(root_dir.resolve())
        # The directory people chose and the setting that chose it, for the fixes in messages.
        self.home, self.home_var = home, home_var

    def location(self, key: str) -> Path:
        return self.root_dir / key

    def read(self, key: str) -> pa.Table | None:
        path = self.root_dir / key
        if not path.exists():
            return None
        return pq.read_table(path, schema=STORED_JOBS_SCHEMA)

    def read_bytes(self, key: str) -> pa.Buffer | None:
        try:
            with pa.OSFile(str(self.root_dir / key)) as source:
                return source.read_buffer()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return (self.root_dir / key).is_file()

    def write(self, key: str, table: Rows) -> None:
        path = self.root_dir / key
        tmp: Path | None = self._stage(path, table)
        try:
            _fsync(tmp)
            crashpoint("lake_tmp_written")
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        finally:
            if tmp is not None:
                with suppress(OSError):
                    tmp.unlink()

    def write_all(self, items: Sequence[tuple[str, Rows]]) -> list[OSError | None]:
        """Like LakeStore.write_all, with each step taken for every file before the next: temporary
        files encoded (``writers`` at a time), fsynced all at once, renamed into place, and their
        directories fsynced all at once. A file system commits concurrent fsyncs together, so a run's
        hundreds of partitions cost a few commits rather than two each; every file still reaches the
        disk before its rename, and every rename before the caller clears its mark."""
        errors: list[OSError | None] = [None] * len(items)
        staged: dict[int, Path] = {}

        def encode(i: int) -> None:
            key, table = items[i]
            try:
                if _no_rows(table):
                    self.remove(key)
                else:
                    staged[i] = self._stage(self.root_dir / key, table)
            except OSError as exc:
                errors[i] = exc

        def sync(i: int) -> None:
            try:
                _fsync(staged[i])
            except OSError as exc:
                errors[i] = exc
                with suppress(OSError):
                    staged.pop(i).unlink()

        _side_by_side(encode, range(len(items)), self.writers, self._writing)
        _side_by_side(sync, sorted(staged), _SYNCS)
        for i, tmp in sorted(staged.items()):
            crashpoint("lake_tmp_written")
            try:
                os.replace(tmp, self.root_dir / items[i][0])
            except OSError as exc:
                errors[i] = exc
                with suppress(OSError):
                    tmp.unlink()
        _side_by_side(_fsync_dir, sorted({(self.root_dir / items[i][0]).parent for i in staged}), _SYNCS)
        return errors

    def _stage(self, path: Path, table: Rows) -> Path:
        """``table`` encoded into a temporary file beside ``path`` (not yet fsynced)."""
        self._remove_temporaries(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(path)
        try:
            _encode_file(table, tmp)
        except BaseException:
            with suppress(OSError):
                tmp.unlink()
            raise
        return tmp

    def remove(self, key: str) -> None:
        path = self.root_dir / key
        self._remove_temporaries(path.parent)
        with suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)
        for empty in (path.parent, path.parent.parent):
            if empty == self.root_dir:
                break
            with suppress(OSError):
                empty.rmdir()  # only succeeds when nothing else is left

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root_dir)) for p in self.root_dir.rglob("*") if p.is_file())

    def check(self) -> None:
        try:
            probe_writable(self.root_dir)
        except OSError as exc:
            raise WarehouseError(
                f"cannot create or write the lake directory {self.root_dir} ({exc.strerror or exc}); "
                f"choose a writable directory ({self.home_var}) or fix its permissions"
            ) from None

    def fix(self, exc: OSError, location: Path | str) -> str:
        path = Path(location)
        if exc.errno in _DISK_FULL_ERRNOS:
            return f"free space on the disk holding {self.home}"
        if exc.errno in _PERMISSION_ERRNOS:
            return f"fix the permissions of {path.parent} (and of the directories above it in {self.home})"
        if exc.errno == errno.ENAMETOOLONG:
            where = "data directory" if self.home_var == "VOICEJOBS_DATA_DIR" else "lake directory"
            return (f"the name is too long for the file system; use a {where} with a shorter path "
                    f"({self.home_var}) or a shorter project id")
        return "fix that path"

    @staticmethod
    def _remove_temporaries(directory: Path) -> None:
        # Temporary files left by a crashed export; this process is the only writer.
        for stale in directory.glob(".data-*.parquet.tmp"):
            with suppress(OSError):
                stale.unlink()


def open_lake_store(lake_uri: str | None, data_dir: Path, access: ObjectStoreAccess | None = None) -> LakeStore:
    """The store of ``lake_uri``: ``s3://bucket/prefix``, a local directory, or None for <data_dir>/lake."""
    if not lake_uri:
        return LocalLakeStore(data_dir / "lake" / JOBS_TABLE, home=data_dir, home_var="VOICEJOBS_DATA_DIR")
    bucket_prefix = parse_lake_uri(lake_uri)
    if bucket_prefix is None:
        root = Path(lake_uri.removeprefix("file://")).expanduser()
        return LocalLakeStore(root / JOBS_TABLE, home=root, home_var="VOICEJOBS_LAKE_URI")
    from pipelines.warehouse.s3store import S3LakeStore

    bucket, prefix = bucket_prefix
    access = access or ObjectStoreAccess()
    access.validate()
    return S3LakeStore(bucket, prefix, access)
