"""A deletion is recorded only on positive evidence, and the sync's unit of work holds the file.

- a window the source never listed (it lies after the source's clock minus the safety lag)
  proves nothing, so it deletes nothing;
- a window whose listing would delete most of its live jobs is listed a second time before
  it is believed;
- the sync, the SQL models and the serving snapshot hold warehouse.duckdb as one unit: no
  reader slips in between, and a run whose models fail is recorded as failed.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pyarrow.compute as pc
import pytest

from pipelines import cli
from pipelines.sync import sync
from pipelines.warehouse import Warehouse, WarehouseError
from tests.support.hostile import HostileProxy
from tests.support.simulators import PROJECTS, SIM_NOW, cli_env, sim_settings
from tests.support.warehouse_rows import lock_probe

DAYS = 6
SINCE = (SIM_NOW - timedelta(days=DAYS)).date()
UNTIL = SIM_NOW.date()


@pytest.fixture
def server(make_simulator):
    return make_simulator(jobs=600, seed=5, days=DAYS, projects=PROJECTS, now=SIM_NOW)


def live(warehouse: Warehouse) -> set[tuple[str, str]]:
    table = warehouse.jobs_table(include_deleted=False)
    return set(zip(table["project_id"].to_pylist(), table["job_id"].to_pylist(), strict=True))


def truth(server) -> set[tuple[str, str]]:
    return {(pid, job["job_id"]) for pid in PROJECTS for job in server.state.truth(pid)}


def test_windows_after_the_source_clock_delete_nothing(server, tmp_path):
    """The source's Date (believed: the clock check is off) says it is two days earlier: the last
    days' windows lie after its clock, are never paged, and prove nothing about their jobs."""
    warehouse = Warehouse(tmp_path)
    with HostileProxy(server.url) as proxy:
        settings = sim_settings(server, tmp_path).with_(endpoint=proxy.url)
        sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=warehouse)
        before = live(warehouse)
        assert before == truth(server)
        late = before & _created_after(warehouse, SIM_NOW - timedelta(days=2))
        assert late  # jobs whose days the wrong clock cannot see

        proxy.date_shift = -timedelta(days=2)
        report = sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=warehouse)
    assert report.deleted == 0
    assert live(warehouse) == before
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        unlisted = con.execute(
            "SELECT count(*) FROM sync_windows WHERE run_id = ? AND since > ?",
            [report.run_id, SIM_NOW - timedelta(days=2)]).fetchone()[0]
    assert unlisted == 0  # a window that was never paged is not recorded as listed


def _created_after(warehouse: Warehouse, when) -> set[tuple[str, str]]:
    table = warehouse.jobs_table()
    return {(r["project_id"], r["job_id"]) for r in table.to_pylist() if r["create_time"] >= when}


def test_a_window_losing_most_of_its_jobs_is_listed_twice_then_believed(server, tmp_path):
    warehouse = Warehouse(tmp_path)
    settings = sim_settings(server, tmp_path)
    sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=warehouse)
    day = SINCE + timedelta(days=2)
    table = warehouse.jobs_table()
    created = pc.cast(pc.divide(pc.cast(table["create_time"], "int64"), 86_400_000), "int32")
    on_day = table.filter(pc.and_(pc.equal(table["project_id"], PROJECTS[0]),
                                  pc.equal(created, (day - SINCE.__class__(1970, 1, 1)).days)))
    doomed = set(on_day["job_id"].to_pylist()[: int(on_day.num_rows * 0.8)])
    assert len(doomed) >= 10
    assert server.state.delete(doomed) == len(doomed)

    report = sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=warehouse)
    assert report.relisted_ranges == 1
    assert report.deleted == len(doomed)
    assert live(warehouse) == truth(server)


def test_a_change_capture_that_first_backfills_gap_days_still_lists_twice_ranges_losing_most_jobs(
        server, tmp_path):
    """The live jobs a listing is held against are read for the ranges it lists, also when the
    same run first backfilled creation days never synced (whose own live jobs were read then)."""
    warehouse = Warehouse(tmp_path)
    settings = sim_settings(server, tmp_path, first_day=SINCE)
    later = SINCE + timedelta(days=2)
    sync(settings, mode="days", since=later, until=UNTIL, warehouse=warehouse)  # two days left as gaps
    table = warehouse.jobs_table()
    mine = [r["job_id"] for r in table.to_pylist() if r["project_id"] == PROJECTS[0]]
    doomed = set(mine[: int(len(mine) * 0.8)])
    assert server.state.delete(doomed) == len(doomed)

    report = sync(settings, mode="incremental", warehouse=warehouse)
    assert report.count_checks and report.relisted_ranges >= 1
    assert report.deleted == len(doomed)
    assert live(warehouse) == truth(server)


def test_no_reader_slips_in_between_the_sync_and_the_models(server, tmp_path, monkeypatch):
    import pipelines.sync.run as sync_module

    cli_env(monkeypatch, server, tmp_path)
    real = sync_module.refresh_and_publish
    probes: list[str] = []

    def probed(*args, **kwargs):
        probes.append(lock_probe(tmp_path / "warehouse.duckdb"))
        return real(*args, **kwargs)

    # The moment the sync's own work is done and the models are about to be built.
    monkeypatch.setattr(sync_module, "refresh_and_publish", probed)
    assert cli.main(["sync", "--since", str(SINCE), "--until", str(UNTIL)]) == 0
    assert probes == ["locked"]


def test_a_run_whose_models_fail_is_recorded_as_failed_with_one_line(server, tmp_path, monkeypatch, capsys):
    import pipelines.models as models

    cli_env(monkeypatch, server, tmp_path)

    def broken(con, *args, **kwargs):
        raise WarehouseError("refreshing the SQL models failed (No space left on device); free space and run again")

    monkeypatch.setattr(models, "refresh_models", broken)
    assert cli.main(["sync", "--since", str(SINCE), "--until", str(UNTIL)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "space" in err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT status FROM sync_runs").fetchall() == [("failed",)]
