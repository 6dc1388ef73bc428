"""The owner filter (pipelines.ingest.screen.split_owned): which of a window's rows it keeps.

A listing window is closed, ``[since, until]``; the rows it keeps are half-open,
``[owner_since, owner_until)``. So a job exactly at ``owner_since`` is the window's, one exactly
at ``owner_until`` is left to the next window (which lists and owns it), and one the server
listed outside the listed window altogether is for quarantine: no window owns it. Times are
milliseconds, as the API sends them; every boundary is checked a millisecond either side.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from pipelines.ingest.screen import split_owned

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MS = timedelta(milliseconds=1)


def _jobs(*created: datetime) -> pa.Table:
    return pa.table({
        "job_id": [f"j{i}" for i in range(len(created))],
        "create_time": pa.array(created, pa.timestamp("ms", tz="UTC")),
    })


def where(created: datetime, listed: tuple[datetime, datetime], owner: tuple[datetime, datetime]) -> str:
    """'owned', 'outside' (quarantine) or 'neighbour' (neither: another window's) for one job."""
    owned, outside = split_owned(_jobs(created), listed, owner)
    assert owned.num_rows + outside.num_rows <= 1, "a row is either owned or outside, never both"
    return "owned" if owned.num_rows else "outside" if outside.num_rows else "neighbour"


def test_a_window_owns_its_midnight_and_leaves_the_next_one_to_its_neighbour():
    day = T0
    listed = (day, day + timedelta(days=1))  # closed: both midnights are listed
    jobs = _jobs(day, day + timedelta(hours=5), day + timedelta(days=1), day + timedelta(days=1) - MS,
                 datetime(9999, 12, 31, tzinfo=UTC), day - MS)
    owned, outside = split_owned(jobs, listed, (day, day + timedelta(days=1)))
    assert owned["job_id"].to_pylist() == ["j0", "j1", "j3"]
    assert outside["job_id"].to_pylist() == ["j4", "j5"]  # listed though the filter excludes them
    # j2 (the next midnight) is neither: the next day's window owns and lists it


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (T0 - MS, "outside"),  # before the listed window: the filter excludes it
        (T0, "owned"),  # exactly at owner_since: this window's
        (T0 + MS, "owned"),
        (T0 + DAY / 2, "owned"),
        (T0 + DAY - MS, "owned"),  # the last millisecond of the day
        (T0 + DAY, "neighbour"),  # exactly at owner_until: listed here, owned by the next day
        (T0 + DAY + MS, "outside"),  # after the listed window
        (datetime(1970, 1, 1, tzinfo=UTC), "outside"),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), "outside"),
    ],
    ids=["ms-before", "owner-since", "ms-after-since", "midday", "ms-before-until", "owner-until",
         "ms-after-until", "epoch", "year-9999"],
)
def test_the_owner_range_is_half_open_and_the_listed_window_closed(created, expected):
    assert where(created, (T0, T0 + DAY), (T0, T0 + DAY)) == expected


def test_adjacent_days_own_every_listed_job_exactly_once():
    """Both days list the shared midnight; only the later one keeps it, and nothing is lost."""
    instants = [T0 + i * timedelta(hours=6) + k * MS for i in range(9) for k in (-1, 0, 1)]
    jobs = _jobs(*instants)
    kept: list[str] = []
    for since in (T0, T0 + DAY):
        window = (since, since + DAY)
        listed = jobs.filter(pa.array([window[0] <= t <= window[1] for t in instants]))
        owned, outside = split_owned(listed, window, window)
        assert outside.num_rows == 0  # the listing kept to its window
        kept += owned["job_id"].to_pylist()
    assert len(kept) == len(set(kept))  # the shared midnight is written once
    covered = {f"j{i}" for i, t in enumerate(instants) if T0 <= t < T0 + 2 * DAY}
    assert set(kept) == covered  # every job of the two days, the first midnight included


def test_a_row_between_the_listed_window_and_a_narrower_owner_range_is_a_neighbours():
    """Inside what was listed but outside the owner range: neither kept nor quarantined."""
    listed = (T0 - timedelta(hours=1), T0 + DAY + timedelta(hours=1))
    owner = (T0, T0 + DAY)
    assert where(T0 - timedelta(minutes=30), listed, owner) == "neighbour"
    assert where(T0 - MS, listed, owner) == "neighbour"
    assert where(T0, listed, owner) == "owned"
    assert where(T0 + DAY, listed, owner) == "neighbour"
    assert where(listed[1], listed, owner) == "neighbour"  # the listed window's closed end
    assert where(listed[1] + MS, listed, owner) == "outside"
    assert where(listed[0] - MS, listed, owner) == "outside"


def test_bounds_in_another_time_zone_are_the_same_instants():
    shanghai = timezone(timedelta(hours=8))
    window = (T0.astimezone(shanghai), (T0 + DAY).astimezone(shanghai))
    assert [where(t, window, window) for t in (T0 - MS, T0, T0 + DAY - MS, T0 + DAY)] == [
        "outside", "owned", "owned", "neighbour"]


def test_rows_keep_their_columns_and_order_and_an_empty_table_stays_empty():
    jobs = _jobs(T0 + 3 * MS, T0 + DAY + MS, T0 + MS, T0 - MS, T0 + 2 * MS).append_column(
        "state", pa.array(["A", "B", "C", "D", "E"]))
    owned, outside = split_owned(jobs, (T0, T0 + DAY), (T0, T0 + DAY))
    assert owned.schema == jobs.schema == outside.schema
    assert owned.to_pydict()["state"] == ["A", "C", "E"] and outside.to_pydict()["state"] == ["B", "D"]
    empty_owned, empty_outside = split_owned(jobs.slice(0, 0), (T0, T0 + DAY), (T0, T0 + DAY))
    assert empty_owned.num_rows == empty_outside.num_rows == 0 and empty_owned.schema == jobs.schema


def test_a_window_cut_short_owns_nothing_past_its_listing():
    # The source's clock cut the day's window at 10:00 (not_after); a job the server listed at
    # 20:00 lies inside the day's owner range but outside what was asked for: quarantined, not
    # stored as well.
    listed = (T0, T0 + timedelta(hours=10))
    assert where(T0 + timedelta(hours=20), listed, (T0, T0 + DAY)) == "outside"
    assert where(T0 + timedelta(hours=10), listed, (T0, T0 + DAY)) == "owned"
    assert where(T0 + timedelta(hours=10) + MS, listed, (T0, T0 + DAY)) == "outside"


def test_a_window_that_owns_every_row_keeps_them_all_and_one_without_a_creation_time_none():
    jobs = _jobs(T0, T0 + MS, T0 + DAY - MS).append_column("state", pa.array(["A", "B", "C"]))
    owned, outside = split_owned(jobs, (T0, T0 + DAY), (T0, T0 + DAY))
    assert owned.to_pydict() == jobs.to_pydict() and owned.schema == jobs.schema
    assert outside.num_rows == 0 and outside.schema == jobs.schema
    # A row whose creation time is missing is neither owned nor outside, also among owned rows.
    missing = pa.table({"job_id": ["j0", "jx"], "create_time": pa.array([T0, None], pa.timestamp("ms", tz="UTC"))})
    owned, outside = split_owned(missing, (T0, T0 + DAY), (T0, T0 + DAY))
    assert owned["job_id"].to_pylist() == ["j0"] and outside.num_rows == 0


def _settled(windows: list[list[dict]]):
    """A sync run's buffer after absorbing ``windows`` (records as listed) and normalizing them together."""
    from types import SimpleNamespace

    from pipelines.metastudio.windows import day_window
    from pipelines.sync.buffer import Run
    from pipelines.sync.plan import Task
    from pipelines.sync.report import SyncReport

    run = Run(SimpleNamespace(personal_data="raw"), None, "run-1", SyncReport("run-1", "days", ("p1",)), None)
    for day, records in enumerate(windows):
        window = day_window((T0 + day * DAY).date())
        run.absorb_part(Task("p1", window, "create"), window, records, T0 + 9 * DAY)
    run.settle()
    return run


def _record(job_id: str, day: int, **fields) -> dict:
    created = int((T0 + day * DAY).timestamp() * 1000) + 1000
    return {"job_id": job_id, "job_type": "BASIC", "state": "SUCCEED", "create_time": created,
            "lastupdate_time": created, **fields}


def test_windows_normalized_together_quarantine_an_oversized_record_of_one_window_only():
    """The oversized check is taken once for windows normalized together: a group with a giant
    record still checks each window, and quarantines that record alone."""
    from pipelines.ingest import normalize_windows
    from pipelines.ingest.screen import MAX_RECORD_BYTES

    giant = "x" * (MAX_RECORD_BYTES + 1)
    windows = [[_record("a", 0), _record("b", 0)], [_record("c", 1, voice_name=giant)], [_record("d", 2)]]
    assert all(n.slice_of is not None for n in normalize_windows(windows, "p1", T0))  # normalized together
    run = _settled(windows)
    assert [row["job_id"] for table in run.tables for row in table.to_pylist()] == ["a", "b", "d"]
    assert [(q.job_id, q.reason) for q in run.quarantine] == [
        ("c", f"record: more than {MAX_RECORD_BYTES:,} bytes of text")]
    assert run.buffered == 3 and run.buffered_bytes > MAX_RECORD_BYTES  # what the group holds, counted


def test_windows_normalized_together_count_their_bytes_once():
    windows = [[_record(f"{day}-{i}", day, voice_name="v" * 500) for i in range(20)] for day in range(4)]
    run = _settled(windows)
    assert not run.quarantine and run.buffered == 80
    whole = pa.concat_tables(run.tables).combine_chunks()
    assert whole.nbytes <= run.buffered_bytes <= whole.nbytes + 64 * whole.num_columns
