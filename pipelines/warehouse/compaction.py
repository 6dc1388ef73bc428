"""Compaction: the row groups that checkpoints left partly filled, merged every COMPACT_EVERY_RUNS-th run.

A checkpoint seals the rows appended since the one before into row groups of their own, and
DuckDB's own merge of partly filled groups (its vacuum) is off (db.DUCKDB_MAX_VACUUM_TASKS): so a
backfill leaves groups of about 49,000 rows where DuckDB's hold 122,880, and each nightly sync
one small group more in every table it appends to.

DuckDB's vacuum cannot be the one that merges them: on a million-job warehouse after a backfill,
its checkpoint ran out of the 80 MB cap ("failed to allocate data", with two threads, and with one
at other sizes), and a checkpoint that fails is fatal to DuckDB. The database was invalidated,
the run failed, and so did every compacting run after it. Here a table is rewritten instead:
copied, in its rows' order, into a table made from its own DDL, which then takes its place in
one transaction. Its pages are written by the ordinary insert, which keeps to the cap by
writing each full group to disk as it goes, a group's rows per transaction (one DuckDB thread:
two left the process 25-30 MB bigger after it). The last, partly filled group's rows are copied
in smaller transactions, with a checkpoint every TAIL_WAL_BYTES of WAL (see _copy_tail). A
million jobs' tables take about 12 s. A rewrite that fails all the same (out of memory) is an
ordinary error: the copy is dropped, the table stays as it was, and the next compacting run
tries again. RunLog.finish_run() compacts, once a compacting run succeeded.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from pathlib import Path

import duckdb

from pipelines.warehouse.db import DUCKDB_THREADS, database_file
from pipelines.warehouse.tables import WarehouseError, first_row

log = logging.getLogger("voicejobs.warehouse")

#: The rows of a full row group (DuckDB's default row_group_size).
ROW_GROUP_ROWS = 122_880
#: The name of a table's copy while it is written (see _rewrite; one a crash left is dropped).
_ASIDE = "_compacting_{}"
#: The rows of the last, partly filled group copied per transaction, and the WAL that makes a
#: checkpoint between them (see _copy_tail).
TAIL_ROWS = 8_192
TAIL_WAL_BYTES = 16 << 20


def partly_filled_groups(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """How many of ``table``'s row groups (of schema main) hold fewer rows than a full one,
    the last group left out: the groups a rewrite would merge."""
    counts = [count for (count,) in con.execute(
        f"SELECT sum(count) FROM pragma_storage_info('main.{table}') WHERE column_path = '[0]'"
        " GROUP BY row_group_id ORDER BY row_group_id").fetchall()]
    return sum(1 for count in counts[:-1] if count < ROW_GROUP_ROWS)


def compact_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Rewrite every table of schema main with partly filled row groups but its last; returns
    the tables rewritten. One that cannot be rewritten is left as it was, with a warning."""
    tables = con.execute(
        "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND NOT temporary ORDER BY table_name").fetchall()
    con.execute("SET threads = 1")
    try:
        done = [table for table, ddl in tables if _compact(con, table, ddl)]
    finally:
        con.execute(f"SET threads = {DUCKDB_THREADS}")
    return done


def _compact(con: duckdb.DuckDBPyConnection, table: str, ddl: str) -> bool:
    """Rewrite ``table`` if it has partly filled row groups; whether it was. A warning if that fails."""
    started = time.monotonic()
    try:
        if partly_filled_groups(con, table) == 0:
            return False
        _rewrite(con, table, ddl)
    except (duckdb.Error, WarehouseError) as exc:
        with suppress(duckdb.Error):
            con.execute(f'DROP TABLE IF EXISTS main."{_ASIDE.format(table)}"')
        log.warning("Compacting table %s failed (%s); it stays as it was, and the next compacting run tries "
                    "again.", table, " ".join(str(exc).split())[:200])
        return False
    log.info("Compacted table %s in %.1f s.", table, time.monotonic() - started)
    return True


def drop_leftovers(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the copies a compaction that was interrupted (a crash) left behind."""
    for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            " AND schema_name = 'main' AND starts_with(table_name, ?)", [_ASIDE.format("")]).fetchall():
        con.execute(f'DROP TABLE IF EXISTS main."{name}"')


def _rewrite(con: duckdb.DuckDBPyConnection, table: str, ddl: str) -> None:
    """``table`` rewritten into a copy made from its DDL ``ddl``, a row group's rows per transaction
    (so what DuckDB holds before it writes them stays within a group), then swapped in: the
    copy checked to hold as many rows, the table dropped and the copy renamed, in one transaction."""
    aside = _ASIDE.format(table)
    prefix = f"CREATE TABLE {table}("
    if not ddl.startswith(prefix):
        raise WarehouseError(f"its definition does not start as expected ({ddl[:60]!r})")
    con.execute(f'CREATE TABLE main."{aside}"(' + ddl[len(prefix):])
    (last,) = first_row(con, f'SELECT max(rowid) FROM main."{table}"')
    end = (last or 0) + 1
    full = end - end % ROW_GROUP_ROWS
    for first in range(0, full, ROW_GROUP_ROWS):
        copy_rows(con, aside, table, first, first + ROW_GROUP_ROWS)
    _copy_tail(con, aside, table, full, end)
    con.execute("BEGIN TRANSACTION")
    try:
        (kept,), (copied,) = (first_row(con, f'SELECT count(*) FROM main."{name}"') for name in (table, aside))
        if kept != copied:
            raise WarehouseError(f"the copy holds {copied:,} rows of {kept:,}")
        con.execute(f'DROP TABLE main."{table}"')
        con.execute(f'ALTER TABLE main."{aside}" RENAME TO "{table}"')
        con.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def _copy_tail(con: duckdb.DuckDBPyConnection, aside: str, table: str, first: int, end: int) -> None:
    """The rows from ``first`` up to ``end`` (fewer than a full group) copied TAIL_ROWS at a time,
    with a checkpoint whenever the WAL has grown past TAIL_WAL_BYTES.

    A transaction of a full group's rows goes to disk as it is written; one of fewer stays in
    DuckDB's memory and in the WAL until a checkpoint compresses it, all of it at once. A checkpoint
    that then runs out of the cap is fatal to DuckDB (the database invalidated for the process):
    80,001 rows with 300-character reasons failed so under 48 MB in every try, and under 64 MB now
    and then. Checkpointing every TAIL_WAL_BYTES of WAL keeps that work bounded, at the price of a
    tail of a few groups instead of one when the rows are that wide."""
    file = database_file(con)
    wal = Path(f"{file}.wal") if file else None
    for start in range(first, end, TAIL_ROWS):
        copy_rows(con, aside, table, start, min(start + TAIL_ROWS, end))
        if wal is not None and wal.exists() and wal.stat().st_size >= TAIL_WAL_BYTES:
            con.execute("CHECKPOINT")


def copy_rows(con: duckdb.DuckDBPyConnection, table: str, source: str, first: int, after: int) -> None:
    """The rows of ``source`` with rowids from ``first`` up to ``after`` appended to ``table``, in
    their order (DuckDB keeps a scan's order in an insert; an ORDER BY would sort the wide rows)."""
    con.execute(f'INSERT INTO main."{table}" SELECT * FROM main."{source}" WHERE rowid >= ? AND rowid < ?',
                [first, after])
