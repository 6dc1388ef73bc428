"""The sync: windows -> pages -> normalized Arrow -> lake and warehouse.

One code path for the CLI and the Dagster assets. Three modes:

* ``days``: creation-day windows (partitions, backfills, ``voicejobs sync --since --until``).
  A window paged completely also reconciles deletions for its day.
* ``incremental``: change capture by ``update_since`` from the stored watermark
  minus a lookback; falls back to a full backfill when there is no watermark.
* ``reconcile``: the same as ``days``, run to find deletions over a range.

Fetching runs concurrently across windows (the client bounds requests in
flight); each finished window is normalized and buffered, and the buffer is
applied to the warehouse in one transaction per flush. The watermark moves
only in the last transaction, after the data it covers is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.crashpoints import crashpoint
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.paging import (
    PAGE_LIMIT,
    Window,
    WindowResult,
    day_window,
    fetch_window,
    floor_second,
)
from pipelines.schema import JOBS_SCHEMA, normalize
from pipelines.settings import Settings
from pipelines.warehouse import ReconciledRange, Warehouse, WindowRecord, count_in_ranges

log = logging.getLogger("voicejobs.sync")

FLUSH_ROWS = 20_000  # rows per warehouse transaction: bounds memory, amortises commits
TS = pa.timestamp("ms", tz="UTC")


@dataclass
class SyncProgress:
    windows_total: int = 0
    windows_done: int = 0
    jobs: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.jobs / elapsed if elapsed > 0 else 0.0


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
    watermarks: dict[str, str] = field(default_factory=dict)

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
            "watermarks": dict(self.watermarks),
        }

    def summary(self) -> str:
        rate = self.jobs_fetched / self.elapsed_seconds if self.elapsed_seconds else 0.0
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(self.retries.items())) or "none"
        lines = [
            f"{self.mode} sync of {', '.join(self.projects)}"
            + (f", creation days {self.since} .. {self.until}" if self.since else ""),
            f"  windows {self.windows}, pages {self.pages}, requests {self.requests}",
            f"  jobs fetched {self.jobs_fetched:,}, rows written {self.rows_written:,}, "
            f"quarantined {self.quarantined}, marked deleted {self.deleted}",
            f"  retries {self.retries_total} ({causes}), waiting on the API {self.wait_seconds:.1f}s",
            f"  took {self.elapsed_seconds:.1f}s ({rate:,.0f} jobs/s)",
        ]
        if self.mismatched_windows:
            lines.append(f"  windows whose count never matched the pages: {self.mismatched_windows}")
        return "\n".join(lines)


def refresh_and_publish(warehouse: Warehouse, settings: Settings) -> None:
    """After a sync: rebuild the SQL models, then publish the snapshot BI tools read."""
    from pipelines.models import connect, refresh_models

    con = connect(warehouse.db_path)
    try:
        refresh_models(con, allow_unmasked_personal_data=settings.personal_data == "raw")
    finally:
        con.close()
    crashpoint("models_refreshed")
    warehouse.publish_serving()


@dataclass(frozen=True)
class Source:
    """Where jobs come from: the configured API or an embedded simulator."""

    settings: Settings
    simulator: object | None = None


@contextlib.contextmanager
def open_source(settings: Settings) -> Iterator[Source]:
    """The configured API; the embedded simulator when nothing at all is configured."""
    if not settings.uses_embedded_simulator:
        settings.base_url()  # fail fast, with the fix, on a bad endpoint
        settings.auth()
        settings.require_projects()
        yield Source(settings)
        return
    from pipelines.simulator import SimulatorConfig, SimulatorServer

    log.warning("No endpoint or credentials configured: syncing from the embedded MetaStudio simulator.")
    with SimulatorServer(SimulatorConfig()) as server:
        yield Source(simulator_settings(settings, server), server)


def simulator_settings(settings: Settings, server) -> Settings:
    """Settings that point at a running simulator with its AK/SK credentials."""
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    return settings.with_(endpoint=server.url, ak=ak, sk=sk, project_ids=tuple(config.projects))


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

    def absorb(self, task: _Task, result: WindowResult, synced_at: datetime) -> None:
        """Normalize one finished window into the buffer; find its deletions."""
        normalized = normalize(result.jobs, task.project_id, synced_at, personal_data=self.settings.personal_data)
        table = normalized.table
        if task.owner_since is not None and table.num_rows:
            mask = pc.and_(
                pc.greater_equal(table["create_time"], pa.scalar(task.owner_since, TS)),
                pc.less(table["create_time"], pa.scalar(task.owner_until, TS)),
            )
            table = table.filter(mask)
        if table.num_rows:
            newest = pc.max(table["lastupdate_time"]).as_py()
            if newest is not None:
                prev = self.newest_update.get(task.project_id)
                self.newest_update[task.project_id] = max(prev, newest) if prev else newest
        self.tables.append(table)
        self.buffered += table.num_rows
        self.quarantine.extend(normalized.quarantine)
        for leaf in result.leaves:
            self.windows.append(
                WindowRecord(task.project_id, task.kind, leaf.window.since, leaf.window.until,
                             leaf.api_count, leaf.fetched, leaf.pages)
            )
        complete = all(leaf.fetched == leaf.api_count for leaf in result.leaves)
        if not complete:
            self.report.mismatched_windows += 1
        if task.reconcile and task.owner_since is not None:
            if complete:
                owner_until = min(task.owner_until, result.window.until) if result.leaves else task.owner_until
                # The stored jobs it did not list are marked deleted inside the batch's transaction.
                seen = [job_id for job in result.jobs if isinstance(job_id := job.get("job_id"), str)]
                self.reconciled.append(ReconciledRange(task.project_id, task.owner_since, owner_until, seen))
            else:
                log.warning("Window %s..%s of %s did not reconcile with its count; deletions not marked there.",
                            task.window.since, task.window.until, task.project_id)
        self.report.windows += 1
        self.report.jobs_fetched += len(result.jobs)
        self.report.quarantined += len(normalized.quarantine)
        crashpoint("fetched")
        self.progress.windows_done += 1
        self.progress.jobs += len(result.jobs)
        if self.progress_cb:
            self.progress_cb(self.progress)

    def flush(self, *, deleted_at: datetime | None, watermarks: dict[str, datetime] | None = None) -> None:
        """Apply the buffer in one warehouse transaction (also when empty, to record windows)."""
        batch = self.take()
        if batch is not None or watermarks:
            self.apply(batch or _Batch([], [], [], []), deleted_at=deleted_at, watermarks=watermarks)

    def take(self) -> _Batch | None:
        """Hand over the buffer (None when empty) and start a new one, so absorbing can go on."""
        if not (self.tables or self.windows or self.quarantine or self.deleted or self.reconciled):
            return None
        batch = _Batch(self.tables, self.windows, self.quarantine, self.deleted, self.reconciled)
        self.tables, self.buffered, self.windows, self.quarantine, self.deleted = [], 0, [], [], []
        self.reconciled = []
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
                    split_threshold=settings.split_threshold,
                )
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
            run.absorb(task, result, datetime.now(UTC))
            del result
            absorbed.set()
            if run.buffered >= FLUSH_ROWS:
                if applying is not None:
                    await applying
                batch = run.take()
                if batch is not None:
                    applying = asyncio.ensure_future(
                        asyncio.to_thread(run.apply, batch, deleted_at=client.server_now()))
        if applying is not None:
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
) -> SyncReport:
    """Run one sync to completion (blocking). ``mode``: days, incremental or reconcile."""
    if mode in ("days", "reconcile"):
        if since is None or until is None:
            raise ValueError(f"a {mode} sync needs since and until")
        days_between(since, until)
    warehouse = warehouse or Warehouse(settings.data_dir)
    projects = settings.require_projects()
    _release_freed_memory()
    # One connection for the whole run: opening DuckDB per window costs more than paging it.
    with warehouse.connect():
        return _sync_run(settings, warehouse, projects, mode, since, until, progress)


def _sync_run(settings, warehouse, projects, mode, since, until, progress) -> SyncReport:
    report = SyncReport(run_id="", mode=mode, projects=projects, since=since, until=until)
    run_id = warehouse.begin_run(mode, {"since": str(since) if since else None,
                                        "until": str(until) if until else None, "projects": list(projects)})
    report.run_id = run_id
    run = _Run(settings, warehouse, run_id, report, progress)
    started = time.monotonic()
    client = make_client(settings)
    try:
        asyncio.run(_sync(client, run, mode, since, until))
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
        if mode in ("days", "reconcile"):
            tasks = _day_tasks(projects, days_between(since, until), reconcile=True)
            await _run_tasks(client, run, tasks, not_after)
            run.flush(deleted_at=client.server_now())
            return
        # incremental: change capture per project from its watermark, backfill where there is none
        watermarks: dict[str, datetime] = {}
        for project_id in projects:
            stored = run.warehouse.watermark(project_id)
            if stored is None:
                first = settings.first_day
                log.info("No watermark for %s yet: backfilling creation days from %s.", project_id, first)
                tasks = _day_tasks([project_id], days_between(first, not_after.date()), reconcile=True)
                await _run_tasks(client, run, tasks, not_after)
                # Changes made while the backfill ran carry lastupdate_time >= its start, so the
                # watermark is capped at the start; the next change capture re-reads from there.
                newest = run.newest_update.get(project_id)
                watermarks[project_id] = min(newest, not_after) if newest else not_after
            else:
                since_t = stored - timedelta(seconds=settings.lookback_seconds)
                if since_t < not_after:
                    window = Window(since_t, not_after)
                    await _run_tasks(client, run, [_Task(project_id, window, "update")], not_after)
                newest = run.newest_update.get(project_id)
                if newest and newest > stored:
                    watermarks[project_id] = newest
                # Deletions never show in an update window: find the days whose counts disagree.
                run.flush(deleted_at=client.server_now())
                found = await find_disagreeing_windows(client, run.warehouse, project_id, settings.first_day,
                                                       not_after)
                run.report.count_checks += found.requests
                if found.windows:
                    log.info("Counts disagree on %d creation-time ranges of %s: paging them completely.",
                             len(found.windows), project_id)
                    await _run_tasks(client, run, _range_tasks(project_id, found.windows), not_after)
        run.report.watermarks = {k: v.isoformat() for k, v in watermarks.items()}
        run.flush(deleted_at=client.server_now(), watermarks=watermarks or None)
