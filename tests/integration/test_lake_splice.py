"""Lake partitions that hold the same jobs as their files, changed in place: in their stamps
(listed again unchanged: synced_at; marked deleted or listed again after that: deleted_at) and
in the columns new versions changed. Their files get those columns spliced in
(pipelines/warehouse/lake_splice.py) instead of being encoded whole, locally and on a real S3
server. The file that comes out is the one a whole export writes, byte for byte; a partition
that gained or lost a job, or whose old file cannot be trusted, is encoded whole."""

from __future__ import annotations

import io
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.warehouse import Warehouse, lake_export
from pipelines.warehouse import lake as lake_module
from pipelines.warehouse.lakestore import encode_parquet
from tests.support.lake import BOTH_LAKES, lake_bytes, lake_file, lake_put, lake_row_groups
from tests.support.warehouse_rows import DAY1, DAY2, SYNC2, jobs, lake_rows, rec, sql

KEY1 = "create_day=2025-03-01/project_id=p1/data.parquet"
KEY2 = "create_day=2025-03-02/project_id=p1/data.parquet"


def _day1(*ids: int) -> list[dict]:
    """Day 1's jobs ``ids`` (all twelve by default), as the source lists them."""
    return [rec(f"a{i:02d}", ("FAILED", "SUCCEED")[i % 2], created=DAY1 + timedelta(minutes=i),
                job_failed_reason="x" * 200 if i % 2 == 0 else None) for i in (ids or range(12))]


def _two_days(wh: Warehouse, run: str) -> None:
    wh.apply(run, jobs=jobs([*_day1(), *(rec(f"b{i:02d}", created=DAY2 + timedelta(minutes=i)) for i in range(5))]))


@pytest.fixture
def whole_writes(monkeypatch) -> list[list]:
    """The days of every group encoded whole (Lake._write_partitions, or _write_streamed for a
    partition bigger than one read, or _write_spooled for the rows a run's spool holds), as the
    export goes."""
    calls: list[list] = []
    partitions, streamed = lake_module.Lake._write_partitions, lake_module.Lake._write_streamed
    spooled = lake_module.Lake._write_spooled

    def spying_spooled(self, spool, project_id, days, bursts):
        calls.append([*days, *bursts])
        return spooled(self, spool, project_id, days, bursts)

    def spying(self, project_id, days, handed):
        calls.append(list(days))
        return partitions(self, project_id, days, handed)

    def spying_streamed(self, key):
        calls.append([key[1]])
        return streamed(self, key)

    monkeypatch.setattr(lake_module.Lake, "_write_partitions", spying)
    monkeypatch.setattr(lake_module.Lake, "_write_streamed", spying_streamed)
    monkeypatch.setattr(lake_module.Lake, "_write_spooled", spying_spooled)
    return calls


def _marks(wh: Warehouse) -> list[tuple]:
    return sql(wh, "SELECT project_id, create_day, stamps_only FROM lake_dirty ORDER BY ALL")


def _spliced_columns(wh: Warehouse) -> dict:
    """Each splice mark's content columns changed in place (sorted), by creation day."""
    return {day: sorted(columns or []) for day, columns in
            sql(wh, "SELECT create_day, in_place FROM lake_dirty WHERE stamps_only ORDER BY ALL")}


@BOTH_LAKES
def test_a_partition_whose_jobs_changed_only_their_stamps_gets_them_spliced(wh: Warehouse, run: str, whole_writes):
    _two_days(wh, run)
    untouched = lake_bytes(wh, KEY2)
    whole_writes.clear()
    # As a change capture finds deletions: a range of day 1 listed again, unchanged, later.
    wh.apply(run, jobs=jobs(_day1(2, 4, 5, 11), synced_at=SYNC2), deleted=[("p1", "a03"), ("p1", "a10")])
    assert whole_writes == []  # nothing was encoded whole
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    day1 = lake_file(wh, KEY1).to_pylist()
    assert {r["job_id"] for r in day1 if r["deleted_at"] is not None} == {"a03", "a10"}
    assert {r["job_id"] for r in day1 if r["synced_at"] == SYNC2} == {"a02", "a04", "a05", "a11"}
    # A deleted job listed again: its deletion is undone, in the file too.
    wh.apply(run, jobs=jobs(_day1(10), synced_at=SYNC2))
    assert whole_writes == []
    assert {r["job_id"] for r in lake_file(wh, KEY1).to_pylist() if r["deleted_at"] is not None} == {"a03"}
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert lake_bytes(wh, KEY2) == untouched
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]
    # The spliced file is the file a whole export writes.
    spliced = lake_bytes(wh, KEY1)
    wh.rebuild_lake()
    assert whole_writes, "rebuild_lake encodes every partition whole"
    assert lake_bytes(wh, KEY1) == spliced


@BOTH_LAKES
def test_a_partition_whose_jobs_changed_in_place_gets_those_columns_spliced(wh: Warehouse, run: str, whole_writes):
    """New versions of jobs already in a partition (a change capture's state changes) leave its
    jobs the same jobs: the columns they changed are spliced in with the stamps, the file the
    same bytes a whole export writes."""
    _two_days(wh, run)
    untouched = lake_bytes(wh, KEY2)
    whole_writes.clear()
    wh.apply(run, jobs=jobs([
        rec("a02", "SUCCEED", created=DAY1 + timedelta(minutes=2), updated_min=90, asset_id="asset-2"),
        rec("a05", "FAILED", created=DAY1 + timedelta(minutes=5), updated_min=95, job_failed_code="E1",
            job_failed_reason="no"),
        *_day1(7, 8),  # listed again unchanged
    ], synced_at=SYNC2), deleted=[("p1", "a03")])
    assert whole_writes == []  # nothing was encoded whole
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    day1 = {r["job_id"]: r for r in lake_file(wh, KEY1).to_pylist()}
    assert (day1["a02"]["state"], day1["a02"]["asset_id"]) == ("SUCCEED", "asset-2")
    assert (day1["a05"]["job_failed_code"], day1["a05"]["job_failed_reason"]) == ("E1", "no")
    assert day1["a03"]["deleted_at"] is not None and day1["a08"]["synced_at"] == SYNC2
    assert lake_bytes(wh, KEY2) == untouched
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]
    spliced = lake_bytes(wh, KEY1)
    wh.rebuild_lake()
    assert lake_bytes(wh, KEY1) == spliced


@BOTH_LAKES
def test_a_partition_that_gains_or_loses_a_job_is_written_whole(wh: Warehouse, run: str, whole_writes):
    """A job appended to a partition, or one whose creation time moved it to another day, changes
    which jobs the files hold: each file it touches is encoded whole."""
    _two_days(wh, run)
    whole_writes.clear()
    wh.apply(run, jobs=jobs([rec("a99", created=DAY1 + timedelta(hours=5)),
                             rec("a01", "SUCCEED", created=DAY1 + timedelta(minutes=1), updated_min=90)]))
    assert whole_writes == [[DAY1.date()]]
    whole_writes.clear()
    wh.apply(run, jobs=jobs([rec("b03", "SUCCEED", created=DAY1 + timedelta(hours=6), updated_min=2000)]))
    assert sorted(day for days in whole_writes for day in days) == [DAY1.date(), DAY2.date()]
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


@BOTH_LAKES
def test_a_burst_day_written_in_row_groups_is_spliced_row_group_by_row_group(wh: Warehouse, run: str, monkeypatch,
                                                                           whole_writes):
    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    monkeypatch.setattr(lake_export, "EXPORT_BATCH_ROWS", 4)
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=DAY1 + timedelta(minutes=i)) for i in range(25)]))
    assert lake_row_groups(wh, KEY1) == 7
    whole_writes.clear()
    wh.apply(run, jobs=jobs([]), deleted=[("p1", "j00"), ("p1", "j13"), ("p1", "j24")])
    assert whole_writes == []
    assert lake_row_groups(wh, KEY1) == 7
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    spliced = lake_bytes(wh, KEY1)
    wh.rebuild_lake()
    assert lake_bytes(wh, KEY1) == spliced


def test_stamps_mark_a_partition_for_a_splice_and_any_other_change_makes_it_whole(tmp_path):
    wh = Warehouse(tmp_path / "data")
    run_id = wh.begin_run("days", {"since": "2025-03-01"})
    _two_days(wh, run_id)
    wh.apply(run_id, jobs=jobs([]), deleted=[("p1", "a01"), ("p1", "b01")], export=False)
    assert _marks(wh) == [("p1", DAY1.date(), True), ("p1", DAY2.date(), True)]
    # Listed again unchanged, and a deleted job listed again (its deletion undone): stamps.
    wh.apply(run_id, jobs=jobs(_day1(0, 1), synced_at=SYNC2), export=False)
    assert sql(wh, "SELECT count(*) FROM voice_training_jobs WHERE deleted_at IS NOT NULL") == [(1,)]
    assert _marks(wh) == [("p1", DAY1.date(), True), ("p1", DAY2.date(), True)]
    assert _spliced_columns(wh) == {DAY1.date(): [], DAY2.date(): []}
    # A job of day 1 changed in place after the deletion, a deletion on day 2 again: day 1 is
    # still spliced, with the columns the new version changed.
    wh.apply(run_id, jobs=jobs([rec("a02", "SUCCEED", created=DAY1 + timedelta(minutes=2), updated_min=30)]),
             deleted=[("p1", "b02")], export=False)
    assert _marks(wh) == [("p1", DAY1.date(), True), ("p1", DAY2.date(), True)]
    assert _spliced_columns(wh) == {DAY1.date(): ["job_failed_reason", "lastupdate_time", "state"], DAY2.date(): []}
    # Later changes add their columns; a deletion adds none.
    wh.apply(run_id, jobs=jobs([rec("a04", "FAILED", created=DAY1 + timedelta(minutes=4), updated_min=40,
                                    job_failed_reason="x" * 200, job_failed_code="E9")]),
             deleted=[("p1", "a06")], export=False)
    assert _spliced_columns(wh) == {DAY1.date(): ["job_failed_code", "job_failed_reason", "lastupdate_time", "state"],
                                    DAY2.date(): []}
    # A new job on day 2 (appended, not merged) makes it whole.
    wh.apply(run_id, jobs=jobs([rec("b99", created=DAY2 + timedelta(hours=3))]), export=False)
    assert _marks(wh) == [("p1", DAY1.date(), True), ("p1", DAY2.date(), False)]
    # A job moved from day 1 to day 2 by its creation time makes both whole, and a change after
    # that leaves them so.
    wh.apply(run_id, jobs=jobs([rec("a08", "SUCCEED", created=DAY2 + timedelta(hours=4), updated_min=3000)]),
             export=False)
    wh.apply(run_id, jobs=jobs([rec("a09", "SUCCEED", created=DAY1 + timedelta(minutes=9), updated_min=50)]),
             deleted=[("p1", "b04")], export=False)
    assert _marks(wh) == [("p1", DAY1.date(), False), ("p1", DAY2.date(), False)]
    wh.export_dirty_partitions()
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def _rewritten(wh: Warehouse, *, rows: int | None = None, column: bool = False, **options) -> bytes:
    """The day's file written again: its first ``rows`` rows, with a column more, or with
    Arrow's writer and ``options`` instead of the lake's."""
    table = lake_file(wh, KEY1)
    table = table.slice(0, rows) if rows is not None else table
    table = table.append_column("note", pa.array(["n"] * table.num_rows)) if column else table
    sink = io.BytesIO()
    if options:
        pq.write_table(table, sink, **options)
    else:
        encode_parquet(table, sink)
    return sink.getvalue()


@BOTH_LAKES
@pytest.mark.parametrize("damage", ["missing", "fewer jobs", "not parquet", "another schema", "another writer"])
def test_an_old_file_that_cannot_be_trusted_is_written_whole_instead(wh: Warehouse, run: str, damage: str,
                                                                      whole_writes, caplog):
    _two_days(wh, run)
    if damage == "missing":
        wh.lake.remove(KEY1)
    elif damage == "not parquet":
        lake_put(wh, KEY1, b"PAR1 torn write")
    else:  # the day's file as an older release or another writer left it
        lake_put(wh, KEY1, _rewritten(wh, rows=11 if damage == "fewer jobs" else None,
                                      column=damage == "another schema",
                                      **({"use_dictionary": True} if damage == "another writer" else {})))
    whole_writes.clear()
    caplog.set_level("INFO", logger="voicejobs.warehouse")
    wh.apply(run, jobs=jobs([]), deleted=[("p1", "a05")])
    assert whole_writes == [[DAY1.date()]]
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    reason = {"missing": "it is missing", "fewer jobs": "rows and the partition", "not parquet": "not a Parquet file",
              "another schema": "another schema", "another writer": "its jobs are not the partition's"}[damage]
    assert "is written whole: " in caplog.text and reason in caplog.text
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]


def test_a_splice_repeated_after_a_crash_before_its_mark_was_cleared_writes_the_same_file(tmp_path, whole_writes):
    wh = Warehouse(tmp_path / "data")
    run_id = wh.begin_run("days", {"since": "2025-03-01"})
    _two_days(wh, run_id)
    wh.apply(run_id, jobs=jobs([]), deleted=[("p1", "a07")])
    first = lake_bytes(wh, KEY1)
    with wh.connect() as con:  # as a crash between the rename and the mark's clearing leaves it
        con.execute("INSERT INTO lake_dirty (project_id, create_day, stamps_only) VALUES ('p1', DATE '2025-03-01', true)")
    whole_writes.clear()
    assert wh.export_dirty_partitions() == 1
    assert whole_writes == []
    assert lake_bytes(wh, KEY1) == first


def test_a_splice_mark_naming_no_content_column_is_written_whole(wh: Warehouse, run: str, whole_writes):
    """A splice mark's columns come from the sync's own marks; one naming the key (which the
    splice must keep to check the file's jobs) or a column lake files lack, as only a hand could
    write it, is not trusted: the partition is encoded whole."""
    _two_days(wh, run)
    whole_writes.clear()
    for columns in (["job_id"], ["no_such_column"]):
        with wh.connect() as con:
            con.execute("INSERT INTO lake_dirty (project_id, create_day, stamps_only, in_place) VALUES (?, ?, true, ?)",
                        ["p1", DAY1.date(), columns])
        wh.export_dirty_partitions()
        assert whole_writes == [[DAY1.date()]]
        whole_writes.clear()
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_a_mark_names_only_content_columns_and_only_for_a_splice():
    from pipelines.warehouse.marks import mark_lake_sql

    with pytest.raises(ValueError, match="no content column"):
        mark_lake_sql("SELECT 'p1', DATE '2025-03-01'", stamps_only=True, in_place=["job_id"])
    with pytest.raises(ValueError, match="goes with stamps_only"):
        mark_lake_sql("SELECT 'p1', DATE '2025-03-01'", in_place=["state"])
