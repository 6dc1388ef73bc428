"""The marks a batch's transaction leaves for the work that follows it: the lake partitions to
export again (``lake_dirty``, see lake.py) and the creation days the SQL models must rebuild
(``models_dirty``, see pipelines/incremental.py). Each is a (project_id, creation day) kept once."""

from __future__ import annotations

import duckdb


def mark_lake(con: duckdb.DuckDBPyConnection, partitions_sql: str) -> None:
    """Mark the lake partitions (project_id, creation day) a query yields for export, once each.
    A job without a create_time has no partition: a NULL day is not marked."""
    con.execute(
        f"""INSERT INTO lake_dirty
        SELECT DISTINCT p, d FROM ({partitions_sql}) AS t(p, d)
        WHERE d IS NOT NULL AND NOT EXISTS (SELECT 1 FROM lake_dirty x WHERE x.project_id = p AND x.create_day = d)"""
    )


def mark_models(con: duckdb.DuckDBPyConnection, partitions_sql: str) -> None:
    """Mark the creation days (project_id, day; NULL for jobs without a create_time) a query
    yields for the SQL models' next refresh, once each (see migration 005)."""
    con.execute(
        f"""INSERT INTO models_dirty
        SELECT DISTINCT p, d FROM ({partitions_sql}) AS t(p, d)
        WHERE NOT EXISTS (SELECT 1 FROM models_dirty x WHERE x.project_id = p AND x.create_day IS NOT DISTINCT FROM d)"""
    )


def mark_both(con: duckdb.DuckDBPyConnection, partitions_sql: str) -> None:
    """Mark what a query yields for the lake and for the models alike."""
    mark_lake(con, partitions_sql)
    mark_models(con, partitions_sql)
