"""Dagster: the definitions load and validate, and real assets materialize against the simulator.

Nothing here depends on today's date or on the developer's environment: the creation-day
partitions of the simulator's fixed clock are loaded as of the day after it (Dagster's
``partition_loading_context``), and the definitions are loaded with every variable of the
project unset.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.jobs import voice_training_job_changes, voice_training_job_deletions, voice_training_jobs
from assets.models import SOURCE_ASSET_KEYS, analytics_models, model_asset_key
from assets.serving import serving_snapshot
from pipelines.models import load_models
from pipelines.resources import WarehouseResource
from pipelines.sync import sync
from pipelines.warehouse import SYNC_ONLY_TABLES, Warehouse
from tests.support.dagster import resources_for
from tests.support.expected import assert_rows_equal
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings, truth_by_project
from tests.support.warehouse_fixture import create_warehouse, insert_rows

ROOT = Path(__file__).resolve().parents[2]
#: Dagster's "now" for partitions of the simulator's days: the day after SIM_NOW, so the
#: partition of SIM_NOW's own day is the newest and exists whatever the real date is.
PARTITIONS_AS_OF = SIM_NOW + timedelta(days=1)
PROJECT_ENV_PREFIXES = ("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_")


@pytest.fixture
def sim_partitions():
    with dg.partition_loading_context(effective_dt=PARTITIONS_AS_OF):
        yield


@pytest.fixture
def clean_definitions(monkeypatch):
    """pipelines.definitions loaded with no variable of the project set (the developer's own
    VOICEJOBS_NIGHTLY_CRON, say, must not decide the test); loaded again as it was afterwards."""
    import pipelines.definitions

    for key in list(os.environ):
        if key.startswith(PROJECT_ENV_PREFIXES):
            monkeypatch.delenv(key)
    yield lambda: importlib.reload(pipelines.definitions)
    monkeypatch.undo()
    importlib.reload(pipelines.definitions)


def test_definitions_load_with_schedules_and_checks(clean_definitions):
    repo = clean_definitions().defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"voice_training_jobs", "voice_training_job_changes", "voice_training_job_deletions",
            "failure_rate_by_tag", "serving_snapshot"} <= keys
    assert {s.name for s in repo.schedule_defs} == {"nightly_sync_schedule", "weekly_reconcile_schedule"}
    nightly = repo.get_schedule_def("nightly_sync_schedule")
    assert nightly.cron_schedule == "0 2 * * *" and nightly.execution_timezone == "UTC"
    checks = {k.name for k in repo.asset_graph.asset_check_keys if k.asset_key.to_user_string() == "voice_training_jobs"}
    assert checks == {"keys_and_timestamps_not_null", "known_enum_values", "personal_data_masked", "sync_freshness",
                      "unique_job_keys", "update_not_before_create", "windows_reconcile"}


def test_the_schedules_read_their_cron_from_the_environment(clean_definitions, monkeypatch):
    """Why the other tests load the definitions with a clean environment: the crons come from it."""
    monkeypatch.setenv("VOICEJOBS_NIGHTLY_CRON", "30 1 * * *")
    monkeypatch.setenv("VOICEJOBS_RECONCILE_CRON", "0 4 * * 6")
    repo = clean_definitions().defs.get_repository_def()
    assert repo.get_schedule_def("nightly_sync_schedule").cron_schedule == "30 1 * * *"
    assert repo.get_schedule_def("weekly_reconcile_schedule").cron_schedule == "0 4 * * 6"


def test_dagster_definitions_validate_cli_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROJECT_ENV_PREFIXES)}
    env["DAGSTER_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Validation successful for code location pipelines.definitions" in output, output
    assert "All code locations passed validation" in output, output


def test_materialize_a_partition_and_backfill_a_range_in_one_run(small_simulator, tmp_path, sim_partitions):
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
    from tests.support.expected import epoch

    return epoch(value).date()


def test_nightly_schedule_runs_yesterdays_creation_day_with_change_capture(clean_definitions):
    repo = clean_definitions().defs.get_repository_def()
    schedule = repo.get_schedule_def("nightly_sync_schedule")
    tick = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    context = dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo)
    with dg.partition_loading_context(effective_dt=tick):  # the tick's own "now", not today's
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-03-01"
    job = repo.get_job("nightly_sync")
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert {"voice_training_jobs", "voice_training_job_changes", "failure_rate_by_tag", "serving_snapshot"} <= selected


def test_every_writer_shares_one_pool_of_one_slot(clean_definitions):
    import yaml

    repo = clean_definitions().defs.get_repository_def()
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


def test_materialize_the_deletions_asset_marks_what_the_source_deleted(tmp_path, make_simulator):
    """voice_training_job_deletions pages every creation day up to tomorrow by the real clock: the
    simulator's clock ends at the real one (it starts two days back and advances two days), so
    the days reconciled cover the days the source holds whatever the date is."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    server = make_simulator(jobs=1500, seed=41, days=20, projects=PROJECTS, now=now)
    first_day = (now - timedelta(days=21)).date()
    settings = sim_settings(server, tmp_path, first_day=first_day)
    sync(settings, mode="days", since=first_day, until=now.date())
    stored = {(r["project_id"], r["job_id"]) for r in Warehouse(tmp_path).jobs_table(include_deleted=False).to_pylist()}
    already = {(pid, jid) for pid in PROJECTS for jid in server.state.deleted_ids(pid)}
    changes = server.state.advance(2 * 86400)
    deleted_since = {(pid, jid) for pid in PROJECTS for jid in server.state.deleted_ids(pid)} - already
    assert changes["deleted"] == len(deleted_since) > 0 and deleted_since <= stored

    resources = resources_for(server, tmp_path, first_day=first_day)
    result = dg.materialize([voice_training_job_deletions], resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.asset_materializations_for_node("voice_training_job_deletions")
    truth = truth_by_project(server)

    table = Warehouse(tmp_path).jobs_table().to_pylist()
    marked = {(r["project_id"], r["job_id"]) for r in table if r["deleted_at"] is not None}
    assert marked == deleted_since  # exactly the jobs the source deleted, each once
    assert mat.metadata["marked_deleted"].value == len(deleted_since)
    # and the reconciliation also brought in what was created meanwhile: live rows equal the source
    live = [r for r in table if r.pop("deleted_at") is None]
    for row in live:
        row.pop("synced_at")
    assert_rows_equal(live, truth, personal_data="mask")


def test_materialize_the_models_and_the_serving_snapshot(small_simulator, tmp_path):
    """serving_snapshot publishes a serving.duckdb that opens read-only and holds every model."""
    settings = sim_settings(small_simulator, tmp_path)
    sync(settings, mode="days", since=(SIM_NOW - timedelta(days=61)).date(), until=SIM_NOW.date())
    sources = [dg.AssetSpec(key) for key in SOURCE_ASSET_KEYS]
    result = dg.materialize([*sources, analytics_models, serving_snapshot], resources=resources_for(small_simulator, tmp_path),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.asset_materializations_for_node("serving_snapshot")
    path = tmp_path / "serving.duckdb"
    assert mat.metadata["path"].value == str(path)
    assert mat.metadata["bytes"].value == path.stat().st_size

    models = load_models()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        expected = {m.name: con.execute(f"select * from analytics.{m.name} order by all").fetchall() for m in models}
    with duckdb.connect(str(path), read_only=True) as con:
        published = {m.name: con.execute(f"select * from analytics.{m.name} order by all").fetchall() for m in models}
        tables = {t for (t,) in con.execute("select table_name from duckdb_tables() where schema_name = 'main'").fetchall()}
        live = con.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0]
    assert published == expected  # every model, as the warehouse computed it
    assert live == sum(len(jobs) for jobs in truth_by_project(small_simulator).values()) > 0
    assert not tables & set(SYNC_ONLY_TABLES)  # the sync's bookkeeping stays out of the snapshot
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {model_asset_key(m) for m in models} | {dg.AssetKey("serving_snapshot")}


def test_models_refuse_unmasked_personal_data_and_say_why(tmp_path):
    """The refusal is for the reason named: a phone number stored in clear, not any other failure."""
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        create_warehouse(con)
        insert_rows(con, "main.voice_training_jobs", [{"project_id": "p", "job_id": "1", "phone": "13800135678"}])
    sources = [dg.AssetSpec(key) for key in SOURCE_ASSET_KEYS]
    refused = dg.materialize([*sources, analytics_models], resources={"warehouse": WarehouseResource(data_dir=str(tmp_path))},
                             raise_on_error=False)
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    error = failure.step_failure_data.error
    while error.cause is not None and error.cls_name != "UnmaskedPersonalDataError":
        error = error.cause
    assert error.cls_name == "UnmaskedPersonalDataError", failure.step_failure_data.error.to_string()
    assert "unmasked personal data (phone: 1 rows)" in error.message
    assert refused.get_asset_materialization_events() == []  # nothing was built
