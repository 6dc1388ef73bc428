"""Owner ranges through a real sync: a job created exactly on a midnight is listed by both day
windows that share it and written once, by the day that owns it.

The owner filter itself, boundary by boundary, is tested in tests/unit/test_screen.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

MS = timedelta(milliseconds=1)


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // MS


def test_a_job_on_a_midnight_is_written_once_by_the_day_that_owns_it(tmp_path, make_simulator):
    """Two day windows list a job created exactly at 00:00:00.000; only the later day keeps it.
    Without the owner ranges both would write it (the upsert would hide the copy, the row
    count does not) and the earlier day's reconciliation would look at it too."""
    server = make_simulator(jobs=400, seed=31, days=6, projects=PROJECTS, now=SIM_NOW)
    midnight = datetime.combine(SIM_NOW.date() - timedelta(days=3), datetime.min.time(), UTC)
    job_id = server.state.truth(PROJECTS[0])[5]["job_id"]
    server.state.move_created(job_id, ms(midnight))
    since, until = midnight.date() - timedelta(days=2), midnight.date() + timedelta(days=1)
    report = sync(sim_settings(server, tmp_path), mode="days", since=since, until=until,
                  warehouse=Warehouse(tmp_path))
    in_days = [j for pid in PROJECTS for j in server.state.truth(pid)
               if since <= _created_day(j["create_time"]) <= until]
    assert report.quarantined == 0
    assert report.rows_written == len(in_days)  # each job written once, the midnight one too
    stored = Warehouse(tmp_path).jobs_table().to_pylist()
    assert [r["create_time"] for r in stored if r["job_id"] == job_id] == [midnight]


def _created_day(value: int) -> date:
    """A truth record's create_time (epoch seconds or milliseconds, as the API sends) as a UTC day."""
    return datetime.fromtimestamp(value / 1000 if value >= 100_000_000_000 else value, UTC).date()
