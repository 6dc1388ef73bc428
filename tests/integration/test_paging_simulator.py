"""Windows and keyset paging against the simulator over loopback: day, split and update windows
equal the truth, the source clock bounds the last window, and hostile paging, faults and a rate
cap still yield the truth.

The same paging against an in-test listing that changes between pages is in tests/unit/test_paging.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest

from pipelines.metastudio.auth import AKSKAuth
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.paging import Window, day_window, fetch_window
from tests.support.simulators import SIM_NOW


def ms_of(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


SIM_PROJECT = "5b2e9c0d7a6f4e1b8c3d2a1f0e9d8c7b"


@pytest.fixture
def simulator(make_simulator):
    return make_simulator(jobs=3000, seed=21, days=30, projects=(SIM_PROJECT,), now=SIM_NOW)


def sim_client(server, **kwargs) -> MetaStudioClient:
    ak, sk = next(iter(server.config.credentials.items()))
    kwargs.setdefault("timeout", 5.0)
    return MetaStudioClient(server.url, AKSKAuth(ak, sk), **kwargs)


def truth_in(server, window: Window, field: str = "create_time") -> dict[str, dict]:
    lo, hi = ms_of(window.since), ms_of(window.until)
    out = {}
    for record in server.state.truth(SIM_PROJECT):
        value = record[field]
        value_ms = value if value >= 100_000_000_000 else value * 1000
        if lo <= value_ms <= hi:
            out[record["job_id"]] = record
    return out


def fetch_sim(server, window: Window, client_kwargs=None, **kwargs):
    async def main():
        async with sim_client(server, **(client_kwargs or {})) as client:
            result = await fetch_window(client, SIM_PROJECT, window, **kwargs)
            return result, client.stats, client.server_now()

    return asyncio.run(main())


def as_map(result) -> dict[str, dict]:
    jobs = {j["job_id"]: j for j in result.jobs}
    assert len(jobs) == len(result.jobs), "no job twice"
    return jobs


def test_simulator_day_windows_equal_the_truth(simulator):
    for day in (date(2026, 2, 27), date(2026, 2, 28)):
        result, stats, server_now = fetch_sim(simulator, day_window(day))
        assert as_map(result) == truth_in(simulator, day_window(day))  # every field, as served
        assert len(result.jobs) > 100 and result.mismatches == 0
        assert stats.retries.total() == 0 and stats.pages == result.pages
    # the simulated clock from the Date header, run on by local elapsed time (not the local wall clock)
    assert timedelta(0) <= server_now - SIM_NOW < timedelta(seconds=30)


def test_simulator_split_windows_and_update_windows_equal_the_truth(simulator):
    window = Window(datetime(2026, 2, 24, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC))
    result, _, _ = fetch_sim(simulator, window, split_threshold=150)
    assert as_map(result) == truth_in(simulator, window)
    assert len(result.leaves) > 2 and all(leaf.api_count <= 150 for leaf in result.leaves)

    changed = Window(SIM_NOW - timedelta(days=2), SIM_NOW)
    result, _, _ = fetch_sim(simulator, changed, kind="update")
    assert as_map(result) == truth_in(simulator, changed, "lastupdate_time")
    assert len(result.jobs) > 100


def test_simulator_not_after_from_the_source_clock(simulator):
    async def main():
        async with sim_client(simulator) as client:
            await client.list_jobs(SIM_PROJECT, {"limit": 1})
            not_after = client.server_now() - timedelta(hours=2)
            return await fetch_window(client, SIM_PROJECT, day_window(SIM_NOW.date()), not_after=not_after)

    result = asyncio.run(main())
    expected = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 10, tzinfo=UTC))
    assert result.window.since == expected.since
    # the source clock runs on from the Date header by local elapsed time: a moment at most
    assert timedelta(0) <= result.window.until - expected.until < timedelta(seconds=30)
    assert as_map(result) == truth_in(simulator, result.window)


def test_simulator_hostile_paging_still_yields_the_truth(simulator):
    """The simulator deletes a job and back-dates a new one into the window before every page."""
    simulator.configure(hostile_paging=True)
    window = Window(datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC))
    result, _, _ = fetch_sim(simulator, window)
    assert simulator.stats["hostile_mutations"] >= 5
    assert as_map(result) == truth_in(simulator, window)

    # The same hostility defeats plain offset paging: surviving jobs go missing.
    before = set(truth_in(simulator, window))

    async def offset_paging():
        async with sim_client(simulator) as client:
            seen, offset = set(), 0
            while True:
                page = await client.list_jobs(
                    SIM_PROJECT,
                    {
                        "create_since": window.since,
                        "create_until": window.until,
                        "sort_key": "create_time",
                        "sort_dir": "asc",
                        "offset": offset,
                    },
                )
                seen |= {j["job_id"] for j in page.jobs}
                if len(page.jobs) < 100:
                    return seen
                offset += 100

    naive = asyncio.run(offset_paging())
    survivors = before & set(truth_in(simulator, window))
    assert survivors - naive


def test_simulator_faults_are_retried_and_the_result_is_exact(simulator):
    simulator.configure(fault_rate=0.3, faults=("500", "502", "503", "truncated", "stall"), stall_seconds=0.4)
    window = day_window(date(2026, 2, 27))
    result, stats, _ = fetch_sim(
        simulator, window, client_kwargs={"timeout": 0.2, "backoff_base": 0.01, "max_attempts": 12}
    )
    assert as_map(result) == truth_in(simulator, window)
    assert stats.retries.total() > 0
    assert set(stats.retries) <= {"5xx", "malformed", "timeout"}
    assert stats.requests == stats.pages + stats.retries.total()


def test_simulator_rate_limit_is_never_tripped_by_a_client_paced_at_it(simulator):
    simulator.configure(rate_limit=25.0)
    window = Window(datetime(2026, 2, 20, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC))
    result, stats, _ = fetch_sim(
        simulator, window, split_threshold=200, client_kwargs={"max_requests_per_second": 25.0}
    )
    assert as_map(result) == truth_in(simulator, window)
    assert stats.requests >= 20 and stats.retries["429"] == 0
    assert 429 not in simulator.stats["by_status"]
