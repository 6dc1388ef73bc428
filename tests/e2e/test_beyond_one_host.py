"""Beyond one host, end to end: PostgreSQL serving and an S3 lake kept equal to the warehouse.

With VOICEJOBS_POSTGRES_URL and VOICEJOBS_LAKE_URI=s3://... set against real servers the
tests start (Debian's PostgreSQL, moto's S3 over HTTP), a full sync, three clock steps with
change capture and a reconcile each leave the PostgreSQL tables equal to the DuckDB
analytics relations row for row, and the S3 lake equal to the warehouse table.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import psycopg

from pipelines.settings import ObjectStoreAccess
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.expected_postgres import assert_published_equals
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

DAYS = 12
FIRST = (SIM_NOW - timedelta(days=DAYS)).date()


def lake_equals_table(lake, warehouse: Warehouse) -> None:
    table = warehouse.jobs_table()
    stored = lake.read().drop_columns(["create_day"]).select(table.column_names)
    key = [("project_id", "ascending"), ("job_id", "ascending")]
    assert stored.sort_by(key).cast(table.schema).equals(table.sort_by(key))


def test_a_sync_three_steps_and_a_reconcile_keep_postgres_and_the_s3_lake_equal(
        postgres_server, s3_lake, tmp_path, make_simulator):
    database = postgres_server.create_database(f"e2e_{uuid.uuid4().hex[:10]}")
    server = make_simulator(jobs=1500, seed=41, days=DAYS, projects=PROJECTS, now=SIM_NOW)
    settings = sim_settings(server, tmp_path, first_day=FIRST).with_(
        postgres_url=postgres_server.url(dbname=database), lake_uri=s3_lake.uri,
        object_store=ObjectStoreAccess.from_env(os.environ))  # the s3_lake fixture's AWS_* variables
    warehouse = Warehouse.for_settings(settings)
    steps = [dict(mode="days", since=FIRST, until=SIM_NOW.date())]
    steps += [dict(mode="incremental")] * 3 + [dict(mode="reconcile", since=FIRST, until=SIM_NOW.date())]
    for n, step in enumerate(steps):
        if n:
            server.state.advance(8 * 3600)
        report = sync(settings, warehouse=warehouse, refresh=True, **step)
        assert "postgres" in report.phase_seconds  # published in the same unit of work
        with psycopg.connect(postgres_server.url(dbname=database)) as pg:
            assert_published_equals(pg, warehouse.serving_path)
        lake_equals_table(s3_lake, warehouse)
    assert not (tmp_path / "lake").exists()  # the lake went to S3 only
