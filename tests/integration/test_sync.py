"""End to end over loopback HTTP: simulator -> client -> paging -> normalize -> lake + DuckDB."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pyarrow.dataset as ds
import pytest

from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal
from tests.support.simulators import SIM_NOW, SMALL, sim_settings, truth_by_project

SINCE = (SIM_NOW - timedelta(days=61)).date()
UNTIL = SIM_NOW.date()


def rows(warehouse: Warehouse) -> list[dict]:
    table = warehouse.jobs_table(include_deleted=True).drop_columns(["synced_at", "deleted_at"])
    return table.to_pylist()


def _six_days(make_simulator, tmp_path):
    """Six days of a small simulator synced with personal data as sent: the simulator, the report."""
    simulator = make_simulator(**dict(SMALL, days=6))
    report = sync(sim_settings(simulator, tmp_path, personal_data="raw"), mode="days",
                  since=UNTIL - timedelta(days=7), until=UNTIL)
    return simulator, report


def _assert_every_row_arrived(simulator, report, tmp_path) -> None:
    """The run wrote every job it fetched, and the warehouse equals the source field by field."""
    truth = truth_by_project(simulator)
    assert report.rows_written == report.jobs_fetched == sum(len(v) for v in truth.values())
    assert_rows_equal(rows(Warehouse(tmp_path)), truth, personal_data="raw")


def test_aksk_sync_equals_the_source_field_by_field(small_simulator, tmp_path):
    settings = sim_settings(small_simulator, tmp_path, personal_data="raw")
    report = sync(settings, mode="days", since=SINCE, until=UNTIL)

    truth = truth_by_project(small_simulator)
    assert report.rows_written == sum(len(v) for v in truth.values())
    assert report.requests >= report.pages > 0
    assert_rows_equal(rows(Warehouse(tmp_path)), truth, personal_data="raw")


def test_token_sync_masks_personal_data_by_default(small_simulator, tmp_path):
    settings = sim_settings(small_simulator, tmp_path, auth="token")
    sync(settings, mode="days", since=SINCE, until=UNTIL)

    warehouse = Warehouse(tmp_path)
    assert_rows_equal(rows(warehouse), truth_by_project(small_simulator), personal_data="mask")
    phones = [p for p in warehouse.jobs_table()["phone"].to_pylist() if p]
    assert phones and all(p[:-4].strip("*") == "" for p in phones)


def test_rerunning_days_is_idempotent_and_the_lake_matches(small_simulator, tmp_path):
    settings = sim_settings(small_simulator, tmp_path)
    sync(settings, mode="days", since=SINCE, until=UNTIL)
    warehouse = Warehouse(tmp_path)
    first = sorted(rows(warehouse), key=lambda r: (r["project_id"], r["job_id"]))
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        history_before = con.execute("select count(*) from voice_training_job_history").fetchone()[0]

    sync(settings, mode="days", since=SINCE, until=UNTIL)
    second = sorted(rows(warehouse), key=lambda r: (r["project_id"], r["job_id"]))
    assert first == second
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        assert con.execute("select count(*) from voice_training_job_history").fetchone()[0] == history_before
        dupes = con.execute("select count(*) from (select project_id, job_id from voice_training_jobs "
                        "group by all having count(*) > 1)").fetchone()[0]
        assert dupes == 0

    lake = ds.dataset(warehouse.lake_dir, format="parquet", partitioning="hive").to_table()
    assert lake.num_rows == len(second)
    lake_keys = sorted(zip(lake["project_id"].to_pylist(), lake["job_id"].to_pylist(), strict=True))
    assert lake_keys == [(r["project_id"], r["job_id"]) for r in second]
    # every file sits in the partition of its own creation day
    days = {(str(d), c.date().isoformat()) for d, c in zip(lake["create_day"].to_pylist(),
                                                           lake["create_time"].to_pylist(), strict=True)}
    assert all(d == c for d, c in days)


def test_a_sync_allocates_arrow_memory_with_malloc_and_gives_the_pool_back(
    small_simulator, tmp_path, monkeypatch, mimalloc_by_default: str
):
    """A sync's Arrow work (normalizing, writing, exporting) allocates from the C library's
    malloc (pipelines/arrowpool.py); the caller's pool is back when it returns."""
    import pyarrow as pa

    pools: list[str] = []
    apply = Warehouse.apply

    def spying(self, *args, **kwargs):
        pools.append(pa.default_memory_pool().backend_name)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "apply", spying)
    report = sync(sim_settings(small_simulator, tmp_path), mode="days", since=UNTIL - timedelta(days=3), until=UNTIL)
    assert report.rows_written and pools and set(pools) == {"system"}
    assert pa.default_memory_pool().backend_name == mimalloc_by_default


def test_one_day_sync_writes_exactly_that_day(small_simulator, tmp_path):
    settings = sim_settings(small_simulator, tmp_path, personal_data="raw")
    day = (SIM_NOW - timedelta(days=10)).date()
    sync(settings, mode="days", since=day, until=day)
    got = rows(Warehouse(tmp_path))
    truth = {
        pid: [j for j in jobs if _day(j["create_time"]) == day]
        for pid, jobs in truth_by_project(small_simulator).items()
    }
    assert sum(len(v) for v in truth.values()) > 0
    assert_rows_equal(got, truth, personal_data="raw")


def _day(epoch_value):
    from tests.support.expected import epoch

    return epoch(epoch_value).date()


def test_windows_are_written_in_chunks_while_they_are_listed(make_simulator, tmp_path, monkeypatch):
    """A window's jobs reach the warehouse in chunks of about SINK_ROWS while it is still paged
    (a burst day is never held whole), and the warehouse ends the same, without duplicates."""
    from pipelines.metastudio import paging
    from pipelines.sync.buffer import Run

    monkeypatch.setattr(paging, "SINK_ROWS", 40)
    parts: dict[tuple[str, object], list[int]] = {}
    absorb_part = Run.absorb_part

    def recording(self, task, window, jobs, synced_at):
        parts.setdefault((task.project_id, task.window), []).append(len(jobs))
        return absorb_part(self, task, window, jobs, synced_at)

    monkeypatch.setattr(Run, "absorb_part", recording)
    simulator = make_simulator(**dict(SMALL, days=6))  # about 250 jobs a day and project: 3 pages
    settings = sim_settings(simulator, tmp_path, personal_data="raw")
    report = sync(settings, mode="days", since=UNTIL - timedelta(days=7), until=UNTIL)

    truth = truth_by_project(simulator)
    assert max(len(sizes) for sizes in parts.values()) >= 3
    assert max(max(sizes) for sizes in parts.values()) <= 40 + paging.PAGE_LIMIT
    assert report.rows_written == report.jobs_fetched == sum(len(v) for v in truth.values())
    assert_rows_equal(rows(Warehouse(tmp_path)), truth, personal_data="raw")


def test_windows_are_normalized_off_the_event_loop_and_every_row_arrives(make_simulator, tmp_path, monkeypatch):
    """Normalizing a group of absorbed windows runs in a worker thread, not on the thread of the
    event loop that pages (which would hold every window's next request meanwhile), and the
    warehouse still ends equal to the source."""
    import threading

    from pipelines.sync import buffer

    monkeypatch.setattr(buffer, "NORMALIZE_ROWS", 200)
    threads: list[tuple[threading.Thread, int]] = []
    settle = buffer.Run.settle

    def recording(self):
        threads.append((threading.current_thread(), self.pending_rows))
        return settle(self)

    monkeypatch.setattr(buffer.Run, "settle", recording)
    simulator, report = _six_days(make_simulator, tmp_path)

    groups = [thread for thread, rows in threads if rows >= 200]
    assert len(groups) >= 3 and threading.main_thread() not in groups
    _assert_every_row_arrived(simulator, report, tmp_path)


def test_normalizing_and_the_transactions_each_keep_to_one_thread_of_their_own(make_simulator, tmp_path,
                                                                               monkeypatch):
    """Every group is normalized on one thread and every batch applied on one other, neither the
    event loop's: a thread's malloc arena keeps what it freed for that thread's next
    allocations, so stages wandering over a pool's threads held each stage's height in several
    arenas (a million-job sync peaked about 20 MB higher)."""
    import threading

    from pipelines.sync import buffer

    monkeypatch.setattr(buffer, "NORMALIZE_ROWS", 200)
    monkeypatch.setattr(buffer, "FLUSH_ROWS", 600)
    settled: list[threading.Thread] = []
    applied: list[threading.Thread] = []
    settle, apply = buffer.Run.settle, buffer.Run.apply

    def settling(self):
        settled.append(threading.current_thread())
        return settle(self)

    def applying(self, batch, **kwargs):
        applied.append(threading.current_thread())
        return apply(self, batch, **kwargs)

    monkeypatch.setattr(buffer.Run, "settle", settling)
    monkeypatch.setattr(buffer.Run, "apply", applying)
    simulator, report = _six_days(make_simulator, tmp_path)

    # The last group and the last batch wait for the end of the listing, on the main thread.
    normalizing = [thread for thread in settled if thread is not threading.main_thread()]
    transactions = [thread for thread in applied if thread is not threading.main_thread()]
    assert len(normalizing) >= 3 and len(set(normalizing)) == 1
    assert len(transactions) >= 2 and len(set(transactions)) == 1
    assert set(transactions).isdisjoint(normalizing)
    _assert_every_row_arrived(simulator, report, tmp_path)


def test_the_consumer_goes_on_absorbing_while_a_transaction_commits_up_to_a_limit(make_simulator, tmp_path,
                                                                                monkeypatch):
    """A full batch does not stop the consumer while the transaction before it commits: windows
    go on being absorbed (so their requests go on) until the buffer holds COMMIT_SLACK more than
    FLUSH_ROWS, and only then does the consumer wait. Every row still arrives."""
    import threading

    from pipelines.metastudio import paging
    from pipelines.sync import buffer

    monkeypatch.setattr(buffer, "NORMALIZE_ROWS", 200)
    monkeypatch.setattr(buffer, "FLUSH_ROWS", 600)
    # Parts of at most a page and 19 jobs, so the buffer passes the slack's rows (150) in steps.
    monkeypatch.setattr(paging, "SINK_ROWS", 20)
    limit = 600 * (1 + buffer.COMMIT_SLACK)
    committing = threading.Event()  # the first transaction has begun and waits
    release = threading.Event()  # ... until the consumer has absorbed past a full buffer
    held: list[int] = []  # rows buffered when a window's part was absorbed during that wait
    seen: list[int] = []  # rows buffered at every part absorbed
    absorb_part, apply = buffer.Run.absorb_part, buffer.Run.apply

    def recording(self, task, window, jobs, synced_at):
        buffered = self.buffered + self.pending_rows
        seen.append(buffered)
        if committing.is_set() and not release.is_set():
            held.append(buffered)
            if buffered >= 600:
                release.set()
        return absorb_part(self, task, window, jobs, synced_at)

    def applying(self, batch, **kwargs):
        if not committing.is_set():
            committing.set()
            release.wait(timeout=30)  # a safety net: the old consumer never absorbs meanwhile
        return apply(self, batch, **kwargs)

    monkeypatch.setattr(buffer.Run, "absorb_part", recording)
    monkeypatch.setattr(buffer.Run, "apply", applying)
    simulator, report = _six_days(make_simulator, tmp_path)

    assert release.is_set() and max(held) >= 600
    assert max(seen) < limit  # a part is absorbed only below the limit (it may then pass it)
    _assert_every_row_arrived(simulator, report, tmp_path)


def test_a_batch_reaches_the_warehouse_as_one_chunk_per_column(make_simulator, tmp_path, monkeypatch):
    """The windows' parts a batch gathers (slices of their groups' tables) are joined into one
    chunk per column before the transaction, and every row still arrives."""
    from pipelines.sync import buffer

    monkeypatch.setattr(buffer, "NORMALIZE_ROWS", 200)
    monkeypatch.setattr(buffer, "FLUSH_ROWS", 600)
    chunks: list[int] = []
    apply = Warehouse.apply

    def recording(self, run_id, *, jobs, **kwargs):
        if jobs.num_rows:
            chunks.append(max(column.num_chunks for column in jobs.columns))
        return apply(self, run_id, jobs=jobs, **kwargs)

    monkeypatch.setattr(Warehouse, "apply", recording)
    simulator, report = _six_days(make_simulator, tmp_path)

    assert len(chunks) >= 2 and set(chunks) == {1}
    _assert_every_row_arrived(simulator, report, tmp_path)


def test_the_garbage_collector_runs_less_often_during_a_sync_and_as_before_after(make_simulator, tmp_path,
                                                                                  monkeypatch):
    """A run raises the collector's thresholds (SYNC_GC_THRESHOLDS) while it pages and writes,
    and leaves the process's own ones as they were, also when it fails."""
    import gc

    from pipelines.sync.run import SYNC_GC_THRESHOLDS

    simulator = make_simulator(**dict(SMALL, days=3))
    settings = sim_settings(simulator, tmp_path)
    seen: list[tuple[int, ...]] = []
    before = gc.get_threshold()
    gc.set_threshold(900, 11, 12)
    try:
        sync(settings, mode="days", since=UNTIL - timedelta(days=2), until=UNTIL,
             progress=lambda _progress: seen.append(gc.get_threshold()))
        assert seen and set(seen) == {SYNC_GC_THRESHOLDS}
        assert gc.get_threshold() == (900, 11, 12)
        import pipelines.sync.run as run_module

        def failing(*args, **kwargs):
            seen.append(gc.get_threshold())
            raise RuntimeError("the run failed")

        monkeypatch.setattr(run_module, "_sync_run", failing)
        with pytest.raises(RuntimeError, match="the run failed"):
            sync(settings, mode="days", since=UNTIL - timedelta(days=2), until=UNTIL)
        assert seen[-1] == SYNC_GC_THRESHOLDS and gc.get_threshold() == (900, 11, 12)
    finally:
        gc.set_threshold(*before)
