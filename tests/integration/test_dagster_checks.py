"""Asset checks through Dagster: every check runs beside the sync asset, a failed integrity check
blocks the analytics models, and a warning does not.

The checks themselves, defect by defect, are tested in tests/unit/test_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from assets.checks import ASSET_CHECKS, INTEGRITY_CHECKS, MONITORING_CHECKS
from assets.models import build_analytics_assets
from tests.support.dagster import StandInWarehouseResource
from tests.support.warehouse_fixture import create_warehouse, sample_dataset

ALL_CHECKS = {**INTEGRITY_CHECKS, **MONITORING_CHECKS}


def _duplicate(con):
    con.execute(
        "INSERT INTO main.voice_training_jobs SELECT * FROM main.voice_training_jobs WHERE job_id = 'job-0001'"
    )


def _unknown_enum(con):
    con.execute(
        "UPDATE main.voice_training_jobs SET state = 'PAUSED' WHERE job_id IN ('job-0005', 'job-0006')"
    )
    con.execute("UPDATE main.voice_training_jobs SET tag = 'PODCAST' WHERE job_id = 'job-0007'")


@dg.asset(name="voice_training_jobs", partitions_def=dg.DailyPartitionsDefinition(start_date="2025-03-01"))
def stand_in_source() -> None:
    """Stands in for the sync: the warehouse file is prepared by the test."""


def _warehouse_file(tmp_path: Path, *plants: Callable[[duckdb.DuckDBPyConnection], None]) -> dict:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_warehouse(con)
    sample_dataset(n_jobs=60, now=datetime.now(UTC)).load(con)
    for plant in plants:
        plant(con)
    con.close()
    return {"warehouse": StandInWarehouseResource(data_dir=str(tmp_path))}


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_execute_through_dagster(tmp_path):
    resources = _warehouse_file(tmp_path)
    result = dg.materialize([stand_in_source, *ASSET_CHECKS], resources=resources, partition_key="2025-03-03")
    assert result.success
    evaluations = _evaluations(result)
    assert set(evaluations) == set(ALL_CHECKS)
    assert all(e.passed for e in evaluations.values())


def test_failed_integrity_check_blocks_the_analytics_models(tmp_path):
    resources = _warehouse_file(tmp_path, _duplicate, _unknown_enum)
    result = dg.materialize(
        [stand_in_source, build_analytics_assets(), *ASSET_CHECKS],
        resources=resources,
        partition_key="2025-03-03",
        raise_on_error=False,
    )
    evaluations = _evaluations(result)
    assert not evaluations["unique_job_keys"].passed
    assert evaluations["unique_job_keys"].severity == dg.AssetCheckSeverity.ERROR
    assert not evaluations["known_enum_values"].passed
    assert evaluations["known_enum_values"].severity == dg.AssetCheckSeverity.WARN
    assert evaluations["known_enum_values"].metadata["unknown_values"].value == {
        "state": {"PAUSED": 2},
        "tag": {"PODCAST": 1},
    }
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {dg.AssetKey("voice_training_jobs")}, "no analytics built on duplicated keys"


def test_warnings_do_not_block_the_analytics_models(tmp_path):
    resources = _warehouse_file(tmp_path, _unknown_enum)
    result = dg.materialize(
        [stand_in_source, build_analytics_assets(), *ASSET_CHECKS],
        resources=resources,
        partition_key="2025-03-03",
    )
    assert result.success
    assert not _evaluations(result)["known_enum_values"].passed
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert dg.AssetKey("failure_rate_by_tag") in materialized
