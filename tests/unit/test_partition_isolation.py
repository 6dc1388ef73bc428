"""One lake partition that cannot be written does not hold up the rest of the data directory.

Every other partition is exported, the stuck one keeps its dirty mark (and its old file),
the warehouse keeps the committed data, and the error names the stuck partition's path and
its real cause. Tests run as root in CI, where permissions stop nothing: a directory where
the partition's file belongs (os.replace fails with EISDIR) and a partition directory name
longer than the file system allows (ENAMETOOLONG) fail for root too; other causes are
injected for one path only.
"""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.schema import normalize
from pipelines.warehouse import STORED_JOBS_SCHEMA, LakeExportError, Warehouse, WarehouseError
from tests.support.simulators import PROJECTS, SIM_NOW

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


def dirty(wh: Warehouse) -> list[tuple[str, date]]:
    with wh.connect() as con:
        return con.execute("SELECT project_id, create_day FROM lake_dirty ORDER BY 1, 2").fetchall()


def table_partitions(wh: Warehouse) -> dict[tuple[str, date], list[dict]]:
    """The jobs table cut into lake partitions: (project_id, UTC creation day) -> rows by job_id."""
    parts: dict[tuple[str, date], list[dict]] = {}
    for row in wh.jobs_table().to_pylist():
        parts.setdefault((row["project_id"], row["create_time"].astimezone(UTC).date()), []).append(row)
    return {key: sorted(rows, key=lambda r: r["job_id"]) for key, rows in parts.items()}


def assert_exported_except(wh: Warehouse, stuck: set[tuple[str, date]]) -> None:
    """Every partition but ``stuck`` has a file holding exactly its table rows."""
    parts = table_partitions(wh)
    assert stuck <= parts.keys()
    for key, rows in parts.items():
        if key in stuck:
            continue
        path = wh.partition_path(*key)
        assert path.is_file(), f"{key} was not exported"
        assert pq.read_table(path).cast(STORED_JOBS_SCHEMA).to_pylist() == rows, f"{key} differs from the table"


def block_with_a_directory(path: Path) -> None:
    """Put a directory where the partition's file belongs: replacing it fails with EISDIR, root or not."""
    if path.exists():
        path.unlink()
    path.mkdir(parents=True)
    (path / "in-the-way").write_text("x")


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


# ---------------------------------------------------------------- through the CLI

SINCE = (SIM_NOW - timedelta(days=6)).date().isoformat()
UNTIL = SIM_NOW.date().isoformat()


def _cli_env(monkeypatch, server, data_dir: Path, projects) -> None:
    for key in list(os.environ):
        if key.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_")):
            monkeypatch.delenv(key)
    ak, sk = next(iter(server.state.config.credentials.items()))
    for key, value in dict(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
                           HUAWEICLOUD_SDK_PROJECT_ID=",".join(projects), VOICEJOBS_DATA_DIR=str(data_dir),
                           VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", VOICEJOBS_MAX_ATTEMPTS="3").items():
        monkeypatch.setenv(key, value)


def _sync(capsys) -> tuple[int, list[str]]:
    code = main(["sync", "--since", SINCE, "--until", UNTIL])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, [line for line in err.splitlines() if line.strip()]


def _last_run(data_dir: Path) -> tuple[str, str]:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT run_id, status FROM sync_runs ORDER BY started_at DESC LIMIT 1").fetchone()


def test_cli_names_the_stuck_partition_and_syncs_other_projects(tmp_path, monkeypatch, capsys, make_simulator):
    data_dir = tmp_path / "data"
    server = make_simulator(jobs=200, seed=5, days=6, projects=PROJECTS, now=SIM_NOW)
    _cli_env(monkeypatch, server, data_dir, PROJECTS)
    code, lines = _sync(capsys)
    assert code == 0, lines
    wh = Warehouse(data_dir)
    stuck = min(k for k in table_partitions(wh) if k[0] == PROJECTS[0])
    path = wh.partition_path(*stuck)
    block_with_a_directory(path)

    # The project owning the partition: its data commits, the run fails naming the partition.
    code, lines = _sync(capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("voicejobs sync: ")
    assert str(path) in lines[0] and "Is a directory" in lines[0]
    assert "free space" not in lines[0]
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})

    # Another project: synced, committed and exported; the run still fails naming the stuck partition.
    _cli_env(monkeypatch, server, data_dir, PROJECTS[1:])
    code, lines = _sync(capsys)
    assert code == 1
    assert len(lines) == 1 and str(path) in lines[0] and "free space" not in lines[0]
    run_id, status = _last_run(data_dir)
    assert status == "failed"
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        windows = con.execute("SELECT DISTINCT project_id FROM sync_windows WHERE run_id = ?", [run_id]).fetchall()
    assert windows == [(PROJECTS[1],)]  # the run's data was committed
    assert dirty(wh) == [stuck]
    assert_exported_except(wh, {stuck})

    # The obstacle gone, the next sync (of either project) catches the lake up.
    shutil.rmtree(path)
    code, lines = _sync(capsys)
    assert code == 0, lines
    assert dirty(wh) == []
    assert_exported_except(wh, set())
    assert _last_run(data_dir)[1] == "succeeded"
    lake_rows = sum(pq.read_table(p).num_rows for p in wh.lake_dir.rglob("*.parquet"))
    assert lake_rows == wh.jobs_table().num_rows
