"""The run's spool (pipelines/warehouse/spool.py): partitions whose rows the run appended are
written from it, byte for byte what an export from the table writes; anything the spool cannot
vouch for is read from the table."""

from __future__ import annotations

import logging
import shutil
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.warehouse import Warehouse, lake_export, spool
from pipelines.warehouse import lake as lake_module
from pipelines.warehouse.lake import LakeExportError
from tests.support.lake import BOTH_LAKES, lake_bytes, lake_keys
from tests.support.warehouse_rows import (
    DAY1,
    DAY2,
    SYNC2,
    block_with_a_directory,
    dirty,
    exports_from_the_table,
    jobs,
    lake_rows,
    rec,
    sql,
)

DAYS = [DAY1 + timedelta(days=i) for i in range(5)]


@pytest.fixture
def table_reads(monkeypatch) -> list[tuple[str, date]]:
    """The partitions each export reads from the table (a group's read, or a burst day's pieces)."""
    reads: list[tuple[str, date]] = []
    read, pieces = lake_module.Lake._dirty_rows, lake_module.Lake._partition_pieces

    def reading(con, project_id, days, *args, **kwargs):
        reads.extend((project_id, day) for day in days)
        return read(con, project_id, days, *args, **kwargs)

    def piecewise(cursor, project_id, day):
        reads.append((project_id, day))
        return pieces(cursor, project_id, day)

    monkeypatch.setattr(lake_module.Lake, "_dirty_rows", staticmethod(reading))
    monkeypatch.setattr(lake_module.Lake, "_partition_pieces", staticmethod(piecewise))
    return reads


def _backfill(wh: Warehouse, run: str) -> None:
    """Three batches of jobs never seen, as a backfill writes them: days cut across batches, two
    projects, a burst day bigger than one read, a job without a create_time."""
    for batch in range(3):
        wh.apply(run, jobs=jobs([rec(f"j{batch}{i:02d}", created=DAYS[(i + batch) % 4] + timedelta(minutes=i))
                                 for i in range(12)]), export=False)
        wh.apply(run, jobs=jobs([rec(f"q{batch}{i:02d}", created=DAYS[i % 2]) for i in range(3)], project_id="p2"),
                 export=False)
    burst = jobs([rec(f"burst{i:02d}", created=DAYS[4] + timedelta(seconds=i)) for i in reversed(range(23))]
                 + [rec("no-day", created=DAYS[0])])
    created = burst.schema.get_field_index("create_time")
    undated = pa.concat_arrays([burst["create_time"].combine_chunks()[:23], pa.nulls(1, burst.schema.field(created).type)])
    wh.apply(run, jobs=burst.set_column(created, burst.schema.field(created), undated), export=False)


def _files(wh: Warehouse) -> dict[str, bytes]:
    return {key: lake_bytes(wh, key) for key in lake_keys(wh)}


@BOTH_LAKES
def test_a_runs_appended_partitions_are_written_from_its_spool_as_the_table_would_write_them(
        wh: Warehouse, run: str, table_reads, monkeypatch):
    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    monkeypatch.setattr(lake_export, "EXPORT_BATCH_ROWS", 4)
    _backfill(wh, run)
    wh.export_dirty_partitions()
    assert table_reads == []  # every partition from the spool, the burst day too
    assert len(lake_keys(wh)) == 7
    assert lake_rows(wh) == [row for row in wh.jobs_table().to_pylist() if row["create_time"] is not None]
    spooled = _files(wh)
    exports_from_the_table(monkeypatch)
    wh.rebuild_lake()
    assert table_reads  # this time from the table
    assert _files(wh) == spooled  # the same bytes, row groups of the burst day included


def test_partitions_changed_after_their_rows_were_spooled_are_written_from_the_table(
        wh: Warehouse, run: str, table_reads):
    _backfill(wh, run)
    # A job listed again with a new state, one that moves to another day, a deletion, and a
    # batch of new jobs beside a stored one (its new jobs appended, not spooled).
    wh.apply(run, jobs=jobs([rec("j000", "SUCCEED", created=DAYS[0], updated_min=9)], synced_at=SYNC2), export=False)
    wh.apply(run, jobs=jobs([rec("j105", "FAILED", created=DAYS[3] + timedelta(hours=1), updated_min=5)],
                            synced_at=SYNC2), export=False)
    wh.apply(run, jobs=jobs([rec("late", created=DAYS[2])]), deleted=[("p2", "q001")], export=False)
    wh.apply(run, jobs=jobs([rec("late", created=DAYS[2]), rec("fresh", created=DAYS[2])]), export=False)
    wh.export_dirty_partitions()
    # j000's day, the days j105 left and joined, the deleted job's day, and late's: the others
    # (p1's DAYS[1], p2's DAYS[0], the burst day) came from the spool.
    assert sorted(set(table_reads)) == [("p1", DAYS[0].date()), ("p1", DAYS[2].date()), ("p1", DAYS[3].date()),
                                        ("p2", DAYS[1].date())]
    assert lake_rows(wh) == [row for row in wh.jobs_table().to_pylist() if row["create_time"] is not None]
    states = {row["job_id"]: (row["state"], row["deleted_at"] is not None) for row in lake_rows(wh)}
    assert states["j000"] == ("SUCCEED", False) and states["q001"][1] is True and "fresh" in states


def test_a_partition_holding_rows_of_an_earlier_run_is_written_from_the_table(tmp_path: Path, table_reads):
    wh = Warehouse(tmp_path / "data")
    first = wh.begin_run("days", {})
    wh.apply(first, jobs=jobs([rec("a", created=DAY1), rec("b", created=DAY2)]), export=False)
    wh.finish_run(first, "succeeded", {})
    table_reads.clear()
    second = wh.begin_run("days", {})
    wh.apply(second, jobs=jobs([rec("c", created=DAY1), rec("d", created=DAY2 + timedelta(days=1))]), export=False)
    wh.finish_run(second, "succeeded", {})
    assert table_reads == [("p1", DAY1.date())]  # the new day came from the spool
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_the_spool_goes_with_its_run_and_a_crashed_runs_spool_with_the_next_run(tmp_path: Path):
    wh = Warehouse(tmp_path / "data")
    left = tmp_path / "data" / f"{spool.SPOOL_PREFIX}0123abcd"
    left.mkdir()
    (left / "000000.arrow").write_bytes(b"what a killed process left")
    run = wh.begin_run("days", {})
    assert not left.exists()
    wh.apply(run, jobs=jobs([rec("a")]), export=False)
    assert [p.name for p in (tmp_path / "data").glob(f"{spool.SPOOL_PREFIX}*")] == [f"{spool.SPOOL_PREFIX}{run}"]
    wh.finish_run(run, "succeeded", {})
    assert list((tmp_path / "data").glob(f"{spool.SPOOL_PREFIX}*")) == []
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


@pytest.mark.parametrize("trouble", ["unwritable", "disk nearly full", "lost before the export"])
def test_a_spool_that_cannot_be_written_or_read_leaves_the_export_to_the_table(
        tmp_path: Path, table_reads, monkeypatch, caplog, trouble: str):
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {})
    directory = tmp_path / "data" / f"{spool.SPOOL_PREFIX}{run}"
    if trouble == "unwritable":
        directory.write_bytes(b"a file where the spool's directory goes")
    if trouble == "disk nearly full":
        monkeypatch.setattr(spool, "SPOOL_FREE_RESERVE", 1 << 62)
    with caplog.at_level(logging.INFO, logger="voicejobs.warehouse"):
        wh.apply(run, jobs=jobs([rec("a", created=DAY1), rec("b", created=DAY2)]), export=False)
        if trouble == "lost before the export":
            for file in directory.iterdir():
                file.write_bytes(b"not an Arrow file any more")
        wh.finish_run(run, "succeeded", {})
    assert "The lake spool" in caplog.text and "the export reads the table instead" in caplog.text
    assert sorted(table_reads) == [("p1", DAY1.date()), ("p1", DAY2.date())]
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]


def test_a_spooled_burst_day_that_cannot_be_written_keeps_its_mark_and_the_others_go_on(
        tmp_path: Path, table_reads, monkeypatch):
    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 5)
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {})
    stuck = ("p1", DAY1.date())
    path = wh.partition_path(*stuck)
    block_with_a_directory(path)
    stats = wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=DAY1 + timedelta(minutes=i)) for i in range(12)]
                                    + [rec("z", created=DAY2)]))
    assert stats.partitions_failed == 1 and dirty(wh) == [stuck]
    with pytest.raises(LakeExportError) as err:
        wh.export_dirty_partitions()
    assert str(path) in str(err.value) and "Is a directory" in str(err.value)
    shutil.rmtree(path)
    assert wh.export_dirty_partitions() == 1
    assert table_reads == [] and dirty(wh) == []
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_partition_runs_follow_the_rows_and_leave_out_those_without_a_day():
    table = pa.table({
        "project_id": ["p1", "p1", "p2", "p1", "p1", "p1"],
        "create_time": pa.array([0, 86_399_999, 1_000, None, -1, 86_400_000], pa.timestamp("ms", tz="UTC")),
    })
    epoch = date(1970, 1, 1)
    assert spool._partition_runs(table) == [
        ("p1", epoch, 0, 2), ("p2", epoch, 2, 1), ("p1", epoch - timedelta(days=1), 4, 1),
        ("p1", epoch + timedelta(days=1), 5, 1),
    ]
