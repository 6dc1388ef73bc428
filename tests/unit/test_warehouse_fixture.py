"""The analytics tests' warehouse (tests/support/warehouse_fixture.py) is the product's schema, not a copy of it.

A hand-written copy drifted once: its sync_runs lacked columns and its transitions view broke
ties between versions differently. These tests compare the fixture's catalog with the one
``pipelines.warehouse.Warehouse`` migrates a data directory to, column by column and view by view.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb

from pipelines.warehouse import Warehouse
from tests.support.warehouse_fixture import LEFT_OUT_TABLES, create_warehouse, insert_rows

CATALOG = {
    "columns": "SELECT schema_name, table_name, column_index, column_name, data_type, is_nullable"
               " FROM duckdb_columns() WHERE database_name = current_database() ORDER BY ALL",
    "views": "SELECT schema_name, view_name, sql FROM duckdb_views()"
             " WHERE database_name = current_database() AND NOT internal ORDER BY ALL",
    "schemas": "SELECT schema_name FROM duckdb_schemas() WHERE database_name = current_database() ORDER BY ALL",
    "migrations": "SELECT version, description FROM schema_migrations ORDER BY ALL",
}


def _catalog(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {name: con.execute(sql).fetchall() for name, sql in CATALOG.items()}


def test_the_fixture_schema_is_the_migrated_product_schema(tmp_path):
    with Warehouse(tmp_path).connect() as con:
        product = _catalog(con)
    assert set(LEFT_OUT_TABLES) <= {table for _, table, *_ in product["columns"]}
    product["columns"] = [c for c in product["columns"] if c[1] not in LEFT_OUT_TABLES]
    fixture_con = duckdb.connect()
    create_warehouse(fixture_con)
    fixture = _catalog(fixture_con)
    assert fixture == product
    # the columns the hand-written copy had lost are there
    columns = {(t, c) for _, t, _, c, _, _ in fixture["columns"]}
    assert {("sync_runs", "quarantined"), ("sync_runs", "stats"), ("sync_windows", "listed_at"),
            ("voice_training_job_history", "row_hash")} <= columns


def test_transitions_break_ties_between_versions_as_the_product_does(tmp_path):
    """Two versions starting at the same instant are ordered by when they were observed."""
    t = datetime(2025, 3, 3, tzinfo=UTC)
    history = [
        {"project_id": "p", "job_id": "1", "state": "WAITING", "valid_from": t, "observed_at": t},
        {"project_id": "p", "job_id": "1", "state": "FAILED", "valid_from": t + timedelta(hours=1),
         "observed_at": t + timedelta(hours=3)},
        {"project_id": "p", "job_id": "1", "state": "PROCESSING", "valid_from": t + timedelta(hours=1),
         "observed_at": t + timedelta(hours=2)},
    ]
    query = "SELECT from_state, to_state FROM main.voice_training_job_transitions ORDER BY changed_at, to_state"
    with Warehouse(tmp_path).connect() as con:
        insert_rows(con, "main.voice_training_job_history", history)
        product = con.execute(query).fetchall()
    fixture_con = duckdb.connect()
    create_warehouse(fixture_con)
    insert_rows(fixture_con, "main.voice_training_job_history", history)
    fixture = fixture_con.execute(query).fetchall()
    assert product == [(None, "WAITING"), ("PROCESSING", "FAILED"), ("WAITING", "PROCESSING")]
    assert fixture == product
