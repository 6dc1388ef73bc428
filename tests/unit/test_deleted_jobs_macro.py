"""analytics.without_deleted_jobs (sql/_macros.sql): the one statement of "rows of a deleted job
are hidden", which the history and transitions views call. The views themselves over the sample
warehouse are checked in tests/unit/test_models.py."""

from __future__ import annotations

import duckdb
import pytest

from pipelines.models import MODELS_DIR, load_macros


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute("CREATE SCHEMA analytics")
    con.execute(load_macros(MODELS_DIR))
    con.execute("CREATE TABLE jobs (project_id VARCHAR, job_id VARCHAR, deleted_at TIMESTAMPTZ)")
    con.execute(
        "INSERT INTO jobs VALUES ('p', 'live', NULL), ('p', 'gone', TIMESTAMPTZ '2025-01-02 00:00:00+00'),"
        " ('q', 'live', TIMESTAMPTZ '2025-01-02 00:00:00+00')"
    )
    con.execute("CREATE TABLE versions (project_id VARCHAR, job_id VARCHAR, n INTEGER)")
    con.execute(
        "INSERT INTO versions VALUES ('p', 'live', 1), ('p', 'live', 2), ('p', 'gone', 1), ('q', 'live', 1),"
        " ('p', 'unknown', 1)"
    )
    yield con
    con.close()


def test_rows_of_a_deleted_job_are_hidden_and_every_column_kept(con):
    rows = con.execute(
        "SELECT * FROM analytics.without_deleted_jobs(versions, jobs) ORDER BY ALL"
    ).fetchall()
    # A job is its (project_id, job_id): q/live is deleted, p/live is not; a job the jobs
    # relation does not hold is not known to be deleted and stays.
    assert rows == [("p", "live", 1), ("p", "live", 2), ("p", "unknown", 1)]


def test_a_view_handing_it_ctes_reads_the_warehouse_not_itself(con):
    """Inside an analytics view, main.<name> handed to query_table would find the view of the same
    name; the views hand it CTEs over the warehouse tables instead."""
    con.execute("CREATE TABLE main.versions_table AS FROM versions")
    con.execute(
        "CREATE VIEW analytics.versions_table AS WITH v AS (FROM main.versions_table), j AS (FROM main.jobs)"
        " SELECT * FROM analytics.without_deleted_jobs(v, j)"
    )
    assert con.execute("SELECT count(*) FROM analytics.versions_table").fetchone() == (3,)
