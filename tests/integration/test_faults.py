"""Fault injection over loopback HTTP: the sync gets through a flaky, throttling source on its own.

About one request in ten is answered with a fault drawn from every kind the simulator
serves (429 with Retry-After, 500, 502 with an HTML body, 503, truncated JSON, a stall
longer than the client's timeout), on top of added latency and a server-side rate cap
that answers the excess with 429. The sync must finish with the warehouse equal to the
source, and every retry must be accounted for by cause, in the SyncReport, the
``sync_runs`` table, the CLI summary and the Dagster materialization's metadata.

"Every retry is an injected fault" only holds if no answer is late for another reason, so
the bounds are chosen to hold on a loaded machine: the client's timeout is 5 s (the
simulator answers in milliseconds) and a stall lasts a minute (always a timeout, however
slow the client). The in-process sync talks to a simulator in a process of its own, so its
answers never wait for the sync's share of the interpreter lock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.jobs import voice_training_jobs
from pipelines.metastudio.errors import RetriesExhaustedError
from pipelines.resources import MetaStudioResource, WarehouseResource
from pipelines.simulator.config import FAULT_KINDS
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal, epoch
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings, truth_by_project

REPO = Path(__file__).resolve().parents[2]
DAYS = 45
SINCE = (SIM_NOW - timedelta(days=DAYS + 1)).date()
UNTIL = SIM_NOW.date()
TIMEOUT = 5.0  # the client's per-request timeout: far beyond an answer's time on a loaded machine
STALL_SECONDS = 60.0  # far beyond TIMEOUT: a stall is a timeout however late the client looks
MAX_ATTEMPTS = 6

#: Which retry cause of the client each simulator fault must show up as.
CAUSE_OF_FAULT = {
    "429": "429",
    "rate_limit": "429",
    "500": "5xx",
    "502": "5xx",
    "503": "5xx",
    "truncated": "malformed",
    "stall": "timeout",
}


def faulty_config(**changes) -> dict:
    """The faulty source's SimulatorConfig fields, with ``changes``."""
    values = dict(jobs=1200, seed=5, days=DAYS, projects=PROJECTS, now=SIM_NOW,
                  fault_rate=0.1, faults=FAULT_KINDS, latency_ms=5, rate_limit=20, stall_seconds=STALL_SECONDS)
    values.update(changes)
    return values


def expected_retries(server) -> dict[str, int]:
    """Every fault the simulator served, as the retry cause the client must have counted."""
    causes: Counter = Counter()
    for kind, n in server.stats["faults"].items():
        causes[CAUSE_OF_FAULT[kind]] += n
    return dict(causes)


def live_rows(data_dir) -> list[dict]:
    table = Warehouse(data_dir).jobs_table(include_deleted=False)
    return table.drop_columns(["synced_at", "deleted_at"]).to_pylist()


def test_a_mix_of_every_fault_is_retried_counted_by_cause_and_loses_nothing(tmp_path, make_simulator):
    server = make_simulator(own_process=True, **faulty_config())
    settings = sim_settings(server, tmp_path, timeout=TIMEOUT, max_attempts=MAX_ATTEMPTS,
                            max_retry_seconds=60)
    report = sync(settings, mode="days", since=SINCE, until=UNTIL)

    assert_rows_equal(live_rows(tmp_path), truth_by_project(server), personal_data="mask")
    served = server.stats["faults"]
    # The mix really was a mix: every kind was served. (The draws follow a seeded sequence, so
    # which kinds come up does not depend on timing; rate-cap refusals do, and may be none.)
    assert set(FAULT_KINDS) <= served.keys(), served
    drawn = report.requests - served.get("rate_limit", 0)  # requests that drew for a fault
    injected = sum(n for kind, n in served.items() if kind != "rate_limit")
    assert 0.05 <= injected / drawn <= 0.2

    # Each fault cost exactly one retry, under the cause it belongs to; nothing else was retried.
    assert report.retries == expected_retries(server)
    assert report.retries_total == report.requests - report.pages
    # Bounded: never more than the attempt budget per page, far fewer in practice.
    assert report.retries_total <= (MAX_ATTEMPTS - 1) * report.pages
    assert report.as_dict()["retries_by_cause"] == report.retries

    with duckdb.connect(str(Warehouse(tmp_path).db_path), read_only=True) as con:
        status, retries, requests = con.execute(
            "select status, retries, requests from sync_runs where run_id = ?", [report.run_id]
        ).fetchone()
    assert (status, retries, requests) == ("succeeded", report.retries_total, report.requests)


def test_the_source_rate_cap_is_waited_out_and_counted(tmp_path, make_simulator):
    """A cap of one request per two seconds, no burst: windows fetched side by side are released
    together after each wait, so all but one are refused every time; each refusal is one retry."""
    server = make_simulator(**faulty_config(jobs=60, days=3, projects=PROJECTS[:1], fault_rate=0.0, latency_ms=0,
                                           rate_limit=0.5))
    since = UNTIL - timedelta(days=2)
    settings = sim_settings(server, tmp_path, timeout=TIMEOUT, max_attempts=20, max_retry_seconds=120)
    report = sync(settings, mode="days", since=since, until=UNTIL)
    served = server.stats["faults"]
    truth = {pid: [j for j in jobs if since <= epoch(j["create_time"]).date()]
             for pid, jobs in truth_by_project(server).items()}
    assert served.keys() == {"rate_limit"} and served["rate_limit"] >= 2, served
    assert report.retries == {"429": served["rate_limit"]}
    assert report.retries_total == report.requests - report.pages
    assert_rows_equal(live_rows(tmp_path), truth, personal_data="mask")


def _cli_env(server, data_dir, **extra) -> dict[str, str]:
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
               HUAWEICLOUD_SDK_PROJECT_ID=",".join(config.projects), VOICEJOBS_DATA_DIR=str(data_dir),
               VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", VOICEJOBS_TIMEOUT_SECONDS=str(TIMEOUT),
               VOICEJOBS_MAX_ATTEMPTS=str(MAX_ATTEMPTS), VOICEJOBS_MAX_RETRY_SECONDS="60")
    env.update(extra)
    return env


def test_the_cli_summary_reports_retries_by_cause(tmp_path, make_simulator):
    server = make_simulator(**faulty_config(seed=9))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sync", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat()],
        env=_cli_env(server, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    expected = expected_retries(server)
    assert_rows_equal(live_rows(tmp_path), truth_by_project(server), personal_data="mask")

    line = re.search(r"retries (\d+) \(([^)]*)\)", result.stdout)
    assert line, result.stdout
    total, causes = int(line.group(1)), dict(
        (k, int(v)) for k, v in (part.split(": ") for part in line.group(2).split(", "))
    )
    assert causes == expected and total == sum(expected.values()) > 0
    # Off a terminal, retries are counted in the summary, not announced one line each (a
    # terminal shows them on one updating line); no traceback either way.
    assert "Traceback" not in result.stderr
    assert result.stderr.count("retrying in") == 0


def test_dagster_metadata_reports_retries_by_cause(tmp_path, make_simulator):
    # Dagster's resource keeps the default 30 s timeout, so this mix leaves stalls out.
    faults = tuple(k for k in FAULT_KINDS if k != "stall")
    server = make_simulator(**faulty_config(seed=13, faults=faults, fault_rate=0.15))
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    resources = {
        "metastudio": MetaStudioResource(endpoint=server.url, ak=ak, sk=sk, project_ids=",".join(config.projects),
                                         safety_lag_seconds=0, max_clock_skew_seconds=0, first_day=SINCE.isoformat()),
        "warehouse": WarehouseResource(data_dir=str(tmp_path)),
    }
    # The partitions of the simulator's days exist as of the day after its clock, whatever today is.
    with dg.partition_loading_context(effective_dt=SIM_NOW + timedelta(days=1)):
        result = dg.materialize(
            [voice_training_jobs], resources=resources, instance=dg.DagsterInstance.ephemeral(),
            tags={"dagster/asset_partition_range_start": SINCE.isoformat(),
                  "dagster/asset_partition_range_end": (UNTIL - timedelta(days=1)).isoformat()},
        )
    assert result.success
    expected = expected_retries(server)
    # A single-run backfill reports the one sync on every partition it materialized.
    mats = result.asset_materializations_for_node("voice_training_jobs")
    assert len(mats) == DAYS + 1
    for mat in mats:
        assert mat.metadata["retries_by_cause"].value == expected
        assert mat.metadata["retries"].value == sum(expected.values()) > 0


@pytest.mark.parametrize("kind, cause", [("503", "5xx"), ("truncated", "malformed"), ("stall", "timeout")])
def test_a_fault_that_never_ends_stops_after_the_attempt_budget(tmp_path, kind, cause, make_simulator):
    server = make_simulator(**faulty_config(jobs=50, fault_rate=1.0, faults=(kind,), rate_limit=None))
    settings = sim_settings(server, tmp_path, timeout=0.5, max_attempts=3, max_retry_seconds=30)
    with pytest.raises(RetriesExhaustedError) as info:
        sync(settings, mode="days", since=UNTIL, until=UNTIL)
    assert server.stats["faults"] == {kind: 3}  # exactly the budget, then a clean stop
    message = str(info.value)
    assert "after 3 attempts" in message and "VOICEJOBS_MAX_ATTEMPTS" in message
    with duckdb.connect(str(Warehouse(tmp_path).db_path), read_only=True) as con:
        status, stats = con.execute("select status, stats from sync_runs").fetchone()
    # Every failed attempt is counted under its cause, the last one (not retried) included.
    assert status == "failed" and f'"retries_by_cause": {{"{cause}": 3}}' in stats
