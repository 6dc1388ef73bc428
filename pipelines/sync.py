"""The sync: windows -> pages -> normalized Arrow -> lake and warehouse.

One code path for the CLI and the Dagster assets. Three modes:

* ``days``: creation-day windows (partitions, backfills, ``voicejobs sync --since --until``).
  A window the source really listed, with a count that agrees, also reconciles deletions
  for its day; a window that was not listed (it lies after the source's clock) proves
  nothing and deletes nothing.
* ``incremental``: change capture by ``update_since`` from the stored watermark
  minus a lookback; falls back to a full backfill when there is no watermark.
* ``reconcile``: the same as ``days``, run to find deletions over a range.

Fetching runs concurrently across windows (the client bounds requests in
flight); each finished window is normalized and buffered, and the buffer is
applied to the warehouse in one transaction per flush. The watermark moves
only in the last transaction, after the data it covers is committed.

Deletions need evidence: a reconciling window whose listing would mark more than
:data:`MASS_DELETION_SHARE` of its range's live jobs deleted is listed a second time,
and the run stops unless both listings hold the same jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import screen
from pipelines.crashpoints import crashpoint
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.errors import MetaStudioError
from pipelines.metastudio.paging import (
    PAGE_LIMIT,
    SplitBudget,
    Window,
    WindowResult,
    day_window,
    fetch_window,
    floor_second,
)
from pipelines.schema import JOBS_SCHEMA, normalize
from pipelines.settings import Settings
from pipelines.source import claim, identity_of
from pipelines.warehouse import ReconciledRange, Warehouse, WindowRecord, count_in_ranges

log = logging.getLogger("voicejobs.sync")

FLUSH_ROWS = 20_000  # rows per warehouse transaction: bounds memory, amortises commits
FLUSH_BYTES = 64 << 20  # ... or this much Arrow data, whichever comes first (huge fields)
#: A reconciling window that would mark more than this share of its range's live jobs
#: deleted (and at least MASS_DELETION_MIN jobs) is listed again before it is believed.
MASS_DELETION_SHARE = 0.5
MASS_DELETION_MIN = 10


class SourceDisagreementError(MetaStudioError):
    """Two listings of the same range disagree where a sync would mark many jobs deleted."""


@dataclass
class SyncProgress:
    """What a progress display shows: the phase, and while fetching windows, jobs and rates."""

    windows_total: int = 0
    windows_done: int = 0
    jobs: int = 0
    phase: str = "fetching windows"
    retrying: str | None = None  # the latest retry, until the next window is done
    clock: Callable[[], float] = time.monotonic
    started: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.jobs / elapsed if elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        return self.windows_done / self.windows_total if self.windows_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Time left for the windows, at the pace so far; None before the first one."""
        if not self.windows_done or not self.windows_total:
            return None
        return self.elapsed / self.windows_done * (self.windows_total - self.windows_done)


WRITING = "writing the last windows to the warehouse and the lake"
#: What each mode is called where people read it.
MODE_NAMES = {"days": "backfill of creation days", "incremental": "change capture",
              "reconcile": "reconciliation of creation days"}


@dataclass
class SyncReport:
    """What one sync did; becomes Dagster metadata and the CLI summary."""

    run_id: str
    mode: str
    projects: tuple[str, ...]
    since: date | None = None
    until: date | None = None
    windows: int = 0
    jobs_fetched: int = 0
    rows_written: int = 0
    quarantined: int = 0
    deleted: int = 0
    mismatched_windows: int = 0
    count_checks: int = 0
    pages: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    wait_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    watermarks: dict[str, str] = field(default_factory=dict)
    source: str = ""
    simulated: bool = False
    clock_skew_seconds: float | None = None
    relisted_ranges: int = 0
    out_of_window: int = 0

    @property
    def retries_total(self) -> int:
        return sum(self.retries.values())

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "projects": list(self.projects),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "windows": self.windows,
            "jobs_fetched": self.jobs_fetched,
            "rows_written": self.rows_written,
            "quarantined": self.quarantined,
            "deleted": self.deleted,
            "mismatched_windows": self.mismatched_windows,
            "count_checks": self.count_checks,
            "pages": self.pages,
            "requests": self.requests,
            "retries": self.retries_total,
            "retries_by_cause": dict(self.retries),
            "api_wait_seconds": round(self.wait_seconds, 3),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
            "watermarks": dict(self.watermarks),
            "source": self.source,
            "simulated": self.simulated,
            "clock_skew_seconds": self.clock_skew_seconds,
            "relisted_ranges": self.relisted_ranges,
            "out_of_window": self.out_of_window,
        }

    def summary(self) -> str:
        rate = self.jobs_fetched / self.elapsed_seconds if self.elapsed_seconds else 0.0
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(self.retries.items())) or "none"
        origin = "the embedded MetaStudio simulator: SIMULATED DATA" if self.simulated else self.source
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phase_seconds.items())
        lines = [
            f"{MODE_NAMES.get(self.mode, self.mode)} of {', '.join(self.projects)}"
            + (f", creation days {self.since} .. {self.until}" if self.since else "")
            + (f" from {origin}" if origin else ""),
            f"  windows {self.windows}, pages {self.pages}, requests {self.requests}",
            f"  jobs fetched {self.jobs_fetched:,}, rows written {self.rows_written:,}, "
            f"quarantined {self.quarantined}, marked deleted {self.deleted}",
            f"  retries {self.retries_total} ({causes}); request time summed over concurrent requests "
            f"{self.wait_seconds:.1f}s",
            f"  took {self.elapsed_seconds:.1f}s in all ({rate:,.0f} jobs/s)" + (f": {phases}" if phases else ""),
        ]
        if self.mismatched_windows:
            lines.append(f"  windows whose count never matched the pages: {self.mismatched_windows}")
        if self.out_of_window:
            lines.append(f"  quarantined as listed outside their window: {self.out_of_window}")
        if self.clock_skew_seconds is not None:
            lines.append(f"  the source's clock is {_skew_text(self.clock_skew_seconds)}: this machine's clock was used")
        if self.relisted_ranges:
            lines.append(f"  ranges listed twice before deletions were believed: {self.relisted_ranges}")
        return "\n".join(lines)


def _skew_text(seconds: float) -> str:
    direction = "ahead of" if seconds > 0 else "behind"
    return f"{abs(seconds):,.0f} s {direction} this machine's"


def refresh_and_publish(warehouse: Warehouse, settings: Settings,
                        phase: Callable[[str], None] | None = None) -> dict[str, float]:
    """After a sync: rebuild the SQL models, then publish the snapshot BI tools read.

    Runs on the warehouse's open connection when inside ``warehouse.connect()``, so the
    sync, the models and the snapshot hold the file's lock as one unit of work. ``phase``
    hears each step as it starts; returns the seconds of each."""
    from pipelines.models import refresh_models

    seconds: dict[str, float] = {}
    with warehouse.connect() as con:
        if phase:
            phase("building the SQL models")
        started = time.monotonic()
        refresh_models(con, allow_unmasked_personal_data=settings.personal_data == "raw")
        seconds["models"] = time.monotonic() - started
        crashpoint("models_refreshed")
        if phase:
            phase("publishing the serving snapshot")
        started = time.monotonic()
        warehouse.publish_serving()
        seconds["snapshot"] = time.monotonic() - started
    return seconds


def make_client(settings: Settings) -> MetaStudioClient:
    return MetaStudioClient(
        settings.base_url(),
        settings.auth(),
        app_user_id=settings.app_user_id,
        max_in_flight=settings.max_in_flight,
        max_requests_per_second=settings.max_rps,
        timeout=settings.timeout,
        max_attempts=settings.max_attempts,
        max_retry_seconds=settings.max_retry_seconds,
        max_clock_skew_seconds=settings.max_clock_skew_seconds or None,
        max_response_bytes=settings.max_response_bytes,
    )


def days_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--until {last} is before --since {first}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class _Task:
    project_id: str
    window: Window
    kind: str  # "create" or "update"
    owner_since: datetime | None = None  # rows kept: create_time in [owner_since, owner_until)
    owner_until: datetime | None = None
    reconcile: bool = False  # mark stored jobs missing from a complete window as deleted


@dataclass
class _Batch:
    """What one warehouse transaction writes."""

    tables: list[pa.Table]
    windows: list[WindowRecord]
    quarantine: list
    deleted: list[tuple[str, str]]
    reconciled: list[ReconciledRange] = field(default_factory=list)


def listed_completely(result: WindowResult) -> bool:
    """Positive evidence that the source listed a window: it was paged (a window after the
    source's clock never is) and every part's distinct jobs agree with its count."""
    return bool(result.leaves) and all(leaf.fetched == leaf.api_count for leaf in result.leaves)


class _Run:
    """The state of one sync run: buffers, counters and the warehouse it writes."""

    def __init__(self, settings: Settings, warehouse: Warehouse, run_id: str, report: SyncReport,
                 progress: Callable[[SyncProgress], None] | None) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.run_id = run_id
        self.report = report
        self.progress_cb = progress
        self.progress = SyncProgress()
        self.tables: list[pa.Table] = []
        self.buffered = 0
        self.windows: list[WindowRecord] = []
        self.quarantine: list = []
        self.deleted: list[tuple[str, str]] = []
        self.reconciled: list[ReconciledRange] = []
        self.newest_update: dict[str, datetime] = {}
        self.buffered_bytes = 0
        self.split_budget = SplitBudget()
        # Creation times (epoch us, sorted) of each project's live jobs before this run wrote
        # any: what a reconciling window's listing is held against (see check_deletions).
        self.live_before: dict[str, np.ndarray] = {}

    def load_live(self, project_id: str, windows: Sequence[Window]) -> None:
        """Read the live creation times ``windows`` span, before the run writes any there."""
        if windows and project_id not in self.live_before:
            since, until = min(w.since for w in windows), max(w.until for w in windows)
            self.live_before[project_id] = self.warehouse.live_creation_times(project_id, since, until)

    def would_delete(self, task: _Task, result: WindowResult) -> tuple[int, int]:
        """(live jobs stored in the task's owner range, how many of them the listing lacks at least)."""
        times = self.live_before.get(task.project_id)
        if times is None or task.owner_since is None:
            return 0, 0
        # The owner range is half-open; count_in_ranges counts closed ranges.
        [stored] = count_in_ranges(times, [(task.owner_since, task.owner_until - US)])
        return stored, max(0, stored - len(result.jobs))

    def absorb(self, task: _Task, result: WindowResult, synced_at: datetime, listed_at: datetime | None = None) -> None:
        """Normalize one finished window into the buffer; find its deletions."""
        personal_data = self.settings.personal_data
        normalized = normalize(result.jobs, task.project_id, synced_at, personal_data=personal_data)
        table = normalized.table
        quarantine = list(normalized.quarantine)
        raw: dict | None = None
        if task.owner_since is not None and table.num_rows:
            listed = (result.window.since, result.window.until)
            table, outside = screen.split_owned(table, listed, (task.owner_since, task.owner_until))
            if outside.num_rows:
                raw = screen.raw_index(result.jobs)
                quarantine += screen.quarantine_rows(
                    outside, raw, task.project_id,
                    f"create_time: outside the creation window {result.window} it was listed in", personal_data)
                self.report.out_of_window += outside.num_rows
        too_big = screen.oversized(table)
        if too_big is not None:
            raw = raw if raw is not None else screen.raw_index(result.jobs)
            quarantine += screen.quarantine_rows(
                table.filter(too_big), raw, task.project_id,
                f"record: more than {screen.MAX_RECORD_BYTES:,} bytes of text", personal_data)
            table = table.filter(pc.invert(too_big))
        if table.num_rows:
            newest = pc.max(table["lastupdate_time"]).as_py()
            if newest is not None:
                prev = self.newest_update.get(task.project_id)
                self.newest_update[task.project_id] = max(prev, newest) if prev else newest
        self.tables.append(table)
        self.buffered += table.num_rows
        self.buffered_bytes += table.nbytes
        self.quarantine.extend(quarantine)
        for leaf in result.leaves:
            self.windows.append(
                WindowRecord(task.project_id, task.kind, leaf.window.since, leaf.window.until,
                             leaf.api_count, leaf.fetched, leaf.pages, listed_at)
            )
        if not listed_completely(result):
            self.report.mismatched_windows += bool(result.leaves)
        if task.reconcile and task.owner_since is not None:
            if listed_completely(result):
                owner_until = min(task.owner_until, result.window.until)
                # The stored jobs it did not list are marked deleted inside the batch's transaction.
                seen = [job_id for job in result.jobs if isinstance(job_id := job.get("job_id"), str)]
                self.reconciled.append(ReconciledRange(task.project_id, task.owner_since, owner_until, seen))
            elif result.leaves:
                log.warning("Window %s..%s of %s did not reconcile with its count; deletions not marked there.",
                            task.window.since, task.window.until, task.project_id)
        self.report.windows += 1
        self.report.jobs_fetched += len(result.jobs)
        self.report.quarantined += len(quarantine)
        crashpoint("fetched")
        self.progress.windows_done += 1
        self.progress.jobs += len(result.jobs)
        self.progress.retrying = None
        if self.progress_cb:
            self.progress_cb(self.progress)

    def retrying(self, note: str) -> None:
        """Show the latest retry on the progress line (the summary counts them all)."""
        self.progress.retrying = note
        if self.progress_cb:
            self.progress_cb(self.progress)

    def announce(self, phase: str) -> None:
        """Tell the progress display that a new phase starts (once)."""
        if self.progress.phase == phase:
            return
        self.progress.phase = phase
        if self.progress_cb:
            self.progress_cb(self.progress)

    @property
    def buffer_full(self) -> bool:
        return self.buffered >= FLUSH_ROWS or self.buffered_bytes >= FLUSH_BYTES

    def flush(self, *, deleted_at: datetime | None, watermarks: dict[str, datetime] | None = None) -> None:
        """Apply the buffer in one warehouse transaction (also when empty, to record windows)."""
        batch = self.take()
        if batch is not None:
            self.announce(WRITING)
        if batch is not None or watermarks:
            self.apply(batch or _Batch([], [], [], []), deleted_at=deleted_at, watermarks=watermarks)

    def take(self) -> _Batch | None:
        """Hand over the buffer (None when empty) and start a new one, so absorbing can go on."""
        if not (self.tables or self.windows or self.quarantine or self.deleted or self.reconciled):
            return None
        batch = _Batch(self.tables, self.windows, self.quarantine, self.deleted, self.reconciled)
        self.tables, self.buffered, self.windows, self.quarantine, self.deleted = [], 0, [], [], []
        self.reconciled, self.buffered_bytes = [], 0
        return batch

    def apply(self, batch: _Batch, *, deleted_at: datetime | None,
              watermarks: dict[str, datetime] | None = None) -> None:
        """One warehouse transaction for ``batch``; safe to run in a worker thread beside absorb()."""
        jobs = pa.concat_tables(batch.tables) if batch.tables else JOBS_SCHEMA.empty_table()
        batch.tables = []  # the concatenated table is the only copy from here on
        crashpoint("before_flush")
        stats = self.warehouse.apply(
            self.run_id,
            jobs=jobs,
            windows=batch.windows,
            quarantine=batch.quarantine,
            deleted=batch.deleted,
            deleted_at=deleted_at,
            watermarks=watermarks,
            reconciled=batch.reconciled,
        )
        self.report.rows_written += jobs.num_rows
        self.report.deleted += stats.deleted
        if watermarks:
            crashpoint("watermark_committed")


async def check_deletions(client: MetaStudioClient, run: _Run, task: _Task, result: WindowResult,
                          not_after: datetime) -> None:
    """Re-list a reconciling window whose listing would delete an unusual share of its live jobs.

    One listing can be wrong in ways its own count does not show (a server answering from an
    empty replica, a proxy serving a stale page). Before believing that more than
    MASS_DELETION_SHARE of a range's live jobs are gone, the range is listed again; the run
    stops unless both listings hold the same jobs."""
    if not listed_completely(result):
        return
    stored, missing = run.would_delete(task, result)
    if missing < MASS_DELETION_MIN or missing <= MASS_DELETION_SHARE * stored:
        return
    log.warning("The listing of %s %s lacks %d of its %d live jobs: listing it again before marking them deleted.",
                task.project_id, result.window, missing, stored)
    again = await fetch_window(client, task.project_id, task.window, kind=task.kind, not_after=not_after,
                               split_threshold=run.settings.split_threshold, split_budget=run.split_budget)
    run.report.relisted_ranges += 1
    first_ids = _ids(result)
    if not listed_completely(again) or _ids(again) != first_ids:
        raise SourceDisagreementError(
            f"two listings of {task.project_id} creation times {result.window} disagree ({len(first_ids)} then "
            f"{len(_ids(again))} jobs) where the warehouse holds {stored} live jobs; nothing there was marked "
            "deleted. The source may be unstable: run the sync again later"
        )


def _ids(result: WindowResult) -> set[str]:
    return {job_id for job in result.jobs if isinstance(job_id := job.get("job_id"), str)}


async def _run_tasks(client: MetaStudioClient, run: _Run, tasks: Sequence[_Task], not_after: datetime) -> None:
    """Fetch every task's window concurrently; absorb windows as they finish, apply batches behind.

    A pipeline with bounded stages, so memory does not grow with the history:
    a window holds its slot from its first request until it is absorbed (fetched windows
    never pile up when normalizing is the slower stage), and one batch at a time is applied
    in a worker thread while the next is fetched and normalized (DuckDB and Parquet writing
    release the GIL). A batch is applied only after the previous one committed, so
    transactions keep their order.
    """
    settings = run.settings
    # Keyset paging reads a window one page after another, so max_in_flight windows keep every
    # request slot busy; two more keep the pipe full while one is normalized. Each slot holds a
    # whole window of decoded JSON (several MB), so more slots cost memory and no speed.
    window_slots = asyncio.Semaphore(settings.max_in_flight + 2)
    run.progress.windows_total += len(tasks)

    # Finished windows travel through a queue, not as task results: a finished asyncio task
    # keeps its result for as long as the task is referenced, which would hold every page.
    finished: asyncio.Queue[tuple[_Task, WindowResult | Exception, asyncio.Event | None]] = asyncio.Queue()

    async def fetch(task: _Task) -> None:
        async with window_slots:
            try:
                result = await fetch_window(
                    client, task.project_id, task.window, kind=task.kind, not_after=not_after,
                    split_threshold=settings.split_threshold, split_budget=run.split_budget,
                )
                if task.reconcile:
                    await check_deletions(client, run, task, result, not_after)
            except Exception as exc:  # handed to the consumer, which raises it
                finished.put_nowait((task, exc, None))
                return
            absorbed = asyncio.Event()
            finished.put_nowait((task, result, absorbed))
            del result
            await absorbed.wait()  # the slot is held until the window is absorbed

    applying: asyncio.Future | None = None
    pending = [asyncio.ensure_future(fetch(task)) for task in tasks]
    try:
        for _ in range(len(tasks)):
            task, result, absorbed = await finished.get()
            if absorbed is None:
                raise result
            run.absorb(task, result, datetime.now(UTC), client.server_now())
            del result
            absorbed.set()
            if run.buffer_full:
                if applying is not None:
                    await applying
                batch = run.take()
                if batch is not None:
                    applying = asyncio.ensure_future(
                        asyncio.to_thread(run.apply, batch, deleted_at=client.server_now()))
        if applying is not None:
            run.announce(WRITING)
            await applying
            applying = None
    finally:
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if applying is not None:  # a failure elsewhere: let the transaction in flight end first
            await asyncio.gather(applying, return_exceptions=True)


async def _not_after(client: MetaStudioClient, settings: Settings, project_id: str) -> datetime:
    """The newest instant a window may reach: the source's now minus the safety lag."""
    await client.list_jobs(project_id, {"limit": 1})  # learns the source clock from its Date header
    return client.server_now() - timedelta(seconds=settings.safety_lag_seconds)


# A disagreeing range holding at most this many jobs at the source is paged rather than
# bisected further: two pages cost what the two count requests of one more level cost.
LEAF_JOBS = 2 * PAGE_LIMIT
MS = timedelta(milliseconds=1)
US = timedelta(microseconds=1)


@dataclass
class DisagreeingWindows:
    windows: list[Window]
    requests: int


def _halves(window: Window) -> tuple[Window, Window] | None:
    """Two closed halves sharing their middle instant: on a midnight while the range spans
    days, else on a whole second; None for a range of one second or less."""
    since, until = window.since, window.until
    if until - since > timedelta(days=1):
        first = day_window(since.date()).until
        days = (until - first).days
        mid = first + timedelta(days=days // 2)
        if since < mid < until:
            return Window(since, mid), Window(mid, until)
    seconds = int((until - since).total_seconds())
    if seconds < 2:
        return None
    mid = since + timedelta(seconds=seconds // 2)
    return Window(since, mid), Window(mid, until)


async def find_disagreeing_windows(client: MetaStudioClient, warehouse: Warehouse, project_id: str,
                                   first_day: date, not_after: datetime) -> DisagreeingWindows:
    """Closed creation-time ranges whose live job count in the warehouse differs from the source's ``count``.

    Bisection: one count request (``limit=1``) per range, and only a range that disagrees is
    split, by days first, then within the day on whole seconds, until it holds at most
    ``LEAF_JOBS`` jobs at the source. Halves share their middle instant on both sides, so a
    job there is counted alike in the warehouse and at the source. The cost grows with the
    number of places that changed (deletions, missed jobs), about 2 * log2(history / leaf)
    count requests and a page or two each, not with the history; paging whole days would
    re-read most of the history once deletions are spread over many days.
    """
    start = day_window(first_day).since
    end = floor_second(not_after)  # what the source is asked, so both sides count the same range
    ranges = [Window(start, end)] if start <= end else []
    found: list[Window] = []
    requests = 0
    # Nothing writes the warehouse during the bisection: its side is read once for every level.
    times = warehouse.live_creation_times(project_id, start, end) if ranges else None
    while ranges:
        pages = await asyncio.gather(*(
            client.list_jobs(project_id, {"create_since": w.since, "create_until": w.until, "limit": 1})
            for w in ranges
        ))
        requests += len(pages)
        stored = count_in_ranges(times, [(w.since, w.until) for w in ranges])
        next_ranges: list[Window] = []
        for window, page, have in zip(ranges, pages, stored, strict=True):
            if page.count == have:
                continue
            halves = _halves(window) if page.count > LEAF_JOBS else None
            if halves is None:
                found.append(window)
            else:
                next_ranges.extend(halves)
        ranges = next_ranges
    return DisagreeingWindows(sorted(found), requests)


def _range_tasks(project_id: str, windows: Sequence[Window]) -> list[_Task]:
    """Reconciling tasks owning each closed range (to the millisecond) completely."""
    return [_Task(project_id, w, "create", w.since, w.until + MS, True) for w in windows]


def _day_tasks(project_ids: Sequence[str], days: Sequence[date], reconcile: bool) -> list[_Task]:
    tasks = []
    for project_id in project_ids:
        for day in days:
            window = day_window(day)
            tasks.append(_Task(project_id, window, "create", window.since, window.until, reconcile))
    return tasks


def _gap_days(run: _Run, project_id: str, not_after: datetime) -> tuple[list[date], datetime | None]:
    """Creation days change capture must backfill, and when the days already listed were listed.

    Change capture reads every change since ``reference - lookback``: the watermark, or
    before the first one, the oldest time a listed day was listed. Jobs created since then
    are in that update window; the days before it that no run listed whole are gaps."""
    settings = run.settings
    listed = run.warehouse.listed_days(project_id, settings.first_day, not_after.date())
    reference = run.warehouse.watermark(project_id) or (min(listed.values()) if listed else None)
    if reference is None:
        return days_between(settings.first_day, not_after.date()), None
    last = (reference - timedelta(seconds=settings.lookback_seconds)).date() - timedelta(days=1)
    gaps = [day for day in days_between(settings.first_day, last) if day not in listed] \
        if last >= settings.first_day else []
    return gaps, reference


def _describe_days(days: Sequence[date]) -> str:
    return f"{days[0]}..{days[-1]}" if len(days) > 1 else str(days[0])


async def _capture_project(client: MetaStudioClient, run: _Run, project_id: str,
                           not_after: datetime) -> datetime | None:
    """Change capture of one project: never-listed days first, then changes since the reference."""
    settings = run.settings
    gaps, reference = _gap_days(run, project_id, not_after)
    if gaps:
        log.warning("Creation days %s of %s were never synced: backfilling %d day%s.",
                    _describe_days(gaps), project_id, len(gaps), "s" if len(gaps) != 1 else "")
        tasks = _day_tasks([project_id], gaps, reconcile=True)
        run.load_live(project_id, [t.window for t in tasks])
        await _run_tasks(client, run, tasks, not_after)
    newest = run.newest_update.get(project_id)
    if reference is None:
        # Nothing was listed before: the backfill is the whole listing. Changes made while it
        # ran carry lastupdate_time >= its start, so the watermark is capped at the start.
        return min(newest, not_after) if newest else not_after
    since_t = reference - timedelta(seconds=settings.lookback_seconds)
    if since_t < not_after:
        await _run_tasks(client, run, [_Task(project_id, Window(since_t, not_after), "update")], not_after)
    newest = run.newest_update.get(project_id)
    # Deletions never show in an update window: find the days whose counts disagree.
    run.flush(deleted_at=client.server_now())
    found = await find_disagreeing_windows(client, run.warehouse, project_id, settings.first_day, not_after)
    run.report.count_checks += found.requests
    if found.windows:
        log.info("Counts disagree on %d creation-time ranges of %s: paging them completely.",
                 len(found.windows), project_id)
        run.load_live(project_id, found.windows)
        await _run_tasks(client, run, _range_tasks(project_id, found.windows), not_after)
    return newest if newest and newest > reference else reference


def _release_freed_memory() -> None:
    """Arrow allocates from the C library's malloc rather than its bundled mimalloc.

    A sync frees a batch's buffers every few seconds; mimalloc kept more of them mapped: a
    200k-job sync peaked at 416 MB with it and 368 MB with the system allocator, at the same
    speed (measured one after the other against the same simulator)."""
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def sync(
    settings: Settings,
    *,
    mode: str = "days",
    since: date | None = None,
    until: date | None = None,
    warehouse: Warehouse | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
    refresh: bool = False,
) -> SyncReport:
    """Run one sync to completion (blocking). ``mode``: days, incremental or reconcile.

    With ``refresh``, the SQL models and the serving snapshot are rebuilt in the same unit of
    work, under the same hold of the warehouse file: the run is recorded as succeeded only
    when all three are done, and no other process can take the file in between."""
    if mode in ("days", "reconcile"):
        if since is None or until is None:
            raise ValueError(f"a {mode} sync needs since and until")
        days_between(since, until)
    warehouse = warehouse or Warehouse(settings.data_dir)
    projects = settings.require_projects()
    identity = identity_of(settings)
    _release_freed_memory()
    # One connection for the whole run: opening DuckDB per window costs more than paging it.
    with warehouse.connect():
        claim(warehouse, identity)
        report = SyncReport(run_id="", mode=mode, projects=projects, since=since, until=until,
                            source=identity.origin, simulated=identity.simulated)
        return _sync_run(settings, warehouse, report, progress, refresh)


def _sync_run(settings: Settings, warehouse: Warehouse, report: SyncReport,
              progress: Callable[[SyncProgress], None] | None, refresh: bool) -> SyncReport:
    since, until = report.since, report.until
    report.run_id = run_id = warehouse.begin_run(report.mode, {
        "since": str(since) if since else None, "until": str(until) if until else None,
        "projects": list(report.projects), "source": report.source})
    run = _Run(settings, warehouse, run_id, report, progress)
    started = time.monotonic()
    client = make_client(settings)
    client.on_retry = run.retrying
    try:
        asyncio.run(_sync(client, run, report.mode, since, until))
        report.phase_seconds["fetch and write"] = time.monotonic() - started
        if refresh:
            report.phase_seconds.update(refresh_and_publish(warehouse, settings, run.announce))
    except BaseException:
        report.elapsed_seconds = time.monotonic() - started
        _collect_client_stats(report, client)
        warehouse.finish_run(run_id, "failed", report.as_dict())
        raise
    report.elapsed_seconds = time.monotonic() - started
    _collect_client_stats(report, client)
    warehouse.finish_run(run_id, "succeeded", report.as_dict())
    crashpoint("run_finished")
    return report


def _collect_client_stats(report: SyncReport, client: MetaStudioClient) -> None:
    stats = client.stats
    report.pages = stats.pages
    report.requests = stats.requests
    report.retries = dict(stats.retries)
    report.wait_seconds = stats.wait_seconds


async def _sync(client: MetaStudioClient, run: _Run, mode: str, since: date | None, until: date | None) -> None:
    settings = run.settings
    projects = run.report.projects
    async with client:
        not_after = await _not_after(client, settings, projects[0])
        skew = getattr(client, "clock_skew", None)
        if skew is not None:
            run.report.clock_skew_seconds = skew.total_seconds()
        if mode in ("days", "reconcile"):
            tasks = _day_tasks(projects, days_between(since, until), reconcile=True)
            for project_id in projects:
                run.load_live(project_id, [t.window for t in tasks])
            await _run_tasks(client, run, tasks, not_after)
            run.flush(deleted_at=client.server_now())
            return
        # incremental: per project, backfill the creation days never listed, then change capture
        watermarks: dict[str, datetime] = {}
        for project_id in projects:
            mark = await _capture_project(client, run, project_id, not_after)
            if mark is not None:
                watermarks[project_id] = mark
        run.report.watermarks = {k: v.isoformat() for k, v in watermarks.items()}
        run.flush(deleted_at=client.server_now(), watermarks=watermarks or None)
