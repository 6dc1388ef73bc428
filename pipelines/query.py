"""Ad-hoc SQL over the serving snapshot, formatted for a terminal, a spreadsheet or a program.

The snapshot is opened through `open_analyst_connection`: read-only, no file access, no
extensions, settings locked, search_path `analytics,main`, so analysts write
`select * from failure_rate_by_tag` and get the analytics relation (deleted jobs left out)
before any warehouse table of the same name, and can do nothing but read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

FORMATS = ("table", "csv", "json", "markdown")
SEARCH_PATH = "analytics,main"

# Set when the database opens, before any SQL runs; `lock_configuration` then freezes them.
# enable_external_access=false leaves DuckDB no file but the database it opened: no COPY TO,
# EXPORT/IMPORT, read_csv/read_text/read_parquet/glob, ATTACH, INSTALL or LOAD of an extension,
# and no secrets directory.
ANALYST_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
}
_LOCKED = {**{k: str(v).lower() for k, v in ANALYST_CONFIG.items()}, "lock_configuration": "true"}

REFUSAL = (
    "this query needs file access, an extension, a write or a setting change, which analyst SQL may not do; "
    "it can only read the relations of the serving snapshot"
)


class AnalystSQLRefused(duckdb.PermissionException):
    """Analyst SQL tried something beyond reading the snapshot's relations."""


def open_analyst_connection(db_path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open `db_path` for SQL written outside the pipeline: it can read the relations and nothing else.

    Every connection that runs SQL from outside (`voicejobs query`, `voicejobs report`, and
    any later one) must be opened here, never with `duckdb.connect` directly.

    The database is opened read-only with DuckDB's `enable_external_access = false` (no file
    read or written besides this database: no COPY TO, EXPORT/IMPORT DATABASE, read_* table
    functions, glob, ATTACH, INSTALL, LOAD, secrets), `autoload_known_extensions = false` and
    `autoinstall_known_extensions = false`. The search_path is set to `analytics,main` (those
    of the two that exist), then `lock_configuration = true` makes every global setting final
    for the connection's life (SET, RESET and PRAGMA of a setting fail). The settings are read back before returning,
    so a database already opened differently in this process cannot slip through.
    """
    path = Path(db_path)
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    con = duckdb.connect(str(path), read_only=True, config=ANALYST_CONFIG)
    try:
        # Only schemas that exist: a warehouse whose models were never built has no `analytics`,
        # and its callers say so better than a failing SET would.
        present = {
            r[0]
            for r in con.execute(
                "SELECT schema_name FROM duckdb_schemas() WHERE database_name = current_database()"
            ).fetchall()
        }
        schemas = [s for s in SEARCH_PATH.split(",") if s in present] or ["main"]
        con.execute(f"SET search_path = '{','.join(schemas)}'")
        # Times read as UTC, as they are stored and as the README shows them, on any machine.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET lock_configuration = true")
        in_force = dict(
            con.execute(
                "SELECT name, lower(value) FROM duckdb_settings() WHERE name IN ({})".format(
                    ", ".join("?" for _ in _LOCKED)
                ),
                list(_LOCKED),
            ).fetchall()
        )
        if in_force != _LOCKED:
            raise RuntimeError(f"the analyst connection to {path} is not sandboxed: {in_force}")
    except BaseException:
        con.close()
        raise
    return con


def _refused(exc: duckdb.Error) -> bool:
    """Whether DuckDB stopped the statement because of the sandbox rather than a mistake in it."""
    if isinstance(exc, duckdb.PermissionException):
        return True
    first = str(exc).splitlines()[0] if str(exc) else ""
    return isinstance(exc, duckdb.InvalidInputException) and (
        "the configuration has been locked" in first or "read-only mode" in first
    )


# Statements that can never be reading the snapshot. The connection's sandbox stops them
# anyway; refusing them up front gives every one the same plain message, and also catches
# the session-local settings the lock leaves open (SET search_path, USE, SET VARIABLE).
_NOT_READS = {
    duckdb.StatementType.SET,  # SET, RESET, USE, PRAGMA x = y
    duckdb.StatementType.VARIABLE_SET,
    duckdb.StatementType.COPY,
    duckdb.StatementType.COPY_DATABASE,
    duckdb.StatementType.EXPORT,
    duckdb.StatementType.ATTACH,
    duckdb.StatementType.DETACH,
    duckdb.StatementType.LOAD,  # LOAD and INSTALL
    duckdb.StatementType.EXTENSION,
}


def _refuse_non_reads(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    for statement in con.extract_statements(sql):
        try:
            kind = statement.type
        except ValueError:  # a statement type this duckdb module has no name for (UPDATE EXTENSIONS)
            kind = None
        if kind is None or kind in _NOT_READS:
            text = " ".join(statement.query.split())
            raise AnalystSQLRefused(f"{REFUSAL} ({text[:80]})")


@contextmanager
def _analyst_cursor(db_path: str | Path, sql: str, params: Sequence[Any] | None):
    """Run one analyst statement in the sandbox and yield its cursor (closed afterwards)."""
    con = open_analyst_connection(db_path)
    try:
        _refuse_non_reads(con, sql)
        yield con.execute(sql, list(params) if params is not None else None)
    except duckdb.Error as exc:
        if isinstance(exc, AnalystSQLRefused) or not _refused(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnalystSQLRefused(f"{REFUSAL} ({detail})") from None
    finally:
        con.close()


def run_query(db_path: str | Path, sql: str, fmt: str = "table", params: Sequence[Any] | None = None) -> str:
    """Run one query against `db_path` in the analyst sandbox and return its result as text in `fmt`.

    fmt: "table" (aligned plain text, NULL shown as NULL), "csv" (header row, NULL as an
    empty field), "json" (a list of objects; timestamps in ISO 8601) or "markdown".
    `params` are bound to `?` placeholders, never formatted into the text. SQL that needs
    more than reading the snapshot (see `open_analyst_connection`) raises AnalystSQLRefused,
    a duckdb.Error whose first line says so.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    with _analyst_cursor(db_path, sql, params) as cursor:
        if cursor.description is None:
            return ""
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    return format_rows(columns, rows, fmt)


def read(sql: str, data_dir: str | Path = "data", params: Sequence[Any] | None = None):
    """One analyst query as a pandas DataFrame, from the serving snapshot of ``data_dir``.

    The Python way to what ``voicejobs query`` prints, in the same sandbox: read-only, no
    file access, no setting changed. Timestamps come as timezone-aware (UTC) columns.
    ``from pipelines.query import read; read("select * from failure_rate_by_tag")``.
    """
    path = Path(data_dir) / "serving.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}; run `voicejobs demo` or `voicejobs sync` first")
    with _analyst_cursor(path, sql, params) as cursor:
        return cursor.df()


#: The warehouse relations analysts read beside the analytics schema (the rest is the sync's own).
ANALYST_MAIN_RELATIONS = {
    "voice_training_jobs": "every job at its newest version, deleted ones kept with deleted_at",
    "voice_training_job_history": "every observed version of a job (SCD type 2)",
    "voice_training_job_transitions": "one row per change of state of a job",
}
_RELATIONS_SQL = """
SELECT schema_name, table_name, 'table' FROM duckdb_tables() WHERE schema_name IN ('analytics', 'main')
UNION ALL
SELECT schema_name, view_name, 'view' FROM duckdb_views() WHERE NOT internal AND schema_name IN ('analytics', 'main')
"""


def _what_a_row_is(description: str, width: int = 90) -> str:
    """The first sentence of a model's header, after its "name (kind):" lead, on one line."""
    text = " ".join(description.split("Columns:")[0].split())
    text = text.split("): ", 1)[-1].split(". ")[0].rstrip(".")
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def list_relations(db_path: str | Path, fmt: str = "table") -> str:
    """The analyst-facing relations of the snapshot and what one row of each is (``query --tables``)."""
    from pipelines.models import load_models

    described = {m.name: _what_a_row_is(m.description) for m in load_models()}
    con = open_analyst_connection(db_path)
    try:
        found = con.execute(_RELATIONS_SQL).fetchall()
    finally:
        con.close()
    rows = sorted(
        (name if schema == "analytics" else f"main.{name}", kind,
         described.get(name, "") if schema == "analytics" else ANALYST_MAIN_RELATIONS[name])
        for schema, name, kind in found
        if schema == "analytics" or name in ANALYST_MAIN_RELATIONS
    )
    rows.sort(key=lambda row: row[0].startswith("main."))
    return format_rows(["relation", "kind", "one row is"], rows, fmt)


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> str:
    """Render a result set in one of FORMATS."""
    if fmt == "table":
        return _table(columns, rows)
    if fmt == "markdown":
        return _markdown(columns, rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _text(v) for v in row])
        return out.getvalue()
    if fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        return json.dumps(records, ensure_ascii=False, indent=2)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _text(value: Any) -> str:
    """One cell as text: NULL as 'NULL', floats without binary noise, times in ISO 8601."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0 or not 1e-4 <= abs(value) < 1e15:
            return repr(value) if value else "0"
        # About six significant digits, never in exponent form: people read these.
        integer_digits = len(str(int(abs(value))))
        decimals = max(0, 6 - integer_digits) if abs(value) >= 1 else 6
        return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _width(text: str) -> int:
    """Terminal columns `text` occupies: East Asian wide characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # Line breaks and tabs inside a value would break the grid.
    cells = [[_text(v).replace("\n", " ").replace("\t", " ") for v in row] for row in rows]
    widths = [_width(c) for c in columns]
    for row in cells:
        widths = [max(w, _width(v)) for w, v in zip(widths, row, strict=True)]
    # Numbers align right so their magnitudes line up; text aligns left.
    right = [bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = []
        for v, w, r in zip(values, widths, right, strict=True):
            pad = " " * (w - _width(v))
            parts.append(pad + v if r else v + pad)
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out.extend("| " + " | ".join(cell(_text(v)) for v in row) + " |" for row in rows)
    return "\n".join(out) + "\n"
