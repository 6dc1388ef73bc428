"""The first change capture after a backfill reads the changes, not the history again.

The warehouse knows which creation days some run listed whole (sync_windows, with the
source's time of each listing). Change capture backfills only the days never listed, says so
at the default log level, and reads changes from when the listed days were listed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import duckdb
import pytest

from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings, truth_by_project

DAYS = 40
FIRST = (SIM_NOW - timedelta(days=DAYS)).date()


@pytest.fixture
def server(make_simulator):
    return make_simulator(jobs=3000, seed=29, days=DAYS, projects=PROJECTS, now=SIM_NOW)


def create_windows(warehouse: Warehouse, run_id: str) -> int:
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        return con.execute("SELECT count(*) FROM sync_windows WHERE run_id = ? AND kind = 'create'"
                           " AND until - since = INTERVAL 1 DAY", [run_id]).fetchone()[0]


def test_a_backfill_of_the_whole_range_then_change_capture_requests_only_the_changes(server, tmp_path):
    warehouse = Warehouse(tmp_path)
    settings = sim_settings(server, tmp_path, first_day=FIRST)
    backfill = sync(settings, mode="days", since=FIRST, until=SIM_NOW.date(), warehouse=warehouse)
    changes = server.state.advance(6 * 3600)
    assert changes["created"] and changes["transitioned"]

    capture = sync(settings, mode="incremental", warehouse=warehouse)
    assert create_windows(warehouse, capture.run_id) == 0  # not one creation day read again
    # one clock probe, the update window's pages, the count bisection and the ranges it pages
    assert capture.requests <= 1 + capture.pages + capture.count_checks + 2 * capture.mismatched_windows
    assert capture.requests < backfill.requests / 4
    assert capture.jobs_fetched < 3 * (changes["created"] + changes["transitioned"]) + 50
    assert_rows_equal(warehouse.jobs_table(include_deleted=False).to_pylist(), truth_by_project(server),
                      personal_data=settings.personal_data)


def test_days_never_synced_are_backfilled_and_named_at_the_default_level(server, tmp_path, caplog):
    warehouse = Warehouse(tmp_path)
    settings = sim_settings(server, tmp_path, first_day=FIRST)
    recent = FIRST + timedelta(days=25)
    sync(settings, mode="days", since=recent, until=SIM_NOW.date(), warehouse=warehouse)

    caplog.set_level(logging.WARNING)
    capture = sync(settings, mode="incremental", warehouse=warehouse)
    gap = [r.getMessage() for r in caplog.records if "were never synced" in r.getMessage()]
    assert len(gap) == len(PROJECTS)
    assert f"Creation days {FIRST}..{recent - timedelta(days=1)}" in gap[0] and "backfilling 25 days" in gap[0]
    assert create_windows(warehouse, capture.run_id) == 25 * len(PROJECTS)
    assert_rows_equal(warehouse.jobs_table(include_deleted=False).to_pylist(), truth_by_project(server),
                      personal_data=settings.personal_data)
    # and the next change capture has no gap left
    caplog.clear()
    again = sync(settings, mode="incremental", warehouse=warehouse)
    assert not [r for r in caplog.records if "were never synced" in r.getMessage()]
    assert create_windows(warehouse, again.run_id) == 0


def test_gaps_are_named_as_the_runs_of_days_they_are():
    from datetime import date

    from pipelines.sync.plan import describe_days

    days = [date(2025, 1, 1) + timedelta(days=n) for n in range(331)] + \
        [date(2026, 11, 2) + timedelta(days=n) for n in range(26)]
    assert describe_days(days) == "2025-01-01..2025-11-27 and 2026-11-02..2026-11-27"
    assert describe_days([date(2025, 3, 1)]) == "2025-03-01"
