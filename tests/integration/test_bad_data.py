"""Bad data from the API: every documented rule, end to end over loopback HTTP.

The simulator serves its jobs with the quirks of :mod:`pipelines.simulator.quirks`
(numbers as strings, nulls, missing fields, undocumented enum values, an uncoercible
value, a record without job_id, an older duplicate in the same answer, a count that
disagrees with the page); :func:`~pipelines.simulator.quirks.expected` says what the
warehouse must hold. Nothing is dropped silently: what cannot be normalized is in
``quarantine`` with its reason and its (masked) raw record, and the run reports it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from pipelines.contract import PAGE_LIMIT
from pipelines.simulator.quirks import QUIRKS, UNKNOWN_STATE, expected, quirk_of
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal, epoch
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parents[2]
DAYS = 15
SINCE = (SIM_NOW - timedelta(days=DAYS + 1)).date()
UNTIL = SIM_NOW.date()


@pytest.fixture(scope="module")
def synced(tmp_path_factory, make_module_simulator):
    data_dir = tmp_path_factory.mktemp("bad-data")
    server = make_module_simulator(jobs=1200, seed=31, days=DAYS, projects=PROJECTS, now=SIM_NOW, quirks=QUIRKS)
    report = sync(sim_settings(server, data_dir), mode="days", since=SINCE, until=UNTIL)
    truth = {pid: server.state.truth(pid) for pid in PROJECTS}
    server.stop()
    yield data_dir, report, truth


def _quirked(truth, quirk):
    return [(pid, j) for pid, jobs in truth.items() for j in jobs if quirk_of(j["job_id"], QUIRKS) == quirk]


def test_every_quirk_hit_some_jobs(synced):
    _, _, truth = synced
    for quirk in QUIRKS:
        assert len(_quirked(truth, quirk)) >= 3, quirk


def test_the_warehouse_holds_every_normalizable_job_typed(synced):
    data_dir, report, truth = synced
    kept = {pid: expected(jobs, QUIRKS)[0] for pid, jobs in truth.items()}
    rows = Warehouse(data_dir).jobs_table(include_deleted=False).drop_columns(["synced_at", "deleted_at"])
    # Numbers sent as strings land typed, nulls and missing fields as NULL, unknown enums as sent,
    # duplicates once with their newest version (assert_rows_equal checks each field and key).
    assert_rows_equal(rows.to_pylist(), kept, personal_data="mask")
    states = set(rows["state"].to_pylist())
    assert UNKNOWN_STATE in states


def test_unnormalizable_records_are_quarantined_with_reason_and_masked_raw_record(synced):
    data_dir, report, truth = synced
    must = {(pid, job["job_id"]): quirk for pid, jobs in truth.items()
            for job_id, quirk in expected(jobs, QUIRKS)[1].items() for job in jobs if job["job_id"] == job_id}
    with duckdb.connect(str(Warehouse(data_dir).db_path), read_only=True) as con:
        rows = con.execute("select run_id, project_id, job_id, reason, raw_record from quarantine").fetchall()
    assert len(rows) == len(must) == report.quarantined > 0
    assert {r[0] for r in rows} == {report.run_id}
    by_quirk = {"uncoercible": [], "no_job_id": []}
    for _, pid, job_id, reason, raw in rows:
        record = json.loads(raw)
        if job_id is None:
            by_quirk["no_job_id"].append(record)
            assert "job_id" in reason
            # the raw record is kept (it is how the job can be found again), personal data masked
            candidates = [j for p, j in _quirked(truth, "no_job_id") if p == pid
                          and j["create_time"] == record["create_time"]]
            assert len(candidates) == 1
        else:
            assert must[(pid, job_id)] == "uncoercible"
            by_quirk["uncoercible"].append(record)
            assert "reject_times" in reason and "several" not in reason
            assert record["reject_times"] == "several"
        if record.get("phone"):
            assert re.fullmatch(r"\**\d{4}", record["phone"]), record["phone"]
        for url in (record.get("voice_authorization_url"), record.get("training_input_source_url")):
            assert url is None or "?" not in url
    assert len(by_quirk["uncoercible"]) == sum(1 for q in must.values() if q == "uncoercible")
    assert len(by_quirk["no_job_id"]) == sum(1 for q in must.values() if q == "no_job_id")


def _expected_mismatches(truth) -> dict[tuple[str, date], int]:
    """(project, creation day) -> api_count - fetched that the run must record for that day's window.

    A window answered in one short page is a snapshot: its count (two more per count_mismatch
    job on the page) and its jobs describe one moment, so the difference is kept as served. A
    window of several pages is checked against a fresh count, asked with limit=1: that count is
    off only when the window's first job (by create_time) has the quirk, and then by two.
    """
    by_window: dict[tuple[str, date], list[dict]] = defaultdict(list)
    for pid, jobs in truth.items():
        for job in jobs:
            by_window[(pid, epoch(job["create_time"]).date())].append(job)
    expected = {}
    for key, jobs in by_window.items():
        quirks = [quirk_of(j["job_id"], QUIRKS) for j in jobs]
        served = len(jobs) + quirks.count("duplicates")  # a duplicate is served twice
        if served < PAGE_LIMIT:
            if quirks.count("count_mismatch"):
                expected[key] = 2 * quirks.count("count_mismatch")
        elif quirk_of(min(jobs, key=lambda j: epoch(j["create_time"]))["job_id"], QUIRKS) == "count_mismatch":
            expected[key] = 2
    return expected


def test_count_mismatches_are_recorded_and_reported_without_losing_rows(synced):
    data_dir, report, truth = synced
    with duckdb.connect(str(Warehouse(data_dir).db_path), read_only=True) as con:
        rows = con.execute(
            "select project_id, since, until, api_count - fetched from sync_windows"
            " where run_id = ? and api_count <> fetched", [report.run_id]
        ).fetchall()
    recorded = {(pid, since.date()): diff for pid, since, until, diff in rows}
    assert all(until - since == timedelta(days=1) for _, since, until, _ in rows)  # one window per day
    expected = _expected_mismatches(truth)
    assert recorded == expected
    # Both kinds of window occur: single-page snapshots, and a multi-page day whose fresh count agreed.
    multi_page = {key for key in _windows_with_quirk(truth) if key not in expected}
    assert expected and multi_page
    assert report.mismatched_windows == len(recorded) == report.as_dict()["mismatched_windows"]


def _windows_with_quirk(truth) -> set[tuple[str, date]]:
    return {(pid, epoch(j["create_time"]).date()) for pid, j in _quirked(truth, "count_mismatch")}


def test_the_cli_summary_reports_quarantine_and_mismatches(tmp_path, make_simulator):
    server = make_simulator(jobs=1200, seed=31, days=DAYS, projects=PROJECTS, now=SIM_NOW, quirks=QUIRKS)
    ak, sk = next(iter(server.config.credentials.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
               HUAWEICLOUD_SDK_PROJECT_ID=",".join(PROJECTS), VOICEJOBS_DATA_DIR=str(tmp_path),
               VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0")
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sync", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat()],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    truth = {pid: server.state.truth(pid) for pid in PROJECTS}
    assert result.returncode == 0, result.stderr
    quarantined = sum(len(expected(jobs, QUIRKS)[1]) for jobs in truth.values())
    assert f"quarantined {quarantined}," in result.stdout
    mismatched = len(_expected_mismatches(truth))
    assert mismatched > 0
    assert re.search(rf"windows whose count never matched the pages: {mismatched}$", result.stdout, re.M), result.stdout
