"""Connections to warehouse.duckdb, its DuckDB settings, and the schema migrations.

warehouse.duckdb is open only while it is used. Outside a `with warehouse.connect():` block
every public method opens the file, does its work and closes it, so other processes (or a
read-only connection in this one) can open the file between calls. Inside the block one
connection is kept and yielded (for running SQL models on it); each method then works on its
own cursor of it, so methods may be called from worker threads. A Warehouse is meant for one
writing process at a time: DuckDB allows a single read-write process per file.

Migrations are the files ``migrations/NNN_<what>.sql``: the file numbered i brings the schema
from version i-1 to i, in one transaction that also adds its schema_migrations row. Their
statements are idempotent. ``{job_columns}`` in a file stands for the job columns of
JOBS_SCHEMA, so the Arrow schema stays the one definition of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from pipelines.warehouse.tables import (
    JOBS_TABLE,
    KEYS_TABLE,
    ROW_HASH_ALGORITHM,
    WarehouseError,
    _column_ddl,
    _hash_expr,
    first_row,
    key_hash_expr,
    meta_value,
    put_meta,
)

log = logging.getLogger("voicejobs.warehouse")

#: The storage format of a new warehouse.duckdb: the oldest DuckDB release that reads it is the
#: one serving.duckdb promises BI tools, so the snapshot can be a copy of the file.
STORAGE_VERSION = "v1.2.0"
# DuckDB's cap for every connection: what it holds beyond this (rows not yet checkpointed,
# blocks it read or wrote) it writes out or drops. At a million jobs a sync's fetch filled it,
# and the fetch was the run's peak: alternated full syncs (0 ms, two each) peaked at 325-328 MB
# under 96 MB against 356-357 MB under 128 MB, in 49.5-50.2 s against 49.3-52.7 s; the SQL
# models' full rebuild of a million jobs takes 1.4 s under either. 64 MB took a full sync's peak
# to 309-326 MB, but benchmarks/changes.py (300,000 jobs stored, 40,000 of them changed in batches
# of 8,000) took 4.79 s against 3.79 s to write them (median of three each). 80 MB makes room for the
# sync's larger transactions (FLUSH_ROWS): benchmarks/changes.py at a million jobs wrote its
# changes in 7.18 s against 6.81 s under 96 MB, peaking at 340 MB against 352 MB (median of two).
DUCKDB_MEMORY_LIMIT = "80MB"
DUCKDB_THREADS = 2
# DuckDB checkpoints when a commit leaves more than 16 MB of WAL: every 20k-row batch of a
# backfill did, and each checkpoint rewrote the table's growing last row group (5.5 s of a
# 17 s 200k-job backfill; that rewrite was the merge DUCKDB_MAX_VACUUM_TASKS now turns off).
# With the merge off, a checkpoint writes only what was committed since the last one. Rows not
# checkpointed stay in DuckDB's memory, and a 100,000-job backfill never reached 256 MB of WAL:
# its rows piled up to 90 MB there, and the models' first step checkpointed them all. Every
# 32 MB, that backfill peaked at 270-274 MiB instead of 291-296 and took 5.2-6.3 s instead of
# 5.8-7.0 s (the models 0.33-0.41 s instead of 0.92-0.99 s: the checkpoints ran beside the
# fetch); at a million jobs it peaked 5-10 MiB lower in about the same time (two runs each).
# Each checkpoint leaves the table's last row group partly filled (no merge): a million-job
# backfill ends in 20 groups instead of 11, and a file of 261 MB instead of 240 MB, until the
# compaction every COMPACT_EVERY_RUNS runs (compaction.py).
DUCKDB_CHECKPOINT_THRESHOLD = "32MB"
# New rows after a checkpoint start a row group of their own, and the next checkpoint that follows
# new rows merges partly filled groups, rewriting them whole (DuckDB's vacuum): every sync's
# checkpoint rewrote the table's last groups. The first change capture after a million-job
# backfill rewrote 250,000 rows there, 3.9 s of its 17 s (0.06 s without the merge). No vacuum
# tasks: the groups written before stay as they are. 310 groups in a 1,750,000-row table made the
# SQL models 2.2-2.4 s against 2.2 s merged; every COMPACT_EVERY_RUNS-th run merges them by
# rewriting the tables (compaction.py: DuckDB's own merge ran out of the cap at a million jobs,
# and a checkpoint that fails is fatal to DuckDB). Jobs are never deleted, so there is nothing
# else for the vacuum to reclaim.
DUCKDB_MAX_VACUUM_TASKS = 0

# Work that needs little of DuckDB (the lake export: filtered scans whose rows go to Arrow)
# runs under this cap, so DuckDB gives back the blocks it kept from the writing before. A
# 100,000-job export peaked at 347 MB under the usual cap and 307 MB under 48 MB. A million-job
# rebuild_lake() on its own peaked at 289-295 MiB under 24 MB against 313-316 MiB under 48 MB, in
# the same time (7.3-7.4 s against 7.2-7.5 s); under 16 MB its reads ran out of memory. An
# export that does (rows far wider than usual) goes on under the usual cap (see lake.py).
DUCKDB_LEAN_MEMORY_LIMIT = "24MB"


def configure(con: duckdb.DuckDBPyConnection) -> None:
    """The settings of every connection to a warehouse file, the sync's and the model refresh's
    (pipelines.models.connect) alike: a refresh's checkpoint under the cap but with DuckDB's
    merge of row groups on ran out of memory on a million-job warehouse, which is fatal to DuckDB."""
    con.execute("SET TimeZone = 'UTC'")
    # A statement running over two seconds (a migration, a big export) would otherwise
    # draw DuckDB's progress bar into the output of the command that runs it.
    con.execute("SET enable_progress_bar = false")
    # DuckDB's default buffer pool is 80% of RAM and it keeps what it read: a sync would
    # grow with the history. A fixed cap keeps the sync's memory flat (larger work spills
    # to disk); two threads match the machines this runs on and leave the event loop a core.
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute(f"SET threads = {DUCKDB_THREADS}")
    con.execute(f"SET checkpoint_threshold = '{DUCKDB_CHECKPOINT_THRESHOLD}'")
    keep_row_groups(con)


def keep_row_groups(con: duckdb.DuckDBPyConnection) -> None:
    """The database's checkpoints merge no row groups (DUCKDB_MAX_VACUUM_TASKS; DuckDB's default
    is to merge partly filled ones). The setting is the database's: every cursor of ``con`` shares it."""
    con.execute(f"SET max_vacuum_tasks = {DUCKDB_MAX_VACUUM_TASKS}")


def database_file(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of ``con``'s current database (None in memory, or when DuckDB cannot say)."""
    with suppress(duckdb.Error):
        row = first_row(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
        if row and row[0]:
            return Path(row[0])
    return None


def free_pinned(con: duckdb.DuckDBPyConnection) -> bool:
    """Checkpoint, best effort: changes committed since the last checkpoint stay pinned in
    DuckDB's memory until one (up to most of the cap after a sync's writes). False when it
    cannot run now (another transaction is open); a full disk then fails the work that follows."""
    try:
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        log.debug("checkpoint deferred: %s", exc)
        return False
    return True


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
JOB_COLUMNS_PLACEHOLDER = "{job_columns}"


def _load_migrations(directory: Path = MIGRATIONS_DIR) -> list[str]:
    """The migration scripts in version order, ``{job_columns}`` filled in from JOBS_SCHEMA."""
    files = sorted(directory.glob("[0-9][0-9][0-9]_*.sql"))
    versions = [int(f.name[:3]) for f in files]
    if versions != list(range(1, len(files) + 1)):
        raise RuntimeError(f"migrations in {directory} are not numbered 1..n without gaps: {versions}")
    return [f.read_text(encoding="utf-8").replace(JOB_COLUMNS_PLACEHOLDER, _column_ddl()) for f in files]


# Each migration brings the schema from version i to i+1; statements are idempotent.
_MIGRATIONS: list[str] = _load_migrations()
#: The warehouse file's schema version (schema_migrations); JOBS_SCHEMA has its own SCHEMA_VERSION.
WAREHOUSE_VERSION = len(_MIGRATIONS)


class Connections:
    """Opening warehouse.duckdb, the shared connection of a ``connect()`` block, and migrations."""

    data_dir: Path
    db_path: Path
    serving_path: Path
    _con: duckdb.DuckDBPyConnection | None
    _lock: threading.RLock
    _schema_ready: bool
    # run_id -> lake partitions that failed to export during that run (see Apply.apply()).
    _stuck: dict[str, set[tuple[str, date]]]
    # A descriptor of warehouse.duckdb for reading its bytes inside the block (see file_descriptor).
    _fd: int | None

    def _open(self) -> duckdb.DuckDBPyConnection:
        try:
            con = duckdb.connect(str(self.db_path), config={"storage_compatibility_version": STORAGE_VERSION})
        except duckdb.Error as exc:
            raise WarehouseError(
                f"cannot open {self.db_path}: {exc}. If another process holds it (a running sync or a "
                f"tool with it open), wait for it or close it; readers should open {self.serving_path}"
            ) from None
        try:
            configure(con)
            if not self._schema_ready:
                self._migrate(con)
                self._schema_ready = True
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Keep warehouse.duckdb open for the block and yield the connection.

        Nested blocks yield the same connection. The yielded connection is for the thread
        that opened the block; methods called from other threads meanwhile use cursors of it.
        """
        with self._lock:
            outer = self._con
            if outer is None:
                self._con = self._open()
            con = self._con
        if outer is not None:
            yield con
            return
        try:
            yield con
        finally:
            with self._lock:
                self._con = None
                fd, self._fd = self._fd, None
            con.close()
            if fd is not None:
                os.close(fd)

    def _file_descriptor(self) -> int:
        """A read-only descriptor of warehouse.duckdb, for reading its bytes inside the
        ``connect()`` block open now; it is closed after the block's DuckDB connection.

        A process's fcntl locks on a file go when it closes any descriptor of that file, and
        DuckDB's lock on the warehouse is one: opening and closing the file by its path inside
        the block (to copy it) would let another process open the warehouse meanwhile."""
        with self._lock:
            if self._con is None:
                raise RuntimeError("the warehouse file is read from inside a connect() block only")
            if self._fd is None:
                self._fd = os.open(self.db_path, os.O_RDONLY)
            return self._fd

    @contextmanager
    def checkpointing(self) -> Iterator[None]:
        """Checkpoint in a thread while the block runs (best effort, as free_pinned), for a block
        that leaves DuckDB alone: a change capture's count bisection, which waits on the source
        and reads the stored side from memory. What the run committed before goes to the file
        then, not at the models' first step, where at a million jobs the same checkpoint took
        0.3-0.5 s of the capture's critical path. Inside a ``connect()`` block only."""
        worker = threading.Thread(target=self._checkpoint, name="checkpoint-while-waiting", daemon=True)
        worker.start()
        try:
            yield
        finally:
            worker.join()

    def _checkpoint(self) -> None:
        # Best effort in a thread of its own: a cursor that cannot be had is a checkpoint deferred
        # (the models' first step runs one), never an error printed from the thread.
        try:
            with self._cursor() as cur:
                free_pinned(cur)
        except (duckdb.Error, WarehouseError) as exc:
            log.debug("checkpoint deferred: %s", exc)

    @contextmanager
    def _lean(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Run the block with DuckDB's memory cap at DUCKDB_LEAN_MEMORY_LIMIT, back after.

        The cap is the database's, so the block must be the only work on it (the lake export at
        the end of a batch or a run is). What is pinned is freed first (free_pinned); when that
        cannot run, the cap stays as it is."""
        if not free_pinned(con):
            yield
            return
        con.execute(f"SET memory_limit = '{DUCKDB_LEAN_MEMORY_LIMIT}'")
        try:
            yield
        finally:
            try:
                con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
            except duckdb.Error as exc:  # never in place of the block's own error
                log.warning("DuckDB's memory cap stays at %s for this process: %s", DUCKDB_LEAN_MEMORY_LIMIT, exc)

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            shared = self._con
            cur = shared.cursor() if shared is not None else None
        if cur is None:
            cur = self._open()
        try:
            cur.execute("SET TimeZone = 'UTC'")
            yield cur
        finally:
            cur.close()

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, applied_at TIMESTAMPTZ, description VARCHAR)"
        )
        current = first_row(con, "SELECT coalesce(max(version), 0) FROM schema_migrations")[0]
        if current > WAREHOUSE_VERSION:
            raise WarehouseError(
                f"{self.db_path} has schema version {current}, newer than this program's {WAREHOUSE_VERSION}; "
                "upgrade voicejobs or point it at another data directory"
            )
        for version in range(current + 1, WAREHOUSE_VERSION + 1):
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(_MIGRATIONS[version - 1])
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    [version, datetime.now(UTC), f"voice_training_jobs schema {version}"],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._ensure_row_hashes(con)
        self._ensure_key_hashes(con)

    def _ensure_row_hashes(self, con: duckdb.DuckDBPyConnection) -> None:
        """Re-hash the current versions (the jobs rows) when they were hashed by another algorithm.

        Only current versions are ever compared, so only they are re-hashed; one transaction,
        once per DuckDB release (or once after the upgrade from md5 hashes)."""
        if _hashed_by(con, "row_hash") == ROW_HASH_ALGORITHM:
            return
        _rehash(con, "row_hash", [f"UPDATE {JOBS_TABLE} SET row_hash = {_hash_expr()} WHERE row_hash IS NOT NULL"])

    @staticmethod
    def _ensure_key_hashes(con: duckdb.DuckDBPyConnection) -> None:
        """Fill KEYS_TABLE anew from the jobs rows when another DuckDB release (or none) hashed
        it, or when it does not hold one hash per jobs row. One transaction; 0.13 s at a
        million jobs."""
        ((keys, jobs),) = con.execute(
            f"SELECT (SELECT count(*) FROM {KEYS_TABLE}), (SELECT count(*) FROM {JOBS_TABLE})").fetchall()
        if _hashed_by(con, "key_hash") == ROW_HASH_ALGORITHM and keys == jobs:
            return
        _rehash(con, "key_hash", [f"DELETE FROM {KEYS_TABLE}",
                                  f"INSERT INTO {KEYS_TABLE} SELECT {key_hash_expr()} FROM {JOBS_TABLE}"])


def _hashed_by(con: duckdb.DuckDBPyConnection, meta_key: str) -> str | None:
    """The algorithm warehouse_meta says made the hashes of ``meta_key``, if any."""
    return meta_value(con, meta_key)


def _rehash(con: duckdb.DuckDBPyConnection, meta_key: str, statements: list[str]) -> None:
    """Run ``statements`` (which make the hashes of ``meta_key``) and record ROW_HASH_ALGORITHM
    as their maker, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in statements:
            con.execute(statement)
        put_meta(con, meta_key, ROW_HASH_ALGORITHM)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
