"""Incremental refresh of the SQL models: what a refresh must rebuild, and how an incremental
model takes only the jobs that changed.

- The warehouse marks the jobs that changed in a way the models read, in ``models_dirty``
  (migration 005), in the transaction that writes the change: a new version of a job, a job
  marked deleted or listed again mark that job; jobs appended (a backfill's million) mark their
  creation days (UTC, per project) instead. A job synced again without a change moves only its
  synced_at, which no model reads, and marks nothing.
- An incremental model (header ``-- incremental_by: <project>, <job id>, <creation time>``, its
  columns) is a table with one row per job. Its SQL reads the jobs that the macro
  ``analytics.in_refresh_scope(project_id, job_id, create_time)`` admits: every job outside a
  refresh (the macros file defines it TRUE), the marked ones while a refresh rebuilds them.
  Their rows are deleted and built again; the marks are cleared in the same transaction.
- Every table model records the fingerprint of the SQL it was built from (its file and the
  macros) in ``warehouse_meta`` (``model_built_from:<name>``). An incremental refresh keeps a
  table as it is when nothing it reads changed: it reads no warehouse table itself, every model
  it reads was kept (an incremental one: had no marks), and its fingerprint is the recorded one.
- A full refresh rebuilds every model, and so does an incremental one for a model whose SQL
  changed, that was never built, or whose warehouse keeps no marks.

The marks trust that the warehouse's jobs are written by this program (its apply and deletion
marks); a job changed by hand in warehouse.duckdb needs a full refresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Protocol

import duckdb

from pipelines.warehouse.tables import first_row, put_meta, utc_days

#: warehouse_meta key prefix: the fingerprint of the SQL each table model was last built from.
BUILT_FROM = "model_built_from:"
#: The table of marks (see migration 005): (project_id, create_day, job_id); a NULL job_id marks
#: the day's every job (a NULL create_day then the jobs without a create_time).
MARKS_TABLE = "models_dirty"
#: The macro an incremental model's SQL restricts the jobs it reads with.
SCOPE_MACRO = "analytics.in_refresh_scope"


class Build(Enum):
    """How a refresh brings one model up to date."""

    FULL = "full"  # CREATE OR REPLACE from its SQL
    MARKED = "marked"  # an incremental model: the rows of the marked jobs, again
    KEEP = "keep"  # nothing it reads changed


class BuildableModel(Protocol):
    name: str
    kind: str
    sql: str
    depends_on: tuple[str, ...]
    sources: tuple[str, ...]
    incremental_by: tuple[str, ...]


def fingerprint(model: BuildableModel, macros: Sequence[tuple[object, str]]) -> str:
    """What a model's rows follow from besides the data: its SQL and the macros it may call."""
    digest = hashlib.sha256(model.sql.encode())
    for _, sql in macros:
        digest.update(b"\0" + sql.encode())
    return digest.hexdigest()


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the current database's main schema holds table ``name`` (asked of the catalog: a
    failed query would abort the refresh's transaction)."""
    return bool(first_row(
        con, "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND table_name = ?", [name])[0])


def built_fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
    """{model: fingerprint it was last built from}; None without warehouse_meta (a bare DuckDB
    file: every refresh is then a full one)."""
    if not _has_table(con, "warehouse_meta"):
        return None
    rows = con.execute(
        "SELECT key, value FROM main.warehouse_meta WHERE starts_with(key, ?)", [BUILT_FROM]).fetchall()
    return {key[len(BUILT_FROM):]: value for key, value in rows}


def record_built(con: duckdb.DuckDBPyConnection, name: str, built_from: str) -> None:
    put_meta(con, BUILT_FROM + name, built_from)


@dataclass(frozen=True)
class Marks:
    """What changed since the marks were last cleared: whole creation days (project_id, day;
    None for the jobs without a create_time), and whether single jobs are marked too."""

    days: tuple[tuple[str, date | None], ...]
    jobs: bool

    def __bool__(self) -> bool:
        return bool(self.days) or self.jobs


def marks(con: duckdb.DuckDBPyConnection) -> Marks | None:
    """The marks; None when the warehouse keeps none (a bare DuckDB file)."""
    if not _has_table(con, MARKS_TABLE):
        return None
    days = con.execute(f"SELECT DISTINCT project_id, create_day FROM main.{MARKS_TABLE} WHERE job_id IS NULL").fetchall()
    jobs = first_row(con, f"SELECT count(*) FROM main.{MARKS_TABLE} WHERE job_id IS NOT NULL")[0]
    return Marks(days=tuple(tuple(d) for d in days), jobs=bool(jobs))


def clear_marks(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"DELETE FROM main.{MARKS_TABLE}")


def existing_kinds(con: duckdb.DuckDBPyConnection, schema: str) -> dict[str, str]:
    """{relation name: "view" or "table"} of the relations in ``schema`` of the current database."""
    rows = con.execute(
        "SELECT table_name, 'table' FROM duckdb_tables() WHERE schema_name = ? AND database_name = current_database()"
        " UNION ALL SELECT view_name, 'view' FROM duckdb_views()"
        " WHERE schema_name = ? AND database_name = current_database() AND NOT internal",
        [schema, schema],
    ).fetchall()
    return {name.lower(): kind for name, kind in rows}


def plan(
    models: Iterable[BuildableModel],
    *,
    incremental: bool,
    built: dict[str, str] | None,
    current: dict[str, str],
    kinds: dict[str, str],
    marked: bool | None,
) -> dict[str, Build]:
    """How each model (in dependency order) is brought up to date.

    ``current``: the fingerprint of each model's SQL now; ``built``: the recorded ones;
    ``kinds``: what the analytics schema holds; ``marked``: whether any job or day is marked (None:
    the warehouse keeps no marks)."""
    builds: dict[str, Build] = {}
    changed: set[str] = set()
    for model in models:
        up_to_date = (
            incremental and built is not None and built.get(model.name) == current[model.name]
            and kinds.get(model.name.lower()) == "table" and model.kind == "table"
        )
        if up_to_date and model.incremental_by and marked is not None:
            how = Build.MARKED if marked else Build.KEEP
        elif up_to_date and not model.incremental_by and not model.sources and not changed.intersection(model.depends_on):
            how = Build.KEEP
        else:
            how = Build.FULL
        builds[model.name] = how
        if how is not Build.KEEP:
            changed.add(model.name)
    return builds


def scope_macro(marked: Marks) -> str:
    """The statement that makes SCOPE_MACRO admit the marked jobs only.

    A marked day's creation-time range comes first, as constants, so DuckDB skips the row
    groups outside it; the days and jobs themselves are read from the marks table."""
    known = [day for _, day in marked.days if day is not None]
    parts = []
    if known:
        since, until = (f"TIMESTAMPTZ '{t.isoformat()}'" for t in utc_days(min(known), max(known)))
        parts.append(
            f"(scope_time >= {since} AND scope_time < {until}"
            f" AND (scope_project, analytics.utc_day(scope_time)) IN (SELECT d.project_id, d.create_day"
            f" FROM main.{MARKS_TABLE} d WHERE d.job_id IS NULL AND d.create_day IS NOT NULL))"
        )
    if len(known) < len(marked.days):
        parts.append(
            f"(scope_time IS NULL AND scope_project IN (SELECT d.project_id"
            f" FROM main.{MARKS_TABLE} d WHERE d.job_id IS NULL AND d.create_day IS NULL))"
        )
    if marked.jobs:
        parts.append(
            f"((scope_project, scope_job) IN (SELECT d.project_id, d.job_id"
            f" FROM main.{MARKS_TABLE} d WHERE d.job_id IS NOT NULL))"
        )
    body = " OR ".join(parts) or "false"
    return f"CREATE OR REPLACE MACRO {SCOPE_MACRO}(scope_project, scope_job, scope_time) AS {body}"


def rebuild_marked(con: duckdb.DuckDBPyConnection, relation: str, select: str, key: tuple[str, ...],
                   marked: Marks) -> None:
    """Delete the rows of the marked jobs from an incremental model and insert them built again
    by its ``select``. SCOPE_MACRO is left admitting those jobs only: the caller restores it."""
    con.execute(scope_macro(marked))
    con.execute(f"DELETE FROM {relation} WHERE {SCOPE_MACRO}({', '.join(key)})")
    con.execute(f"INSERT INTO {relation} {select}")
