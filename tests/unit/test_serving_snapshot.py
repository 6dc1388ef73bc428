"""serving.duckdb: the same snapshot whether the warehouse file is copied whole or table by table.

A warehouse created by this release is in the serving storage format, so its snapshot is a
copy of the file (then stripped of the sync's bookkeeping); one created in a newer format
(by an earlier release) is copied table by table into that format. Both must give BI tools
the same relations and rows, in a file older DuckDB releases open, without the bookkeeping.
"""

from __future__ import annotations

import errno
import os
import random
from types import SimpleNamespace

import duckdb
import pytest

from pipelines.warehouse import SERVING_STORAGE_VERSION, SYNC_ONLY_TABLES, Warehouse, WarehouseError
from pipelines.warehouse.serving import _CHUNK as CHUNK
from pipelines.warehouse.serving import RETIRED_SUFFIX, SPARE_FILE, Serving, _copy_changes
from tests.support.serving import record_publishes
from tests.support.warehouse_rows import jobs, lock_probe, rec

RELATIONS = """SELECT table_schema, table_name FROM information_schema.tables
               WHERE table_catalog = current_database() ORDER BY 1, 2"""


def _snapshot(wh: Warehouse) -> tuple[str, list, list, list]:
    con = duckdb.connect(str(wh.serving_path), read_only=True)
    try:
        version = con.execute(
            "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()[0]
        relations = con.execute(RELATIONS).fetchall()
        rows = con.execute("SELECT job_id, state FROM main.voice_training_jobs ORDER BY 1").fetchall()
        history = con.execute("SELECT count(*) FROM main.voice_training_job_history").fetchall()
        return version, relations, rows, history
    finally:
        con.close()


def _fill(wh: Warehouse) -> None:
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=jobs([rec("a"), rec("b", "FAILED")]))
    wh.apply(run, jobs=jobs([rec("a", "SUCCEED", updated_min=3)]))
    wh.finish_run(run, "succeeded", {})


def test_a_new_warehouse_is_copied_as_a_file(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "new")
    _fill(wh)
    copied_tables = []
    monkeypatch.setattr(Serving, "_copy_tables", lambda *args: copied_tables.append(args))
    wh.publish_serving()
    assert copied_tables == []  # the file was copied, not its tables
    version, relations, rows, history = _snapshot(wh)
    assert version.startswith(SERVING_STORAGE_VERSION)
    assert rows == [("a", "SUCCEED"), ("b", "FAILED")]
    assert history == [(3,)]
    names = {name for _, name in relations}
    assert "voice_training_jobs" in names and not names & set(SYNC_ONLY_TABLES)


def test_an_older_format_warehouse_gets_the_same_snapshot_table_by_table(tmp_path, monkeypatch):
    new = Warehouse(tmp_path / "new")
    _fill(new)
    new.publish_serving()
    # A warehouse file written in DuckDB's newest format, as earlier releases created them.
    monkeypatch.setattr("pipelines.warehouse.db.STORAGE_VERSION", "latest")
    old = Warehouse(tmp_path / "old")
    _fill(old)
    with old.connect() as con:
        assert not Serving._storage_version(con).startswith(SERVING_STORAGE_VERSION)
    copied_files = []
    monkeypatch.setattr(Serving, "_copy_file", lambda *args: copied_files.append(args))
    old.publish_serving()
    assert copied_files == []
    assert _snapshot(old) == _snapshot(new)


@pytest.mark.parametrize("table", SYNC_ONLY_TABLES)
def test_the_file_copy_leaves_no_bookkeeping_table(tmp_path, table):
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()
    con = duckdb.connect(str(wh.serving_path), read_only=True)
    try:
        assert not con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0]
    finally:
        con.close()


def _data_files(wh: Warehouse) -> list[str]:
    return sorted(p.name for p in wh.data_dir.iterdir() if p.is_file())


def _jobs_in(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM voice_training_jobs").fetchone()[0]


def _add_job(wh: Warehouse, job_id: str) -> None:
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=jobs([rec(job_id)]))
    wh.finish_run(run, "succeeded", {})


def test_the_replaced_snapshot_is_kept_as_the_spare_and_never_written_while_a_reader_has_it(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()  # the first snapshot: none replaced, no spare
    assert _data_files(wh) == ["serving.duckdb", "warehouse.duckdb"]
    reader = duckdb.connect(str(wh.serving_path), read_only=True)  # holds the first snapshot
    try:
        _add_job(wh, "c")
        wh.publish_serving()  # the first snapshot becomes the spare, the reader keeps reading it
        assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]
        _add_job(wh, "d")
        with wh.connect():
            wh.publish_serving()  # the spare is the reader's: not written, its name dropped
        assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]
        assert _jobs_in(reader) == 2
        assert reader.execute("SELECT count(*) FROM voice_training_job_history").fetchone() == (3,)
    finally:
        reader.close()
    _add_job(wh, "e")
    wh.publish_serving()  # the spare, free now, is written into
    assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]
    assert _tables(wh.serving_path) == _tables(wh.db_path)
    with duckdb.connect(str(wh.serving_path), read_only=True) as con:
        assert _jobs_in(con) == 5


def test_a_replaced_snapshot_left_by_a_crash_goes_at_the_next_publish(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()
    left = wh.data_dir / f".serving-{'0' * 32}{RETIRED_SUFFIX}"
    left.write_bytes(wh.serving_path.read_bytes())
    wh.publish_serving()
    assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]
    assert _snapshot(wh)[2] == [("a", "SUCCEED"), ("b", "FAILED")]


@pytest.mark.parametrize("change", ["none", "one byte", "chunks apart", "grown", "shrunk", "empty copy"])
def test_copy_changes_makes_the_copy_equal_writing_only_the_chunks_that_differ(tmp_path, change):
    rng = random.Random(7)
    source, copy = tmp_path / "source", tmp_path / "copy"
    original = rng.randbytes(3 * CHUNK + 1234)
    copy.write_bytes(b"" if change == "empty copy" else original)
    data = bytearray(original)
    expected_written = {"none": 0, "one byte": CHUNK, "chunks apart": 2 * CHUNK}.get(change)
    if change == "one byte":
        data[CHUNK + 5] ^= 0xFF
    elif change == "chunks apart":
        data[10] ^= 1
        data[2 * CHUNK + 7] ^= 1
    elif change == "grown":
        data += rng.randbytes(CHUNK // 2)
    elif change == "shrunk":
        del data[CHUNK + 100:]
    source.write_bytes(bytes(data))
    fd = os.open(source, os.O_RDONLY)
    try:
        written = _copy_changes(fd, copy)
    finally:
        os.close(fd)
    assert copy.read_bytes() == bytes(data)
    if expected_written is not None:
        assert written == expected_written


def _tables(path) -> list:
    """Every relation but the sync's bookkeeping, with its rows."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [(s, t, con.execute(f'SELECT * FROM "{s}"."{t}" ORDER BY ALL').fetchall())
                for s, t in con.execute(RELATIONS).fetchall() if t not in SYNC_ONLY_TABLES]
    finally:
        con.close()


@pytest.mark.parametrize("spare", ["kept", "deleted", "garbage"])
def test_a_snapshot_written_into_the_spare_is_the_warehouse_whatever_the_spare_held(tmp_path, spare):
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()
    _add_job(wh, "c")
    wh.publish_serving()  # the first snapshot is the spare now
    if spare == "deleted":  # the warehouse file is copied whole
        (wh.data_dir / SPARE_FILE).unlink()
    elif spare == "garbage":  # whatever it holds, only its bytes that differ are written
        (wh.data_dir / SPARE_FILE).write_bytes(random.Random(3).randbytes(3 * CHUNK + 17))
    _add_job(wh, "d")
    _add_job(wh, "e")
    wh.publish_serving()
    assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]
    assert _tables(wh.serving_path) == _tables(wh.db_path)
    with duckdb.connect(str(wh.serving_path), read_only=True) as con:
        assert _jobs_in(con) == 5
        assert con.execute("SELECT count(*) FROM sync_runs").fetchone() == (4,)


def test_a_snapshot_that_cannot_be_written_leaves_the_previous_one_and_no_copy(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()
    _add_job(wh, "c")
    wh.publish_serving()
    before = wh.serving_path.read_bytes()

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    _add_job(wh, "d")
    for copy in ("_copy_changes", "_copy_whole"):  # into the spare, then with none left
        monkeypatch.setattr(f"pipelines.warehouse.serving.{copy}", full_disk)
        with pytest.raises(WarehouseError, match="free space"):
            wh.publish_serving()
        assert wh.serving_path.read_bytes() == before
        assert _data_files(wh) == ["serving.duckdb", "warehouse.duckdb"]
    monkeypatch.undo()
    wh.publish_serving()
    assert _tables(wh.serving_path) == _tables(wh.db_path)


def test_the_warehouse_stays_locked_against_other_processes_through_a_snapshot(tmp_path):
    """A process's fcntl locks on a file go when it closes any descriptor of that file, DuckDB's
    lock on warehouse.duckdb too: copying the file by its path for the snapshot, from inside
    the block that holds it, let another process open the warehouse for the rest of the run."""
    wh = Warehouse(tmp_path / "wh")
    _fill(wh)
    wh.publish_serving()
    _add_job(wh, "c")
    with wh.connect():
        assert lock_probe(wh.db_path) == "locked"
        _add_job(wh, "d")
        wh.publish_serving()  # into the spare
        assert lock_probe(wh.db_path) == "locked"
        _add_job(wh, "e")
        (wh.data_dir / SPARE_FILE).unlink()
        wh.publish_serving()  # the whole file copied
        assert lock_probe(wh.db_path) == "locked"
    assert lock_probe(wh.db_path) == "opened"


def _published_with_a_spare_ahead(wh: Warehouse, monkeypatch) -> list[str]:
    """publish_serving() inside spare_made_ahead(), on a warehouse with a snapshot and no spare:
    how the publish copied the warehouse."""
    publishes = record_publishes(monkeypatch)
    with wh.spare_made_ahead():
        wh.apply(wh.begin_run("days", {}), jobs=jobs([rec("c")]))
        wh.publish_serving()
    return publishes


def test_a_spare_made_ahead_is_the_snapshot_and_the_publish_writes_into_it(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "w")
    _fill(wh)
    wh.publish_serving()
    assert _published_with_a_spare_ahead(wh, monkeypatch) == ["into the spare"]
    assert [job for job, _ in _snapshot(wh)[2]] == ["a", "b", "c"]
    assert _data_files(wh) == [SPARE_FILE, "serving.duckdb", "warehouse.duckdb"]


def test_no_spare_is_made_ahead_where_the_disk_would_keep_no_room_for_the_warehouse(tmp_path, monkeypatch, caplog):
    from pipelines.warehouse import serving

    wh = Warehouse(tmp_path / "w")
    _fill(wh)
    wh.publish_serving()
    snapshot = wh.serving_path.stat().st_size
    room = snapshot + wh.db_path.stat().st_size - 1  # one byte short
    monkeypatch.setattr(serving.shutil, "disk_usage", lambda path: SimpleNamespace(total=10 * room, used=9 * room, free=room))
    with caplog.at_level("INFO", logger="voicejobs.warehouse"):
        assert _published_with_a_spare_ahead(wh, monkeypatch) == ["whole"]
    assert "No spare serving snapshot made ahead" in caplog.text
    assert [job for job, _ in _snapshot(wh)[2]] == ["a", "b", "c"]


def test_a_spare_that_cannot_be_made_ahead_leaves_nothing_and_the_publish_copies_whole(tmp_path, monkeypatch):
    from pipelines.warehouse import serving

    wh = Warehouse(tmp_path / "w")
    _fill(wh)
    wh.publish_serving()
    copy_whole = serving._copy_whole

    def full_disk(source, copy, **ahead):
        if ahead:
            copy.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy_whole(source, copy)

    monkeypatch.setattr(serving, "_copy_whole", full_disk)
    wh.apply(wh.begin_run("days", {}), jobs=jobs([rec("c")]))
    with wh.spare_made_ahead():
        wh.publish_serving()
    assert [job for job, _ in _snapshot(wh)[2]] == ["a", "b", "c"]
    assert not list(wh.data_dir.glob(".serving-*.tmp*"))


def test_a_block_that_ends_before_its_publish_stops_the_spare_and_leaves_no_part_of_it(tmp_path, monkeypatch):
    from pipelines.warehouse import serving

    wh = Warehouse(tmp_path / "w")
    _fill(wh)
    wh.publish_serving()
    monkeypatch.setattr(serving, "_AHEAD_PIECE", 4096)  # many pieces: the stop lands between two
    copy_whole = serving._copy_whole

    def after_the_stop(source, copy, *, flush_every, stop):
        stop.wait()  # the block has ended: copying starts only now
        return copy_whole(source, copy, flush_every=flush_every, stop=stop)

    monkeypatch.setattr(serving, "_copy_whole", after_the_stop)
    with pytest.raises(RuntimeError, match="the sync failed"), wh.spare_made_ahead():
        raise RuntimeError("the sync failed")
    assert _data_files(wh) == ["serving.duckdb", "warehouse.duckdb"]
