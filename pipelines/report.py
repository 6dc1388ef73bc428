"""A self-contained HTML report of the analytics tables, for people who never open SQL.

One file, no network: the charts are inline SVG drawn here, the styles are inline CSS.
It reads the `analytics` schema (built by pipelines.models) of a warehouse or serving
snapshot, read-only.

This module reads what the report shows (every query of the report is here) and writes the
file; the rest lives beside it:

- pipelines/report_page.py: the page, its sections and their wording (ReportData in, HTML out);
- pipelines/report_charts.py: the inline SVG charts (line chart on a time axis, bar chart);
- pipelines/report_format.py: how values are written (percentages, counts, durations).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.query import open_analyst_connection
from pipelines.report_charts import (
    COLOR_BAR,
    COLOR_GRID,
    COLOR_LINE,
    COLOR_MUTED,
    COLOR_TEXT,
    COLOR_VOLUME,
    FONT_STACK,
    NICE_STEPS,
    Bar,
    bar_chart,
    line_chart,
    nice_ticks,
)
from pipelines.report_format import DURATION_UNITS, count, duration, duration_unit, durations, esc, pct
from pipelines.report_page import (
    BUCKET_ORDER,
    CSS,
    GROUP_CHARTS,
    NONE_LABEL,
    SIDES,
    RateSeries,
    ReportData,
    html_table,
    page,
)
from pipelines.warehouse.tables import first_row

__all__ = [
    "BUCKET_ORDER",
    "COLOR_BAR",
    "COLOR_GRID",
    "COLOR_LINE",
    "COLOR_MUTED",
    "COLOR_TEXT",
    "COLOR_VOLUME",
    "CSS",
    "DURATION_UNITS",
    "FONT_STACK",
    "NICE_STEPS",
    "NONE_LABEL",
    "REQUIRED_MACROS",
    "REQUIRED_TABLES",
    "SIDES",
    "SIMULATOR_ORIGIN",
    "Bar",
    "ReportData",
    "ReportError",
    "bar_chart",
    "count",
    "duration",
    "duration_unit",
    "durations",
    "esc",
    "gather",
    "html_table",
    "line_chart",
    "nice_ticks",
    "pct",
    "render",
    "write_report",
]

REQUIRED_TABLES = (
    "job_outcomes",
    "daily_job_stats",
    "weekly_job_stats",
    "failure_rate_by_tag",
    "failure_rate_by_language",
    "failure_rate_by_job_type",
    "time_to_finish_by_job_type",
    "top_failure_codes",
    "in_flight_backlog",
)
# Macros of sql/_macros.sql the report's SQL calls (the business rules, defined there once).
REQUIRED_MACROS = ("failure_rate",)
SIMULATOR_ORIGIN = "embedded-simulator"  # warehouse_meta 'source' of a warehouse the simulator filled


class ReportError(RuntimeError):
    """The database lacks what the report needs."""


def render(con: duckdb.DuckDBPyConnection, generated_at: datetime | None = None) -> str:
    """The report page for the analytics schema reachable through `con`."""
    _check_models(con)
    generated_at = generated_at or datetime.now(UTC)
    return page(gather(con), generated_at)


def write_report(db_path: str | Path, out_path: str | Path) -> Path:
    """Write the HTML report for the database at `db_path` to `out_path`; return the path written.

    The database is opened with pipelines.query.open_analyst_connection (read-only, no file
    access, settings locked); its analytics models must have been built. The file
    is written beside its target and renamed into place, so a reader never sees half a page.
    """
    # The sandbox every connection serving outside readers uses (read-only, no file access,
    # settings locked): the report reads the same relations an analyst may.
    con = open_analyst_connection(db_path)
    try:
        text = render(con)
    finally:
        con.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


# ---------------------------------------------------------------- what the report reads


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _check_models(con: duckdb.DuckDBPyConnection) -> None:
    """ReportError unless every relation and macro the report reads is in the analytics schema."""
    present = {
        r[0] for r in _fetch(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'analytics'")
    }
    present |= {
        r[0] for r in _fetch(con, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'analytics'")
    }
    missing = [t for t in REQUIRED_TABLES if t not in present]
    if missing:
        raise ReportError(f"analytics tables missing: {', '.join(missing)}; build the analytics models first")
    macros = {
        r[0] for r in _fetch(con, "SELECT function_name FROM duckdb_functions() WHERE schema_name = 'analytics'")
    }
    missing = [m for m in REQUIRED_MACROS if m not in macros]
    if missing:
        raise ReportError(
            f"analytics macros missing: {', '.join(missing)}; the models were built by an older version, "
            "rebuild the analytics models"
        )


def gather(con: duckdb.DuckDBPyConnection) -> ReportData:
    """Everything the page shows, read from the analytics schema through `con`."""
    return ReportData(
        headlines=_headlines(con),
        daily=_rate_over_time(con, "daily_job_stats", "day"),
        weekly=_rate_over_time(con, "weekly_job_stats", "week_start"),
        group_rates={column: _group_rates(con, column) for column in GROUP_CHARTS},
        failure_codes=_fetch(
            con,
            """SELECT coalesce(job_failed_code, '(no code)'), coalesce(most_common_reason, ''), jobs,
                      share_of_failures, last_seen
               FROM analytics.top_failure_codes ORDER BY jobs DESC, job_failed_code NULLS LAST LIMIT 15""",
        ),
        finish_times=_fetch(
            con,
            """SELECT coalesce(job_type, '(not set)'), finished_jobs, p50_finish_seconds, p90_finish_seconds,
                      p99_finish_seconds
               FROM analytics.time_to_finish_by_job_type ORDER BY finished_jobs DESC, job_type NULLS LAST""",
        ),
        backlog=_fetch(con, "SELECT waits_on, state, age_bucket, jobs FROM analytics.in_flight_backlog"),
        simulated=_is_simulated(_source(con)),
    )


def _headlines(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    row = con.execute(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
                  count(*) FILTER (WHERE outcome = 'failed') AS failed,
                  count(*) FILTER (WHERE outcome = 'in_progress') AS in_flight,
                  count(*) FILTER (WHERE in_progress_by_service) AS in_progress_by_service,
                  count(*) FILTER (WHERE waiting_on_user) AS waiting_on_user,
                  analytics.failure_rate(failed, succeeded) AS failure_rate,
                  quantile_cont(finish_seconds, 0.5) AS p50,
                  max(lastupdate_time) AS as_of
           FROM analytics.job_outcomes"""
    )
    names = [d[0] for d in row.description]
    return dict(zip(names, row.fetchall()[0], strict=True))  # read to the end (see first_row)


def _rate_over_time(con: duckdb.DuckDBPyConnection, table: str, column: str) -> RateSeries:
    """(period, failure rate) over all projects, and how many of the period's jobs have finished."""
    rows = _fetch(
        con,
        f"""SELECT {column}, analytics.failure_rate(sum(failed), sum(succeeded)), sum(succeeded + failed)
            FROM analytics.{table} WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY {column}""",
    )
    return [(d, r) for d, r, _ in rows], [int(n) for _, _, n in rows]


def _group_rates(con: duckdb.DuckDBPyConnection, column: str) -> list[tuple]:
    """Rows of analytics.failure_rate_by_<column>, the worst failure rate first."""
    return _fetch(
        con,
        f"""SELECT {column}, failure_rate, succeeded + failed, in_progress_by_service, waiting_on_user
            FROM analytics.failure_rate_by_{column}
            ORDER BY failure_rate DESC NULLS LAST, total_jobs DESC, {column} NULLS LAST""",
    )


def _source(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What warehouse_meta says the data came from ({} when it does not say, or says it unreadably)."""
    try:
        row = first_row(con, "SELECT value FROM main.warehouse_meta WHERE key = 'source' LIMIT 1")
        found = json.loads(row[0]) if row and row[0] else {}
    except (duckdb.Error, ValueError, TypeError):
        # A warehouse written before sources were recorded has no such table or key.
        return {}
    return found if isinstance(found, dict) else {}


def _is_simulated(source: dict[str, Any]) -> bool:
    return source.get("simulated") is True or source.get("origin") == SIMULATOR_ORIGIN
