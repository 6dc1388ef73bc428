"""Dagster and PostgreSQL: the postgres_serving asset, and a production instance whose runs,
event logs and schedules live in a real PostgreSQL server (deploy/dagster.yaml)."""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from assets.checks import ASSET_CHECKS
from assets.jobs import voice_training_jobs
from assets.serving import postgres_serving
from pipelines.resources import WarehouseResource
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.dagster import resources_for
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def simulator(make_module_simulator):
    return make_module_simulator(jobs=2000, seed=5, days=60, projects=PROJECTS, now=SIM_NOW)


@pytest.fixture(scope="module")
def data_dir(simulator, tmp_path_factory):
    """A data directory whose serving snapshot holds the models."""
    path = tmp_path_factory.mktemp("data")
    sync(sim_settings(simulator, path), mode="incremental", warehouse=Warehouse(path), refresh=True)
    return path


def test_postgres_serving_publishes_and_records_rows_and_seconds(postgres_server, data_dir, monkeypatch):
    database = postgres_server.create_database(f"serve_{uuid.uuid4().hex[:8]}")
    url = postgres_server.url(dbname=database)
    monkeypatch.setenv("VOICEJOBS_POSTGRES_URL", url)
    result = dg.materialize([postgres_serving], resources={"warehouse": WarehouseResource(data_dir=str(data_dir))},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.asset_materializations_for_node("postgres_serving")
    md = mat.metadata
    with duckdb.connect(str(data_dir / "serving.duckdb"), read_only=True) as con:
        jobs = con.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0]
    assert md["rows"].value["voice_training_jobs"] == jobs > 0
    assert md["rows_sent"].value == sum(md["rows"].value.values())
    assert md["seconds"].value > 0 and md["tables_unchanged"].value == []
    assert md["target"].value == f"postgres@127.0.0.1:{postgres_server.port}/{database}"
    assert postgres_server.password not in str({k: v.value for k, v in md.items()})
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0] == jobs

    again = dg.materialize([postgres_serving], resources={"warehouse": WarehouseResource(data_dir=str(data_dir))},
                           instance=dg.DagsterInstance.ephemeral())
    [mat] = again.asset_materializations_for_node("postgres_serving")
    assert mat.metadata["rows_sent"].value == 0 and mat.metadata["tables_rewritten"].value == []


def test_postgres_serving_is_skipped_when_not_configured(data_dir, monkeypatch):
    monkeypatch.delenv("VOICEJOBS_POSTGRES_URL", raising=False)
    result = dg.materialize([postgres_serving], resources={"warehouse": WarehouseResource(data_dir=str(data_dir))},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.get_asset_materialization_events() == []  # nothing claims to be published


def test_a_failed_publish_fails_the_step_with_its_one_line(data_dir, monkeypatch):
    from tests.support.postgres import free_port

    monkeypatch.setenv("VOICEJOBS_POSTGRES_URL", f"postgresql://bi:pw-never-shown@127.0.0.1:{free_port()}/analytics")
    result = dg.materialize([postgres_serving], resources={"warehouse": WarehouseResource(data_dir=str(data_dir))},
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.step_failure_data.error)
    assert "cannot reach PostgreSQL at bi@127.0.0.1:" in text and "pw-never-shown" not in text


def test_the_nightly_and_weekly_runs_end_by_publishing_to_postgres():
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    for job in ("nightly_sync", "weekly_reconcile"):
        selected = {k.to_user_string() for k in repo.get_job(job).asset_layer.selected_asset_keys}
        assert {"serving_snapshot", "postgres_serving"} <= selected, job
    node = repo.asset_graph.get(dg.AssetKey("postgres_serving"))
    assert node.group_name == "serving" and dg.AssetKey("serving_snapshot") in node.parent_keys


def test_a_production_instance_keeps_runs_and_checks_in_postgresql(postgres_server, simulator, tmp_path,
                                                                    monkeypatch):
    from dagster._core.events import DagsterEventType

    database = postgres_server.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # the driver named, as deploy/dagster.yaml says (SQLAlchemy 2.1 would pick psycopg 3 otherwise)
    url = postgres_server.url(dbname=database).replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    day = (SIM_NOW - timedelta(days=5)).date().isoformat()

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        concurrency = instance.get_concurrency_config()  # the same limits as dagster_home/dagster.yaml
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert [dict(limit) for limit in concurrency.run_queue_config.tag_concurrency_limits] == [
            {"key": "voicejobs/writes-warehouse", "limit": 1}]

        result = dg.materialize([voice_training_jobs, *ASSET_CHECKS], partition_key=day, instance=instance,
                                resources=resources_for(simulator, tmp_path / "data"))
        assert result.success
        [run] = instance.get_runs()
        assert run.run_id == result.run_id and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == day
        evaluations = instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
        checks = {r.event_log_entry.dagster_event.event_specific_data.check_name:
                  r.event_log_entry.dagster_event.event_specific_data.passed for r in evaluations}
        assert {"unique_job_keys", "keys_and_timestamps_not_null", "personal_data_masked"} <= set(checks)
        assert checks["unique_job_keys"] is True
        materialization = instance.get_latest_materialization_event(dg.AssetKey("voice_training_jobs"))
        assert materialization.asset_materialization.partition == day

    # ...and it is really PostgreSQL that holds them
    with psycopg.connect(postgres_server.url(dbname=database)) as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 1
        assert conn.execute("select run_id, status from runs").fetchone() == (result.run_id, "SUCCESS")
        succeeded = conn.execute("select check_name from asset_check_executions where run_id = %s"
                                 " and execution_status = 'SUCCEEDED'", [result.run_id]).fetchall()
        assert sorted(name for (name,) in succeeded) == sorted(n for n, passed in checks.items() if passed)
        assert conn.execute("select count(*) from event_logs where run_id = %s and dagster_event_type = %s",
                            [result.run_id, "ASSET_MATERIALIZATION"]).fetchone()[0] == 1
