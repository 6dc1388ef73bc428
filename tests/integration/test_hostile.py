"""A sync through a hostile proxy: whatever the server does, the warehouse loses, fakes and
deletes nothing.

The proxy (tests/support/hostile.py) sits in front of the simulator and misbehaves one way
per case: a clock wrong both ways, a count that ignores the filters, a body dripped a byte
at a time, a body that never ends, a page with a huge field, a job outside its window, a
listing that comes back empty once. Each case starts from a copy of the same warehouse,
synced honestly through the same proxy, and ends with the warehouse as it was before or
equal to the source's truth; every job marked deleted is one the source really deleted.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import duckdb
import pytest

from pipelines.ingest.screen import MAX_RECORD_BYTES
from pipelines.metastudio.errors import MetaStudioError, ResponseTooLargeError, RetriesExhaustedError
from pipelines.sync import SourceDisagreementError, sync
from pipelines.warehouse import Warehouse
from tests.support.hostile import HostileProxy
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

DAYS = 8
SINCE = (SIM_NOW - timedelta(days=DAYS)).date()
UNTIL = SIM_NOW.date()
STRAY_MS = 253402214400000  # 9999-12-31


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_module_simulator):
    """The simulator, the proxy before it, and a warehouse synced honestly through the proxy."""
    server = make_module_simulator(jobs=800, seed=17, days=DAYS, projects=PROJECTS, now=SIM_NOW)
    with HostileProxy(server.url) as proxy:
        baseline = tmp_path_factory.mktemp("baseline")
        sync(settings_for(server, proxy, baseline), mode="days", since=SINCE, until=UNTIL,
             warehouse=Warehouse(baseline))
        yield server, proxy, baseline


@pytest.fixture
def case(world, tmp_path):
    """(server, proxy, a fresh copy of the baseline warehouse, its live rows); the proxy is reset after."""
    server, proxy, baseline = world
    data_dir = tmp_path / "data"
    shutil.copytree(baseline, data_dir)
    before = rows(data_dir)
    yield server, proxy, data_dir, before
    proxy.reset()


def settings_for(server, proxy, data_dir, **overrides):
    return sim_settings(server, data_dir, **overrides).with_(endpoint=proxy.url)


def rows(data_dir) -> dict[tuple[str, str], dict]:
    table = Warehouse(data_dir).jobs_table()
    return {(r["project_id"], r["job_id"]): r for r in table.to_pylist()}


def live_keys(table_rows: dict) -> set[tuple[str, str]]:
    return {key for key, row in table_rows.items() if row["deleted_at"] is None}


def truth_keys(server) -> set[tuple[str, str]]:
    return {(pid, job["job_id"]) for pid in PROJECTS for job in server.state.truth(pid)}


def content(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "synced_at"}


def assert_before_or_truth(server, data_dir, before) -> dict:
    """Each row is the one held before or the source's truth, and deletions are real ones."""
    after = rows(data_dir)
    assert set(after) >= set(before)  # nothing lost
    truth = truth_keys(server)
    really_deleted = {(pid, job_id) for pid in PROJECTS for job_id in server.state.deleted_ids(pid)}
    for key, row in after.items():
        if row["deleted_at"] is not None and before.get(key, {}).get("deleted_at") is None:
            assert key in really_deleted, f"{key} marked deleted but the source lists it"
    assert live_keys(after) <= truth | live_keys(before)
    return after


def last_run(data_dir) -> tuple[str, str]:
    with duckdb.connect(str(Warehouse(data_dir).db_path), read_only=True) as con:
        return con.execute("SELECT status, stats FROM sync_runs ORDER BY started_at DESC LIMIT 1").fetchone()


# ------------------------------------------------------------------------ the clock


@pytest.mark.parametrize("date_header", ["Sat, 01 Jan 2000 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_wrong_source_clock_is_reported_and_this_machines_clock_is_used(case, date_header):
    server, proxy, data_dir, before = case
    proxy.date_header = date_header
    settings = settings_for(server, proxy, data_dir, max_clock_skew_seconds=300)
    report = sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=Warehouse(data_dir))
    assert report.clock_skew_seconds is not None
    assert (report.clock_skew_seconds < 0) == date_header.startswith("Sat, 01 Jan 2000")
    assert "this machine's clock was used" in report.summary()
    assert report.deleted == 0
    after = assert_before_or_truth(server, data_dir, before)
    assert live_keys(after) == truth_keys(server)


def test_a_far_future_date_does_not_blow_up_change_capture(case):
    server, proxy, data_dir, before = case
    proxy.date_header = "Fri, 31 Dec 9999 23:59:59 GMT"
    settings = settings_for(server, proxy, data_dir, max_clock_skew_seconds=300, first_day=SINCE)
    report = sync(settings, mode="incremental", warehouse=Warehouse(data_dir))
    assert report.clock_skew_seconds is not None and report.clock_skew_seconds > 0
    assert report.deleted == 0
    assert_before_or_truth(server, data_dir, before)


def test_an_old_clock_believed_lists_nothing_and_so_deletes_nothing(case):
    """With the bound off the year-2000 clock is believed: every window lies after it, none is a listing."""
    server, proxy, data_dir, before = case
    proxy.date_header = "Sat, 01 Jan 2000 00:00:00 GMT"
    settings = settings_for(server, proxy, data_dir, max_clock_skew_seconds=0)
    report = sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=Warehouse(data_dir))
    assert report.deleted == 0 and report.requests == 1
    assert rows(data_dir).keys() == before.keys()
    assert live_keys(rows(data_dir)) == live_keys(before)


# ------------------------------------------------------------------------ counts and pages


def test_a_count_that_ignores_the_filters_costs_a_bounded_number_of_requests(case):
    server, proxy, data_dir, before = case
    honest = sync(settings_for(server, proxy, data_dir), mode="days", since=SINCE, until=UNTIL,
                  warehouse=Warehouse(data_dir))
    proxy.count_override = 10**12
    report = sync(settings_for(server, proxy, data_dir), mode="days", since=SINCE, until=UNTIL,
                  warehouse=Warehouse(data_dir))
    # Every window's pages came back short: each is read, re-read twice with a count check each
    # time, and never split; about four times the honest requests, never thousands.
    assert report.requests <= 4 * honest.requests + 10
    assert report.mismatched_windows == report.windows
    assert report.deleted == 0  # a count that disagrees is no evidence
    after = assert_before_or_truth(server, data_dir, before)
    assert live_keys(after) == truth_keys(server)


def test_a_job_listed_outside_its_window_is_quarantined_not_dropped(case):
    server, proxy, data_dir, before = case
    proxy.out_of_window_job = {"job_id": "stray-9999", "create_time": STRAY_MS, "lastupdate_time": STRAY_MS,
                               "state": "SUCCEED"}
    report = sync(settings_for(server, proxy, data_dir), mode="days", since=SINCE, until=UNTIL,
                  warehouse=Warehouse(data_dir))
    assert report.out_of_window == report.windows  # once per window it was listed in
    assert report.quarantined == report.out_of_window
    # fetched = stored + quarantined + a neighbour's boundary copies: nothing vanishes
    with duckdb.connect(str(Warehouse(data_dir).db_path), read_only=True) as con:
        reasons = con.execute("SELECT DISTINCT job_id, reason FROM quarantine").fetchall()
    assert {job_id for job_id, _ in reasons} == {"stray-9999"}
    assert all("outside the creation window" in reason for _, reason in reasons)
    assert report.deleted == 0
    after = assert_before_or_truth(server, data_dir, before)
    assert live_keys(after) == truth_keys(server)


def test_a_page_with_a_huge_field_quarantines_that_record_and_keeps_the_rest(case):
    server, proxy, data_dir, before = case
    proxy.giant_field_bytes = 3 * MAX_RECORD_BYTES
    report = sync(settings_for(server, proxy, data_dir), mode="days", since=SINCE, until=UNTIL,
                  warehouse=Warehouse(data_dir))
    assert report.quarantined >= report.windows  # the first job of every page
    with duckdb.connect(str(Warehouse(data_dir).db_path), read_only=True) as con:
        longest, reasons = con.execute(
            "SELECT max(length(raw_record)), list(DISTINCT reason) FROM quarantine").fetchone()
    assert longest < 64 * 1024  # the huge value is cut from the kept raw record
    assert reasons == [f"record: more than {MAX_RECORD_BYTES:,} bytes of text"]
    assert report.deleted == 0  # a quarantined record is listed: not deleted
    after = assert_before_or_truth(server, data_dir, before)
    assert live_keys(after) == truth_keys(server)
    assert all(len(row["voice_name"] or "") < MAX_RECORD_BYTES for row in after.values())


# ------------------------------------------------------------------------ time and size


def test_a_dripping_body_fails_within_the_budget_and_changes_nothing(case):
    server, proxy, data_dir, before = case
    proxy.drip_seconds = 2.0
    settings = settings_for(server, proxy, data_dir, timeout=0.5, max_attempts=2, max_retry_seconds=1)
    with pytest.raises(RetriesExhaustedError):
        sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=Warehouse(data_dir))
    assert rows(data_dir) == before
    assert last_run(data_dir)[0] == "failed"


def test_an_endless_body_is_refused_at_the_size_cap_and_changes_nothing(case):
    server, proxy, data_dir, before = case
    proxy.endless_body = True
    settings = settings_for(server, proxy, data_dir, max_response_bytes=1 << 20)
    with pytest.raises(ResponseTooLargeError):
        sync(settings, mode="days", since=SINCE, until=UNTIL, warehouse=Warehouse(data_dir))
    assert rows(data_dir) == before
    assert last_run(data_dir)[0] == "failed"


# ------------------------------------------------------------------------ deletion evidence


def _emptied_once(target_day: str):
    """A hook answering the first listing of one creation day with an empty page."""
    served = {"empty": 0}

    def hook(target: str, page: dict) -> dict:
        if f"create_since={target_day}T00%3A00%3A00Z" in target and "limit=100" in target and not served["empty"]:
            served["empty"] += 1
            return {"count": 0, "jobs": []}
        return page

    return hook, served


def test_a_listing_that_lost_a_day_once_is_listed_again_and_the_run_stops(case):
    server, proxy, data_dir, before = case
    day = (SINCE + timedelta(days=3)).isoformat()
    proxy.page_hook, served = _emptied_once(day)
    with pytest.raises(SourceDisagreementError) as refused:
        sync(settings_for(server, proxy, data_dir), mode="days", since=SINCE, until=UNTIL,
             warehouse=Warehouse(data_dir))
    assert served["empty"] == 1
    assert "nothing there was marked deleted" in str(refused.value)
    assert isinstance(refused.value, MetaStudioError)  # the CLI shows it as one line
    after = rows(data_dir)
    assert live_keys(after) == live_keys(before)  # not one job marked deleted
    assert last_run(data_dir)[0] == "failed"
