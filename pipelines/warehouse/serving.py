"""The serving snapshot: serving.duckdb, a copy of the warehouse that BI tools open read-only.

It is taken after a CHECKPOINT, in an older storage format, stripped of the sync's own
bookkeeping, fsynced and swapped in with os.replace. A warehouse created in that format
(every one created since it was chosen: see STORAGE_VERSION) is copied as a file; an older
warehouse is copied table by table.

The snapshot a new one replaces is kept as the spare (SPARE_FILE), and the next one is written
into it when no reader has it open: only the parts that differ from the warehouse are written
(see _copy_changes). Any starting content gives the same snapshot; a close one leaves little to
write and flush (4 MB of the 235 MB of a million jobs, after a one-day sync). A sync that will
publish and finds a snapshot but no spare (the first sync after a backfill, or a spare a reader
held) has one copied from the snapshot while it fetches (spare_made_ahead), so its publish,
where the user waits, writes only what changed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb

from pipelines.crashpoints import crashpoint
from pipelines.redact import redact
from pipelines.warehouse.db import STORAGE_VERSION, Connections, keep_row_groups
from pipelines.warehouse.lakestore import _fsync, _fsync_dir
from pipelines.warehouse.tables import KEYS_TABLE, WarehouseError, first_row

log = logging.getLogger("voicejobs.warehouse")

SERVING_FILE = "serving.duckdb"  # the snapshot readers open, beside warehouse.duckdb
#: A replaced serving.duckdb's second name in earlier versions (.serving-<token> + this), kept
#: until removed: one a crash left behind is removed at the next publish.
RETIRED_SUFFIX = ".duckdb.retired"
#: The snapshot the last one replaced, beside it, kept to be rewritten into the next one. It
#: holds what serving.duckdb held before; deleting it costs the next sync a whole copy.
SPARE_FILE = ".serving-spare.duckdb"
#: Tables of the sync's own bookkeeping, left out of the serving snapshot. It keeps the jobs,
#: their history and transitions, the analytics schema, sync_runs (freshness) and
#: warehouse_meta (which source the data came from).
SYNC_ONLY_TABLES = (
    "quarantine", "lake_dirty", "models_dirty", KEYS_TABLE, "sync_state", "sync_windows", "schema_migrations")
# The oldest DuckDB release that can read serving.duckdb.
SERVING_STORAGE_VERSION = STORAGE_VERSION


#: What the changed parts of a snapshot's copy are looked for in (see _copy_changes).
_CHUNK = 1 << 20
#: A spare made ahead is written and flushed in pieces of this size: the sync's own commits
#: meanwhile wait for at most one piece's flush (ext4 commits a file's data with the journal).
_AHEAD_PIECE = 32 << 20


class _Spare:
    """The spare, claimed as the file the next snapshot is written into."""

    def __init__(self, data_dir: Path) -> None:
        self.token = uuid.uuid4().hex
        self.path = data_dir / f".serving-{self.token}.duckdb.tmp"

    @classmethod
    def claim(cls, spare: Path) -> _Spare | None:
        """``spare`` renamed to be written into, when no reader has it open (DuckDB readers hold
        a shared lock on the file they read, which the exclusive one tried here meets). None
        when there is none; one a reader holds loses its name (the reader keeps its file)."""
        try:
            fd = os.open(spare, os.O_RDWR)
        except OSError:
            return None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                _remove_quietly(spare)
                return None
            claimed = cls(spare.parent)
            os.replace(spare, claimed.path)  # under the lock: no reader took it meanwhile
            return claimed
        except OSError:
            return None
        finally:
            os.close(fd)


class Serving(Connections):
    """Publishing serving.duckdb."""

    _spare_maker: tuple[threading.Thread, threading.Event] | None = None

    @contextmanager
    def spare_made_ahead(self) -> Iterator[None]:
        """During the block, a thread copies serving.duckdb into the spare when there is a
        snapshot and no spare, so a publish in the block writes only what changed since that
        snapshot (it waits for the copy to end). Made only when the disk keeps room for the
        warehouse file besides it; a copy that fails leaves nothing, and the publish copies the
        warehouse whole as it would have. A block that ends before its publish (an error) stops
        the copy."""
        stop = threading.Event()
        thread = threading.Thread(target=self._make_spare, args=(stop,), name="voicejobs-spare", daemon=True)
        self._spare_maker = (thread, stop)
        thread.start()
        try:
            yield
        finally:
            self._wait_for_spare(stop=True)

    def _wait_for_spare(self, *, stop: bool = False) -> None:
        maker, self._spare_maker = self._spare_maker, None
        if maker is not None:
            thread, stopped = maker
            if stop:
                stopped.set()
            thread.join()

    def _make_spare(self, stop: threading.Event) -> None:
        """serving.duckdb copied to SPARE_FILE (through a temporary file) when there is no spare,
        unless ``stop`` is set first."""
        spare = self.data_dir / SPARE_FILE
        try:
            if spare.exists():
                return
            source = os.open(self.serving_path, os.O_RDONLY)
        except OSError:  # no snapshot yet (a backfill copies the warehouse whole anyway)
            return
        tmp = self.data_dir / f".serving-{uuid.uuid4().hex}.duckdb.tmp"
        try:
            size = os.fstat(source).st_size
            room = shutil.disk_usage(self.data_dir).free - size
            if room < self.db_path.stat().st_size:
                log.info("No spare serving snapshot made ahead: %d MB free on the disk of %s.",
                         (room + size) >> 20, self.data_dir)
                return
            if _copy_whole(source, tmp, flush_every=_AHEAD_PIECE, stop=stop):
                os.replace(tmp, spare)
            else:
                _remove_copy(tmp)
        except OSError as exc:
            _remove_copy(tmp)
            log.info("No spare serving snapshot made ahead (%s); the publish copies the warehouse whole.",
                     redact(exc))
        finally:
            os.close(source)

    def _remove_stale_copies(self, keep: Path | None = None) -> None:
        """Temporary and replaced snapshots left by an earlier process (a crash, an error)."""
        for stale in (*self.data_dir.glob(".serving-*.duckdb.tmp*"), *self.data_dir.glob(f".serving-*{RETIRED_SUFFIX}")):
            if stale != keep:
                with suppress(OSError):
                    stale.unlink()

    def publish_serving(self) -> Path:
        """Replace serving.duckdb with a consistent copy of the warehouse.

        A reader holding the old serving.duckdb open keeps its old snapshot (the replaced file
        lives on until closed); connections opened afterwards see the new one. No other
        process may write warehouse.duckdb meanwhile (DuckDB's file lock ensures it).
        """
        with self.publishing_serving():
            pass
        return self.serving_path

    @contextmanager
    def publishing_serving(self) -> Iterator[None]:
        """publish_serving(), with the block run while the snapshot is written to disk.

        The warehouse is copied (into the spare when it can be had) and flushed to disk before
        the block starts; the block may then write it. A thread strips the copy of the sync's
        bookkeeping and swaps it in. On exit the snapshot is in place, or its error is raised
        (the block's own error first, if any)."""
        with self.connect(), self._cursor() as con:  # the file is read in a block (_file_descriptor)
            tmp, whole_file = self._take_copy(con)
            done: list[BaseException | None] = []
            thread = threading.Thread(target=self._finish_copy_into, args=(tmp, whole_file, done),
                                      name="voicejobs-serving", daemon=True)
            thread.start()
            try:
                yield
            finally:
                thread.join()
        if done[0] is not None:
            raise self._not_published(done[0])

    def _take_copy(self, con: duckdb.DuckDBPyConnection) -> tuple[Path, bool]:
        """The checkpointed warehouse copied into a temporary file (nothing may write it meanwhile):
        the file, and whether it is the warehouse file copied whole (else its tables
        were copied, without the bookkeeping)."""
        con.execute("CHECKPOINT")
        self._wait_for_spare()
        wal = Path(str(self.db_path) + ".wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise WarehouseError(
                f"{self.db_path} still has un-checkpointed changes in {wal} (an open transaction?); "
                "publish the serving snapshot when no sync is writing"
            )
        self._remove_stale_copies()
        whole_file = self._storage_version(con).startswith(SERVING_STORAGE_VERSION)
        spare = _Spare.claim(self.data_dir / SPARE_FILE) if whole_file else None
        token = spare.token if spare else uuid.uuid4().hex
        tmp = self.data_dir / f".serving-{token}.duckdb.tmp"
        try:
            if spare is not None:
                _copy_changes(self._file_descriptor(), tmp)
                crashpoint("serving_copying")  # a snapshot copy left half-done
            elif whole_file:
                self._copy_file(tmp)
            else:
                self._copy_tables(con, tmp, f"serving_{token[:12]}")
            # Flushed before the block beside the rest runs: the lake's fsyncs would otherwise
            # wait behind it (ext4 commits a file's data with the journal), and a change capture
            # at a million jobs took 8.4 s for both instead of 5.1 s one after the other.
            _fsync(tmp)
        except (OSError, duckdb.Error) as exc:
            _remove_copy(tmp)
            raise self._not_published(exc) from None
        return tmp, whole_file

    def _finish_copy_into(self, tmp: Path, whole_file: bool, done: list[BaseException | None]) -> None:
        """Strip (a whole file), flush and swap in the copy ``tmp``; ``done`` gets None, or the error."""
        try:
            if whole_file:
                self._strip(tmp)
            _fsync(tmp)
            self._keep_spare()
            os.replace(tmp, self.serving_path)
            _fsync_dir(self.data_dir)
            crashpoint("serving_replaced")
        except BaseException as exc:  # handed to the thread that waits for this one
            _remove_copy(tmp)
            done.append(exc)
            return
        done.append(None)

    def _not_published(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, (OSError, duckdb.Error)):
            return exc
        return WarehouseError(
            f"writing the serving snapshot {self.serving_path} failed ({redact(exc)}); "
            f"free space on the disk holding {self.data_dir} and publish again"
        )

    def _keep_spare(self) -> None:
        """The current serving.duckdb, about to be replaced, kept as the spare (a second name,
        so the replace frees none of its blocks: freeing 235 MB took 0.10-0.15 s of it). With a
        spare there already (one not claimed), or no hard links, the replace frees the old file."""
        with suppress(OSError):
            os.link(self.serving_path, self.data_dir / SPARE_FILE)

    @staticmethod
    def _storage_version(con: duckdb.DuckDBPyConnection) -> str:
        tags = first_row(con, "SELECT tags FROM duckdb_databases() WHERE database_name = current_database()")[0]
        return str(dict(tags).get("storage_version", "")) if tags else ""

    def _copy_file(self, tmp: Path) -> None:
        """The checkpointed warehouse file copied whole (the caller holds its only connection)."""
        _copy_whole(self._file_descriptor(), tmp)
        crashpoint("serving_copying")  # a snapshot copy left half-done

    @staticmethod
    def _strip(tmp: Path) -> None:
        """The whole-file copy without the sync's bookkeeping, checkpointed."""
        con = duckdb.connect(str(tmp))
        try:
            # Its checkpoint merges no row groups either: the copy keeps the warehouse's (see db.py).
            keep_row_groups(con)
            for table in SYNC_ONLY_TABLES:
                con.execute(f"DROP TABLE IF EXISTS main.{table}")
            con.execute("CHECKPOINT")
        finally:
            con.close()

    @staticmethod
    def _copy_tables(con: duckdb.DuckDBPyConnection, tmp: Path, alias: str) -> None:
        """A warehouse in a newer storage format: copied table by table into the serving format
        (BI drivers and CLIs lag DuckDB releases, and a file written by the newest one locks them out)."""
        quoted = str(tmp).replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS {alias} (STORAGE_VERSION '{SERVING_STORAGE_VERSION}')")
        try:
            source = first_row(con, "SELECT current_database()")[0]
            con.execute(f'COPY FROM DATABASE "{source}" TO {alias}')
            crashpoint("serving_copying")  # a snapshot copy left half-done
            # Readers get what analysts read, not the sync's own bookkeeping (raw records of the
            # quarantine, cursors, export marks).
            for table in SYNC_ONLY_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {alias}.main.{table}")
        finally:
            con.execute(f"DETACH {alias}")


def _remove_quietly(path: Path) -> None:
    """Remove a replaced snapshot; one left behind (a crash, an error) goes at the next publish."""
    with suppress(OSError):
        path.unlink()


def _remove_copy(tmp: Path) -> None:
    for leftover in (tmp, Path(f"{tmp}.wal")):
        with suppress(OSError):
            leftover.unlink()


def _copy_whole(source: int, copy: Path, *, flush_every: int | None = None,
                stop: threading.Event | None = None) -> bool:
    """The file open as ``source`` copied to ``copy`` (positional reads: ``source`` may be shared);
    with ``flush_every``, flushed to disk after each piece of that many bytes. False when ``stop``
    was set before the copy ended (``copy`` is then partial)."""
    size = os.fstat(source).st_size
    piece = flush_every or 1 << 30
    dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(dst, source, offset, min(size - offset, piece))
            if sent == 0:
                break
            offset += sent
            if flush_every:
                os.fdatasync(dst)
            if stop is not None and stop.is_set() and offset < size:
                return False
    finally:
        os.close(dst)
    return True


def _copy_changes(source: int, copy: Path) -> int:
    """Make ``copy`` (an earlier copy of the file open as ``source``) equal to it byte for byte,
    writing only the chunks that differ; returns the bytes written. Nothing may write the file
    meanwhile. Comparing a million jobs' 235 MB takes about 65 ms; the writes are what the
    copy's flush then waits for."""
    size = os.fstat(source).st_size
    written = offset = 0
    ours, theirs = bytearray(_CHUNK), bytearray(_CHUNK)
    dst = os.open(copy, os.O_RDWR)
    try:
        while offset < size:
            n = os.preadv(source, [ours], offset)
            if n == 0:
                break  # the file ended early (it cannot, with nothing writing it)
            m = os.preadv(dst, [theirs], offset)
            same = m == n and (ours == theirs if n == _CHUNK else ours[:n] == theirs[:n])
            if not same:
                _write_all(dst, memoryview(ours)[:n], offset)
                written += n
            offset += n
        os.ftruncate(dst, offset)
    finally:
        os.close(dst)
    return written


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done
