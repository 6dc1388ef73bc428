"""Every aggregate the pipeline computes equals the same aggregate computed from the simulator's truth.

The warehouse is filled by real syncs over HTTP (a backfill and change capture across clock
steps with deletions); the expected numbers come from the simulator's own job objects, read
by plain Python that shares no code with the SQL models.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest

from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.support import expected_analytics as independent
from tests.support.expected import epoch, waits_on
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings
from tests.support.warehouse_fixture import Dataset


def truth_dataset(server) -> Dataset:
    """The source's current jobs, as the independent aggregate functions expect them."""
    data = Dataset()
    for pid in PROJECTS:
        for job in server.state.truth(pid):
            data.jobs.append({
                "project_id": pid,
                "job_id": job["job_id"],
                "state": job.get("state"),
                "tag": job.get("tag"),
                "language": job.get("language"),
                "job_type": job.get("job_type"),
                "job_failed_code": job.get("job_failed_code"),
                "job_failed_reason": job.get("job_failed_reason"),
                "create_time": epoch(job.get("create_time")),
                # terminal states never move again, so a finished job's lastupdate_time is the
                # moment it finished: the time the pipeline's history saw it enter that state
                "lastupdate_time": epoch(job.get("lastupdate_time")),
                "deleted_at": None,
            })
    return data


@pytest.fixture(scope="module")
def synced(make_module_simulator):
    server = make_module_simulator(jobs=2500, seed=41, days=40, projects=PROJECTS, now=SIM_NOW)
    with _tmpdir() as tmp:
        settings = sim_settings(server, tmp, first_day=(SIM_NOW - timedelta(days=41)).date())
        warehouse = Warehouse(tmp)
        sync(settings, mode="incremental", warehouse=warehouse)
        for _ in range(3):  # jobs finish, fail and get deleted between syncs
            server.state.advance(8 * 3600)
            sync(settings, mode="incremental", warehouse=warehouse)
        refresh_and_publish(warehouse, settings)
        con = duckdb.connect(str(warehouse.serving_path), read_only=True)
        try:
            yield con, truth_dataset(server), server
        finally:
            con.close()


def _tmpdir():
    import tempfile
    from contextlib import contextmanager
    from pathlib import Path

    @contextmanager
    def managed():
        with tempfile.TemporaryDirectory() as name:
            yield Path(name)

    return managed()


def _keyed(con, name: str, key) -> dict:
    rows = independent.table(con, name)
    return {key(r): r for r in rows}


@pytest.mark.parametrize("column", ["tag", "language", "job_type"])
def test_failure_rates_equal_the_truth(synced, column):
    con, data, _ = synced
    actual = _keyed(con, f"failure_rate_by_{column}", lambda r: r[column])
    expected = independent.expected_failure_rate_by(data, column)
    assert expected and any(v["failed"] for v in expected.values())
    independent.assert_keyed_rows_equal(actual, expected)


@pytest.mark.parametrize(("name", "period", "column"), [
    ("daily_job_stats", "day", "day"),
    ("weekly_job_stats", "week", "week_start"),
    ("monthly_job_stats", "month", "month_start"),
])
def test_period_stats_equal_the_truth(synced, name, period, column):
    con, data, _ = synced
    actual = _keyed(con, name, lambda r: (r[column], r["project_id"]))
    independent.assert_keyed_rows_equal(actual, independent.expected_period_stats(data, period))


def test_time_to_finish_equals_the_truth(synced):
    con, data, _ = synced
    actual = _keyed(con, "time_to_finish_by_job_type", lambda r: r["job_type"])
    independent.assert_keyed_rows_equal(actual, independent.expected_time_to_finish(data))


def test_failure_codes_equal_the_truth(synced):
    con, data, _ = synced
    actual = _keyed(con, "top_failure_codes", lambda r: r["job_failed_code"])
    independent.assert_keyed_rows_equal(actual, independent.expected_failure_codes(data))


def test_backlog_equals_the_truth(synced):
    con, data, _ = synced
    actual = _keyed(con, "in_flight_backlog", lambda r: (r["state"], r["age_bucket"]))
    independent.assert_keyed_rows_equal(actual, independent.expected_backlog(data))


def test_who_in_flight_jobs_wait_on_equals_the_truth(synced):
    """Jobs waiting on the user (rejected, failed a check) and jobs the service works on, apart."""
    con, data, _ = synced
    sides = [waits_on(j["state"]) for j in data.jobs]
    assert sides.count("user") and sides.count("service"), "the simulator exercises both sides"
    actual = _keyed(con, "job_outcomes", lambda r: (r["project_id"], r["job_id"]))
    independent.assert_keyed_rows_equal(actual, independent.expected_job_outcomes(data))
    totals = con.execute(
        "SELECT sum(in_progress), sum(waiting_on_user), sum(in_progress_by_service) FROM analytics.failure_rate_by_tag"
    ).fetchone()
    assert totals == (len(sides) - sides.count(None), sides.count("user"), sides.count("service"))


def test_deleted_jobs_are_left_out(synced):
    con, data, server = synced
    deleted = {jid for pid in PROJECTS for jid in server.state.deleted_ids(pid)}
    assert deleted
    total = con.execute("select sum(total_jobs) from analytics.failure_rate_by_tag").fetchone()[0]
    assert total == len(data.jobs)
    leaked = con.execute("select count(*) from analytics.voice_training_jobs where job_id in "
                         "(select unnest(?::VARCHAR[]))", [sorted(deleted)]).fetchone()[0]
    assert leaked == 0
