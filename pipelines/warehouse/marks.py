"""The marks a batch's transaction leaves for the work that follows it: the lake partitions to
export again (``lake_dirty``, see lake.py: a project and creation day, and whether its jobs
are still the jobs of its file, changed in place in their stamps and which columns) and the
jobs whose rows the SQL models must rebuild (``models_dirty``, see pipelines/incremental.py: a
job, or every job of a project's creation day). Each is kept once."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from pipelines.warehouse.tables import STORED_JOBS_SCHEMA

#: The columns of a lake file a splice mark may name as changed in place: all but the key.
IN_PLACE_COLUMNS = frozenset(STORED_JOBS_SCHEMA.names) - {"project_id", "job_id"}


def mark_lake(con: duckdb.DuckDBPyConnection, partitions_sql: str, *, stamps_only: bool = False,
              in_place: Sequence[str] = ()) -> None:
    """Mark the lake partitions (project_id, creation day) a query yields for export, once each.
    A job without a create_time has no partition: a NULL day is not marked. ``stamps_only``
    says the partition still holds the same jobs, changed only in their stamps (synced_at,
    deleted_at) and in the content columns ``in_place`` (new versions of its jobs): a partition
    marked only so is exported by splicing those columns into its file (see lake.py), and its
    marks' columns add up; any other mark makes its file written whole."""
    con.execute(mark_lake_sql(partitions_sql, stamps_only=stamps_only, in_place=in_place))


def mark_lake_sql(partitions_sql: str, *, stamps_only: bool = False, in_place: Sequence[str] = ()) -> str:
    """The statements of mark_lake(), for a script of several."""
    unknown = sorted(set(in_place) - IN_PLACE_COLUMNS)
    if unknown:
        raise ValueError(f"in_place names what is no content column of a lake file: {unknown}")
    if in_place and not stamps_only:
        raise ValueError("in_place goes with stamps_only: a whole mark rewrites every column")
    quoted = ", ".join(f"'{c}'" for c in sorted(set(in_place)))
    columns = f"[{quoted}]::VARCHAR[]"
    of_query = f"EXISTS (SELECT 1 FROM ({partitions_sql}) AS t(p, d) WHERE p = lake_dirty.project_id AND d = lake_dirty.create_day)"
    insert = f"""INSERT INTO lake_dirty (project_id, create_day, stamps_only, in_place)
        SELECT DISTINCT p, d, {str(stamps_only).lower()}, {columns if in_place else 'NULL'} FROM ({partitions_sql}) AS t(p, d)
        WHERE d IS NOT NULL AND NOT EXISTS (SELECT 1 FROM lake_dirty x WHERE x.project_id = p AND x.create_day = d)"""
    if not stamps_only:
        return f"""UPDATE lake_dirty SET stamps_only = false, in_place = NULL WHERE stamps_only AND {of_query};
        {insert}"""
    if not in_place:
        return insert
    return f"""UPDATE lake_dirty SET in_place = list_sort(list_distinct(list_concat(coalesce(in_place, []::VARCHAR[]), {columns})))
        WHERE stamps_only AND {of_query};
        {insert}"""


def mark_model_days_sql(partitions_sql: str) -> str:
    """The statement that marks every job of the creation days (project_id, day; NULL for jobs
    without a create_time) a query yields for the SQL models' next refresh, once each
    (migration 005); run in the script that appends the jobs."""
    return f"""INSERT INTO models_dirty
        SELECT DISTINCT p, d, NULL FROM ({partitions_sql}) AS t(p, d)
        WHERE NOT EXISTS (SELECT 1 FROM models_dirty x
                          WHERE x.job_id IS NULL AND x.project_id = p AND x.create_day IS NOT DISTINCT FROM d)"""


def mark_model_jobs(con: duckdb.DuckDBPyConnection, keys_sql: str) -> None:
    """Mark the jobs (project_id, job_id) a query yields for the SQL models' next refresh: a
    changed job spread over the history marks itself, not its whole creation day."""
    con.execute(
        f"""INSERT INTO models_dirty
        SELECT DISTINCT p, NULL, j FROM ({keys_sql}) AS t(p, j)
        WHERE NOT EXISTS (SELECT 1 FROM models_dirty x WHERE x.project_id = p AND x.job_id = j)"""
    )
