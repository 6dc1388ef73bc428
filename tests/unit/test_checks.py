"""Asset checks: clean data passes; each planted defect is caught by its own check and no other.

The checks run through Dagster (and blocking the analytics models) in tests/integration/test_dagster_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from assets.checks import (
    INTEGRITY_CHECKS,
    MONITORING_CHECKS,
    check_freshness,
    check_known_enums,
    check_window_reconciliation,
)
from tests.support.warehouse_fixture import create_warehouse, insert_rows, sample_dataset

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
ALL_CHECKS = {**INTEGRITY_CHECKS, **MONITORING_CHECKS}


def run_all(con: duckdb.DuckDBPyConnection, now: datetime = NOW) -> dict:
    outcomes = {}
    for name, (fn, _) in ALL_CHECKS.items():
        outcomes[name] = check_freshness(con, now=now) if fn is check_freshness else fn(con)
    return outcomes


def clean_warehouse(now: datetime = NOW) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_warehouse(con)
    sample_dataset(n_jobs=60, now=now).load(con)
    return con


def test_clean_data_passes_every_check():
    outcomes = run_all(clean_warehouse())
    assert {n: o.passed for n, o in outcomes.items()} == {n: True for n in ALL_CHECKS}


def _duplicate(con):
    con.execute(
        "INSERT INTO main.voice_training_jobs SELECT * FROM main.voice_training_jobs WHERE job_id = 'job-0001'"
    )


def _null_key(con):
    con.execute("UPDATE main.voice_training_jobs SET job_id = NULL WHERE job_id = 'job-0002'")


def _null_timestamp(con):
    con.execute("UPDATE main.voice_training_jobs SET create_time = NULL WHERE job_id = 'job-0003'")


def _updated_before_created(con):
    con.execute(
        "UPDATE main.voice_training_jobs SET lastupdate_time = create_time - INTERVAL 1 SECOND WHERE job_id = 'job-0004'"
    )


def _unknown_enum(con):
    con.execute(
        "UPDATE main.voice_training_jobs SET state = 'PAUSED' WHERE job_id IN ('job-0005', 'job-0006')"
    )
    con.execute("UPDATE main.voice_training_jobs SET tag = 'PODCAST' WHERE job_id = 'job-0007'")


def _count_mismatch(con):
    con.execute("UPDATE main.sync_windows SET fetched = fetched - 1 WHERE project_id = 'p2'")


def _stale(con):
    con.execute("UPDATE main.sync_runs SET finished_at = ?", [NOW - timedelta(hours=27)])


def _unmasked(con):
    con.execute("UPDATE main.voice_training_jobs SET phone = '13800135678' WHERE job_id = 'job-0008'")


DEFECTS: dict[str, tuple[Callable[[duckdb.DuckDBPyConnection], None], str, str]] = {
    "duplicate key": (_duplicate, "unique_job_keys", "ERROR"),
    "null key": (_null_key, "keys_and_timestamps_not_null", "ERROR"),
    "null timestamp": (_null_timestamp, "keys_and_timestamps_not_null", "ERROR"),
    "update before create": (_updated_before_created, "update_not_before_create", "ERROR"),
    "unknown enum": (_unknown_enum, "known_enum_values", "WARN"),
    "count mismatch": (_count_mismatch, "windows_reconcile", "ERROR"),
    "stale sync": (_stale, "sync_freshness", "ERROR"),
    "unmasked phone": (_unmasked, "personal_data_masked", "WARN"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_check_catches_its_own_defect(defect):
    plant, check_name, severity = DEFECTS[defect]
    con = clean_warehouse()
    plant(con)
    outcomes = run_all(con)
    assert {n for n, o in outcomes.items() if not o.passed} == {check_name}
    assert outcomes[check_name].severity == severity


def test_failure_metadata_names_the_offenders():
    con = clean_warehouse()
    for plant in (_duplicate, _null_key, _unknown_enum, _count_mismatch):
        plant(con)
    outcomes = run_all(con)
    assert outcomes["unique_job_keys"].metadata["sample"] == [
        {"project_id": "p1", "job_id": "job-0001", "copies": 2}
    ]
    assert outcomes["keys_and_timestamps_not_null"].metadata["null_counts"] == {"job_id": 1}
    assert outcomes["known_enum_values"].metadata["unknown_values"] == {
        "state": {"PAUSED": 2},
        "tag": {"PODCAST": 1},
    }
    assert "PAUSED" in outcomes["known_enum_values"].description
    mismatch = outcomes["windows_reconcile"].metadata
    assert mismatch["mismatched_windows"] == 1 and mismatch["mismatches"][0]["project_id"] == "p2"
    assert mismatch["mismatches"][0]["fetched"] == mismatch["mismatches"][0]["api_count"] - 1


def test_reconciliation_looks_at_the_latest_run_only():
    con = clean_warehouse()
    _count_mismatch(con)  # run-1 is now wrong
    insert_rows(con, "main.sync_windows", [
        {"run_id": "run-2", "project_id": "p1", "kind": "update", "api_count": 5, "fetched": 5, "synced_at": NOW},
    ])  # fmt: skip
    outcome = check_window_reconciliation(con)
    assert outcome.passed and outcome.metadata["run_id"] == "run-2"
    con.execute("DELETE FROM main.sync_windows")
    assert check_window_reconciliation(con).passed


def test_freshness_counts_only_successful_runs():
    con = clean_warehouse()
    _stale(con)
    insert_rows(con, "main.sync_runs", [
        {"run_id": "run-2", "started_at": NOW - timedelta(hours=2), "finished_at": NOW - timedelta(hours=1),
         "status": "failed"},
    ])  # fmt: skip
    outcome = check_freshness(con, now=NOW)
    assert not outcome.passed and outcome.metadata["last_success_run_id"] == "run-1"
    assert outcome.metadata["age_hours"] == pytest.approx(27)
    assert check_freshness(con, now=NOW - timedelta(hours=2)).passed
    con.execute("DELETE FROM main.sync_runs")
    assert not check_freshness(con, now=NOW).passed


def test_undocumented_language_is_not_a_warning():
    con = clean_warehouse()
    con.execute("UPDATE main.voice_training_jobs SET language = 'TLH'")
    assert check_known_enums(con).passed
