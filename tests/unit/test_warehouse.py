"""Warehouse: upserts, SCD2 history, deletions, watermarks, atomicity, a lake write that fails.

The lake's partitions (local and on an S3 server) and the serving snapshot seen by a reader in
another process are in tests/integration/test_warehouse_lake.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from pipelines.ingest import JOBS_SCHEMA, normalize
from pipelines.warehouse import STORED_JOBS_SCHEMA, WAREHOUSE_VERSION, Warehouse, WarehouseError, WindowRecord
from pipelines.warehouse.deletions import ReconciledRange
from pipelines.warehouse.tables import key_hash_expr
from tests.support.warehouse_rows import (
    DAY1,
    DAY2,
    SYNC1,
    SYNC2,
    jobs,
    lake_rows,
    live_job_ids,
    rec,
    sql,
    states,
)


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "data")


@pytest.fixture
def run(wh: Warehouse) -> str:
    return wh.begin_run("days", {"since": "2025-03-01"})


def test_layout_and_schema_are_created_idempotently(tmp_path: Path):
    wh = Warehouse(tmp_path / "d")
    assert wh.db_path == tmp_path / "d" / "warehouse.duckdb"
    assert wh.lake_dir == tmp_path / "d" / "lake" / "voice_training_jobs"
    assert wh.serving_path == tmp_path / "d" / "serving.duckdb"
    assert wh.lake_dir.is_dir()
    assert wh.jobs_table().schema.equals(STORED_JOBS_SCHEMA)
    again = Warehouse(tmp_path / "d")
    assert again.jobs_table().num_rows == 0
    assert sql(again, "SELECT version FROM schema_migrations ORDER BY 1") == [
        (v,) for v in range(1, WAREHOUSE_VERSION + 1)
    ]
    tables = {
        r[0] for r in sql(again, "SELECT table_name FROM information_schema.tables WHERE table_schema='main'")
    }
    assert {
        "voice_training_jobs", "voice_training_job_history", "voice_training_job_transitions", "sync_windows",
        "sync_runs", "sync_state", "quarantine", "lake_dirty", "schema_migrations",
    } <= tables  # fmt: skip
    cols = sql(
        again,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='voice_training_jobs'",
    )
    # the contract's columns, the deletion mark, then the bookkeeping of the current version
    assert [c for c, _ in cols] == [*JOBS_SCHEMA.names, "deleted_at", "valid_from", "observed_at", "row_hash"]
    assert dict(cols)["create_time"] == "TIMESTAMP WITH TIME ZONE"
    # no open connection outside a call: another reader can open the file read-only
    with duckdb.connect(str(again.db_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (0,)


def test_a_newer_schema_is_refused(tmp_path: Path):
    wh = Warehouse(tmp_path)
    sql(wh, "INSERT INTO schema_migrations VALUES (?, now(), 'future')", [WAREHOUSE_VERSION + 1])
    with pytest.raises(WarehouseError, match="newer than this program"):
        Warehouse(tmp_path).jobs_table()


def test_unwritable_data_dir_raises_a_warehouse_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(WarehouseError) as err:
        Warehouse(blocker / "data")
    assert str(blocker / "data") in str(err.value) and "writable directory" in str(err.value)


def test_upsert_newest_lastupdate_wins(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a", "WAITING", updated_min=10), rec("b", "WAITING", updated_min=10),
                             rec("c", "WAITING", updated_min=None), rec("d", "WAITING", updated_min=10)]))  # fmt: skip
    stats = wh.apply(
        run,
        jobs=jobs(
            [
                rec("a", "OLDER", updated_min=5),  # older: ignored
                rec("b", "SAME_TIME", updated_min=10),  # equal time: replaces
                rec("c", "DATED", updated_min=1),  # stored NULL is oldest
                rec("d", "NULL_TIME", updated_min=None),  # incoming NULL is oldest
                rec("e", "NEW"),
            ],
            synced_at=SYNC2,
        ),
    )
    assert states(wh) == {"a": "WAITING", "b": "SAME_TIME", "c": "DATED", "d": "WAITING", "e": "NEW"}
    assert (stats.inserted, stats.updated, stats.stale) == (1, 2, 2)
    synced = {r["job_id"]: r["synced_at"] for r in wh.jobs_table().to_pylist()}
    assert synced["a"] == SYNC1 and synced["b"] == SYNC2
    # duplicates inside one batch: the newest wins, then the later row
    wh.apply(
        run,
        jobs=pa.concat_tables([jobs([rec("e", "X", updated_min=50)]), jobs([rec("e", "Y", updated_min=40)])]),
    )
    assert states(wh)["e"] == "X"


def test_reapplying_the_same_batch_changes_nothing(wh: Warehouse, run: str):
    batch = jobs(
        [rec("a", "WAITING"), rec("b", "SUCCEED", created=DAY2, updated_min=3), rec("c", updated_min=None)]
    )
    first = wh.apply(run, jobs=batch)
    assert first.history_versions == 3
    before = wh.jobs_table()
    history_before = sql(wh, "SELECT * FROM voice_training_job_history ORDER BY job_id")
    second = wh.apply(run, jobs=batch)
    assert second.history_versions == 0 and second.inserted == 0
    assert wh.jobs_table().equals(before)
    assert sql(wh, "SELECT * FROM voice_training_job_history ORDER BY job_id") == history_before
    # a later sync of the same content moves synced_at only: still no history version
    third = wh.apply(run, jobs=jobs([rec("a", "WAITING")], synced_at=SYNC2))
    assert third.history_versions == 0
    assert sql(wh, "SELECT count(*) FROM voice_training_job_history") == [(3,)]


def test_hashes_of_another_algorithm_are_redone_without_new_versions(tmp_path: Path):
    """A warehouse hashed by another algorithm (md5 before, or another DuckDB release) is
    re-hashed when opened, so the next sync of unchanged jobs adds no history version."""
    wh = Warehouse(tmp_path / "d")
    run = wh.begin_run("days", {})
    batch = jobs([rec("a", "WAITING"), rec("b", "CREATING", updated_min=5)])
    wh.apply(run, jobs=batch)
    sql(wh, "UPDATE voice_training_jobs SET row_hash = md5(job_id)")
    sql(wh, "UPDATE warehouse_meta SET value = 'md5-json' WHERE key = 'row_hash'")

    reopened = Warehouse(tmp_path / "d")
    assert sql(reopened, "SELECT value FROM warehouse_meta WHERE key = 'row_hash'") == [
        (f"duckdb-hash/{duckdb.__version__}",)
    ]
    again = reopened.apply(run, jobs=jobs([rec("a", "WAITING"), rec("b", "CREATING", updated_min=5)],
                                          synced_at=SYNC2))
    assert again.history_versions == 0
    changed = reopened.apply(run, jobs=jobs([rec("a", "PROCESSING", updated_min=9)], synced_at=SYNC2))
    assert changed.history_versions == 1
    assert sql(reopened, "SELECT count(*) FROM voice_training_job_history") == [(3,)]


def test_history_versions_and_transitions(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a", "CREATING", updated_min=0)]))
    wh.apply(run, jobs=jobs([rec("a", "PROCESSING", updated_min=30)], synced_at=SYNC2))
    wh.apply(run, jobs=jobs([rec("a", "PROCESSING", updated_min=45, voice_name="renamed")], synced_at=SYNC2))
    wh.apply(run, jobs=jobs([rec("a", "SUCCEED", updated_min=90)], synced_at=SYNC2 + timedelta(hours=1)))
    # an older version arriving late is not history's current version
    late = wh.apply(
        run, jobs=jobs([rec("a", "WAITING", updated_min=20)], synced_at=SYNC2 + timedelta(hours=2))
    )
    assert late.history_versions == 0 and late.stale == 1
    versions = sql(
        wh,
        "SELECT state, voice_name, valid_from, valid_to, observed_at FROM voice_training_job_history ORDER BY valid_from",
    )
    t = [DAY1 + timedelta(minutes=m) for m in (0, 30, 45, 90)]
    assert versions == [
        ("CREATING", None, t[0], t[1], SYNC1),
        ("PROCESSING", None, t[1], t[2], SYNC2),
        ("PROCESSING", "renamed", t[2], t[3], SYNC2),
        ("SUCCEED", None, t[3], None, SYNC2 + timedelta(hours=1)),
    ]
    transitions = sql(
        wh,
        "SELECT job_id, from_state, to_state, changed_at FROM voice_training_job_transitions ORDER BY changed_at",
    )
    assert transitions == [
        ("a", None, "CREATING", t[0]),
        ("a", "CREATING", "PROCESSING", t[1]),
        ("a", "PROCESSING", "SUCCEED", t[3]),
    ]
    hashes = sql(wh, "SELECT count(DISTINCT row_hash), count(*) FROM voice_training_job_history")
    assert hashes == [(4, 4)]


def test_history_without_lastupdate_time_falls_back(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("n", "CREATING", updated_min=None)]))
    wh.apply(run, jobs=jobs([rec("n", "WAITING", updated_min=None)], synced_at=SYNC2))
    assert sql(
        wh, "SELECT state, valid_from, valid_to FROM voice_training_job_history ORDER BY valid_from"
    ) == [
        ("CREATING", DAY1, SYNC2),
        ("WAITING", SYNC2, None),
    ]


def test_deletions_are_marked_and_history_is_kept(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a"), rec("b"), rec("c")]))
    gone = datetime(2025, 3, 6, tzinfo=UTC)
    stats = wh.apply(
        run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "a"), ("p1", "zz")], deleted_at=gone
    )
    assert stats.deleted == 1
    # marking again keeps the first deletion time
    again = wh.apply(
        run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "a")], deleted_at=gone + timedelta(days=1)
    )
    assert again.deleted == 0
    rows = {r["job_id"]: r["deleted_at"] for r in wh.jobs_table().to_pylist()}
    assert rows == {"a": gone, "b": None, "c": None}
    assert {r["job_id"] for r in wh.jobs_table(include_deleted=False).to_pylist()} == {"b", "c"}
    assert live_job_ids(wh, "p1", DAY1, DAY2) == {"b", "c"}
    assert sql(
        wh, "SELECT job_id, valid_to, deleted_at FROM voice_training_job_history WHERE job_id = 'a'"
    ) == [("a", None, gone)]


def test_ranges_listed_completely_mark_exactly_the_stored_jobs_they_lacked(wh: Warehouse, run: str):
    """Reconciled ranges are half-open, may start and end inside days and span several: every
    live stored job inside one that its listing lacked is marked, none outside, none listed."""
    noon = DAY1 + timedelta(hours=12)
    times = {
        "before": noon - timedelta(seconds=1), "at_since": noon, "day1_late": DAY1 + timedelta(hours=23),
        "day2": DAY2 + timedelta(hours=5), "listed": DAY2 + timedelta(hours=6),
        "day3_early": DAY2 + timedelta(days=1, hours=1), "at_until": DAY2 + timedelta(days=1, hours=6),
        "other_range": DAY2 + timedelta(days=3, hours=2), "in_second": DAY2 + timedelta(days=3, hours=4),
    }
    wh.apply(run, jobs=jobs([rec(job_id, created=at) for job_id, at in times.items()]))
    ranges = [
        ReconciledRange("p1", noon, DAY2 + timedelta(days=1, hours=6), ["listed"]),  # three days, partly
        ReconciledRange("p1", DAY2 + timedelta(days=3, hours=3), DAY2 + timedelta(days=3, hours=5), []),
        ReconciledRange("p2", DAY1, DAY2 + timedelta(days=5), []),  # another project's range
    ]
    stats = wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), reconciled=ranges, deleted_at=SYNC2)
    deleted = {r["job_id"] for r in wh.jobs_table().to_pylist() if r["deleted_at"] is not None}
    assert deleted == {"at_since", "day1_late", "day2", "day3_early", "in_second"}
    assert stats.deleted == 5


def test_a_reappearing_job_is_undeleted(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a", updated_min=10)]))
    wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "a")], deleted_at=SYNC1)
    # even an older listing proves the job exists
    stats = wh.apply(run, jobs=jobs([rec("a", "OLD", updated_min=5)], synced_at=SYNC2))
    assert stats.undeleted == 1 and stats.stale == 1
    row = wh.jobs_table().to_pylist()[0]
    assert (row["state"], row["deleted_at"]) == ("CREATING", None)
    assert sql(wh, "SELECT count(*), count(deleted_at) FROM voice_training_job_history") == [(1, 0)]
    assert live_job_ids(wh, "p1", DAY1, DAY2) == {"a"}
    lake = ds.dataset(wh.lake_dir, format="parquet", partitioning="hive").to_table()
    assert lake["deleted_at"].to_pylist() == [None]


def test_undeletions_are_counted_per_job_in_a_batch_with_duplicates_and_live_jobs(wh: Warehouse, run: str):
    wh.apply(run, jobs=jobs([rec("a"), rec("b"), rec("c")]))
    wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "a"), ("p1", "b")], deleted_at=SYNC1)
    # a and b listed again (a twice), c still live
    stats = wh.apply(run, jobs=jobs([rec("a", updated_min=1), rec("a", "SUCCEED", updated_min=2), rec("b"),
                                     rec("c", "SUCCEED", updated_min=3)], synced_at=SYNC2))
    assert stats.undeleted == 2
    assert {r["job_id"]: r["deleted_at"] for r in wh.jobs_table().to_pylist()} == {"a": None, "b": None, "c": None}
    assert states(wh) == {"a": "SUCCEED", "b": "CREATING", "c": "SUCCEED"}


def _undated(batch: pa.Table, job_id: str) -> pa.Table:
    """``batch`` with no create_time for ``job_id`` (the API always sends one; older warehouses
    and lenient rules may still hold such a job)."""
    column = batch.schema.get_field_index("create_time")
    times = pc.if_else(pc.equal(batch["job_id"], job_id), pa.scalar(None, batch.schema.field(column).type),
                       batch["create_time"])
    return batch.set_column(column, batch.schema.field(column), times)


@pytest.mark.parametrize("stored_dated, listed_dated, created", [
    (True, True, DAY2),  # its create_time moved a day on
    (False, True, DAY2),  # stored without one, listed with one
    (True, False, DAY1),  # stored with one, listed without
], ids=["create-time-moved", "create-time-came", "create-time-went"])
def test_a_known_job_listed_outside_the_creation_times_it_is_stored_with_is_updated_not_added(
        wh: Warehouse, run: str, stored_dated: bool, listed_dated: bool, created: datetime):
    # Known jobs are looked for among the batch's creation times first (see _find_known);
    # one stored with another create_time, or none, must still be found, and only once.
    stored = jobs([rec("a", "WAITING"), rec("x", created=DAY2)])
    wh.apply(run, jobs=stored if stored_dated else _undated(stored, "a"))
    listed = jobs([rec("a", "SUCCEED", created=created, updated_min=60 * 24 * 2),
                   rec("x", "FAILED", created=DAY2, updated_min=3), rec("c", created=DAY2)], synced_at=SYNC2)
    stats = wh.apply(run, jobs=listed if listed_dated else _undated(listed, "a"))
    assert (stats.inserted, stats.updated, stats.history_versions) == (1, 2, 3)
    assert states(wh) == {"a": "SUCCEED", "c": "CREATING", "x": "FAILED"}
    assert sql(wh, "SELECT job_id, count(*) FROM voice_training_job_history GROUP BY ALL ORDER BY ALL") == [
        ("a", 2), ("c", 1), ("x", 2)]


def _key_hashes(wh: Warehouse) -> list:
    """What job_keys holds, in order."""
    return sql(wh, "SELECT key_hash FROM job_keys ORDER BY 1")


def _hashes_of_jobs(wh: Warehouse) -> list:
    return sql(wh, f"SELECT {key_hash_expr()} FROM voice_training_jobs ORDER BY 1")


def test_a_moved_job_among_jobs_never_seen_is_found_by_its_key_hash_and_updated_not_added(wh: Warehouse, run: str):
    # No job of the batch is stored among its creation times, so only the key hashes can
    # say that one of them is stored elsewhere (see _maybe_known).
    wh.apply(run, jobs=jobs([rec("a", "WAITING"), rec("b", "WAITING")]))
    stats = wh.apply(run, jobs=jobs([rec("a", "SUCCEED", created=DAY2, updated_min=60 * 24 * 2),
                                     rec("c", created=DAY2)], synced_at=SYNC2))
    assert (stats.inserted, stats.updated) == (1, 1)
    assert states(wh) == {"a": "SUCCEED", "b": "WAITING", "c": "CREATING"}
    assert _key_hashes(wh) == _hashes_of_jobs(wh)  # one hash per jobs row, whichever way it came


def test_a_new_job_whose_key_hash_is_stored_is_still_appended_once(wh: Warehouse, run: str):
    # Two keys of one hash: the hash found sends the batch to the exact look at the keys.
    wh.apply(run, jobs=jobs([rec("a", "WAITING")]))
    sql(wh, f"INSERT INTO job_keys SELECT {key_hash_expr()} FROM (SELECT 'p1' AS project_id, 'c' AS job_id)")
    stats = wh.apply(run, jobs=jobs([rec("c", created=DAY2)]))
    assert (stats.inserted, stats.updated) == (1, 0)
    assert states(wh) == {"a": "WAITING", "c": "CREATING"}


@pytest.mark.parametrize("damage", [
    "DELETE FROM job_keys",  # a warehouse from before the key hashes, or one that lost them
    "UPDATE warehouse_meta SET value = 'duckdb-hash/0.0.0' WHERE key = 'key_hash'",  # another DuckDB release
], ids=["missing", "other-release"])
def test_key_hashes_are_made_again_when_the_warehouse_opens(tmp_path: Path, damage: str):
    wh = Warehouse(tmp_path / "d")
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=jobs([rec("a", "WAITING"), rec("b", "WAITING")]))
    sql(wh, "UPDATE job_keys SET key_hash = key_hash + 1")  # what another release's hash() could give
    sql(wh, damage)
    again = Warehouse(tmp_path / "d")
    assert _key_hashes(again) == _hashes_of_jobs(again)
    stats = again.apply(again.begin_run("days", {}), jobs=jobs([rec("a", "SUCCEED", created=DAY2, updated_min=60)]))
    assert (stats.inserted, stats.updated) == (0, 1)


def test_a_batch_whose_jobs_change_different_columns_replaces_each_row_whole(wh: Warehouse, run: str):
    """Winners replace their rows in place, in the columns some winner of the batch changes:
    each row still ends equal to its newest version, whichever column it changed, and a
    winner that was marked deleted, or that changed nothing but its sync time, too."""
    wh.apply(run, jobs=jobs([rec("a", "WAITING", tag="t1"), rec("b", "WAITING", tag="t1"),
                             rec("c", "WAITING", tag="t1"), rec("d", "WAITING", tag="t1")]))  # fmt: skip
    wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "d")], deleted_at=SYNC1)
    newest = jobs([
        rec("a", "SUCCEED", tag="t1", updated_min=5),  # state and lastupdate_time
        rec("b", "WAITING", tag="t2"),  # tag only, same lastupdate_time
        rec("c", "WAITING", tag="t1"),  # nothing but synced_at
        rec("d", "FAILED", tag="t1", job_failed_code="E1", updated_min=7),  # deleted before
    ], synced_at=SYNC2)
    stats = wh.apply(run, jobs=newest)
    assert (stats.updated, stats.history_versions, stats.inserted) == (4, 3, 0)
    stored = wh.jobs_table()
    assert stored.drop_columns(["deleted_at"]).equals(newest.cast(JOBS_SCHEMA).sort_by([("job_id", "ascending")]))
    assert stored["deleted_at"].null_count == 4
    current = sql(wh, "SELECT job_id, state, tag, valid_to FROM voice_training_job_history"
                      " WHERE valid_to IS NULL ORDER BY job_id")
    assert current == [("a", "SUCCEED", "t1", None), ("b", "WAITING", "t2", None), ("c", "WAITING", "t1", None),
                       ("d", "FAILED", "t1", None)]
    assert sql(wh, "SELECT job_id, state, tag FROM voice_training_job_history WHERE valid_to IS NOT NULL"
                   " ORDER BY job_id") == [("a", "WAITING", "t1"), ("b", "WAITING", "t1"), ("d", "WAITING", "t1")]
    assert lake_rows(wh) == stored.to_pylist()


def test_a_batch_of_jobs_never_seen_is_appended_as_the_staged_upsert_would(tmp_path: Path, monkeypatch):
    """A batch of distinct keys the table holds none of skips the staging and is appended
    directly: the warehouse, its history, its export marks and its lake end as they do when the
    same batches go through the staged upsert, and a batch with a known key still does."""
    from pipelines.warehouse import apply as apply_module

    def batches():
        return [
            jobs([rec("a", "WAITING"), rec("b", "SUCCEED", created=DAY2, updated_min=3), rec("c", updated_min=None)]),
            jobs([rec("d", "FAILED", job_failed_code="E1", tag="t")], project_id="p2", synced_at=SYNC2),
            jobs([rec("a", "SUCCEED", updated_min=9), rec("e")], synced_at=SYNC2),  # a is known: staged
        ]

    appended = []  # rows of each batch appended straight from the batch, not staged
    real_append = apply_module._append_first_versions

    def spy(con, rows, row_hash):
        if rows == "_incoming":
            appended.append(con.execute("SELECT count(*) FROM _incoming").fetchall()[0][0])
        real_append(con, rows, row_hash)

    monkeypatch.setattr(apply_module, "_append_first_versions", spy)
    fast = Warehouse(tmp_path / "fast")
    fast_run = fast.begin_run("days", {"since": "2025-03-01"})
    fast_stats = [fast.apply(fast_run, jobs=batch, export=False) for batch in batches()]
    assert appended == [3, 1]
    real_find = apply_module._find_known
    monkeypatch.setattr(apply_module, "_find_known", lambda con, batch, distinct: real_find(con, batch, False) or 1)
    staged = Warehouse(tmp_path / "staged")
    staged_run = staged.begin_run("days", {"since": "2025-03-01"})
    staged_stats = [staged.apply(staged_run, jobs=batch, export=False) for batch in batches()]
    assert appended == [3, 1]
    assert fast_stats == staged_stats
    assert [(s.inserted, s.history_versions) for s in fast_stats] == [(3, 3), (1, 1), (1, 2)]
    assert fast.jobs_table().equals(staged.jobs_table())
    for query in ("SELECT * FROM voice_training_job_history ORDER BY ALL",
                  "SELECT * FROM lake_dirty ORDER BY ALL"):
        assert sql(fast, query) == sql(staged, query) != []
    fast.export_dirty_partitions()
    staged.export_dirty_partitions()
    assert lake_rows(fast) == lake_rows(staged) == fast.jobs_table().to_pylist()


def test_live_creation_times_window_is_closed(wh: Warehouse, run: str):
    """The bisection's stored side counts closed ranges, as the source's listing does: a job on
    either bound is in, a deleted one and another project's are out."""
    wh.apply(run, jobs=jobs([rec("at-start", created=DAY1), rec("at-end", created=DAY2),
                             rec("after", created=DAY2 + timedelta(seconds=1)), rec("gone", created=DAY1)]))
    wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), deleted=[("p1", "gone")])
    micros = int(DAY1.timestamp()) * 1_000_000, int(DAY2.timestamp()) * 1_000_000
    assert wh.live_creation_times("p1", DAY1, DAY2).tolist() == list(micros)
    assert wh.live_creation_times("p2", DAY1, DAY2).tolist() == []


def test_watermark_never_moves_backwards(wh: Warehouse, run: str):
    assert wh.watermark("p1") is None
    empty = JOBS_SCHEMA.empty_table()
    wh.apply(run, jobs=empty, watermarks={"p1": SYNC2})
    wh.apply(run, jobs=empty, watermarks={"p1": SYNC1, "p2": SYNC1})
    assert wh.watermark("p1") == SYNC2 and wh.watermark("p2") == SYNC1
    wh.apply(run, jobs=empty, watermarks={"p1": SYNC2 + timedelta(seconds=1)})
    assert wh.watermark("p1") == SYNC2 + timedelta(seconds=1)
    assert sql(wh, "SELECT count(*) FROM sync_state") == [(2,)]


def test_windows_quarantine_and_runs_are_recorded(wh: Warehouse):
    run_id = wh.begin_run("days", {"projects": ["p1"]})
    assert len(run_id) == 32
    bad = normalize([rec("ok"), {"job_id": "bad", "create_time": "soon"}], "p1", SYNC1)
    window = WindowRecord("p1", "create", DAY1, DAY2, 2, 2, 1)
    stats = wh.apply(run_id, jobs=bad.table, windows=[window], quarantine=bad.quarantine)
    assert (stats.windows, stats.quarantined) == (1, 1)
    assert sql(
        wh, "SELECT run_id, project_id, kind, since, until, api_count, fetched, pages FROM sync_windows"
    ) == [(run_id, "p1", "create", DAY1, DAY2, 2, 2, 1)]
    q = sql(wh, "SELECT run_id, project_id, job_id, reason, raw_record FROM quarantine")
    assert q[0][:3] == (run_id, "p1", "bad") and "create_time" in q[0][3]
    assert json.loads(q[0][4])["create_time"] == "soon"
    assert sql(wh, "SELECT status FROM sync_runs") == [("running",)]
    wh.finish_run(run_id, "succeeded", {"rows_written": 1, "requests": 3, "retries": {"429": 2, "503": 1}})
    row = sql(
        wh, "SELECT status, rows, requests, retries, finished_at IS NOT NULL, stats, details FROM sync_runs"
    )[0]
    assert row[:5] == ("succeeded", 1, 3, 3, True)
    assert json.loads(row[5])["retries"] == {"429": 2, "503": 1}
    assert json.loads(row[6]) == {"projects": ["p1"]}
    with pytest.raises(ValueError):
        wh.finish_run(run_id, "done", {})
    with pytest.raises(ValueError, match="no sync run"):
        wh.finish_run("missing", "failed", {})


def test_begin_run_marks_runs_of_dead_processes_abandoned_only(wh: Warehouse):
    # A run left 'running' by a process that no longer exists (it never reached finish_run).
    with wh.connect() as con:
        con.execute("INSERT INTO sync_runs (run_id, started_at, status, mode) VALUES"
                    " ('dead', TIMESTAMPTZ '2025-03-01 00:00:00+00', 'running', 'days')")
    live = wh.begin_run("days", {})
    runs = dict(sql(wh, "SELECT run_id, status FROM sync_runs"))
    assert runs == {"dead": "abandoned", live: "running"}
    finished_at, stats = sql(wh, "SELECT finished_at, stats FROM sync_runs WHERE run_id = 'dead'")[0]
    started_at = sql(wh, "SELECT started_at FROM sync_runs WHERE run_id = ?", [live])[0][0]
    assert finished_at == started_at
    assert json.loads(stats)["found_by_run"] == live
    # A run this process began and has not finished is alive: a second run leaves it alone.
    other = wh.begin_run("incremental", {})
    assert dict(sql(wh, "SELECT run_id, status FROM sync_runs")) == {
        "dead": "abandoned", live: "running", other: "running"}
    wh.finish_run(live, "succeeded", {})
    wh.finish_run(other, "failed", {})
    assert dict(sql(wh, "SELECT run_id, status FROM sync_runs")) == {
        "dead": "abandoned", live: "succeeded", other: "failed"}


def _state(wh: Warehouse) -> tuple:
    return (
        wh.jobs_table().to_pylist(),
        sql(wh, "SELECT * FROM voice_training_job_history ORDER BY job_id, valid_from"),
        sql(wh, "SELECT * FROM sync_windows"),
        sql(wh, "SELECT * FROM quarantine"),
        sql(wh, "SELECT * FROM sync_state"),
        sql(wh, "SELECT * FROM lake_dirty"),
        sorted(p.relative_to(wh.lake_dir) for p in wh.lake_dir.rglob("*") if p.is_file()),
    )


@pytest.mark.parametrize("failure", [RuntimeError("boom"), duckdb.IOException("No space left on device")])
def test_a_failure_mid_transaction_leaves_the_previous_state(wh: Warehouse, run: str, monkeypatch, failure):
    wh.apply(run, jobs=jobs([rec("a"), rec("b")]), watermarks={"p1": SYNC1})
    before = _state(wh)

    def fail(con, deleted, deleted_at):  # runs after the jobs and the past versions were written
        raise failure

    monkeypatch.setattr(Warehouse, "_mark_deleted", staticmethod(fail))
    bad = normalize([rec("a", "CHANGED", updated_min=9), {"job_id": "q", "create_time": None}], "p1", SYNC2)
    kwargs = dict(
        jobs=bad.table,
        windows=[WindowRecord("p1", "create", DAY1, DAY2, 2, 2, 1)],
        quarantine=bad.quarantine,
        deleted=[("p1", "b")],
        watermarks={"p1": SYNC2},
    )
    if isinstance(failure, duckdb.IOException):
        with pytest.raises(WarehouseError, match="Free space") as err:
            wh.apply(run, **kwargs)
        assert str(wh.db_path) in str(err.value)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            wh.apply(run, **kwargs)
    assert _state(wh) == before
    monkeypatch.undo()
    wh.apply(run, **kwargs)
    assert states(wh)["a"] == "CHANGED"


def test_lake_write_failure_keeps_old_file_and_mark_and_leaves_no_temp_file(
    wh: Warehouse, run: str, monkeypatch
):
    wh.apply(run, jobs=jobs([rec("a")]))
    path = wh.partition_path("p1", DAY1.date())
    old_bytes = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipelines.warehouse.os.fsync", disk_full)
    # the database transaction commits; the partition that could not be written is counted ...
    assert wh.apply(run, jobs=jobs([rec("a", "SUCCEED", updated_min=3)])).partitions_failed == 1
    # ... and the lake keeps its old, whole file and the mark
    assert states(wh) == {"a": "SUCCEED"}
    assert path.read_bytes() == old_bytes
    assert [p.name for p in path.parent.iterdir()] == ["data.parquet"]
    assert sql(wh, "SELECT project_id, create_day FROM lake_dirty") == [("p1", DAY1.date())]
    # exporting (and closing the run) says which file and what to do
    with pytest.raises(WarehouseError) as err:
        wh.export_dirty_partitions()
    assert str(path) in str(err.value) and "free space" in str(err.value)
    with pytest.raises(WarehouseError, match="free space"):
        wh.finish_run(run, "succeeded", {})
    assert sql(wh, "SELECT status FROM sync_runs WHERE run_id = ?", [run]) == [("failed",)]
    assert path.read_bytes() == old_bytes
    monkeypatch.undo()
    assert wh.export_dirty_partitions() == 1
    assert lake_rows(wh) == wh.jobs_table().to_pylist()


def test_session_keeps_one_connection_and_methods_work_inside(wh: Warehouse, run: str):
    with wh.connect() as con:
        wh.apply(run, jobs=jobs([rec("a")]))
        assert con.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (1,)
        with wh.connect() as inner:
            assert inner is con
        assert live_job_ids(wh, "p1", DAY1, DAY2) == {"a"}
    with duckdb.connect(str(wh.db_path), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM voice_training_jobs").fetchone() == (1,)


def test_methods_can_run_in_worker_threads_inside_a_session(wh: Warehouse, run: str):
    with wh.connect(), ThreadPoolExecutor(2) as pool:
        applied = pool.submit(wh.apply, run, jobs=jobs([rec("a")]))
        applied.result(timeout=60)
        seen = pool.submit(wh.live_creation_times, "p1", DAY1, DAY2)
        assert seen.result(timeout=60).tolist() == [int(DAY1.timestamp()) * 1_000_000]
        assert wh.watermark("p1") is None


def test_naive_datetimes_are_refused(wh: Warehouse, run: str):
    with pytest.raises(ValueError, match="timezone-aware"):
        wh.apply(run, jobs=JOBS_SCHEMA.empty_table(), watermarks={"p1": datetime(2025, 1, 1)})  # noqa: DTZ001
    with pytest.raises(ValueError, match="columns of JOBS_SCHEMA"):
        wh.apply(run, jobs=pa.table({"job_id": ["a"]}))


def test_a_warehouse_of_schema_3_keeps_its_history_when_the_current_versions_move_to_the_jobs_table(
    tmp_path: Path,
):
    """Schema 3 kept every current version twice (a jobs row and a history row); schema 4 keeps
    it once, in the jobs row. The history, transitions and jobs read the same after the move,
    and the next syncs version on from the moved rows."""
    from pipelines.warehouse.db import _MIGRATIONS
    from pipelines.warehouse.tables import ROW_HASH_ALGORITHM, _hash_expr

    data = tmp_path / "d"
    data.mkdir()
    con = duckdb.connect(str(data / "warehouse.duckdb"))
    con.execute("CREATE TABLE schema_migrations (version INTEGER, applied_at TIMESTAMPTZ, description VARCHAR)")
    for version, script in enumerate(_MIGRATIONS[:3], start=1):
        con.execute(script)
        con.execute("INSERT INTO schema_migrations VALUES (?, now(), 'old')", [version])
    con.execute("INSERT INTO warehouse_meta VALUES ('row_hash', ?, now())", [ROW_HASH_ALGORITHM])
    # As schema 3's apply left them: a changed twice, b deleted, c synced again unchanged.
    a1 = jobs([rec("a", "CREATING", updated_min=0)])
    a2 = jobs([rec("a", "PROCESSING", updated_min=30)], synced_at=SYNC2)
    b1 = jobs([rec("b", "CREATING", updated_min=5)])
    c1, c2 = (jobs([rec("c", "WAITING", updated_min=7)], synced_at=t) for t in (SYNC1, SYNC2))
    for rows, deleted in ((a2, None), (b1, SYNC2), (c2, None)):
        con.register("rows", rows)
        con.execute("INSERT INTO voice_training_jobs SELECT *, ? FROM rows", [deleted])
    for rows, valid_to, deleted in ((a1, DAY1 + timedelta(minutes=30), None), (a2, None, None),
                                    (b1, None, SYNC2), (c1, None, None)):
        con.register("rows", rows)
        con.execute(f"INSERT INTO voice_training_job_history SELECT *, lastupdate_time, ?, synced_at, ?,"
                    f" {_hash_expr()} FROM rows", [valid_to, deleted])
    history = con.execute("SELECT * FROM voice_training_job_history ORDER BY job_id, valid_from").fetchall()
    transitions = con.execute("SELECT * FROM voice_training_job_transitions ORDER BY ALL").fetchall()
    jobs_before = con.execute("SELECT * FROM voice_training_jobs ORDER BY job_id").fetchall()
    con.close()

    wh = Warehouse(data)
    assert sql(wh, "SELECT max(version) FROM schema_migrations") == [(WAREHOUSE_VERSION,)]
    assert sql(wh, "SELECT * FROM voice_training_job_history ORDER BY job_id, valid_from") == history
    assert sql(wh, "SELECT * FROM voice_training_job_transitions ORDER BY ALL") == transitions
    assert sql(wh, "SELECT * EXCLUDE (valid_from, observed_at, row_hash) FROM voice_training_jobs"
                   " ORDER BY job_id") == jobs_before
    assert sql(wh, "SELECT job_id, state FROM voice_training_job_past_versions") == [("a", "CREATING")]

    run = wh.begin_run("days", {})
    same = wh.apply(run, jobs=jobs([rec("c", "WAITING", updated_min=7), rec("b", "CREATING", updated_min=5)],
                                   synced_at=SYNC2 + timedelta(hours=1)))
    assert (same.history_versions, same.undeleted) == (0, 1)
    changed = wh.apply(run, jobs=jobs([rec("a", "SUCCEED", updated_min=60)], synced_at=SYNC2))
    assert changed.history_versions == 1
    assert sql(wh, "SELECT state, valid_from, valid_to, synced_at FROM voice_training_job_history"
                   " WHERE job_id = 'a' ORDER BY valid_from") == [
        ("CREATING", DAY1, DAY1 + timedelta(minutes=30), SYNC1),
        ("PROCESSING", DAY1 + timedelta(minutes=30), DAY1 + timedelta(minutes=60), SYNC2),
        ("SUCCEED", DAY1 + timedelta(minutes=60), None, SYNC2),
    ]
    assert sql(wh, "SELECT job_id, deleted_at FROM voice_training_job_history WHERE job_id IN ('b', 'c')"
                   " ORDER BY job_id") == [("b", None), ("c", None)]


def test_the_warehouse_connection_draws_no_progress_bar(tmp_path: Path):
    """A long statement (the migration of a big warehouse) would draw DuckDB's progress bar into
    the sync's output. DuckDB draws it by default in a plain process (not under pytest's capture),
    so the connection is opened in one."""
    probe = ("import sys; from pipelines.warehouse import Warehouse\n"
             "with Warehouse(sys.argv[1]).connect() as con:\n"
             "    print(con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "d")], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.split() == ["False"]


def test_a_sync_start_leaves_no_read_open_that_stops_checkpoints(tmp_path: Path):
    """DuckDB streams a query's rows: a result read with fetchone() keeps its transaction open
    until a fetch finds the end of the rows. Left open on the run's shared connection (claim()
    reads the recorded source there), that transaction stopped every checkpoint after an update
    in place ("there are other write transactions active"): DuckDB's own at a commit and the
    sync's while it waits on the source."""
    from pipelines.source import SourceIdentity, claim

    wh = Warehouse(tmp_path)
    with wh.connect() as con:
        run_id = wh.begin_run("days", {})
        wh.apply(run_id, jobs=jobs([rec("j1")]), export=False)
        claim(wh, SourceIdentity("https://metastudio.example"))
        claim(wh, SourceIdentity("https://metastudio.example"))  # the recorded source read back
        wh.apply(run_id, jobs=jobs([rec("j1", "FAILED", updated_min=5)], synced_at=SYNC2), export=False)
        with wh._cursor() as other:
            other.execute("CHECKPOINT")
        assert con.execute("SELECT state FROM voice_training_jobs").fetchall() == [("FAILED",)]


def test_checkpointing_writes_what_was_committed_to_the_file_while_the_block_runs(tmp_path: Path):
    wh = Warehouse(tmp_path)
    wal = tmp_path / "warehouse.duckdb.wal"
    with wh.connect() as con:
        run_id = wh.begin_run("days", {})
        wh.apply(run_id, jobs=jobs([rec(f"j{i}") for i in range(50)]), export=False)
        wh.apply(run_id, jobs=jobs([rec("j1", "FAILED", updated_min=5)], synced_at=SYNC2), export=False)
        assert wal.stat().st_size > 0
        with wh.checkpointing():
            pass  # a block that leaves DuckDB alone (the bisection)
        assert not wal.exists() or wal.stat().st_size == 0
        assert con.execute("SELECT count(*) FROM voice_training_jobs").fetchall() == [(50,)]
        assert con.execute("SELECT state FROM voice_training_jobs WHERE job_id = 'j1'").fetchall() == [("FAILED",)]
