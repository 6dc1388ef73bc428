"""One lake partition that cannot be written, through the CLI: ``voicejobs sync`` names the stuck
partition's path and its cause in one line, other projects still sync and commit, and the next
sync catches the lake up once the obstacle is gone.

The same, on the Warehouse directly and for each cause, is in tests/unit/test_partition_isolation.py.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from pipelines.cli import main
from pipelines.warehouse import Warehouse
from tests.support.simulators import PROJECTS, SIM_NOW, cli_env
from tests.support.warehouse_rows import (
    assert_exported_except,
    block_with_a_directory,
    dirty,
    table_partitions,
)

SINCE = (SIM_NOW - timedelta(days=6)).date().isoformat()
UNTIL = SIM_NOW.date().isoformat()


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
    cli_env(monkeypatch, server, data_dir, PROJECTS, VOICEJOBS_MAX_ATTEMPTS="3")
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
    cli_env(monkeypatch, server, data_dir, PROJECTS[1:], VOICEJOBS_MAX_ATTEMPTS="3")
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
