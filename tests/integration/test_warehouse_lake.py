"""The warehouse's lake and serving snapshot, as other readers see them.

Lake partitions equal the jobs table row for row, merged or exported, emptied or rebuilt, with
the lake in the data directory and (parametrized "s3") on a real S3 server (tests/support/s3.py);
a reader holding serving.duckdb open keeps its snapshot while another process sees the new one.
The rest of the Warehouse (upserts, history, deletions, atomicity) is in tests/unit/test_warehouse.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipelines.warehouse import Warehouse, lake_export
from pipelines.warehouse.serving import SPARE_FILE
from tests.support.lake import (
    BOTH_LAKES,
    lake_dataset,
    lake_file,
    lake_keys,
    lake_put,
    lake_row_groups,
    lake_statistics,
    lake_wipe,
)
from tests.support.warehouse_rows import DAY1, DAY2, SYNC2, exports_from_the_table, jobs, lake_rows, rec, sql

#: The partitions of a (p1, DAY1), b (p1, DAY2) and x (p2, DAY2), as several tests write them.
THREE_PARTITIONS = [
    "create_day=2025-03-01/project_id=p1/data.parquet",
    "create_day=2025-03-02/project_id=p1/data.parquet",
    "create_day=2025-03-02/project_id=p2/data.parquet",
]


@BOTH_LAKES
def test_lake_partitions_equal_the_table(wh: Warehouse, run: str):
    wh.apply(
        run, jobs=jobs([rec("a"), rec("b", created=DAY2), rec("c", created=DAY2 - timedelta(milliseconds=1))])
    )
    wh.apply(run, jobs=jobs([rec("x", created=DAY2)], project_id="p2"))
    assert lake_keys(wh) == THREE_PARTITIONS
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    # any engine: DuckDB reads the same rows with the partition columns from the path. (DuckDB
    # reads S3 through its httpfs extension, a download this machine cannot make; there it
    # scans the pyarrow dataset of the same objects. The README shows httpfs.)
    if wh.lake_dir is not None:
        source = f"read_parquet('{wh.lake_dir}/**/*.parquet', hive_partitioning=true)"
    else:
        lake = lake_dataset(wh)  # noqa: F841  (DuckDB scans it by name)
        source = "lake"
    got = duckdb.sql(
        f"SELECT CAST(create_day AS DATE), project_id, job_id FROM {source} ORDER BY job_id"
    ).fetchall()
    assert got == [(date(2025, 3, 1), "p1", "a"), (date(2025, 3, 2), "p1", "b"), (date(2025, 3, 1), "p1", "c"),
                   (date(2025, 3, 2), "p2", "x")]  # fmt: skip
    # deletions and updates rewrite their partition
    wh.apply(run, jobs=jobs([rec("b", "SUCCEED", created=DAY2, updated_min=5)]), deleted=[("p1", "a")])
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]


def _lake_files(wh: Warehouse) -> dict[str, list[dict]]:
    return {key: lake_file(wh, key).to_pylist() for key in lake_keys(wh) if key.endswith(".parquet")}


@BOTH_LAKES
def test_partitions_merged_from_batches_equal_an_export_from_the_table(wh: Warehouse, run: str):
    """Most partitions are written from the old file plus a batch's winning rows; the files
    must be what an export from the table writes, row for row and in the same order."""
    day3 = DAY2 + timedelta(days=1)
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=(DAY1, DAY2, day3)[i % 3] + timedelta(minutes=i))
                             for i in range(30)]))
    # updates into existing partitions, a new job, a stale row, duplicates inside the batch
    wh.apply(run, jobs=jobs([rec("j04", "SUCCEED", created=DAY2 + timedelta(minutes=4), updated_min=9),
                             rec("j05", "FAILED", created=day3 + timedelta(minutes=5), updated_min=1),
                             rec("new", created=DAY1 + timedelta(hours=5))], synced_at=SYNC2))
    wh.apply(run, jobs=jobs([rec("j04", "WAITING", created=DAY2 + timedelta(minutes=4), updated_min=2)],
                            synced_at=SYNC2))  # stale: loses to the stored version
    # a deletion and an undeletion (the slow path) beside merged partitions
    wh.apply(run, jobs=jobs([rec("j07", "PROCESSING", created=DAY2 + timedelta(minutes=7), updated_min=3)]),
             deleted=[("p1", "j00"), ("p1", "j08")])
    wh.apply(run, jobs=jobs([rec("j00", created=DAY1, updated_min=0)]))  # listed again: not deleted
    merged = _lake_files(wh)
    assert sum(len(rows) for rows in merged.values()) == 31
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]
    wh.rebuild_lake()
    assert _lake_files(wh) == merged
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_an_export_of_days_apart_writes_each_day_whole_and_only_those(wh: Warehouse, run: str):
    """The export reads a group of dirty days as ranges of instants (a run of consecutive days
    one range): jobs on the first and the last millisecond of each day land in their own file,
    and the days between are neither read into another file nor rewritten."""
    def at(day: int, ms: int) -> int:
        return int((DAY1 + timedelta(days=day)).timestamp() * 1000) + ms

    last_ms = 24 * 3600 * 1000 - 1
    wh.apply(run, jobs=jobs([rec(f"d{d}-{edge}", create_time=at(d, ms))
                             for d in range(7) for edge, ms in (("first", 0), ("last", last_ms))]))
    untouched = {key: lake_file(wh, key).to_pylist()
                 for key in lake_keys(wh) if key.startswith(("create_day=2025-03-02/", "create_day=2025-03-05/"))}
    # days 0, 2, 3 and 6 change (days 2 and 3 a run), in one batch: one export group
    wh.apply(run, jobs=jobs([rec(f"d{d}-{edge}", "SUCCEED", create_time=at(d, ms), updated_min=5)
                             for d, edge, ms in ((0, "first", 0), (2, "last", last_ms), (3, "first", 0),
                                                 (6, "last", last_ms))], synced_at=SYNC2))
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert {key: lake_file(wh, key).to_pylist() for key in untouched} == untouched
    files = _lake_files(wh)
    assert len(files) == 7 and all(len(rows) == 2 for rows in files.values())
    assert sorted(r["job_id"] for r in files["create_day=2025-03-03/project_id=p1/data.parquet"]) == [
        "d2-first", "d2-last"]


@BOTH_LAKES
def test_an_emptied_partition_file_is_removed(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a")]))
    assert lake_keys(wh) == ["create_day=2025-03-01/project_id=p1/data.parquet"]
    with wh.connect() as con:
        con.execute("DELETE FROM voice_training_jobs")
        con.execute("INSERT INTO lake_dirty (project_id, create_day) VALUES ('p1', DATE '2025-03-01')")
    assert wh.export_dirty_partitions() == 1
    assert lake_keys(wh) == []
    if wh.lake_dir is not None:
        assert list(wh.lake_dir.iterdir()) == []  # no empty partition directories left behind


def test_a_deleted_job_without_a_create_time_leaves_no_partition_to_export(wh: Warehouse, run: str):
    """A job without a create_time has no lake partition. Marking it deleted marked a NULL day
    for export, and the export then failed on it (AttributeError), every later one too."""
    undated = jobs([rec("u")])
    column = undated.schema.get_field_index("create_time")
    undated = undated.set_column(column, undated.schema.field(column), pa.nulls(1, undated.schema.field(column).type))
    wh.apply(run, jobs=jobs([rec("a")]))
    wh.apply(run, jobs=undated)
    wh.apply(run, jobs=jobs([]), deleted=[("p1", "a"), ("p1", "u")])
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]
    assert [(r["job_id"], r["deleted_at"] is not None) for r in lake_rows(wh)] == [("a", True)]
    assert wh.rebuild_lake() == 1  # the same for a rebuild, which marks every partition
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]


@BOTH_LAKES
def test_rebuild_lake_restores_a_lost_lake_and_drops_orphans(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    expected = lake_rows(wh)
    lake_wipe(wh)
    orphan = wh.partition_key("p9", date(2024, 1, 1))
    lake_put(wh, orphan, b"left over")
    lake_put(wh, "create_day=2025-03-01/project_id=p1/.data-crashed.parquet.tmp", b"half")
    assert wh.rebuild_lake() == 3
    assert orphan not in lake_keys(wh)
    assert lake_rows(wh) == expected
    assert lake_keys(wh) == ["create_day=2025-03-01/project_id=p1/data.parquet",
                             "create_day=2025-03-02/project_id=p1/data.parquet"]


def test_marking_every_partition_marks_each_once(wh: Warehouse, run: str):
    """A partition of the table that also has its file is marked once, not twice: an export
    counts a partition's rows through its marks, and a partition counted twice could be taken
    for one too big to read with others."""
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    lake_put(wh, wh.partition_key("p9", date(2024, 1, 1)), b"an orphan")
    assert wh.mark_every_partition() == 3
    assert sql(wh, "SELECT project_id, create_day, count(*) FROM lake_dirty GROUP BY ALL ORDER BY 1, 2") == [
        ("p1", date(2025, 3, 1), 1), ("p1", date(2025, 3, 2), 1), ("p9", date(2024, 1, 1), 1)]


@BOTH_LAKES
def test_a_lost_lake_is_written_whole_by_the_next_export(wh: Warehouse, run: str, caplog):
    """A lake directory removed (or a bucket prefix emptied) by hand: the next export notices
    that a partition it left clean has no file, and writes every partition again, not only
    the ones the batch touched."""
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    wh.apply(run, jobs=jobs([rec("x", created=DAY2)], project_id="p2"))
    lake_wipe(wh)
    with caplog.at_level("WARNING", logger="voicejobs.warehouse"):
        wh.apply(run, jobs=jobs([rec("c", created=DAY2 + timedelta(hours=1))]))
    assert lake_keys(wh) == THREE_PARTITIONS
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert "is missing" in caplog.text and "writing all 3 partitions" in caplog.text


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_lake_moved_elsewhere_is_written_whole_there_by_the_next_export(request, tmp_path: Path, where: str):
    """VOICEJOBS_LAKE_URI pointed somewhere new for a warehouse that has data: the next export
    writes every partition there, and removes what an earlier lake left at that place (a file
    of a partition the table does not hold)."""
    first = Warehouse(tmp_path / "data")
    run = first.begin_run("days", {"since": "2025-03-01"})
    first.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    first.apply(run, jobs=jobs([rec("x", created=DAY2)], project_id="p2"))
    if where == "s3":
        lake = request.getfixturevalue("s3_lake")
        moved = Warehouse(tmp_path / "data", lake_uri=lake.uri, object_store=lake.server.access())
    else:
        moved = Warehouse(tmp_path / "data", lake_uri=str(tmp_path / "elsewhere"))
    stale = moved.partition_key("p9", date(2024, 1, 1))
    lake_put(moved, stale, b"another lake's file")
    moved.apply(run, jobs=jobs([rec("c", created=DAY2 + timedelta(hours=1))]))
    assert lake_keys(moved) == THREE_PARTITIONS
    assert lake_rows(moved) == moved.jobs_table().to_pylist()


def test_a_lake_that_cannot_be_looked_at_still_gets_the_partitions_marked(wh: Warehouse, run: str, monkeypatch,
                                                                          caplog):
    """The check before an export asks the store whether one file is there; when the store does
    not answer, the export goes on with what is marked and says so (the next one checks again)."""
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))

    def unreachable(key: str) -> bool:
        raise OSError(5, "the store did not answer")

    monkeypatch.setattr(wh.lake, "exists", unreachable)
    with caplog.at_level("WARNING", logger="voicejobs.warehouse"):
        wh.apply(run, jobs=jobs([rec("c", created=DAY2 + timedelta(hours=1))]))
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert "could not be checked (the store did not answer)" in caplog.text
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]

def test_an_intact_lake_keeps_the_files_of_partitions_nothing_changed(wh: Warehouse, run: str):
    """The checks above cost one look at one file: a lake that is where the warehouse last
    wrote it, whole, has only the partitions a batch touched rewritten."""
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    day1 = wh.lake_dir / wh.partition_key("p1", DAY1.date())
    day2 = wh.lake_dir / wh.partition_key("p1", DAY2.date())
    before = day1.stat().st_ino, day2.stat().st_ino
    wh.apply(run, jobs=jobs([rec("c", created=DAY2 + timedelta(hours=1))]))
    assert day1.stat().st_ino == before[0]  # a rewrite renames a new file into place
    assert day2.stat().st_ino != before[1]


def test_an_export_clears_what_a_crashed_write_left_in_its_partition_and_makes_new_ones(wh: Warehouse, run: str):
    """A partition's directory may hold the temporary file of a write that crashed: the next
    export there removes it. A new partition's directories are made, a new day's and a new
    project's under a day that has one."""
    wh.apply(run, jobs=jobs([rec("a")]))
    partition = wh.lake_dir / "create_day=2025-03-01" / "project_id=p1"
    (partition / ".data-crashed.parquet.tmp").write_bytes(b"half")
    wh.apply(run, jobs=jobs([rec("b")]))
    wh.apply(run, jobs=jobs([rec("x")], project_id="p2"))
    wh.apply(run, jobs=jobs([rec("c", created=DAY2)]))
    assert sorted(p.name for p in partition.iterdir()) == ["data.parquet"]
    assert lake_keys(wh) == [
        "create_day=2025-03-01/project_id=p1/data.parquet",
        "create_day=2025-03-01/project_id=p2/data.parquet",
        "create_day=2025-03-02/project_id=p1/data.parquet",
    ]
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_an_export_of_many_rows_runs_under_the_lean_memory_cap(tmp_path: Path, monkeypatch):
    """DuckDB keeps what it wrote in memory up to its cap; an export bigger than one read gives
    it back (checkpoint, lean cap) and the usual cap is back after, also when a write fails."""
    exports_from_the_table(monkeypatch)
    from pipelines.warehouse import lake as lake_module

    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {"since": "2025-03-01"})
    caps: list[str] = []
    export = lake_module.Lake._export_partitions

    def spying(self, con, *group_and_writer):
        caps.append(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        return export(self, con, *group_and_writer)

    monkeypatch.setattr(lake_module.Lake, "_export_partitions", spying)

    def cap() -> str:
        return sql(wh, "SELECT current_setting('memory_limit')")[0][0]

    usual = cap()
    with wh.connect():
        wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))  # 2 rows: the usual cap
        assert caps == [usual] and lake_rows(wh) == wh.jobs_table().to_pylist()
        caps.clear()
        wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=(DAY1, DAY2)[i % 2]) for i in range(30)]))
        lean = caps[0]
        assert lean != usual and len(caps) >= 2 and set(caps) == {lean}
        assert cap() == usual and lake_rows(wh) == wh.jobs_table().to_pylist()

        def failing(self, con, *group_and_writer):
            raise OSError("disk gone")

        monkeypatch.setattr(lake_module.Lake, "_export_partitions", failing)
        with pytest.raises(OSError):
            wh.apply(run, jobs=jobs([rec(f"k{i:02d}", created=DAY1) for i in range(30)]))
        assert cap() == usual


def test_an_export_that_runs_out_of_memory_under_the_lean_cap_finishes_under_the_usual_cap(
        tmp_path: Path, monkeypatch, caplog):
    """Rows far wider than usual can need more than the lean cap for one read: DuckDB then runs
    out of memory (here a cap too small for any read), and the export goes on under the usual
    cap instead of failing the run, every partition written and its mark cleared."""
    exports_from_the_table(monkeypatch)
    from pipelines.warehouse import db as db_module

    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    monkeypatch.setattr(lake_export, "EXPORT_BATCH_ROWS", 4)
    monkeypatch.setattr(db_module, "DUCKDB_LEAN_MEMORY_LIMIT", "256KB")
    wh = Warehouse(tmp_path / "data")
    run = wh.begin_run("days", {"since": "2025-03-01"})
    usual = sql(wh, "SELECT current_setting('memory_limit')")[0][0]
    with wh.connect(), caplog.at_level("INFO", logger="voicejobs.warehouse"):
        # Many small partitions read in groups, and one bigger than a read (streamed).
        wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=DAY1 + timedelta(days=i % 6)) for i in range(30)]
                                + [rec(f"big{i:02d}", created=DAY2 + timedelta(days=10)) for i in range(15)]))
        assert sql(wh, "SELECT current_setting('memory_limit')")[0][0] == usual
    assert "needed more memory than DuckDB's lean cap of 256KB" in caplog.text
    assert lake_rows(wh) == wh.jobs_table().to_pylist()
    assert len(lake_keys(wh)) == 7
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(0,)]


def test_an_export_out_of_memory_under_the_usual_cap_is_not_retried(wh: Warehouse, run: str, monkeypatch,
                                                                     caplog):
    """Only an export under the lean cap goes again under the usual one: a small export runs
    under the usual cap, and running out of memory there is an error, not a retry."""
    exports_from_the_table(monkeypatch)
    import duckdb as duckdb_module

    from pipelines.warehouse import lake as lake_module

    wh.apply(run, jobs=jobs([rec("a")]))  # the lake's first export, its place recorded
    wh.apply(run, jobs=jobs([rec("b", created=DAY2)]), export=False)
    reads = []

    def reading(con, project_id, days):
        reads.append(days)
        raise duckdb_module.OutOfMemoryException("Out of Memory Error: failed to allocate")

    monkeypatch.setattr(lake_module.Lake, "_dirty_rows", staticmethod(reading))
    with caplog.at_level("INFO", logger="voicejobs.warehouse"), pytest.raises(duckdb_module.OutOfMemoryException):
        wh.export_dirty_partitions()
    assert len(reads) == 1 and "lean cap" not in caplog.text
    assert sql(wh, "SELECT count(*) FROM lake_dirty") == [(1,)]


@BOTH_LAKES
def test_an_export_out_of_memory_halfway_keeps_what_it_wrote_and_retries_no_failed_partition(
        wh: Warehouse, run: str, monkeypatch):
    """Out of memory after some groups were written: those stay written (marks cleared) and are
    not read again, a partition whose write failed keeps its mark and is reported once, and the
    rest is written under the usual cap."""
    exports_from_the_table(monkeypatch)
    import duckdb as duckdb_module

    from pipelines.warehouse import lake as lake_module

    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 15)
    monkeypatch.setattr(lake_export, "EXPORT_PARTITIONS", 1)  # a group per partition
    days = [DAY1 + timedelta(days=i) for i in range(4)]
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=days[i % 4]) for i in range(40)]))
    wh.mark_every_partition()
    keys = [wh.partition_key("p1", day.date()) for day in days]
    written, reads = [], []
    write_all = wh.lake.write_all
    read = lake_module.Lake._dirty_rows

    def writing(items):
        if items[0][0] == keys[1]:
            return [OSError(28, "No space left on device")] * len(items)
        written.extend(key for key, _ in items)
        return write_all(items)

    def reading(con, project_id, group_days):
        reads.append((group_days[0], con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]))
        if group_days[0] == days[2].date() and len({cap for _, cap in reads}) == 1:
            raise duckdb_module.OutOfMemoryException("Out of Memory Error: failed to allocate")
        return read(con, project_id, group_days)

    monkeypatch.setattr(wh.lake, "write_all", writing)
    monkeypatch.setattr(lake_module.Lake, "_dirty_rows", staticmethod(reading))
    with pytest.raises(lake_module.LakeExportError) as raised:
        wh.export_dirty_partitions()
    assert len(raised.value.failures) == 1 and keys[1] in str(raised.value.failures[0][0])
    lean = reads[0][1]
    assert reads[:3] == [(days[0].date(), lean), (days[1].date(), lean), (days[2].date(), lean)]
    assert reads[3:] and all(cap != lean for _, cap in reads[3:])
    assert days[0].date() not in [day for day, _ in reads[3:]]
    assert sorted(written) == sorted([keys[0], keys[2], keys[3]])
    assert sql(wh, "SELECT create_day FROM lake_dirty") == [(days[1].date(),)]
    assert lake_rows(wh) == wh.jobs_table().to_pylist()  # days[1] kept its file of the first export


@BOTH_LAKES
def test_an_export_allocates_arrow_memory_with_malloc_and_gives_the_pool_back(
    wh: Warehouse, run: str, monkeypatch, mimalloc_by_default: str
):
    """The export's Arrow work (sorting, casting, encoding, in the writer's threads) allocates
    from the C library's malloc, which gives freed memory back, not from pyarrow's default pool
    (mimalloc kept about 100 MB of a million-job export's freed buffers). The process's pool is
    back after the export, also when a write fails."""
    import pyarrow as pa

    usual = mimalloc_by_default
    pools: list[str] = []
    write_all = wh.lake.write_all

    def spying(items):
        pools.append(pa.default_memory_pool().backend_name)
        return write_all(items)

    monkeypatch.setattr(wh.lake, "write_all", spying)
    wh.apply(run, jobs=jobs([rec("a"), rec("b", created=DAY2)]))
    assert pools and set(pools) == {"system"} != {usual}
    assert pa.default_memory_pool().backend_name == usual
    assert lake_rows(wh) == wh.jobs_table().to_pylist()

    def failing(items):
        raise OSError("disk gone")

    monkeypatch.setattr(wh.lake, "write_all", failing)
    with pytest.raises(OSError):
        wh.apply(run, jobs=jobs([rec("c")]))
    assert pa.default_memory_pool().backend_name == usual


@BOTH_LAKES
def test_a_partition_bigger_than_one_read_is_streamed_into_its_file_by_job_id(wh: Warehouse, run: str, monkeypatch):
    """A burst day (more rows than one read) is read and written in pieces of job_id ranges,
    each a row group, instead of held whole and copied to sort it. Its file holds the same rows
    in the same order as any other partition's, and replacing it again works."""
    exports_from_the_table(monkeypatch)

    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    monkeypatch.setattr(lake_export, "EXPORT_BATCH_ROWS", 4)
    burst = [rec(f"j{i:02d}", created=DAY1 + timedelta(minutes=i)) for i in range(25)]
    wh.apply(run, jobs=jobs([*reversed(burst), rec("b", created=DAY2)]))
    key = wh.partition_key("p1", DAY1.date())
    assert lake_file(wh, key).column("job_id").to_pylist() == [f"j{i:02d}" for i in range(25)]
    assert lake_row_groups(wh, key) == 7  # 25 rows in batches of 4
    assert lake_row_groups(wh, wh.partition_key("p1", DAY2.date())) == 1
    assert lake_rows(wh) == wh.jobs_table().to_pylist()

    wh.apply(run, jobs=jobs([rec("j03", "SUCCEED", created=DAY1 + timedelta(minutes=3), updated_min=9)]))
    states = dict(zip(*lake_file(wh, key).select(["job_id", "state"]).to_pydict().values(), strict=True))
    assert len(states) == 25 and states["j03"] == "SUCCEED"
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


@BOTH_LAKES
def test_lake_files_hold_statistics_for_the_columns_readers_filter_on_and_none_for_free_text(
        wh: Warehouse, run: str, monkeypatch):
    """Min/max statistics let a reader skip row groups by time, state or id; those of free text
    (failure reasons, URLs, phone numbers, suggestions, extra) skip nothing and cost a sixth of
    the encoding. Whole files and streamed ones (a burst day, in row groups) alike."""
    from pipelines.warehouse.lakestore import FREE_TEXT_COLUMNS
    from pipelines.warehouse.tables import STORED_JOBS_SCHEMA

    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 10)
    monkeypatch.setattr(lake_export, "EXPORT_BATCH_ROWS", 4)
    texts = {"job_failed_reason": "quota exceeded", "voice_authorization_url": "https://example.com/a",
             "training_input_source_url": "https://example.com/b", "undocumented": 1,
             "assess_result": {"snr": {"suggestion": "quieter room", "status": 1}, "suggestion": "record again"}}
    burst = [rec(f"j{i:02d}", created=DAY1 + timedelta(minutes=i), **texts) for i in range(12)]
    wh.apply(run, jobs=jobs([*burst, rec("b", created=DAY2, **texts)]))
    assert lake_row_groups(wh, wh.partition_key("p1", DAY1.date())) == 3
    for key in (wh.partition_key("p1", DAY1.date()), wh.partition_key("p1", DAY2.date())):
        stats = lake_statistics(wh, key)
        assert stats.keys() == set(STORED_JOBS_SCHEMA.names)
        assert {name for name, kept in stats.items() if not kept} == FREE_TEXT_COLUMNS
    file = lake_file(wh, wh.partition_key("p1", DAY2.date()))
    assert file.column("extra").to_pylist() == ['{"undocumented":1}']  # the rows hold free text
    assert file.column("assess_result_snr_suggestion").to_pylist() == ["quieter room"]
    assert {"job_failed_reason", "phone", "voice_authorization_url", "extra"} <= FREE_TEXT_COLUMNS


_READ_SERVING = "import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True).execute(sys.argv[2]).fetchone()[0])"


def test_serving_snapshot_old_readers_keep_their_snapshot(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a")]))
    assert wh.publish_serving() == wh.serving_path
    reader = duckdb.connect(str(wh.serving_path), read_only=True)
    try:
        assert reader.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (1,)
        wh.apply(run, jobs=jobs([rec("b"), rec("c")]))
        with wh.connect():
            wh.publish_serving()  # also from inside a session
        # the open reader still sees its consistent old snapshot ...
        assert reader.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (1,)
        assert reader.execute("SELECT job_id FROM voice_training_job_history").fetchall() == [("a",)]
        # ... while a new connection (a BI tool is another process) sees the new one
        query = "SELECT count(*) FROM voice_training_jobs"
        out = subprocess.run(
            [sys.executable, "-c", _READ_SERVING, str(wh.serving_path), query],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert out.stdout.strip() == "3"
    finally:
        reader.close()
    assert sorted(p.name for p in wh.data_dir.iterdir() if p.is_file()) == [
        SPARE_FILE,  # the snapshot replaced last, the next one is written into
        "serving.duckdb",
        "warehouse.duckdb",
    ]
    with duckdb.connect(str(wh.serving_path), read_only=True) as fresh:
        assert fresh.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (3,)


@pytest.mark.parametrize(("chosen", "backend"), [(None, "system"), ("jemalloc", "jemalloc")])
def test_the_lake_files_encoders_take_memory_from_malloc_unless_another_pool_is_chosen(
    chosen: str | None, backend: str
):
    """Arrow's C++ default pool, which the Parquet writer's column encoders use whatever pool
    pyarrow is given, is the C library's malloc in a process that imports pipelines before
    pyarrow (mimalloc kept the encoders' freed memory mapped), unless the person running it chose
    another with ARROW_DEFAULT_MEMORY_POOL."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    code = (
        "import pipelines\n"
        "import pyarrow as pa\n"
        "from pipelines.warehouse.lakestore import encode_parquet\n"
        "sink = pa.BufferOutputStream()\n"
        "encode_parquet(pa.table({'text': [f'job {i}' * 20 for i in range(50_000)]}), sink)\n"
        "print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory(),"
        " sink.getvalue().size > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    name, mimalloc_height, written = out.stdout.split()
    assert (name, written) == (backend, "True")
    if chosen is None:
        assert mimalloc_height == "0"


def test_an_export_stopped_by_an_error_clears_the_marks_of_the_files_it_wrote(wh: Warehouse, run: str, monkeypatch):
    """Marks are cleared once, when the export ends; an export an unexpected error stops still
    clears the marks of the files it wrote before it, and raises that error."""
    exports_from_the_table(monkeypatch)
    from pipelines.warehouse import lake as lake_module

    monkeypatch.setattr(lake_export, "EXPORT_PARTITIONS", 1)  # a group per partition
    days = [DAY1 + timedelta(days=i) for i in range(4)]
    wh.apply(run, jobs=jobs([rec(f"j{i:02d}", created=days[i % 4]) for i in range(8)]))
    wh.mark_every_partition()
    read = lake_module.Lake._dirty_rows

    def reading(con, project_id, group_days):
        if group_days[0] == days[3].date():
            raise RuntimeError("stopped")
        return read(con, project_id, group_days)

    monkeypatch.setattr(lake_module.Lake, "_dirty_rows", staticmethod(reading))
    with pytest.raises(RuntimeError, match="stopped"):
        wh.export_dirty_partitions()
    # The group read before the failing one is handed out after it (one ahead): its file is
    # never written, so days[2] keeps its mark with days[3].
    assert sql(wh, "SELECT create_day FROM lake_dirty ORDER BY 1") == [(days[2].date(),), (days[3].date(),)]
