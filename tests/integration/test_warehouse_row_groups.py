"""How the jobs table's row groups grow: new rows after a checkpoint start a row group of their
own, and the groups written before stay as they were (DuckDB's merge of partly filled groups,
its "vacuum", runs only on every COMPACT_EVERY_RUNS-th sync run, see pipelines.warehouse.db).

Small batches show it: every checkpoint seals the rows appended since the last one into a row
group, whatever their number, exactly as a backfill's checkpoints seal groups of a million."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import pipelines.warehouse.runlog as runlog
from pipelines.warehouse import JOBS_TABLE, Warehouse
from tests.support.warehouse_rows import jobs, rec


def _row_groups(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int]]:
    """(row group, rows) of the jobs table, in order."""
    return con.execute(
        f"SELECT row_group_id, max(count) FROM pragma_storage_info('{JOBS_TABLE}')"
        " WHERE column_name = 'job_id' GROUP BY 1 ORDER BY 1").fetchall()


def _append_and_checkpoint(wh: Warehouse, con: duckdb.DuckDBPyConnection, run_id: str, batch: int) -> None:
    wh.apply(run_id, jobs=jobs([rec(f"j{batch}-{i}") for i in range(50)]), export=False)
    con.execute("CHECKPOINT")


def _run_adding_groups(wh: Warehouse, con: duckdb.DuckDBPyConnection, batches: range) -> str:
    """Begin a run and append a batch of 50 jobs per number in ``batches``, each checkpointed."""
    run_id = wh.begin_run("days", {})
    for batch in batches:
        _append_and_checkpoint(wh, con, run_id, batch)
    return run_id


def test_a_checkpoint_after_new_rows_leaves_the_row_groups_before_as_they_are(tmp_path: Path):
    # DuckDB would merge the four partly filled groups with the new one: at a million jobs that
    # rewrote 250,000 rows (3.9 s) in the first change capture after a backfill.
    wh = Warehouse(tmp_path)
    with wh.connect() as con:
        run_id = _run_adding_groups(wh, con, range(4))
        before = _row_groups(con)
        assert before == [(0, 50), (1, 50), (2, 50), (3, 50)]
        _append_and_checkpoint(wh, con, run_id, 4)
        assert _row_groups(con) == [*before, (4, 50)]
        assert con.execute(f"SELECT count(*) FROM {JOBS_TABLE}").fetchone()[0] == 250


def test_every_nth_run_merges_the_partly_filled_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runlog, "COMPACT_EVERY_RUNS", 3)
    wh = Warehouse(tmp_path)
    for run in range(1, 4):
        with wh.connect() as con:
            run_id = _run_adding_groups(wh, con, range(run, run + 1))
            wh.finish_run(run_id, "succeeded", {})
            groups = _row_groups(con)
        if run < 3:
            assert groups == [(i, 50) for i in range(run)], f"run {run} merged row groups"
    # The third run's checkpoint merged its new rows and the two groups before into one.
    assert groups == [(0, 150)]
    with wh.connect() as con:
        # ... and the next run leaves them alone again.
        _run_adding_groups(wh, con, range(4, 5))
        assert _row_groups(con) == [(0, 150), (1, 50)]


def test_the_serving_snapshot_keeps_the_row_groups_as_they_are(tmp_path: Path):
    # Copied and stripped of the sync's bookkeeping, the snapshot is checkpointed once more: a
    # merge there rewrote the million-job table's tail again (4.2 s, 514 MB).
    wh = Warehouse(tmp_path)
    with wh.connect() as con:
        run_id = _run_adding_groups(wh, con, range(3))
        wh.apply(run_id, jobs=jobs([rec(f"j9-{i}") for i in range(50)]), export=False)
        wh.finish_run(run_id, "succeeded", {})
        wh.publish_serving()
        groups = _row_groups(con)
    assert len(groups) == 4
    with duckdb.connect(str(wh.serving_path), read_only=True) as serving:
        assert _row_groups(serving) == groups
