"""What the warehouse stores: table names, the stored jobs schema, the version hash, time helpers.

Every room of the package speaks these names; none of them opens a connection.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.ingest.schema import JOBS_SCHEMA

JOBS_TABLE = "voice_training_jobs"
#: The SCD2 history: a view of the current versions (the jobs table's rows) and the past ones.
HISTORY_TABLE = "voice_training_job_history"
#: The versions a newer one replaced (valid_to set); the current version is the jobs row.
PAST_VERSIONS_TABLE = "voice_training_job_past_versions"
TRANSITIONS_VIEW = "voice_training_job_transitions"
#: The hash of each jobs row's key (migration 006): what a batch of new jobs is checked against.
KEYS_TABLE = "job_keys"

_TS = pa.timestamp("ms", tz="UTC")
#: JOBS_SCHEMA plus the warehouse's deletion mark: the shape of jobs_table() and the lake files.
STORED_JOBS_SCHEMA: pa.Schema = JOBS_SCHEMA.append(pa.field("deleted_at", _TS))

JOB_COLUMNS: tuple[str, ...] = tuple(JOBS_SCHEMA.names)
# The content of a version: every column except when it was synced.
_CONTENT_COLUMNS: tuple[str, ...] = tuple(c for c in JOB_COLUMNS if c != "synced_at")
_COLS = ", ".join(JOB_COLUMNS)

_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN", _TS: "TIMESTAMPTZ"}


def _column_ddl() -> str:
    """The job columns of JOBS_SCHEMA as DuckDB column definitions, one per line."""
    return ",\n    ".join(f"{f.name} {_DUCKDB_TYPES[f.type]}" for f in JOBS_SCHEMA)


def _hash_expr(alias: str = "") -> str:
    """A version's content hash: DuckDB's 64-bit hash() over every content column.

    About ten times cheaper than md5 over a JSON rendering of the row, which was the largest
    single cost of a backfill's transaction. hash() is deterministic but not promised to stay
    the same across DuckDB releases, so warehouse_meta records which release hashed the
    current versions, and _ensure_row_hashes() re-hashes them when that changes."""
    p = f"{alias}." if alias else ""
    return f"CAST(hash({', '.join(p + c for c in _CONTENT_COLUMNS)}) AS VARCHAR)"


#: What produced the stored row hashes; a change re-hashes the current versions (jobs rows)
#: and the key hashes (KEYS_TABLE).
ROW_HASH_ALGORITHM = f"duckdb-hash/{duckdb.__version__}"


def key_hash_expr(alias: str = "") -> str:
    """A job's key hash as KEYS_TABLE holds it: DuckDB's hash() of (project_id, job_id), the
    same release as ROW_HASH_ALGORITHM."""
    p = f"{alias}." if alias else ""
    return f"hash({p}project_id, {p}job_id)"


def first_row(con: duckdb.DuckDBPyConnection, query: str,
              params: Sequence[object] | Mapping[str, object] | None = None) -> tuple | None:
    """The first row ``query`` returns (None when none), its rows read to their end.

    DuckDB streams a query's rows and keeps its transaction open until a fetch finds their end:
    a row taken with fetchone() left a read open on its connection. On the run's shared
    connection, that read stopped every checkpoint after an update in place ("there are other
    write transactions active"), DuckDB's own at a commit among them."""
    rows = con.execute(query, params if params is not None else []).fetchall()
    return rows[0] if rows else None


def meta_value(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    """What warehouse_meta holds under ``key``, or None."""
    row = first_row(con, "SELECT value FROM main.warehouse_meta WHERE key = ?", [key])
    return row[0] if row else None


def put_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    """Set warehouse_meta's ``key`` to ``value`` (one row a key, stamped with the transaction's time)."""
    con.execute("DELETE FROM main.warehouse_meta WHERE key = ?", [key])
    con.execute("INSERT INTO main.warehouse_meta VALUES (?, ?, now())", [key, value])

def utc_day(column: str) -> str:
    """SQL for the UTC calendar day (DATE) of a TIMESTAMPTZ ``column``: a job's creation day,
    which names its lake partition. The instant's microseconds read as a plain timestamp, so
    no time-zone rule is looked up (``CAST(timezone('UTC', t) AS DATE)`` gives the same day, at
    any session TimeZone, for about twice the time: 0.115 s against 0.045 s a million rows).
    analytics.utc_day in sql/_macros.sql is the same expression, for the models."""
    return f"CAST(make_timestamp(epoch_us({column})) AS DATE)"


def utc_days(first: date, last: date) -> tuple[datetime, datetime]:
    """The creation days ``first`` to ``last`` (both included) as the half-open range of
    instants [first 00:00Z, the day after last 00:00Z), for a create_time filter."""
    return (datetime(first.year, first.month, first.day, tzinfo=UTC),
            datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1))


def day_runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """``days`` as runs of consecutive days, (first, last) each, in order (a day given twice
    counts once): what a sync's gap days are reported as, and what a lake export reads."""
    runs: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][1] + timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_us(dt: datetime) -> int:
    """Whole microseconds since the epoch, exactly (no float rounding)."""
    return (dt - _EPOCH) // _MICROSECOND


def _aware(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return dt.astimezone(UTC)


class WarehouseError(Exception):
    """Storage cannot be used or written; the message names the path and what to do."""


_DISK_FULL_TEXTS = ("no space left", "file too large", "disk quota", "could not write file")


def _is_disk_error(exc: BaseException) -> bool:
    # DuckDB reports a full disk or a failing device as IOException, but a write that fails
    # while committing surfaces as a TransactionException carrying the OS error's text;
    # an OSError reaching here comes from the file system as well.
    if isinstance(exc, OSError | duckdb.IOException):
        return True
    return isinstance(exc, duckdb.Error) and any(t in str(exc).lower() for t in _DISK_FULL_TEXTS)


def probe_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be written in it (OSError if not)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)
