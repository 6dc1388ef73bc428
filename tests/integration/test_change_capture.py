"""Change capture, history and deletions against a simulator whose clock moves."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import duckdb
import pytest

from pipelines.metastudio.errors import AuthenticationError
from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal, epoch
from tests.support.hostile import HostileProxy
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

FIRST_DAY = (SIM_NOW - timedelta(days=31)).date()


@pytest.fixture
def moving_simulator(make_simulator):
    return make_simulator(jobs=2500, seed=23, days=30, projects=PROJECTS, now=SIM_NOW)


def _state_sequences(con, table: str) -> dict[tuple[str, str], list[str]]:
    rows = con.execute(
        f"select project_id, job_id, state from {table} order by project_id, job_id, valid_from, observed_at"
    ).fetchall()
    seqs: dict[tuple[str, str], list[str]] = {}
    for pid, jid, state in rows:
        seq = seqs.setdefault((pid, jid), [])
        if not seq or seq[-1] != state:  # a version may change other fields and keep its state
            seq.append(state)
    return seqs


def _assert_true_to_source(server, warehouse: Warehouse, observed: dict) -> None:
    refresh_and_publish(warehouse, warehouse_settings(warehouse))
    truth = {pid: server.state.truth(pid) for pid in PROJECTS}
    table = warehouse.jobs_table(include_deleted=True)
    rows = table.drop_columns(["synced_at"]).to_pylist()  # once: it is most of this check's time
    deleted_at = [r.pop("deleted_at") for r in rows]  # the rows compared with the source lack it
    stored = {(r["project_id"], r["job_id"]) for r in rows}
    marked = {(r["project_id"], r["job_id"]) for r, at in zip(rows, deleted_at, strict=True) if at is not None}
    live = [r for r, at in zip(rows, deleted_at, strict=True) if at is None]
    assert_rows_equal(live, truth, personal_data="raw")

    deleted_in_source = {(pid, jid) for pid in PROJECTS for jid in server.state.deleted_ids(pid)}
    assert marked == deleted_in_source & stored

    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        # Everything analysts see leaves deleted jobs out.
        analyst_keys = set(con.execute("select project_id, job_id from analytics.voice_training_jobs").fetchall())
        assert analyst_keys == {(pid, j["job_id"]) for pid, jobs in truth.items() for j in jobs}
        # The history holds every state each job was seen in, in order.
        history = _state_sequences(con, "voice_training_job_history")
    for key, states in observed.items():
        assert history.get(key) == states, f"{key}: history {history.get(key)} != observed {states}"


def warehouse_settings(warehouse: Warehouse):
    from pipelines.settings import Settings

    return Settings(data_dir=warehouse.data_dir, personal_data="raw")


def _observe(server, observed: dict) -> None:
    """Record, the way an outside observer would, each job's state after a sync."""
    for pid in PROJECTS:
        for job in server.state.truth(pid):
            seq = observed.setdefault((pid, job["job_id"]), [])
            if not seq or seq[-1] != job.get("state"):
                seq.append(job.get("state"))


def test_warehouse_stays_true_through_a_dozen_clock_steps(moving_simulator, tmp_path):
    server = moving_simulator
    settings = sim_settings(server, tmp_path, personal_data="raw", first_day=FIRST_DAY, lookback_seconds=900)
    warehouse = Warehouse(tmp_path)
    observed: dict = {}

    first = sync(settings, mode="incremental", warehouse=warehouse)  # no watermark yet: a backfill
    assert first.rows_written > 0 and set(first.watermarks) == set(PROJECTS)
    _observe(server, observed)
    _assert_true_to_source(server, warehouse, observed)

    totals = {"created": 0, "transitioned": 0, "deleted": 0}
    for step in range(12):
        summary = server.state.advance(5 * 3600)
        for key in totals:
            totals[key] += summary[key]
        report = sync(settings, mode="incremental", warehouse=warehouse)
        # change capture pages only what changed, never the whole history again
        assert report.jobs_fetched < first.jobs_fetched / 2, (step, report.as_dict())
        _observe(server, observed)
        _assert_true_to_source(server, warehouse, observed)

    assert all(totals.values()), totals  # the steps really created, moved and deleted jobs
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        transitions = con.execute(
            "select count(*) from voice_training_job_transitions"
            " where from_state is not null and from_state <> to_state"
        ).fetchone()[0]
        watermarks = con.execute("select count(*) from sync_state").fetchone()[0]
    # one transition row per observed change of state (several moves inside one step show as one)
    assert transitions == sum(len(seq) - 1 for seq in observed.values()) > 0
    assert watermarks == len(PROJECTS)


def _history_rows(warehouse: Warehouse) -> list[tuple]:
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        return con.execute("select * exclude (row_hash) from voice_training_job_history order by all").fetchall()


def test_watermark_is_the_source_clock_and_never_moves_back(moving_simulator, tmp_path):
    server = moving_simulator
    settings = sim_settings(server, tmp_path, first_day=FIRST_DAY)
    warehouse = Warehouse(tmp_path)
    sync(settings, mode="incremental", warehouse=warehouse)
    before = {pid: warehouse.watermark(pid) for pid in PROJECTS}
    for pid in PROJECTS:
        # from the source's clock (lastupdate_time), not the local one, which is years ahead here
        assert before[pid] <= server.state.now
    rows_before = warehouse.jobs_table().drop_columns(["synced_at"]).to_pylist()
    history_before = _history_rows(warehouse)

    report = sync(settings, mode="incremental", warehouse=warehouse)  # nothing changed

    # It re-read exactly the jobs updated in the lookback before each watermark, and nothing else.
    lookback = timedelta(seconds=settings.lookback_seconds)
    reread = sum(1 for pid in PROJECTS for job in server.state.truth(pid)
                 if epoch(job["lastupdate_time"]) >= before[pid] - lookback)
    assert report.jobs_fetched == report.rows_written == reread > 0
    assert report.deleted == 0 and report.quarantined == 0
    # Re-writing them changed nothing: the same rows, no new history version, the same watermarks.
    assert warehouse.jobs_table().drop_columns(["synced_at"]).to_pylist() == rows_before
    assert _history_rows(warehouse) == history_before
    assert {pid: warehouse.watermark(pid) for pid in PROJECTS} == before


WAREHOUSE_TABLES = ("voice_training_jobs", "voice_training_job_history", "sync_state", "sync_windows",
                    "quarantine", "lake_dirty")


def _state(warehouse: Warehouse) -> dict:
    """Every table the sync writes (its run log aside) and every byte of the lake."""
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        state = {t: con.execute(f"select * from {t} order by all").fetchall() for t in WAREHOUSE_TABLES}
    state["lake"] = {str(p.relative_to(warehouse.lake_dir)): p.read_bytes()
                     for p in sorted(warehouse.lake_dir.rglob("*")) if p.is_file()}
    return state


def test_a_change_capture_failing_midway_leaves_the_warehouse_as_it_was(moving_simulator, tmp_path):
    """The source rotates the secret key while the sync is paging changes it has not written yet."""
    server = moving_simulator
    with HostileProxy(server.url) as proxy:
        settings = sim_settings(server, tmp_path, personal_data="raw", first_day=FIRST_DAY, endpoint=proxy.url)
        warehouse = Warehouse(tmp_path)
        sync(settings, mode="incremental", warehouse=warehouse)
        before = _state(warehouse)
        stored = {(r["project_id"], r["job_id"]): r["lastupdate_time"] for r in warehouse.jobs_table().to_pylist()}

        server.state.advance(6 * 3600)
        honest = server.config
        received: list[dict] = []

        def rotate_the_key_after_the_first_page_of_changes(target: str, page: dict) -> dict:
            if "update_since" in target and not received:
                received.extend(page["jobs"])
                # From the next request on, the sync's SK no longer signs for its AK.
                server.config = dataclasses.replace(honest, credentials={settings.ak: "rotated-secret"})
            return page

        proxy.page_hook = rotate_the_key_after_the_first_page_of_changes
        seen_before = len(proxy.requests)
        try:
            with pytest.raises(AuthenticationError, match="rejected the request signature"):
                sync(settings, mode="incremental", warehouse=warehouse)
        finally:
            server.config = honest
            proxy.page_hook = None
        requests = proxy.requests[seen_before:]

        # The failure came mid-run: a full page of changes had arrived, more were to come (the
        # listing counts more than a page), and jobs on it are newer than the stored ones...
        assert len(received) == 100
        first_page = next(i for i, target in enumerate(requests) if "update_since" in target)
        pid = next(p for p in PROJECTS if f"/v1/{p}/" in requests[first_page])
        newer = [j for j in received if (pid, j["job_id"]) in stored
                 and epoch(j["lastupdate_time"]) > stored[(pid, j["job_id"])]]
        assert newer
        # ... and the one request after it, refused and not retried, was the listing's next page.
        assert len(requests) == first_page + 2
        assert f"/v1/{pid}/" in requests[-1] and "update_since" in requests[-1]
        # Nothing of what it had received was written: every table and the lake are as before.
        assert _state(warehouse) == before
        with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
            assert con.execute("select status from sync_runs order by started_at").fetchall() == [
                ("succeeded",), ("failed",)]

        # the next good run catches up with no manual step
        sync(settings, mode="incremental", warehouse=warehouse)
    truth = {pid: server.state.truth(pid) for pid in PROJECTS}
    live = [r for r in warehouse.jobs_table().drop_columns(["synced_at"]).to_pylist() if r.pop("deleted_at") is None]
    assert_rows_equal(live, truth, personal_data="raw")


def test_hostile_paging_loses_and_duplicates_no_surviving_job(tmp_path, make_simulator):
    """Jobs deleted and (backdated) created inside each window while it is paged."""
    server = make_simulator(jobs=3000, seed=31, days=20, projects=PROJECTS[:1], now=SIM_NOW)
    settings = sim_settings(server, tmp_path, personal_data="raw")
    before = {j["job_id"] for j in server.state.truth(PROJECTS[0])}
    server.configure(hostile_paging=True)
    since, until = (SIM_NOW - timedelta(days=21)).date(), SIM_NOW.date()
    sync(settings, mode="days", since=since, until=until)
    server.configure(hostile_paging=False)
    after = {j["job_id"] for j in server.state.truth(PROJECTS[0])}
    assert before - after and after - before  # the switch really deleted and created jobs

    warehouse = Warehouse(tmp_path)
    rows = warehouse.jobs_table().to_pylist()
    keys = [r["job_id"] for r in rows]
    assert len(keys) == len(set(keys))  # nothing duplicated
    stored_live = {r["job_id"] for r in rows if r["deleted_at"] is None}
    # every job that survived the whole run is there (nothing lost)
    assert (before & after) <= stored_live
    # a reconciliation pass afterwards makes the warehouse equal to the source exactly
    sync(settings, mode="reconcile", since=since, until=until)
    live = [r for r in warehouse.jobs_table().drop_columns(["synced_at"]).to_pylist()
            if r.pop("deleted_at") is None]
    assert_rows_equal(live, {PROJECTS[0]: server.state.truth(PROJECTS[0])}, personal_data="raw")


def test_the_update_window_listed_alone_is_split_so_its_pages_run_side_by_side(moving_simulator, tmp_path):
    """Keyset paging reads one window's pages one after another. Change capture's window of
    updated jobs is listed alone, so it is split at the share of the split threshold that each
    request slot pages (here 800 / 4 = 200 jobs, at least 4 pages: 400), and stays true."""
    server = moving_simulator
    settings = sim_settings(server, tmp_path, personal_data="raw", first_day=FIRST_DAY, lookback_seconds=900,
                            split_threshold=800, max_in_flight=4)
    warehouse = Warehouse(tmp_path)
    sync(settings, mode="incremental", warehouse=warehouse)
    server.state.advance(72 * 3600)
    report = sync(settings, mode="incremental", warehouse=warehouse)
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        leaves = con.execute("SELECT project_id, api_count FROM sync_windows WHERE run_id = ? AND kind = 'update'",
                             [report.run_id]).fetchall()
    by_project = {pid: [count for p, count in leaves if p == pid] for pid in PROJECTS}
    # No window held 800 jobs, so the run's threshold alone would have split none of them.
    assert max(sum(counts) for counts in by_project.values()) < 800
    assert any(len(counts) >= 2 for counts in by_project.values()), by_project
    for pid, counts in by_project.items():
        assert max(counts) <= 400 and (len(counts) >= 2) == (sum(counts) > 400), (pid, counts)
    _assert_true_to_source(server, warehouse, {})
