"""Dagster: the definitions load and validate, and real assets materialize against the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb

from assets.jobs import voice_training_job_changes, voice_training_jobs
from pipelines.resources import MetaStudioResource, WarehouseResource
from tests.conftest import SIM_NOW, truth_by_project

ROOT = Path(__file__).resolve().parents[1]


def resources_for(server, data_dir) -> dict:
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    return {
        "metastudio": MetaStudioResource(endpoint=server.url, ak=ak, sk=sk,
                                         project_ids=",".join(config.projects), safety_lag_seconds=0, max_clock_skew_seconds=0,
                                         first_day=(SIM_NOW - timedelta(days=61)).date().isoformat()),
        "warehouse": WarehouseResource(data_dir=str(data_dir)),
    }


def test_definitions_load_with_schedules_and_checks():
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"voice_training_jobs", "voice_training_job_changes", "voice_training_job_deletions",
            "failure_rate_by_tag", "serving_snapshot"} <= keys
    assert {s.name for s in repo.schedule_defs} == {"nightly_sync_schedule", "weekly_reconcile_schedule"}
    nightly = repo.get_schedule_def("nightly_sync_schedule")
    assert nightly.cron_schedule == "0 2 * * *" and nightly.execution_timezone == "UTC"
    checks = {k.name for k in repo.asset_graph.asset_check_keys if k.asset_key.to_user_string() == "voice_training_jobs"}
    assert checks == {"keys_and_timestamps_not_null", "known_enum_values", "personal_data_masked", "sync_freshness",
                      "unique_job_keys", "update_not_before_create", "windows_reconcile"}


def test_dagster_definitions_validate_cli_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUAWEICLOUD_", "METASTUDIO_"))}
    env["DAGSTER_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_materialize_a_partition_and_backfill_a_range_in_one_run(small_simulator, tmp_path):
    resources = resources_for(small_simulator, tmp_path)
    day = (SIM_NOW - timedelta(days=5)).date()
    instance = dg.DagsterInstance.ephemeral()

    result = dg.materialize([voice_training_jobs], partition_key=day.isoformat(), resources=resources,
                            instance=instance)
    assert result.success
    [mat] = result.asset_materializations_for_node("voice_training_jobs")
    md = mat.metadata
    for key in ("rows", "pages", "requests", "retries", "api_wait_seconds"):
        assert key in md
    truth = [j for jobs in truth_by_project(small_simulator).values() for j in jobs
             if _day(j["create_time"]) == day]
    assert md["rows"].value == len(truth) > 0

    # a range of partitions materializes as one run (single-run backfill policy)
    first, last = (SIM_NOW - timedelta(days=20)).date(), (SIM_NOW - timedelta(days=1)).date()
    result = dg.materialize(
        [voice_training_jobs], resources=resources, instance=instance,
        tags={"dagster/asset_partition_range_start": first.isoformat(),
              "dagster/asset_partition_range_end": last.isoformat()},
    )
    assert result.success
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        stored = con.execute("select count(*) from voice_training_jobs").fetchone()[0]
    expected = sum(1 for jobs in truth_by_project(small_simulator).values() for j in jobs
                   if first <= _day(j["create_time"]) <= last)
    assert stored == expected


def test_change_capture_asset_records_watermarks(small_simulator, tmp_path):
    resources = resources_for(small_simulator, tmp_path)
    result = dg.materialize([voice_training_job_changes], resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.asset_materializations_for_node("voice_training_job_changes")
    watermarks = mat.metadata["watermarks"].value
    assert set(watermarks) == set(small_simulator.state.config.projects)


def _day(value):
    from tests.expected import epoch

    return epoch(value).date()


def test_nightly_schedule_runs_yesterdays_creation_day_with_change_capture():
    from datetime import UTC, datetime

    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("nightly_sync_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
                                        repository_def=repo)
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-03-01"
    job = repo.get_job("nightly_sync")
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert {"voice_training_jobs", "voice_training_job_changes", "failure_rate_by_tag", "serving_snapshot"} <= selected


def test_every_writer_shares_one_pool_of_one_slot():
    import yaml

    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    writers = ["voice_training_jobs", "voice_training_job_changes", "voice_training_job_deletions", "serving_snapshot"]
    for name in writers:
        node = repo.asset_graph.get(dg.AssetKey(name)).assets_def.node_def
        assert node.pool == "voicejobs_warehouse", name
    instance_config = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def test_dagster_yaml_is_a_valid_instance_config(tmp_path):
    import shutil

    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()


def test_a_cli_sync_shows_in_dagster_as_materializations_of_the_same_assets(small_simulator, tmp_path, monkeypatch):
    """With DAGSTER_HOME set, `voicejobs sync` is not invisible to the UI."""
    from assets.cli_runs import TAGS
    from assets.models import MODEL_ASSET_KEYS
    from pipelines import cli

    home = tmp_path / "home"
    home.mkdir()
    ak, sk = next(iter(small_simulator.state.config.credentials.items()))
    for name in [n for n in os.environ if n.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))]:
        monkeypatch.delenv(name)
    for name, value in dict(DAGSTER_HOME=str(home), METASTUDIO_ENDPOINT=small_simulator.url, HUAWEICLOUD_SDK_AK=ak,
                            HUAWEICLOUD_SDK_SK=sk, HUAWEICLOUD_SDK_PROJECT_ID=",".join(small_simulator.state.config.projects),
                            VOICEJOBS_DATA_DIR=str(tmp_path / "data"), VOICEJOBS_SAFETY_LAG_SECONDS="0",
                            VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0").items():
        monkeypatch.setenv(name, value)
    days = [(SIM_NOW - timedelta(days=n)).date().isoformat() for n in (2, 1)]
    assert cli.main(["sync", "--since", days[0], "--until", days[1]]) == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        jobs = dg.AssetKey("voice_training_jobs")
        materialized = instance.get_materialized_partitions(jobs)
        assert set(days) <= materialized
        latest = instance.get_latest_materialization_event(jobs).asset_materialization
        assert latest.tags["voicejobs/started-by"] == TAGS["voicejobs/started-by"]
        assert latest.metadata["rows"].value > 0
        for key in [*MODEL_ASSET_KEYS, dg.AssetKey("serving_snapshot")]:
            assert instance.get_latest_materialization_event(key) is not None, key
