"""One lake partition that cannot be written does not hold up the rest of the data directory.

Every other partition is exported, the stuck one keeps its dirty mark (and its old file),
the warehouse keeps the committed data, and the error names the stuck partition's path and
its real cause. Tests run as root in CI, where permissions stop nothing: a directory where
the partition's file belongs (os.replace fails with EISDIR) and a partition directory name
longer than the file system allows (ENAMETOOLONG) fail for root too; other causes are
injected for one path only. The same through ``voicejobs sync`` against the simulator is in
tests/integration/test_partition_isolation_cli.py.
"""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.ingest import normalize
from pipelines.warehouse import LakeExportError, Warehouse, WarehouseError, lake_export
from tests.support.warehouse_rows import (
    assert_exported_except,
    block_with_a_directory,
    dirty,
    exports_from_the_table,
)

DAY1 = datetime(2025, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
SYNC1 = datetime(2025, 3, 5, 10, tzinfo=UTC)


def rec(job_id: str, state: str = "CREATING", *, created: datetime = DAY1, updated_min: int = 0) -> dict:
    return {"job_id": job_id, "state": state, "create_time": int(created.timestamp()),
            "lastupdate_time": int((created + timedelta(minutes=updated_min)).timestamp() * 1000)}


def jobs(by_project: dict[str, list[dict]]) -> pa.Table:
    tables = []
    for project_id, records in by_project.items():
        out = normalize(records, project_id, SYNC1)
        assert not out.quarantine
        tables.append(out.table)
    return pa.concat_tables(tables)


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "data")


def first_batch(wh: Warehouse, run: str) -> None:
    wh.apply(run, jobs=jobs({"p1": [rec("a"), rec("b", created=DAY2)], "p2": [rec("x"), rec("y", created=DAY2)]}))
    assert dirty(wh) == []
    assert_exported_except(wh, set())


def test_a_blocked_partition_does_not_stop_the_others(wh: Warehouse):
    run = wh.begin_run("days", {})
    first_batch(wh, run)
    stuck = ("p1", DAY1.date())
    path = wh.partition_path(*stuck)
    block_with_a_directory(path)

    # A batch touching the stuck partition and three others commits and exports the others.
    stats = wh.apply(run, jobs=jobs({"p1": [rec("a", "SUCCEED", updated_min=3), rec("b", "SUCCEED", created=DAY2,
                                                                                         updated_min=3)],
                                     "p2": [rec("x", "FAILED", updated_min=3),
                                            rec("y", "FAILED", created=DAY2, updated_min=3)]}))
    assert stats.partitions_failed == 1
    assert {r["job_id"]: r["state"] for r in wh.jobs_table().to_pylist()} == {
        "a": "SUCCEED", "b": "SUCCEED", "x": "FAILED", "y": "FAILED"}
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})

    # Exporting names the partition and the real cause, not a full disk.
    with pytest.raises(LakeExportError) as err:
        wh.export_dirty_partitions()
    message = str(err.value)
    assert str(path) in message
    assert "Is a directory" in message
    assert "free space" not in message
    assert "\n" not in message
    assert err.value.failures[0][0] == path

    # A later batch of another project only: exported, the stuck one still marked.
    wh.apply(run, jobs=jobs({"p2": [rec("z", created=DAY2)]}))
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})

    # Once the obstacle is gone, the next export catches up.
    shutil.rmtree(path)
    assert wh.export_dirty_partitions() == 1
    assert dirty(wh) == []
    assert_exported_except(wh, set())


def test_a_streamed_burst_day_that_cannot_be_written_keeps_its_mark_and_the_others_go_on(
    wh: Warehouse, monkeypatch
):
    """A partition bigger than one read is written in pieces (see Lake._write_streamed); when
    its file cannot be replaced, it fails like any other partition: marked, named, and written
    by the next export once the obstacle is gone."""
    from pipelines.warehouse import lake as lake_module

    exports_from_the_table(monkeypatch)  # a run's spool writes its burst days otherwise: test_lake_spool.py
    monkeypatch.setattr(lake_export, "EXPORT_ROWS", 5)
    streamed: list[tuple[str, object]] = []
    stream = lake_module.Lake._write_streamed

    def spying(self, key):
        streamed.append(key)
        return stream(self, key)

    monkeypatch.setattr(lake_module.Lake, "_write_streamed", spying)
    run = wh.begin_run("days", {})
    first_batch(wh, run)
    stuck = ("p1", DAY1.date())
    path = wh.partition_path(*stuck)
    block_with_a_directory(path)

    burst = [rec(f"j{i:02d}", created=DAY1 + timedelta(minutes=i)) for i in range(12)]
    stats = wh.apply(run, jobs=jobs({"p1": burst, "p2": [rec("z", created=DAY2)]}))
    assert stats.partitions_failed == 1
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})
    assert streamed == [stuck]
    with pytest.raises(LakeExportError) as err:
        wh.export_dirty_partitions()
    assert str(path) in str(err.value) and "Is a directory" in str(err.value)

    shutil.rmtree(path)
    assert wh.export_dirty_partitions() == 1
    assert dirty(wh) == []
    assert_exported_except(wh, set())
    assert streamed == [stuck, stuck, stuck]


def test_finish_run_records_a_stuck_partition_as_a_failed_run(wh: Warehouse):
    run = wh.begin_run("days", {})
    first_batch(wh, run)
    stuck = ("p2", DAY2.date())
    path = wh.partition_path(*stuck)
    block_with_a_directory(path)
    wh.apply(run, jobs=jobs({"p1": [rec("c")], "p2": [rec("w", created=DAY2)]}))
    with pytest.raises(LakeExportError) as err:
        wh.finish_run(run, "succeeded", {"rows_written": 2})
    assert str(path) in str(err.value)
    with wh.connect() as con:
        status, stats = con.execute("SELECT status, stats FROM sync_runs WHERE run_id = ?", [run]).fetchone()
    assert status == "failed"
    assert str(path) in stats
    assert {r["job_id"] for r in wh.jobs_table().to_pylist()} == {"a", "b", "c", "w", "x", "y"}
    assert_exported_except(wh, {stuck})


@pytest.mark.parametrize(
    "code, phrase",
    [
        (errno.EACCES, "fix the permissions"),
        (errno.EROFS, "fix the permissions"),
        (errno.ENOSPC, "free space"),
        (errno.EDQUOT, "free space"),
        (errno.ENAMETOOLONG, "the name is too long"),
        (errno.EIO, os.strerror(errno.EIO)),
    ],
)
def test_the_message_names_the_real_cause(wh: Warehouse, monkeypatch, code, phrase):
    run = wh.begin_run("days", {})
    first_batch(wh, run)
    stuck = ("p2", DAY1.date())
    path = wh.partition_path(*stuck)
    replace = os.replace

    def failing_for_one_path(src, dst, *args, **kwargs):
        if Path(dst) == path:
            raise OSError(code, os.strerror(code), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr("pipelines.warehouse.os.replace", failing_for_one_path)
    wh.apply(run, jobs=jobs({"p1": [rec("a", "SUCCEED", updated_min=3)], "p2": [rec("x", "SUCCEED", updated_min=3)]}))
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})
    with pytest.raises(LakeExportError) as err:
        wh.export_dirty_partitions()
    message = str(err.value)
    assert str(path) in message and phrase in message
    if code not in (errno.ENOSPC, errno.EDQUOT):
        assert "free space" not in message
    # the old file stayed whole, and no temporary file was left
    assert pq.read_table(path).num_rows == 1
    assert [p.name for p in path.parent.iterdir()] == ["data.parquet"]


def test_a_name_too_long_for_the_file_system_stops_only_its_partition(wh: Warehouse):
    """A real ENAMETOOLONG: project ids reach the warehouse unchecked when it is used directly."""
    run = wh.begin_run("days", {})
    long_id = "p" * 300
    wh.apply(run, jobs=jobs({"p1": [rec("a")], long_id: [rec("l")], "p2": [rec("x", created=DAY2)]}))
    stuck = (long_id, DAY1.date())
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})
    with pytest.raises(LakeExportError) as err:
        wh.rebuild_lake()
    assert "the name is too long" in str(err.value)
    assert "free space" not in str(err.value)
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})


def test_lake_export_error_is_a_warehouse_error():
    assert issubclass(LakeExportError, WarehouseError)


# In a process of its own: files may not grow past 64 KiB there (SIGXFSZ ignored, so a write past
# the limit fails with EFBIG, as a full disk fails with ENOSPC). One small partition fits, one
# big one does not; the store's answer for each is printed as JSON.
_LAKE_ON_A_FULL_DISK = """
import json, os, resource, signal, sys
from pathlib import Path
import pyarrow as pa
from pipelines.warehouse.lakestore import LocalLakeStore
from pipelines.warehouse.tables import STORED_JOBS_SCHEMA
root = Path(sys.argv[1])
store = LocalLakeStore(root, home=root, home_var="VOICEJOBS_DATA_DIR")
def rows(n):  # every column empty but job_id, random so that it does not compress
    ids = pa.array([os.urandom(16).hex() for _ in range(n)])
    return pa.table({f.name: ids if f.name == "job_id" else pa.nulls(n, f.type) for f in STORED_JOBS_SCHEMA})
small, big = rows(1), rows(5_000)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = store.write_all([("a/data.parquet", small), ("b/data.parquet", big)])
print(json.dumps([None if e is None else {"errno": e.errno, "fix": store.fix(e, store.location("b/data.parquet"))}
                  for e in errors]))
"""


def test_a_lake_file_the_disk_cannot_hold_fails_with_its_cause_and_leaves_no_temporary_file(tmp_path: Path):
    import json
    import subprocess
    import sys

    root = tmp_path / "lake"
    result = subprocess.run([sys.executable, "-c", _LAKE_ON_A_FULL_DISK, str(root)], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    small, big = json.loads(result.stdout)
    assert small is None
    # the encoder's failed write keeps its errno, so the message can say what to do
    assert big["errno"] == errno.EFBIG and big["fix"].startswith("free space")
    assert pq.read_table(root / "a" / "data.parquet").num_rows == 1
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["data.parquet"]
