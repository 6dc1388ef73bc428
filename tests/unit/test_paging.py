"""Windows and keyset paging, against an in-test listing that can change between pages.

The same paging against the simulator over loopback is in tests/integration/test_paging_simulator.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import httpx
import orjson
import pytest

from pipelines.contract import EPOCH_MS_THRESHOLD, WireJob, full_record
from pipelines.metastudio import paging
from pipelines.metastudio.auth import TokenAuth, query_pairs
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.paging import (
    SplitBudget,
    SplitBudgetExceeded,
    Window,
    day_window,
    day_windows,
    epoch_seconds,
    fetch_window,
    format_time,
)
from pipelines.metastudio.windows import _epoch_millis

DAY = date(2025, 3, 1)
T0 = datetime(2025, 3, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def ms_of(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class FakeListing:
    """The list endpoint over an in-memory set of jobs: filters, asc/desc sort, offset, limit, count.

    ``before_request(listing, index, params)`` runs before each request is answered, so a
    test can create and delete jobs between pages. Times compare at millisecond precision;
    ties sort by job_id, so the order is stable as the real service's is.
    """

    def __init__(self, jobs: list[dict], before_request: Callable | None = None, count_bias: int = 0) -> None:
        self.jobs = {job["job_id"]: job for job in jobs}
        self.requests: list[dict[str, str]] = []
        self.before_request = before_request
        self.count_bias = count_bias

    @staticmethod
    def _ms(value: int) -> int:
        return value if value >= 100_000_000_000 else value * 1000

    @staticmethod
    def _bound(text: str | None) -> int | None:
        if text is None:
            return None
        return ms_of(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))

    def matching(self, params: dict[str, str]) -> list[dict]:
        out = []
        # The bounds are parsed once a request, not once a job: 5,000 jobs paged in windows
        # took a test 24 s of strptime.
        create_lo, create_hi = self._bound(params.get("create_since")), self._bound(params.get("create_until"))
        update_lo, update_hi = self._bound(params.get("update_since")), self._bound(params.get("update_until"))
        for job in self.jobs.values():
            created, updated = self._ms(job["create_time"]), self._ms(job["lastupdate_time"])
            checks = ((created, create_lo, create_hi), (updated, update_lo, update_hi))
            if any((lo is not None and t < lo) or (hi is not None and t > hi) for t, lo, hi in checks):
                continue
            if "state" in params and job["state"] not in params["state"].split(","):
                continue
            out.append(job)
        field = "lastupdate_time" if params.get("sort_key") == "update_time" else "create_time"
        out.sort(
            key=lambda j: (self._ms(j[field]), j["job_id"]), reverse=params.get("sort_dir", "desc") == "desc"
        )
        return out

    def truth(self, window: Window, field: str = "create_time") -> set[str]:
        lo, hi = ms_of(window.since), ms_of(window.until)
        return {j["job_id"] for j in self.jobs.values() if lo <= self._ms(j[field]) <= hi}

    def handler(self, request: httpx.Request) -> httpx.Response:
        params = dict(query_pairs(request.url))
        index = len(self.requests)
        self.requests.append(params)
        if self.before_request is not None:
            self.before_request(self, index, params)
        rows = self.matching(params)
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 10))
        body = {"count": len(rows) + self.count_bias, "jobs": rows[offset : offset + limit]}
        return httpx.Response(200, content=orjson.dumps(body))


def job(n: int, created_ms: int, updated_ms: int | None = None, state: str = "SUCCEED") -> dict:
    return {
        "job_id": f"job-{n:06d}",
        "create_time": created_ms,
        "lastupdate_time": updated_ms if updated_ms is not None else created_ms + 5_000,
        "state": state,
    }


def spread(n: int, start_ms: int, span_ms: int, seed: int = 1, first: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [job(first + i, start_ms + rng.randrange(span_ms)) for i in range(n)]


def client_for(listing: FakeListing, **kwargs) -> MetaStudioClient:
    return MetaStudioClient(
        "https://metastudio.test",
        TokenAuth("t0ken-value"),
        transport=httpx.MockTransport(listing.handler),
        **kwargs,
    )


def fetch(listing: FakeListing, window: Window, **kwargs):
    async def main():
        async with client_for(listing) as client:
            return await fetch_window(client, "proj", window, **kwargs)

    return asyncio.run(main())


def ids(result) -> list[str]:
    return [j["job_id"] for j in result.jobs]


# ---------------------------------------------------------------- time format and windows


def test_format_time_is_rfc3339_utc_whole_seconds():
    assert format_time(datetime(2025, 1, 10, 8, 43, 17, tzinfo=UTC)) == "2025-01-10T08:43:17Z"
    assert format_time(datetime(2025, 1, 10, 16, 43, 17, 999_999, tzinfo=timezone(timedelta(hours=8)))) == (
        "2025-01-10T08:43:17Z"
    )
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2025, 1, 10, 8, 43, 17))  # noqa: DTZ001 - the point of the test


def test_window_validates_bounds():
    with pytest.raises(ValueError):
        Window(T0, T0 - timedelta(seconds=1))
    with pytest.raises(ValueError):
        Window(datetime(2025, 1, 1), T0)  # noqa: DTZ001 - the point of the test
    assert Window(T0, T0).seconds == 0
    assert Window(T0, T0 + timedelta(hours=1)) < Window(T0 + timedelta(seconds=1), T0 + timedelta(hours=1))
    assert str(day_window(DAY)) == "[2025-03-01T00:00:00Z, 2025-03-02T00:00:00Z]"


def test_day_windows_tile_time_sharing_their_boundary_instants():
    windows = day_windows(date(2024, 2, 27), date(2024, 3, 2))
    assert len(windows) == 5  # 2024 is a leap year: 27, 28, 29 Feb, 1, 2 Mar
    assert windows[0] == day_window(date(2024, 2, 27))
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.until == b.since  # closed windows: no gap at any precision
        assert a.seconds == 86_400
    assert windows[0].since == datetime(2024, 2, 27, tzinfo=UTC)
    assert windows[-1].until == datetime(2024, 3, 3, tzinfo=UTC)
    # a job at any sub-second instant of the range lies in at least one window
    for instant in (datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)):
        assert any(w.since <= instant <= w.until for w in windows)
    with pytest.raises(ValueError):
        day_windows(date(2024, 3, 2), date(2024, 3, 1))


def test_split_makes_two_closed_halves_sharing_a_whole_second_midpoint():
    window = Window(T0, T0 + timedelta(seconds=7))
    low, high = window.split()
    assert low.since == window.since and high.until == window.until
    assert low.until == high.since == T0 + timedelta(seconds=3)
    assert low.until.microsecond == 0
    assert day_window(DAY).split()[0].until == T0 + timedelta(hours=12)
    one_second = Window(T0, T0 + timedelta(seconds=1))
    assert not one_second.can_split()
    with pytest.raises(ValueError):
        one_second.split()
    assert Window(T0, T0 + timedelta(seconds=2)).can_split()


def test_epoch_values_in_seconds_or_milliseconds():
    assert epoch_seconds(1_740_787_200) == 1_740_787_200
    assert epoch_seconds(1_740_787_200_999) == 1_740_787_200
    assert epoch_seconds("1740787200123") == 1_740_787_200
    assert epoch_seconds(None) is None and epoch_seconds(True) is None and epoch_seconds("soon") is None
    threshold = EPOCH_MS_THRESHOLD
    assert [epoch_seconds(v) for v in (0, -1, threshold - 1, threshold, 1.5e12, False, " 17 ")] == [
        0, None, threshold - 1, threshold // 1000, 1_500_000_000, None, 17]
    # The version stamp paging compares: milliseconds, a number of seconds scaled up.
    assert [_epoch_millis(v) for v in (1_740_787_200, 1_740_787_200_999, 1.5e9, True, "1740787200", None)] == [
        1_740_787_200_000, 1_740_787_200_999, 1_500_000_000_000, None, None, None]


# ---------------------------------------------------------------- keyset paging


def test_keyset_paging_reads_every_job_once_without_offsets():
    jobs = spread(950, T0_MS, 86_400_000)
    # jobs just outside the window on both sides, and one exactly on each closed bound
    jobs += [
        job(5000, T0_MS - 1),
        job(5001, T0_MS + 86_400_001),
        job(5002, T0_MS),
        job(5003, T0_MS + 86_400_000),
    ]
    listing = FakeListing(jobs)
    result = fetch(listing, day_window(DAY))
    assert len(ids(result)) == len(set(ids(result)))
    assert set(ids(result)) == listing.truth(day_window(DAY))
    assert {"job-005002", "job-005003"} <= set(ids(result))
    assert all(p["offset"] == "0" for p in listing.requests)  # no ties here: pure keyset
    assert all(p["sort_key"] == "create_time" and p["sort_dir"] == "asc" for p in listing.requests)
    assert all(p["create_until"] == "2025-03-02T00:00:00Z" and p["limit"] == "100" for p in listing.requests)
    since = [p["create_since"] for p in listing.requests]
    assert since == sorted(since) and since[0] == "2025-03-01T00:00:00Z"
    assert result.mismatches == 0 and result.pages == len(listing.requests)
    [leaf] = result.leaves
    assert leaf.api_count == leaf.fetched == 952 and leaf.pages == result.pages and leaf.repaged == 0


def test_timestamps_in_seconds_page_the_same_way():
    jobs = [dict(j, create_time=j["create_time"] // 1000) for j in spread(300, T0_MS, 3_600_000, seed=3)]
    listing = FakeListing(jobs)
    result = fetch(listing, Window(T0, T0 + timedelta(hours=1)))
    assert sorted(ids(result)) == sorted(j["job_id"] for j in jobs)


def test_ties_of_more_than_a_page_in_one_second_are_paged_with_offsets():
    second = T0_MS + 3_600_000
    jobs = spread(80, T0_MS, 3_600_000, seed=2)
    jobs += [job(1000 + i, second + (i % 7)) for i in range(260)]  # 260 jobs within one second
    jobs += [job(2000 + i, second) for i in range(30)]  # 30 more at the very same millisecond
    jobs += spread(90, second + 1000, 3_600_000, seed=4, first=3000)
    listing = FakeListing(jobs)
    window = Window(T0, T0 + timedelta(hours=3))
    result = fetch(listing, window)
    assert len(ids(result)) == len(set(ids(result))) == 460
    assert set(ids(result)) == listing.truth(window)
    tie_requests = [p for p in listing.requests if p["offset"] != "0"]
    assert tie_requests and all(p["create_since"] == "2025-03-01T01:00:00Z" for p in tie_requests)
    assert result.mismatches == 0


def test_update_windows_use_update_bounds_and_sort():
    jobs = [job(i, T0_MS - 86_400_000, T0_MS + i * 60_000) for i in range(250)]
    jobs += [job(900, T0_MS, T0_MS - 1)]  # created in the window, updated before it: not listed
    listing = FakeListing(jobs)
    window = Window(T0, T0 + timedelta(hours=2))
    result = fetch(listing, window, kind="update")
    assert set(ids(result)) == listing.truth(window, "lastupdate_time")
    assert len(result.jobs) == 121  # the window is closed: updates at both ends are in
    assert all(
        p["sort_key"] == "update_time" and "update_since" in p and "create_since" not in p
        for p in listing.requests
    )
    assert result.kind == "update"


def test_filters_are_sent_with_every_request():
    jobs = [job(i, T0_MS + i * 1000, state="FAILED" if i % 3 else "SUCCEED") for i in range(300)]
    listing = FakeListing(jobs)
    result = fetch(listing, day_window(DAY), filters={"state": ["FAILED", "WAITING"]})
    assert len(result.jobs) == 200 and all(j["state"] == "FAILED" for j in result.jobs)
    assert all(p["state"] == "FAILED,WAITING" for p in listing.requests)


# ---------------------------------------------------------------- a listing that moves while it is read


def mutating(start: int, stop: int, seed: int = 5):
    """Before requests start..stop-1: delete 3 jobs (seen or not) and create 2 (behind and ahead of the cursor)."""
    rng = random.Random(seed)
    counter = iter(range(10_000, 20_000))
    log = {"deleted": set(), "created": set()}

    def before(listing: FakeListing, index: int, params: dict) -> None:
        if not start <= index < stop:
            return
        inside = sorted(listing.truth(day_window(DAY)))
        for victim in rng.sample(inside, 3):
            del listing.jobs[victim]
            log["deleted"].add(victim)
        for _ in range(2):
            new = job(next(counter), T0_MS + rng.randrange(86_400_000))
            listing.jobs[new["job_id"]] = new
            log["created"].add(new["job_id"])

    return before, log


def test_jobs_deleted_and_created_between_pages_are_neither_lost_nor_duplicated():
    original = spread(700, T0_MS, 86_400_000, seed=9)
    before, log = mutating(1, 6)
    listing = FakeListing(original, before_request=before)
    result = fetch(listing, day_window(DAY))
    got = ids(result)
    assert len(got) == len(set(got))
    survivors = {j["job_id"] for j in original} - log["deleted"]
    assert survivors <= set(got)  # no surviving job lost
    assert log["deleted"].isdisjoint(got)  # the newest pass is the truth: deleted jobs are gone
    assert set(got) == listing.truth(day_window(DAY))  # and jobs created mid-read are found
    assert result.mismatches >= 1 and log["created"] and log["deleted"]
    assert sum(leaf.repaged for leaf in result.leaves) >= 1


def test_the_same_moving_listing_defeats_plain_offset_paging():
    """Why the keyset exists: offsets over the same mutations lose surviving jobs."""
    original = spread(700, T0_MS, 86_400_000, seed=9)
    before, log = mutating(1, 6)
    listing = FakeListing(original, before_request=before)

    async def offset_paging():
        async with client_for(listing) as client:
            seen: dict[str, dict] = {}
            offset = 0
            while True:
                page = await client.list_jobs(
                    "proj",
                    {
                        "create_since": T0,
                        "create_until": T0 + timedelta(days=1),
                        "sort_key": "create_time",
                        "sort_dir": "asc",
                        "offset": offset,
                    },
                )
                seen.update({j["job_id"]: j for j in page.jobs})
                if len(page.jobs) < 100:
                    return set(seen)
                offset += 100

    naive = asyncio.run(offset_paging())
    survivors = {j["job_id"] for j in original} - log["deleted"]
    assert not survivors <= naive


def test_a_count_that_never_agrees_is_repaged_then_recorded_not_split():
    """Pages that came back short listed the window completely: a count off by one is the server's error."""
    jobs = [job(i, T0_MS + (i % 8) * 1000 + i) for i in range(500)]  # ~62 jobs in each of 8 seconds
    listing = FakeListing(jobs, count_bias=1)  # the server always counts one job too many
    window = Window(T0, T0 + timedelta(seconds=8))
    result = fetch(listing, window, max_repage=1)
    assert sorted(ids(result)) == sorted(j["job_id"] for j in jobs)
    # one leaf, re-paged once, its disagreement recorded as the server's
    assert [(leaf.api_count, leaf.fetched, leaf.repaged) for leaf in result.leaves] == [(501, 500, 1)]
    assert result.mismatches == 2
    # two passes plus a count check after each: nothing split
    assert len(listing.requests) == result.pages + 2 and result.pages % 2 == 0


def test_a_count_that_ignores_the_filters_splits_nothing():
    """count = 10**12 on every page: the window is read once per pass and never split to the second."""
    jobs = spread(160, T0_MS, 86_400_000, seed=3)
    listing = FakeListing(jobs, count_bias=10**12)
    result = fetch(listing, day_window(DAY), split_threshold=10_000)
    assert sorted(ids(result)) == sorted(j["job_id"] for j in jobs)
    # A full first page with a count over the threshold splits once; each half's first page is
    # short, so it is read whole and splits no further: splitting is bounded by the real jobs.
    assert sum(leaf.fetched for leaf in result.leaves) == 160
    assert all(leaf.pages == 1 and leaf.repaged == 0 for leaf in result.leaves)
    assert len(listing.requests) == 1 + len(result.leaves) == 3


def test_splits_are_bounded_by_the_runs_budget():
    jobs = spread(2_000, T0_MS, 86_400_000, seed=4)
    listing = FakeListing(jobs)
    budget = SplitBudget(3)
    with pytest.raises(SplitBudgetExceeded, match="more than 3 window splits"):
        fetch(listing, day_window(DAY), split_threshold=100, split_budget=budget)
    assert budget.used == 3


def test_a_job_outside_the_window_neither_ends_the_pass_nor_moves_the_cursor():
    """A record whose create_time lies far outside the window sits on every page: paging goes on."""
    jobs = spread(450, T0_MS, 86_400_000, seed=5)
    listing = FakeListing(jobs)
    stray = {"job_id": "stray", "create_time": 253402214400000, "lastupdate_time": 253402214400000,
             "state": "SUCCEED"}
    inner = listing.handler

    def handler(request):
        response = inner(request)
        body = orjson.loads(response.content)
        body["jobs"].append(stray)  # a server bug: listed although outside the filter
        body["count"] += 1
        return httpx.Response(200, content=orjson.dumps(body))

    async def main():
        client = MetaStudioClient("https://metastudio.test", TokenAuth("t0ken-value"),
                                  transport=httpx.MockTransport(handler))
        async with client:
            return await fetch_window(client, "proj", day_window(DAY))

    result = asyncio.run(main())
    assert {j["job_id"] for j in jobs} <= set(ids(result))  # not one job of the day lost
    assert "stray" in ids(result)  # handed on: the sync stores or quarantines every record


def test_a_wrong_count_on_a_single_page_is_recorded_without_repaging():
    listing = FakeListing([job(i, T0_MS + i * 1000) for i in range(30)], count_bias=2)
    result = fetch(listing, day_window(DAY))
    assert len(result.jobs) == 30 and len(listing.requests) == 1
    assert result.mismatches == 1
    assert [(leaf.api_count, leaf.fetched, leaf.repaged) for leaf in result.leaves] == [(32, 30, 0)]


# ---------------------------------------------------------------- splitting and clamping


def test_windows_over_the_threshold_are_split_and_the_leaves_tile_the_window():
    jobs = spread(1200, T0_MS, 86_400_000, seed=12)
    listing = FakeListing(jobs)
    window = day_window(DAY)
    result = fetch(listing, window, split_threshold=250)
    got = ids(result)
    assert len(got) == len(set(got)) and set(got) == listing.truth(window)
    assert len(result.leaves) >= 5
    assert all(leaf.api_count <= 250 and leaf.api_count == leaf.fetched for leaf in result.leaves)
    assert result.leaves[0].window.since == window.since and result.leaves[-1].window.until == window.until
    for a, b in zip(result.leaves, result.leaves[1:], strict=False):
        assert a.window.until == b.window.since
    assert result.requests > result.pages  # split probes are requests, not pages
    assert result.api_count >= len(got)


def test_halves_are_fetched_concurrently():
    active = {"now": 0, "max": 0}
    listing = FakeListing(spread(400, T0_MS, 86_400_000, seed=13))

    async def handler(request: httpx.Request) -> httpx.Response:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.005)
        active["now"] -= 1
        return listing.handler(request)

    async def main():
        async with MetaStudioClient(
            "https://m.test", TokenAuth("t0ken-value"), transport=httpx.MockTransport(handler)
        ) as client:
            return await fetch_window(client, "proj", day_window(DAY), split_threshold=100)

    result = asyncio.run(main())
    assert active["max"] >= 2 and len(result.jobs) == 400


def test_not_after_clamps_the_window_end():
    jobs = spread(500, T0_MS, 86_400_000, seed=14)
    listing = FakeListing(jobs)
    not_after = T0 + timedelta(hours=10, minutes=30, seconds=15, microseconds=700_000)
    result = fetch(listing, day_window(DAY), not_after=not_after)
    clamped = Window(T0, T0 + timedelta(hours=10, minutes=30, seconds=15))
    assert result.window == clamped
    assert all(p["create_until"] == "2025-03-01T10:30:15Z" for p in listing.requests)
    assert set(ids(result)) == listing.truth(clamped)
    assert 0 < len(result.jobs) < 500


def test_a_window_wholly_after_not_after_is_not_requested():
    listing = FakeListing(spread(10, T0_MS, 1000))
    result = fetch(listing, day_window(DAY), not_after=T0 - timedelta(seconds=1))
    assert result.jobs == [] and result.leaves == [] and listing.requests == []
    assert result.window == day_window(DAY)


def test_an_empty_window_costs_one_request():
    listing = FakeListing([])
    result = fetch(listing, day_window(DAY))
    assert result.jobs == [] and len(listing.requests) == 1
    assert [(leaf.api_count, leaf.fetched, leaf.pages) for leaf in result.leaves] == [(0, 0, 1)]


# ---------------------------------------------------------------- handing jobs to a sink


def fetch_into_sink(listing: FakeListing, window: Window, **kwargs):
    """fetch_window with a sink: (result, the chunks handed, requests made before each chunk)."""
    chunks: list[list[dict]] = []
    requests_before: list[int] = []

    async def sink(covered: Window, jobs: list[dict]) -> None:
        assert covered == window
        chunks.append(jobs)
        requests_before.append(len(listing.requests))

    async def main():
        async with client_for(listing) as client:
            return await fetch_window(client, "proj", window, sink=sink, **kwargs)

    return asyncio.run(main()), chunks, requests_before


def test_a_sink_gets_the_jobs_in_bounded_chunks_while_the_window_is_still_listed():
    jobs = spread(5_000, T0_MS, 86_400_000, seed=21)
    window = day_window(DAY)
    whole = fetch(FakeListing(jobs), window, split_threshold=1_500)
    listing = FakeListing(jobs)
    result, chunks, requests_before = fetch_into_sink(listing, window, split_threshold=1_500)
    assert result.jobs == [] and result.listed == len(whole.jobs) == 5_000
    assert sorted(result.ids()) == sorted(ids(whole))
    handed = [j["job_id"] for chunk in chunks for j in chunk]
    assert sorted(handed) == sorted(ids(whole))  # every job once, none lost
    assert max(len(chunk) for chunk in chunks) <= paging.SINK_ROWS + paging.PAGE_LIMIT and len(chunks) >= 3
    # the first chunks went out long before the listing ended: the window was never held whole
    assert requests_before[0] < len(listing.requests) / 2
    assert [(leaf.api_count, leaf.fetched) for leaf in result.leaves] == [
        (leaf.api_count, leaf.fetched) for leaf in whole.leaves
    ]


def test_a_sink_gets_each_job_as_its_bytes_and_a_fetch_without_one_gets_it_decoded():
    """Jobs on their way to normalization stay bytes (WireJobs, paging's fields decoded); a
    window fetched whole, which callers read as records, holds decoded jobs."""
    jobs = spread(300, T0_MS, 86_400_000, seed=5)
    window = day_window(DAY)
    whole = fetch(FakeListing(jobs), window)
    _, chunks, _ = fetch_into_sink(FakeListing(jobs), window)
    handed = [j for chunk in chunks for j in chunk]
    assert handed and all(type(j) is WireJob for j in handed)
    assert not any(type(j) is WireJob for j in whole.jobs)
    by_id = {j["job_id"]: j for j in whole.jobs}
    assert {j["job_id"]: full_record(j) for j in handed} == by_id


def test_a_sink_gets_a_job_again_only_in_a_newer_version(monkeypatch):
    monkeypatch.setattr(paging, "SINK_ROWS", 10)  # chunks go out during every pass
    old = job(1, T0_MS + 1_000, T0_MS + 50_000)
    newer = dict(old, lastupdate_time=T0_MS + 90_000, state="FAILED")
    older = dict(old, lastupdate_time=T0_MS + 10_000, state="WAITING")
    filler = [job(2 + i, T0_MS + 2_000 + i * 1_000) for i in range(150)]
    gone_unseen, gone_seen = filler[120]["job_id"], filler[130]["job_id"]
    a, b = job(900, T0_MS + 500), job(901, T0_MS + 600)

    def before(listing, index, params):
        # While a pass reads its second page, a job is deleted ahead of the cursor and one is
        # created behind it, so the pass disagrees with the count and the window is paged again.
        # Each count check finds the job changed: first to a newer version, then to an older
        # one (a stale replica answering).
        if index in (1, 4):
            del listing.jobs[gone_unseen if index == 1 else gone_seen]
            added = a if index == 1 else b
            listing.jobs[added["job_id"]] = added
        if index in (2, 5):
            listing.jobs[old["job_id"]] = newer if index == 2 else older

    listing = FakeListing([old, *filler], before_request=before)
    result, chunks, _ = fetch_into_sink(listing, day_window(DAY))
    assert sum(leaf.repaged for leaf in result.leaves) == 2  # three passes
    handed = [j for chunk in chunks for j in chunk]
    assert [j["lastupdate_time"] for j in handed if j["job_id"] == old["job_id"]] == [
        old["lastupdate_time"], newer["lastupdate_time"]]  # the older one was not handed
    others = [j["job_id"] for j in handed if j["job_id"] != old["job_id"]]
    assert len(others) == len(set(others)) == 151  # later passes hand nothing again
    assert gone_unseen not in others and gone_seen in others
    assert set(result.ids()) == listing.truth(day_window(DAY)) and gone_seen not in result.ids()


def test_the_ids_a_sink_run_reports_are_the_last_passs_listing():
    """Deletion evidence: a job deleted while the window was paged may have been handed, but
    the ids that say what the source lists are those of the pass that agreed with the count."""
    original = spread(700, T0_MS, 86_400_000, seed=9)
    before, log = mutating(1, 6)
    listing = FakeListing(original, before_request=before)
    result, chunks, _ = fetch_into_sink(listing, day_window(DAY))
    assert set(result.ids()) == listing.truth(day_window(DAY))
    assert log["deleted"].isdisjoint(result.ids()) and log["created"] <= set(result.ids())
    assert result.listed == len(result.ids())
    handed = {j["job_id"] for chunk in chunks for j in chunk}
    assert set(result.ids()) <= handed
