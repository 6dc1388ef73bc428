"""Count bisection (pipelines.metastudio.bisection), on hand-built creation times.

Change capture finds deletions by comparing, range by range, the source's ``count`` with
the warehouse's live jobs, and splits only the ranges that disagree. These tests build both
sides by hand (sorted millisecond creation times), so every boundary is exact: a deletion on
a whole second, on a midnight, and inside one second holding 300 jobs. They assert the
ranges found and the count requests made, so an off-by-one at a closed boundary (which
would silently cost requests or hide a deletion) fails here.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.metastudio.bisection import LEAF_JOBS, find_disagreeing_windows, halves
from pipelines.metastudio.paging import Window
from pipelines.warehouse import count_in_ranges

FIRST = date(2025, 3, 1)
T0 = datetime(2025, 3, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
NOT_AFTER = T0 + timedelta(days=4)


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // MS


class Source:
    """The listing's count over closed creation-time ranges at whole seconds, as the API answers."""

    def __init__(self, times_ms: list[int]) -> None:
        self.times = np.sort(np.asarray(times_ms, dtype=np.int64))
        self.asked: list[tuple[datetime, datetime]] = []

    async def list_jobs(self, project_id: str, params: dict) -> SimpleNamespace:
        since, until = params["create_since"], params["create_until"]
        assert since.microsecond == 0 and until.microsecond == 0  # the wire has whole seconds
        self.asked.append((since, until))
        lo = np.searchsorted(self.times, ms(since), "left")
        hi = np.searchsorted(self.times, ms(until), "right")
        return SimpleNamespace(count=int(hi - lo), jobs=[])


def stored_counts(times_ms: list[int]):
    """The warehouse's side: its live creation times (microseconds, as live_creation_times
    returns them) counted per closed range by count_in_ranges, as the sync does."""
    times_us = np.sort(np.asarray(times_ms, dtype=np.int64) * 1000)
    return lambda ranges: count_in_ranges(times_us, [(w.since, w.until) for w in ranges])


def spread(n: int, seed: int = 1) -> list[int]:
    """n creation times over the four days, none on a whole second or a midnight."""
    rng = np.random.default_rng(seed)
    return [t for t in (ms(T0) + rng.integers(1, 4 * 86_400_000, n)).tolist() if t % 1000]


def bisect(source_ms: list[int], stored_ms: list[int]):
    source = Source(source_ms)
    found = asyncio.run(find_disagreeing_windows(source, "p", T0, NOT_AFTER, stored_counts(stored_ms)))
    return found, source


def contains(window: Window, t_ms: int) -> bool:
    return ms(window.since) <= t_ms <= ms(window.until)


def test_nothing_changed_costs_one_request():
    times = spread(2_000)
    found, source = bisect(times, times)
    assert found.windows == [] and found.requests == 1 == len(source.asked)
    assert source.asked == [(T0, NOT_AFTER)]


@pytest.mark.parametrize("where", ["second", "midnight"])
def test_a_deletion_on_a_boundary_is_found_in_one_leaf(where):
    at = T0 + timedelta(days=2) if where == "midnight" else T0 + timedelta(days=1, hours=7, seconds=13)
    times = spread(2_000)
    stored = sorted([*times, ms(at)])  # the warehouse still holds the job the source deleted
    found, source = bisect(times, stored)
    assert len(found.windows) >= 1 and all(contains(w, ms(at)) for w in found.windows)
    # Every leaf holds the instant: halves share their middle instant, so a job on it is in
    # both halves on both sides. A leaf is a range of at most LEAF_JOBS jobs at the source.
    for window in found.windows:
        assert Source(times).times[(Source(times).times >= ms(window.since))
                                   & (Source(times).times <= ms(window.until))].size <= LEAF_JOBS
    # Cost: one count per range asked, each level splitting only the disagreeing ranges in two.
    assert found.requests == len(source.asked)
    levels = 1 + sum(1 for a, b in zip(source.asked, source.asked[1:], strict=False) if b[0] < a[0])
    assert found.requests <= 1 + 2 * (levels + 2) * len(found.windows)


def test_the_costs_of_a_second_boundary_are_exact():
    """Pinned numbers: a boundary made half-open on either side, or moved by a millisecond,
    changes which ranges disagree and so what is asked."""
    at = T0 + timedelta(days=1, hours=7, seconds=13)
    times = spread(2_000)
    found, source = bisect(times, sorted([*times, ms(at)]))
    day = timedelta(days=1)
    # Only left halves are asked: no stored job sits on a shared instant, so each right half
    # holds its parent's count less its left half's.
    assert source.asked == [
        (T0, T0 + 4 * day),                                  # 1,996 jobs at the source: disagrees
        (T0, T0 + 2 * day),                                  # halves on a midnight: the left disagrees
        (T0, T0 + day),                                      # then days: agrees, so [day, 2 days] disagrees
        (T0 + day, T0 + day + timedelta(hours=12)),
        (T0 + day, T0 + day + timedelta(hours=6)),           # agrees: 06:00-12:00 disagrees
        (T0 + day + timedelta(hours=6), T0 + day + timedelta(hours=9)),
    ]
    # 131 jobs at the source from 06:00 to 12:00, more than LEAF_JOBS: split once more; the
    # 60 from 06:00 to 09:00 are at most LEAF_JOBS, so that range is paged, not split
    assert found.windows == [Window(T0 + day + timedelta(hours=6), T0 + day + timedelta(hours=9))]
    assert found.requests == 6


def test_a_stored_job_on_the_shared_instant_has_both_halves_asked():
    """A job on the instant two halves share is in both: the right half's count no longer
    follows from the others, so it is asked. The deletion of that very job is found."""
    midnight = T0 + timedelta(days=2)
    times = spread(2_000)
    found, source = bisect(times, sorted([*times, ms(midnight)]))  # the source deleted it
    assert (T0, midnight) in source.asked and (midnight, NOT_AFTER) in source.asked
    assert found.windows and all(contains(w, ms(midnight)) for w in found.windows)
    assert found.requests == len(source.asked)


def test_a_missed_job_on_the_shared_instant_hides_no_deletion_beside_it():
    """The source holds a job on the instant the first halves share that the warehouse lacks,
    and deleted two in the right half, a day away from it (a job on a shared instant is in both
    halves on both sides, so a deletion beside it in the same range would cancel it, however
    the counts were had): the right half's count, taken as its parent's less the left's, is
    off by the missed job (-2 where the truth is -1), and still disagrees. Every place is found."""
    midnight = T0 + timedelta(days=2)
    times = spread(2_000)
    deleted = [t for t in times if t > ms(midnight + timedelta(days=1, hours=1))][::200][:2]
    source_times = sorted([*[t for t in times if t not in deleted], ms(midnight)])
    found, source = bisect(source_times, times)
    assert (midnight, NOT_AFTER) not in source.asked  # the right half's count was not asked
    for place in (ms(midnight), *deleted):
        assert any(contains(w, place) for w in found.windows), place


def test_a_deletion_inside_a_second_of_300_jobs_stops_at_that_second():
    second = T0 + timedelta(days=3, hours=11, minutes=5, seconds=30)
    crowd = [ms(second) + 1 + i * 3 for i in range(300)]  # 300 jobs inside one second
    times = sorted(spread(1_000) + crowd)
    stored = times
    source = [t for t in times if t != crowd[150]]  # the source deleted one of them
    found, asked = bisect(source, stored)
    assert found.windows == [Window(second, second + timedelta(seconds=1))]  # cannot split below a second
    assert found.requests == len(asked.asked)
    assert all(w[1] - w[0] >= timedelta(seconds=1) for w in asked.asked)


def test_halves_share_their_middle_instant_on_whole_seconds_and_midnights():
    days = Window(T0 + timedelta(hours=5), T0 + timedelta(days=3, hours=2))
    low, high = halves(days)
    assert low.until == high.since == T0 + timedelta(days=2)  # a midnight while spanning days
    seconds = Window(T0, T0 + timedelta(seconds=7))
    low, high = halves(seconds)
    assert low.until == high.since == T0 + timedelta(seconds=3) and low.since == T0 and high.until == seconds.until
    assert halves(Window(T0, T0 + timedelta(seconds=1))) is None


def test_count_in_ranges_counts_closed_ranges_to_the_microsecond():
    times = np.array([ms(T0) * 1000, ms(T0 + timedelta(seconds=1)) * 1000 - 1, ms(T0 + timedelta(seconds=1)) * 1000])
    assert count_in_ranges(times, [(T0, T0 + timedelta(seconds=1))]) == [3]
    assert count_in_ranges(times, [(T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1))]) == [2]
    assert count_in_ranges(times, [(T0, T0 + timedelta(seconds=1) - timedelta(microseconds=1))]) == [2]
    assert count_in_ranges(times, [(T0 - timedelta(days=1), T0 - timedelta(seconds=1))]) == [0]


def test_a_job_the_warehouse_missed_is_found_like_a_deletion():
    """The counts disagree the other way (the source holds one more): the same search finds it."""
    at = T0 + timedelta(days=2, hours=3, seconds=41)
    times = spread(2_000)
    found, source = bisect(sorted([*times, ms(at) + 250]), times)
    assert found.windows and all(contains(w, ms(at) + 250) for w in found.windows)
    assert found.requests == len(source.asked) < 20


def test_changes_in_two_places_are_each_found_and_nothing_between_them_is_paged():
    first, second = T0 + timedelta(hours=9, seconds=5), T0 + timedelta(days=3, hours=20, seconds=7)
    times = spread(2_000)
    found, source = bisect(times, sorted([*times, ms(first), ms(second)]))
    assert any(contains(w, ms(first)) for w in found.windows)
    assert any(contains(w, ms(second)) for w in found.windows)
    # only the disagreeing ranges are paged: together far less than the four days
    assert sum((w.until - w.since for w in found.windows), timedelta()) <= timedelta(days=1)
    one, _ = bisect(times, sorted([*times, ms(first)]))
    assert found.requests <= 2 * one.requests + 1  # the cost grows with the places that changed


def test_a_disagreeing_range_of_at_most_a_leaf_of_jobs_is_paged_whole():
    times = spread(LEAF_JOBS - 1)
    deleted = times[len(times) // 2]
    found, source = bisect([t for t in times if t != deleted], times)
    assert found.windows == [Window(T0, NOT_AFTER)] and found.requests == 1 == len(source.asked)


def test_an_empty_or_reversed_range_asks_nothing():
    source = Source(spread(100))
    found = asyncio.run(find_disagreeing_windows(source, "p", NOT_AFTER, T0, stored_counts(spread(100))))
    assert found.windows == [] and found.requests == 0 and source.asked == []
