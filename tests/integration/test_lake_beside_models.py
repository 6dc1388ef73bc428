"""A sync's lake export runs in a thread beside the SQL models' refresh when it is small enough to
share DuckDB's memory cap with them (refresh_and_publish's ``lake``), and alone, under the lean
cap, while the snapshot is written, when it is not. The threads meet on events, never on a sleep."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from pipelines import models as models_module
from pipelines.settings import Settings
from pipelines.sync import refresh_and_publish
from pipelines.sync.run import SNAPSHOT_PHASE, _export_lake
from pipelines.warehouse import Warehouse, lake_export
from pipelines.warehouse import lake as lake_module
from tests.support.warehouse_rows import DAY1, exports_from_the_table, jobs, lake_rows, rec, sql

#: Seconds a thread waits for the other: only a broken overlap ever gets near it.
HANG_GUARD = 120


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {"since": "2025-03-01"})
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=DAY1 + timedelta(hours=i)) for i in range(30)]), export=False)
    return wh


def _settings(wh: Warehouse) -> Settings:
    return Settings(data_dir=wh.data_dir, personal_data="raw")


def _models_waiting_for(event: threading.Event, monkeypatch) -> list[bool]:
    """refresh_models, made to wait until ``event`` is set before it runs (it reports whether it was)."""
    refresh = models_module.refresh_models
    seen: list[bool] = []

    def waiting(*args, **kwargs):
        seen.append(event.wait(timeout=HANG_GUARD))
        return refresh(*args, **kwargs)

    monkeypatch.setattr(models_module, "refresh_models", waiting)
    return seen


def test_a_small_export_runs_beside_the_models(warehouse: Warehouse, monkeypatch):
    """The models start only once the export has written the lake: were the export not beside
    them, they would wait in vain."""
    exported = threading.Event()
    export = lake_module.Lake.export_small_dirty_partitions

    def exporting(self):
        done = export(self)
        exported.set()
        return done

    monkeypatch.setattr(lake_module.Lake, "export_small_dirty_partitions", exporting)
    seen = _models_waiting_for(exported, monkeypatch)
    calls: list[bool] = []

    def lake(alone: bool) -> bool:
        calls.append(alone)
        return _export_lake(warehouse, alone=alone)

    with warehouse.connect():
        seconds = refresh_and_publish(warehouse, _settings(warehouse), lake=lake)
    assert seen == [True] and calls == [False]
    assert set(seconds) == {"models", SNAPSHOT_PHASE}
    assert sql(warehouse, "SELECT count(*) FROM lake_dirty") == [(0,)]
    assert lake_rows(warehouse) == warehouse.jobs_table().to_pylist()
    assert sql(warehouse, "SELECT count(*) FROM analytics.job_outcomes") == [(30,)]


def test_a_big_export_is_declined_beside_the_models_and_runs_alone_under_the_lean_cap(warehouse: Warehouse,
                                                                                     monkeypatch):
    exports_from_the_table(monkeypatch)  # what a run's spool does not hold: read under the lean cap
    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)  # 30 rows to write: more than one read
    caps: list[str] = []
    read = lake_module.Lake._dirty_rows

    def reading(con, *args, **kwargs):
        caps.append(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        return read(con, *args, **kwargs)

    monkeypatch.setattr(lake_module.Lake, "_dirty_rows", staticmethod(reading))
    usual = sql(warehouse, "SELECT current_setting('memory_limit')")[0][0]
    calls: list[tuple[bool, bool]] = []

    def lake(alone: bool) -> bool:
        done = _export_lake(warehouse, alone=alone)
        calls.append((alone, done))
        return done

    with warehouse.connect():
        refresh_and_publish(warehouse, _settings(warehouse), lake=lake)
    assert calls == [(False, False), (True, True)]
    assert caps and usual not in caps  # every read under the lean cap
    assert lake_rows(warehouse) == warehouse.jobs_table().to_pylist()
    assert sql(warehouse, "SELECT count(*) FROM lake_dirty") == [(0,)]


def test_a_full_refresh_exports_the_whole_lake_alone(warehouse: Warehouse):
    with warehouse.connect():
        warehouse.export_dirty_partitions()
    assert _export_lake(warehouse, whole=True, alone=False) is False
    assert sql(warehouse, "SELECT count(*) FROM lake_dirty") == [(0,)]
    assert _export_lake(warehouse, whole=True) is True
    assert lake_rows(warehouse) == warehouse.jobs_table().to_pylist()


def test_the_models_error_comes_first_and_the_export_beside_them_ends_before_it_is_raised(
        warehouse: Warehouse, monkeypatch):
    """A refresh that fails while the export runs beside it raises its own error, once the export
    (which shares the warehouse's connection) has ended; the export's work stays done."""
    started = threading.Event()
    ended: list[bool] = []

    def lake(alone: bool) -> bool:
        started.set()
        done = _export_lake(warehouse, alone=alone)
        ended.append(done)
        return done

    def failing(*args, **kwargs):
        assert started.wait(timeout=HANG_GUARD)
        raise models_module.ModelError("model broken")

    monkeypatch.setattr(models_module, "refresh_models", failing)
    with warehouse.connect(), pytest.raises(models_module.ModelError, match="model broken"):
        refresh_and_publish(warehouse, _settings(warehouse), lake=lake)
    assert ended == [True]
    assert lake_rows(warehouse) == warehouse.jobs_table().to_pylist()


def test_an_error_of_the_export_beside_the_models_is_raised_after_them(warehouse: Warehouse, monkeypatch):
    def lake(alone: bool) -> bool:
        raise RuntimeError("export broken")

    with warehouse.connect(), pytest.raises(RuntimeError, match="export broken"):
        refresh_and_publish(warehouse, _settings(warehouse), lake=lake)
    assert sql(warehouse, "SELECT count(*) FROM analytics.job_outcomes") == [(30,)]


def test_more_whole_partitions_than_one_read_takes_are_declined_before_their_rows_are_counted(
        tmp_path, monkeypatch):
    """A backfill marks every partition whole: the export beside the models declines at once,
    without the count of their rows (a read of the whole table)."""
    monkeypatch.setattr(lake_export, "EXPORT_PARTITIONS", 4)
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {"since": "2025-03-01"})
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=DAY1 + timedelta(days=i)) for i in range(5)]), export=False)
    statements: list[str] = []
    cursor = lake_module.Lake._cursor

    def spying(self):
        context = cursor(self)
        con = context.__enter__()

        class Spy:
            def __getattr__(self, name):
                return getattr(con, name)

            def execute(self, query, *args):
                statements.append(query)
                return con.execute(query, *args)

        class Context:
            def __enter__(self):
                return Spy()

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Context()

    monkeypatch.setattr(lake_module.Lake, "_cursor", spying)
    with wh.connect():
        assert wh.export_small_dirty_partitions() is None
    assert statements and not any("count(j.job_id)" in q for q in statements)
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(5,)]
    monkeypatch.undo()
    assert wh.export_dirty_partitions() == 5
